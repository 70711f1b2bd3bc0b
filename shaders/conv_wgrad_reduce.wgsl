// Conv2d backward weight, second pass: dW[i] = sum_s part[s, i] * STE(W)[i], where
// STE(W) = [qmin <= round(w * inv_s[co]) + z[co] <= qmax] with W's per-output-channel state
// (pass-through when the MASK flag is off or the state's fq_on is 0). Splits are summed in
// order, so the result is deterministic.

struct Params {
    n: u32, c_in: u32, h: u32, w: u32,
    c_out: u32, oh: u32, ow: u32, groups: u32,
    kh: u32, kw: u32, stride_h: u32, stride_w: u32,
    pad_h: u32, pad_w: u32, dil_h: u32, dil_w: u32,
    cin_g: u32, cout_g: u32, gemm_m: u32, gemm_n: u32,
    gemm_k: u32, k_chunk: u32, splits: u32, flags: u32,
    x_qmin: f32, x_qmax: f32, w_qmin: f32, w_qmax: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> wq: array<f32>;
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;


// Bits of p.flags.
const MASK: u32 = 16u;
const W_PER_TENSOR: u32 = 64u;
const WG: u32 = 256u;

@compute @workgroup_size(256)
fn conv2d_wgrad_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    let total = p.c_out * p.gemm_n;
    if (i >= total) { return; }
    var acc = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        acc += part[s * total + i];
    }
    if ((p.flags & MASK) != 0u && wq[0] != 0.0) {
        var co = i / p.gemm_n;
        var n = p.c_out;
        if ((p.flags & W_PER_TENSOR) != 0u) { co = 0u; n = 1u; }
        let r = round(wt[i] * wq[4u + n + co]) + wq[4u + 2u * n + co];
        acc = select(0.0, acc, r >= p.w_qmin && r <= p.w_qmax);
    }
    dw[i] = acc;
}
