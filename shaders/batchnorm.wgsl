// BatchNorm2d over NCHW (linear layers: H = W = 1), PyTorch semantics.
//
// saved = [mean[C], invstd[C]] (the batch statistics in training, the running ones in eval);
// xhat = (x - mean) * invstd; y = xhat * gamma + beta (then max(y, 0) when RELU).
// Per-channel reductions: one workgroup of 256 per channel (workgroup wid.x + wid.y * nwg.x),
// each thread strides over the channel's N*H*W elements, then a tree in workgroup memory.
// Variance is two-pass (sum of squared deviations), biased for normalization, unbiased
// (M / (M - 1)) for running_var. running = (1 - momentum) * running + momentum * batch.

struct Params {
    c: u32,      // channels
    hw: u32,     // H * W
    m: u32,      // N * H * W (elements per channel)
    total: u32,  // N * C * H * W
    eps: f32,
    momentum: f32,
    _pad0: f32,
    _pad1: f32,
}

override RELU: bool = false;
override TRAINING: bool = true;

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;

// #include common/index.wgsl
// #include common/wg_sum.wgsl
// #include common/wg_minmax.wgsl
// #include common/nonfinite.wgsl

// Index of the k-th element (k < m) of channel c.
fn chan_index(c: u32, k: u32) -> u32 {
    let n = k / p.hw;
    return (n * p.c + c) * p.hw + (k - n * p.hw);
}


// ---- bn_stats: 1 x, 2 saved (written), 3 running_mean, 4 running_var (updated) ----
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> saved_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_var: array<f32>;

@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    var s = 0.0;
    for (var k = lid; k < p.m; k += WG) { s += x[chan_index(c, k)]; }
    let mean = wg_sum(s, lid) / f32(p.m);
    var q = 0.0;
    for (var k = lid; k < p.m; k += WG) {
        let d = x[chan_index(c, k)] - mean;
        q += d * d;
    }
    let var_b = wg_sum(q, lid) / f32(p.m);
    if (lid == 0u) {
        saved_out[c] = mean;
        saved_out[p.c + c] = 1.0 / sqrt(var_b + p.eps);
        let unbiased = var_b * f32(p.m) / f32(p.m - 1u);
        running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * mean;
        running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * unbiased;
    }
}

// ---- bn_eval_stats: 1 running_mean, 2 running_var, 3 saved (written); one thread per channel ----
@group(0) @binding(1) var<storage, read> rm_in: array<f32>;
@group(0) @binding(2) var<storage, read> rv_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> saved_eval: array<f32>;

@compute @workgroup_size(256)
fn bn_eval_stats(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg, WG);
    if (c >= p.c) { return; }
    saved_eval[c] = rm_in[c];
    saved_eval[p.c + c] = 1.0 / sqrt(rv_in[c] + p.eps);
}

// ---- bn_apply: 1 x, 2 saved, 3 gamma, 4 beta, 5 y ----
@group(0) @binding(2) var<storage, read> saved: array<f32>;
@group(0) @binding(3) var<storage, read> gamma_a: array<f32>;
@group(0) @binding(4) var<storage, read> beta_a: array<f32>;
@group(0) @binding(5) var<storage, read_write> y_out: array<f32>;

@compute @workgroup_size(256)
fn bn_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    let c = (i / p.hw) % p.c;
    let xhat = (x[i] - saved[c]) * saved[p.c + c];
    var v = xhat * gamma_a[c] + beta_a[c];
    if (RELU) { v = max(v, 0.0); }
    y_out[i] = v;
}

// ---- bn_backward_reduce: 1 x, 2 saved, 3 dy, 4 y (forward output, for the RELU mask; any
// read-only buffer of x's size when RELU is off), 5 dgamma, 6 dbeta (written) ----
// dgamma = sum(g * xhat), dbeta = sum(g), g = dy masked by y > 0 when RELU.
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read> y_fwd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgamma_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> dbeta_out: array<f32>;

fn masked_dy(i: u32) -> f32 {
    let yv = y_fwd[i];
    return select(dy[i], 0.0, RELU && yv <= 0.0);
}

@compute @workgroup_size(256)
fn bn_backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    let mean = saved[c];
    let invstd = saved[p.c + c];
    var sg = 0.0;
    var sgx = 0.0;
    for (var k = lid; k < p.m; k += WG) {
        let i = chan_index(c, k);
        let g = masked_dy(i);
        sg += g;
        sgx += g * (x[i] - mean) * invstd;
    }
    let tg = wg_sum(sg, lid);
    let tgx = wg_sum(sgx, lid);
    if (lid == 0u) {
        dgamma_out[c] = tgx;
        dbeta_out[c] = tg;
    }
}

