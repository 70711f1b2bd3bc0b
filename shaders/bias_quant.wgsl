// Bias quantization of the simulation, so the fake-quant model adds the bias the integer
// model adds: b_q = round(b * (inv_s_x * inv_s_w[c])) * (s_x * s_w[c]) (round half to even;
// products of the stored inverses, so every GPU rounds like the CPU reference). The integer
// model stores round(b / (s_x s_w[c])) in i32 (f64 division): the two agree except within f32
// error of a tie.
//
// Entry `quantize_bias` (p.bn == 0): out[c] = b_q(bias[c]).
// Entry `quantize_bias` (p.bn == 1): a conv-BN block in eval mode adds
//   b_eff = beta - running_mean * gamma / sqrt(running_var + eps); out[c] = beta + b_q(b_eff) - b_eff,
//   the beta that makes BN(y_conv / sf) = y_conv + b_q(b_eff).
// Pass-through (out = bias, or beta) while either quantizer's fake-quant flag is off.
// Bindings: 1 bias or beta, 2 gamma, 3 running_mean, 4 running_var (2-4 unused without BN,
// bound to the bias), 5 x quantizer state, 6 w quantizer state, 7 out.

struct Params {
    c: u32,           // output channels
    w_channels: u32,  // 1 (per-tensor weights) or c
    bn: u32,          // 1: BN beta mode
    _pad0: u32,
    eps: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> var_: array<f32>;
@group(0) @binding(5) var<storage, read> xq: array<f32>;
@group(0) @binding(6) var<storage, read> wq: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

const I32_MAX: f32 = 2147483520.0;  // largest f32 below 2^31

// #include common/index.wgsl

@compute @workgroup_size(64)
fn quantize_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg, 64u);
    if (c >= p.c) { return; }
    let b = bias[c];
    var b_eff = b;
    if (p.bn != 0u) {
        b_eff = b - mean[c] * (gamma[c] / sqrt(var_[c] + p.eps));
    }
    var r = b;
    if (xq[0] != 0.0 && wq[0] != 0.0) {
        let wc = select(c, 0u, p.w_channels == 1u);
        let n = p.w_channels;
        // State layout: [fq_on, obs_on, init, _, scale[C], inv_scale[C], ...].
        let s = xq[4u] * wq[4u + wc];
        let inv = xq[5u] * wq[4u + n + wc];
        let code = clamp(round(b_eff * inv), -I32_MAX, I32_MAX);
        let b_q = code * s;
        if (p.bn != 0u) {
            r = b + (b_q - b_eff);
        } else {
            r = b_q;
        }
    }
    out[c] = r;
}
