// LayerNorm over the last dimension (PyTorch nn.LayerNorm(D), elementwise affine): the
// transformer's normalization, kept in fp32 by the quantization recipe.
//
// x is R rows of D contiguous values (R = batch * tokens), gamma/beta are [D], stats is
// [R, 2] = (mean, rstd) per row, saved by the forward for the backward.
//   forward: mean, var = biased variance (two passes over the row: sum, then squared
//            deviations, so a large mean does not cancel the variance as E[x^2] - mean^2
//            would), rstd = 1 / sqrt(var + eps), y = (x - mean) * rstd * gamma + beta.
//   backward_dx: g = gamma * dy, xhat = (x - mean) * rstd,
//            dx = rstd * (g - mean_row(g) - xhat * mean_row(g * xhat)).
//   backward_partial + backward_reduce: dgamma = sum_r dy * xhat, dbeta = sum_r dy.
//
// Why this shape of kernels:
// * Row kernels: one 64-wide workgroup per row (D is 64..768 in the models wqat trains, a
//   head-sized row is one value per invocation), a strided read per invocation and a tree in
//   workgroup memory: a fixed summation order, so the same bits every run.
// * CPU adapters (lavapipe) pay dearly for workgroup barriers (a 64-wide tree per row costs
//   about 10x an elementwise pass there), so the row kernels also come as `*_rows` entry
//   points: one invocation per row, serial sums in four interleaved partials, no barriers.
//   Also a fixed order; the host picks by adapter type.
// * The column sums (dgamma, dbeta) over R = batch * tokens rows (1600 and more) would leave
//   a GPU idle as one workgroup per column, and atomics would break determinism. So rows
//   are cut into chunks of `chunk` rows: pass 1 writes one partial per (chunk, column)
//   (invocation = column, so reads of a row are coalesced), pass 2 sums the partials of a
//   column in chunk order. Both orders are fixed: bit-identical results every run.

struct Params {
    rows: u32,    // R
    d: u32,       // D
    chunk: u32,   // rows per partial (backward_partial)
    chunks: u32,  // ceil(R / chunk)
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// #include common/index.wgsl

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> red: array<vec2<f32>, 64>;

// Sums `v` over the workgroup (two values at once); every invocation gets the totals.
fn wg_sum2(v: vec2<f32>, lid: u32) -> vec2<f32> {
    workgroupBarrier();
    red[lid] = v;
    workgroupBarrier();
    for (var step = WG / 2u; step > 0u; step = step / 2u) {
        if (lid < step) { red[lid] = red[lid] + red[lid + step]; }
        workgroupBarrier();
    }
    return red[0];
}

// Row of workgroup `wid` in a grid_1d(R, 1) dispatch.
fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ---- layernorm_forward: 1 x, 2 gamma, 3 beta, 4 y (written), 5 stats (written) ----
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats_out: array<f32>;

@compute @workgroup_size(64)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    let inv_d = 1.0 / f32(p.d);
    var s = 0.0;
    for (var k = lid; k < p.d; k += WG) { s += x[base + k]; }
    let mean = wg_sum2(vec2<f32>(s, 0.0), lid).x * inv_d;
    var q = 0.0;
    for (var k = lid; k < p.d; k += WG) {
        let dv = x[base + k] - mean;
        q += dv * dv;
    }
    let var_b = wg_sum2(vec2<f32>(q, 0.0), lid).x * inv_d;
    let rstd = 1.0 / sqrt(var_b + p.eps);
    for (var k = lid; k < p.d; k += WG) {
        y_out[base + k] = (x[base + k] - mean) * rstd * gamma[k] + beta[k];
    }
    if (lid == 0u) {
        stats_out[2u * row] = mean;
        stats_out[2u * row + 1u] = rstd;
    }
}

// ---- layernorm_backward_dx: 1 x, 2 gamma, 3 stats, 4 dy, 5 dx (written) ----
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx_out: array<f32>;

@compute @workgroup_size(64)
fn layernorm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var acc = vec2<f32>(0.0, 0.0);
    for (var k = lid; k < p.d; k += WG) {
        let g = gamma[k] * dy[base + k];
        let xhat = (x[base + k] - mean) * rstd;
        acc += vec2<f32>(g, g * xhat);
    }
    let m = wg_sum2(acc, lid) * (1.0 / f32(p.d));
    for (var k = lid; k < p.d; k += WG) {
        let g = gamma[k] * dy[base + k];
        let xhat = (x[base + k] - mean) * rstd;
        dx_out[base + k] = rstd * (g - m.x - xhat * m.y);
    }
}

// ---- The same two kernels with one invocation per row (same bindings) ----

// The `*_rows` kernels sum a row in a fixed order: four interleaved partials (k mod 4) over
// the first 4 * floor(D / 4) values, a fifth over the rest, combined by `hsum`.
fn hsum(s: vec4<f32>, t: f32) -> f32 {
    return ((s.x + s.y) + (s.z + s.w)) + t;
}