// ---- bn_backward_dx: 1 x, 2 saved, 3 dy, 4 y, 5 gamma, 6 dgamma, 7 dbeta, 8 dx ----
// TRAINING: dx = gamma * invstd / M * (M * g - dbeta - xhat * dgamma) (batch statistics);
// else (frozen/eval statistics): dx = gamma * invstd * g.
@group(0) @binding(5) var<storage, read> gamma_b: array<f32>;
@group(0) @binding(6) var<storage, read> dgamma_in: array<f32>;
@group(0) @binding(7) var<storage, read> dbeta_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx_out: array<f32>;

@compute @workgroup_size(256)
fn bn_backward_dx(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    let c = (i / p.hw) % p.c;
    let invstd = saved[p.c + c];
    let g = masked_dy(i);
    let xhat = (x[i] - saved[c]) * invstd;
    let k = gamma_b[c] * invstd;
    let mf = f32(p.m);
    let full = k / mf * (mf * g - dbeta_in[c] - xhat * dgamma_in[c]);
    dx_out[i] = select(k * g, full, TRAINING);
}

// ---- Fused per-channel kernels of the compiled training step (one workgroup per channel) ----
// They walk a channel's elements in the order k = lid, lid + WG, ... exactly like the
// reductions above (so every sum has the same bits as bn_stats / bn_backward_reduce /
// fold_gamma_backward), but step the (n, r) coordinates of element k incrementally instead
// of dividing per element (a vector integer division is scalarised on CPU adapters).
// DIV (conv-BN folding): the BN input is x / sf[c] (x = the conv output), computed on the
// fly with the same bits as bn_fold's channel_div.

override DIV: bool = false;
override FOLD: bool = false;
// bn_backward: flag a non-finite dbeta (and dgamma without FOLD, where it is final) in the
// metrics buffer, instead of a nonfinite_check pass over those gradients.
override GUARD: bool = false;

struct Walk {
    n: u32,
    r: u32,
}

fn walk_start(lid: u32) -> Walk {
    return Walk(lid / p.hw, lid % p.hw);
}

fn walk_next(w: Walk) -> Walk {
    var n = w.n + WG / p.hw;
    var r = w.r + WG % p.hw;
    if (r >= p.hw) {
        r -= p.hw;
        n += 1u;
    }
    return Walk(n, r);
}

fn walk_index(w: Walk, c: u32) -> u32 {
    return (w.n * p.c + c) * p.hw + w.r;
}

// ---- bn_forward: 1 x, 2 sf (DIV; else any read-only buffer), 3 saved (written),
// 4 running_mean, 5 running_var, 6 gamma, 7 beta, 8 y, 9 partials (written: min, max of
// channel c's outputs at 2c, 2c + 1: an observer's first stage) ----
// TRAINING: bn_stats (batch statistics, running update) then bn_apply; else bn_eval_stats
// then bn_apply. Same bits as those kernels (and channel_div before them when DIV).
@group(0) @binding(1) var<storage, read> f_x: array<f32>;
@group(0) @binding(2) var<storage, read> f_sf: array<f32>;
@group(0) @binding(3) var<storage, read_write> f_saved: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_rm: array<f32>;
@group(0) @binding(5) var<storage, read_write> f_rv: array<f32>;
@group(0) @binding(6) var<storage, read> f_gamma: array<f32>;
@group(0) @binding(7) var<storage, read> f_beta: array<f32>;
@group(0) @binding(8) var<storage, read_write> f_y: array<f32>;
@group(0) @binding(9) var<storage, read_write> f_part: array<f32>;

fn f_in(i: u32, s: f32) -> f32 {
    if (DIV) { return f_x[i] / s; }
    return f_x[i];
}

@compute @workgroup_size(256)
fn bn_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    var s = 1.0;
    if (DIV) { s = f_sf[c]; }
    let w0 = walk_start(lid);
    var mean: f32;
    var invstd: f32;
    if (TRAINING) {
        var acc = 0.0;
        var wk = w0;
        for (var k = lid; k < p.m; k += WG) {
            acc += f_in(walk_index(wk, c), s);
            wk = walk_next(wk);
        }
        mean = wg_sum(acc, lid) / f32(p.m);
        var q = 0.0;
        wk = w0;
        for (var k = lid; k < p.m; k += WG) {
            let d = f_in(walk_index(wk, c), s) - mean;
            q += d * d;
            wk = walk_next(wk);
        }
        let var_b = wg_sum(q, lid) / f32(p.m);
        invstd = 1.0 / sqrt(var_b + p.eps);
        if (lid == 0u) {
            let unbiased = var_b * f32(p.m) / f32(p.m - 1u);
            f_rm[c] = (1.0 - p.momentum) * f_rm[c] + p.momentum * mean;
            f_rv[c] = (1.0 - p.momentum) * f_rv[c] + p.momentum * unbiased;
        }
    } else {
        mean = f_rm[c];
        invstd = 1.0 / sqrt(f_rv[c] + p.eps);
    }
    if (lid == 0u) {
        f_saved[c] = mean;
        f_saved[p.c + c] = invstd;
    }
    let g = f_gamma[c];
    let b = f_beta[c];
    var lo = bitcast<f32>(0x7f800000u);
    var hi = -lo;
    var wk = w0;
    for (var k = lid; k < p.m; k += WG) {
        let i = walk_index(wk, c);
        let xhat = (f_in(i, s) - mean) * invstd;
        var v = xhat * g + b;
        if (RELU) { v = max(v, 0.0); }
        f_y[i] = v;
        lo = min(lo, v);
        hi = max(hi, v);
        wk = walk_next(wk);
    }
    let mm = wg_minmax(lo, hi, lid);
    if (lid == 0u) {
        f_part[2u * c] = mm.x;
        f_part[2u * c + 1u] = mm.y;
    }
}

