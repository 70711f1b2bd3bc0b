// Conv2d backward weight, second pass: dW[i] = sum_s part[s, i] * STE(W)[i], where
// STE(W) = [qmin <= round(w * inv_s[co]) + z[co] <= qmax] with W's per-output-channel state
// (pass-through when the MASK flag is off or the state's fq_on is 0). Splits are summed in
// order, so the result is deterministic.

// #include common/conv_params.wgsl
// #include common/fake_quant.wgsl

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> wq: array<f32>;
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;

const WG: u32 = 256u;

// #include common/index.wgsl

@compute @workgroup_size(256)
fn conv2d_wgrad_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
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
        acc = select(0.0, acc, fq_keeps(wt[i], wq[4u + n + co], wq[4u + 2u * n + co], p.w_qmin, p.w_qmax));
    }
    dw[i] = acc;
}