// Bindings as layernorm_forward.
@compute @workgroup_size(64)
fn layernorm_forward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_index(gid, nwg, WG);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    let inv_d = 1.0 / f32(p.d);
    var s4 = vec4<f32>(0.0);
    var s1 = 0.0;
    var k = 0u;
    for (; k + 4u <= p.d; k += 4u) {
        s4 += vec4<f32>(x[base + k], x[base + k + 1u], x[base + k + 2u], x[base + k + 3u]);
    }
    for (; k < p.d; k++) { s1 += x[base + k]; }
    let mean = hsum(s4, s1) * inv_d;
    s4 = vec4<f32>(0.0);
    s1 = 0.0;
    k = 0u;
    for (; k + 4u <= p.d; k += 4u) {
        let dv = vec4<f32>(x[base + k], x[base + k + 1u], x[base + k + 2u], x[base + k + 3u]) - mean;
        s4 += dv * dv;
    }
    for (; k < p.d; k++) {
        let dv = x[base + k] - mean;
        s1 += dv * dv;
    }
    let var_b = hsum(s4, s1) * inv_d;
    let rstd = 1.0 / sqrt(var_b + p.eps);
    for (k = 0u; k < p.d; k++) {
        y_out[base + k] = (x[base + k] - mean) * rstd * gamma[k] + beta[k];
    }
    stats_out[2u * row] = mean;
    stats_out[2u * row + 1u] = rstd;
}

// Bindings as layernorm_backward_dx.
@compute @workgroup_size(64)
fn layernorm_backward_dx_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_index(gid, nwg, WG);
    if (row >= p.rows) { return; }
    let base = row * p.d;
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var sg4 = vec4<f32>(0.0);
    var sx4 = vec4<f32>(0.0);
    var sg1 = 0.0;
    var sx1 = 0.0;
    var k = 0u;
    for (; k + 4u <= p.d; k += 4u) {
        let i = base + k;
        let g = vec4<f32>(gamma[k], gamma[k + 1u], gamma[k + 2u], gamma[k + 3u])
            * vec4<f32>(dy[i], dy[i + 1u], dy[i + 2u], dy[i + 3u]);
        let xhat = (vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]) - mean) * rstd;
        sg4 += g;
        sx4 += g * xhat;
    }
    for (; k < p.d; k++) {
        let g = gamma[k] * dy[base + k];
        sg1 += g;
        sx1 += g * (x[base + k] - mean) * rstd;
    }
    let inv_d = 1.0 / f32(p.d);
    let m = vec2<f32>(hsum(sg4, sg1), hsum(sx4, sx1)) * inv_d;
    for (k = 0u; k < p.d; k++) {
        let g = gamma[k] * dy[base + k];
        let xhat = (x[base + k] - mean) * rstd;
        dx_out[base + k] = rstd * (g - m.x - xhat * m.y);
    }
}

// ---- layernorm_backward_partial: 1 x, 2 stats, 3 dy, 4 partials (written) ----
// partials = [dgamma partials [chunks, D], dbeta partials [chunks, D]]; workgroup (x, y) =
// (64 columns, one chunk of rows).
@group(0) @binding(2) var<storage, read> stats_p: array<f32>;
@group(0) @binding(3) var<storage, read> dy_p: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials_out: array<f32>;

@compute @workgroup_size(64)
fn layernorm_backward_partial(@builtin(global_invocation_id) gid: vec3<u32>,
                              @builtin(workgroup_id) wid: vec3<u32>) {
    let c = gid.x;
    let k = wid.y;
    if (c >= p.d || k >= p.chunks) { return; }
    let r0 = k * p.chunk;
    let r1 = min(r0 + p.chunk, p.rows);
    var sg = 0.0;
    var sb = 0.0;
    for (var r = r0; r < r1; r++) {
        let i = r * p.d + c;
        let g = dy_p[i];
        sg += g * (x[i] - stats_p[2u * r]) * stats_p[2u * r + 1u];
        sb += g;
    }
    partials_out[k * p.d + c] = sg;
    partials_out[(p.chunks + k) * p.d + c] = sb;
}

// ---- layernorm_backward_reduce: 1 partials, 2 dgamma (written), 3 dbeta (written) ----
// One invocation per column, partials summed in chunk order.
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> dgamma_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbeta_out: array<f32>;

@compute @workgroup_size(64)
fn layernorm_backward_reduce(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.d) { return; }
    var sg = 0.0;
    var sb = 0.0;
    for (var k = 0u; k < p.chunks; k++) {
        sg += partials[k * p.d + c];
        sb += partials[(p.chunks + k) * p.d + c];
    }
    dgamma_out[c] = sg;
    dbeta_out[c] = sb;
}