// ---- bn_backward: 1 x, 2 sf (DIV/FOLD; else any read-only buffer), 3 saved, 4 dy, 5 y
// (RELU mask; else any), 6 gamma, 7 dgamma, 8 dbeta (written), 9 dx, 10 tsum, 11 metrics
// (GUARD; else any read-write buffer, untouched) ----
// bn_backward_reduce then bn_backward_dx in one workgroup per channel (same bits). FOLD
// (conv-BN folding, with DIV): dx is written divided by sf[c] (bn_fold's channel_div of
// the backward) and tsum[c] = sum(dx * x) in fold_gamma_backward's order, which
// bn_fold's fold_backward finishes; without FOLD tsum is not touched.
@group(0) @binding(1) var<storage, read> b_x: array<f32>;
@group(0) @binding(2) var<storage, read> b_sf: array<f32>;
@group(0) @binding(3) var<storage, read> b_saved: array<f32>;
@group(0) @binding(4) var<storage, read> b_dy: array<f32>;
@group(0) @binding(5) var<storage, read> b_y: array<f32>;
@group(0) @binding(6) var<storage, read> b_gamma: array<f32>;
@group(0) @binding(7) var<storage, read_write> b_dgamma: array<f32>;
@group(0) @binding(8) var<storage, read_write> b_dbeta: array<f32>;
@group(0) @binding(9) var<storage, read_write> b_dx: array<f32>;
@group(0) @binding(10) var<storage, read_write> b_tsum: array<f32>;
@group(0) @binding(11) var<storage, read_write> b_metrics: array<atomic<u32>>;

fn b_in(i: u32, s: f32) -> f32 {
    if (DIV) { return b_x[i] / s; }
    return b_x[i];
}

fn b_g(i: u32) -> f32 {
    return select(b_dy[i], 0.0, RELU && b_y[i] <= 0.0);
}

@compute @workgroup_size(256)
fn bn_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let c = wid.x + wid.y * nwg.x;
    if (c >= p.c) { return; }
    var s = 1.0;
    if (DIV) { s = b_sf[c]; }
    let mean = b_saved[c];
    let invstd = b_saved[p.c + c];
    let w0 = walk_start(lid);
    var sg = 0.0;
    var sgx = 0.0;
    var wk = w0;
    for (var k = lid; k < p.m; k += WG) {
        let i = walk_index(wk, c);
        let g = b_g(i);
        sg += g;
        sgx += g * (b_in(i, s) - mean) * invstd;
        wk = walk_next(wk);
    }
    let tg = wg_sum(sg, lid);
    let tgx = wg_sum(sgx, lid);
    if (lid == 0u) {
        b_dgamma[c] = tgx;
        b_dbeta[c] = tg;
        if (GUARD && (nonfinite(tg) || (!FOLD && nonfinite(tgx)))) {
            atomicOr(&b_metrics[METRICS_FLAGS], METRICS_NONFINITE);
        }
    }
    let kk = b_gamma[c] * invstd;
    let mf = f32(p.m);
    var acc = 0.0;
    wk = w0;
    for (var k = lid; k < p.m; k += WG) {
        let i = walk_index(wk, c);
        let g = b_g(i);
        let xhat = (b_in(i, s) - mean) * invstd;
        let full = kk / mf * (mf * g - tg - xhat * tgx);
        let d = select(kk * g, full, TRAINING);
        if (FOLD) {
            b_dx[i] = d / s;
            acc += d * b_x[i];
        } else {
            b_dx[i] = d;
        }
        wk = walk_next(wk);
    }
    if (FOLD) {
        let t = wg_sum(acc, lid);
        if (lid == 0u) { b_tsum[c] = t; }
    }
}
