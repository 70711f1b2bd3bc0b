// Conv-BN folding for QAT, PyTorch's ConvBn2d `_forward_approximate`:
//   sf[c] = gamma[c] / sqrt(running_var[c] + eps); w_fold = w * sf[c] (per output channel);
//   y_orig = y_conv / sf[c]; then ordinary BN on y_orig.
// Backward: dy_conv = dy_orig / sf (channel_div again); dw = dw_fold * sf;
//   dsf[c] = sum(dw_fold[c,...] * w[c,...]) - sum_{n,h,w}(dy_orig * y_conv) / sf[c]^2;
//   dgamma[c] += dsf[c] / sqrt(running_var[c] + eps)   (running_var is a constant).

struct Params {
    n: u32,      // elements of the tensor the kernel walks
    c: u32,      // channels (output channels of the conv)
    inner: u32,  // elements per channel per batch item (weights: Cin*kh*kw; activations: H*W)
    m: u32,      // channel_reduce kernels: batch items N (activations)
    eps: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

// #include common/index.wgsl
// #include common/wg_sum.wgsl
// #include common/wg_minmax.wgsl
// #include common/nonfinite.wgsl

// ---- fold_forward: 1 w [Cout, inner], 2 gamma, 3 running_var, 4 sf (written), 5 w_fold ----
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> running_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> sf_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> w_fold: array<f32>;

fn scale_factor(c: u32) -> f32 {
    return gamma[c] / sqrt(running_var[c] + p.eps);
}

@compute @workgroup_size(256)
fn fold_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i < p.c) { sf_out[i] = scale_factor(i); }
    if (i >= p.n) { return; }
    w_fold[i] = w[i] * scale_factor(i / p.inner);
}

// ---- channel_div: 1 src [N, C, inner], 2 sf, 3 dst = src / sf[c] ----
// Used for y_orig = y_conv / sf (forward) and dy_conv = dy_orig / sf (backward).
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> sf: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn channel_div(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    dst[i] = src[i] / sf[(i / p.inner) % p.c];
}

// ---- fold_weight_backward: 1 w, 2 dw_fold, 3 sf, 4 dw (written), 5 dsf (written) ----
// One workgroup per output channel: dw = dw_fold * sf; dsf[c] = sum(dw_fold * w).
@group(0) @binding(2) var<storage, read> dw_fold: array<f32>;
@group(0) @binding(3) var<storage, read> sf3: array<f32>;
@group(0) @binding(4) var<storage, read_write> dw: array<f32>;
@group(0) @binding(5) var<storage, read_write> dsf: array<f32>;

// Channel c's weight part (every invocation of the workgroup calls it: barriers): writes
// dw = dw_fold * sf[c] and returns sum(dw_fold * w) over the channel (shared by
// fold_weight_backward and fold_backward, so both sum in the same order).
fn fold_weight_grad(c: u32, lid: u32) -> f32 {
    let s = sf3[c];
    var acc = 0.0;
    for (var k = lid; k < p.inner; k += WG) {
        let i = c * p.inner + k;
        let g = dw_fold[i];
        dw[i] = g * s;
        acc += g * w[i];
    }
    return wg_sum(acc, lid);
}

@compute @workgroup_size(256)
fn fold_weight_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    let t = fold_weight_grad(c, lid);
    if (lid == 0u) { dsf[c] = t; }
}

// ---- fold_gamma_backward: 1 y_conv, 2 dy_orig, 3 sf, 4 running_var, 5 dsf (in: weight
// part from fold_weight_backward, out: full dsf), 6 dgamma (+=) ----
@group(0) @binding(1) var<storage, read> y_conv: array<f32>;
@group(0) @binding(2) var<storage, read> dy_orig: array<f32>;
@group(0) @binding(4) var<storage, read> rv4: array<f32>;
@group(0) @binding(6) var<storage, read_write> dgamma: array<f32>;

@compute @workgroup_size(256)
fn fold_gamma_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    var acc = 0.0;
    let total = p.m * p.inner;
    for (var k = lid; k < total; k += WG) {
        let n = k / p.inner;
        let i = (n * p.c + c) * p.inner + (k - n * p.inner);
        acc += dy_orig[i] * y_conv[i];
    }
    let t = wg_sum(acc, lid);
    if (lid == 0u) {
        let s = sf3[c];
        let d = dsf[c] - t / (s * s);
        dsf[c] = d;
        dgamma[c] = dgamma[c] + d / sqrt(rv4[c] + p.eps);
    }
}

// ---- Fused kernels of the compiled training step (one workgroup per output channel) ----

override COPY_RV: bool = false;
// fold_backward: flag a non-finite final dgamma in the metrics buffer (binding 8).
override GUARD: bool = false;

// ---- fold_forward_obs: 1 w, 2 gamma, 3 running_var, 4 sf, 5 w_fold (written as
// fold_forward does), 6 rv_copy (= running_var when COPY_RV: the variance the fold used, kept
// for the backward; else any read-write buffer, untouched), 7 partials (written: min, max of
// w_fold's channel c at 2c, 2c + 1, the first stage of the weight observer) ----
@group(0) @binding(6) var<storage, read_write> rv_copy: array<f32>;
@group(0) @binding(7) var<storage, read_write> w_part: array<f32>;

@compute @workgroup_size(256)
fn fold_forward_obs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    let s = scale_factor(c);
    if (lid == 0u) {
        sf_out[c] = s;
        if (COPY_RV) { rv_copy[c] = running_var[c]; }
    }
    var lo = bitcast<f32>(0x7f800000u);
    var hi = -lo;
    for (var k = lid; k < p.inner; k += WG) {
        let i = c * p.inner + k;
        let v = w[i] * s;
        w_fold[i] = v;
        lo = min(lo, v);
        hi = max(hi, v);
    }
    let mm = wg_minmax(lo, hi, lid);
    if (lid == 0u) {
        w_part[2u * c] = mm.x;
        w_part[2u * c + 1u] = mm.y;
    }
}

// ---- fold_backward: 1 w, 2 dw_fold, 3 sf, 4 dw (written), 5 tsum (sum(dy_orig * y_conv) per
// channel, from batchnorm's bn_backward with FOLD), 6 running_var (the one the fold used),
// 7 dgamma (+=), 8 metrics (GUARD; else any read-write buffer, untouched) ----
// fold_weight_backward then fold_gamma_backward's finish, same bits:
// dsf = sum(dw_fold * w) - tsum / sf^2; dgamma += dsf / sqrt(running_var + eps).
@group(0) @binding(5) var<storage, read> tsum: array<f32>;
@group(0) @binding(6) var<storage, read> rv6: array<f32>;
@group(0) @binding(7) var<storage, read_write> dgamma7: array<f32>;
@group(0) @binding(8) var<storage, read_write> fb_metrics: array<atomic<u32>>;

@compute @workgroup_size(256)
fn fold_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    let s = sf3[c];
    let t = fold_weight_grad(c, lid);
    if (lid == 0u) {
        let d = t - tsum[c] / (s * s);
        let g = dgamma7[c] + d / sqrt(rv6[c] + p.eps);
        dgamma7[c] = g;
        if (GUARD && nonfinite(g)) {
            atomicOr(&fb_metrics[METRICS_FLAGS], METRICS_NONFINITE);
        }
    }
}
