// Histogram observer (PyTorch's HistogramObserver) on the GPU: running range, re-binning of
// the existing histogram when the range grows (_combine_histograms / _upscale_histogram),
// batch accumulation, and the L2-minimizing range search (_non_linear_param_search) run by
// one workgroup, writing the chosen range into the quantizer state's min/max (channel 0).
// Instead of the L2 search, `hist_percentile` (central percentile of the counts) or
// `hist_mse` (least expected quantization MSE on a grid of clipping thresholds) may choose
// the range from the same bins; see reference/histogram.rs for both definitions.
//
// Histogram state `hs` (f32): [cur_min, cur_max, new_min, new_max, live, reset,
// initialized, edge_lo, edge_hi, _ x7, hist[bins]]. Scratch: `tmp[bins]` (re-binned old
// histogram, then the cumulative sum), `counts[bins]` (batch counts, atomic).
// Every dispatch binds [partials, x, hs, tmp, counts, qs]; `touch()` keeps all of them in
// each entry point's auto layout.

struct Params {
    n: u32,
    bins: u32,
    up: u32,          // upsample rate of the re-binning
    chunks: u32,      // (min, max) pairs in `partials`
    dst_nbins: u32,   // qmax - qmin + 1
    grid: u32,        // MSE search: candidates k = 1..=grid
    symmetric: u32,   // the spec (MSE search: qparams of each candidate)
    signed_codes: u32,
    inv_bins: f32,    // 1 / bins
    inv_fine: f32,    // 1 / (bins * up)
    inv_up: f32,      // 1 / up
    inv_dst: f32,     // 1 / dst_nbins
    step: f32,        // greedy search step (PyTorch: 1e-5)
    fraction: f32,    // percentile / 100
    qmin: f32,
    qmax: f32,
    inv_den: f32,     // QuantSpec::inv_scale_denominator
    _p0: f32,
    _p1: f32,
    _p2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> hs: array<f32>;
@group(0) @binding(4) var<storage, read_write> tmp: array<f32>;
@group(0) @binding(5) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> qs: array<f32>;

const WG: u32 = 256u;
const H: u32 = 16u; // header slots before hist
var<workgroup> rf0: array<f32, 256>;
var<workgroup> rf1: array<f32, 256>;
var<workgroup> ru0: array<u32, 256>;
var<workgroup> ru1: array<u32, 256>;
var<workgroup> wnorm: f32;
var<workgroup> wl: u32;
var<workgroup> wr: u32;

fn touch() {
    if (p.bins == 0u) {
        tmp[0] = partials[0] + x[0] + hs[0] + qs[0] + f32(atomicLoad(&counts[0]));
    }
}

// #include common/index.wgsl

// One workgroup: batch min/max from the partials, the new range, clears the batch counts.
@compute @workgroup_size(256)
fn hist_range(@builtin(local_invocation_index) lid: u32) {
    touch();
    var lo = bitcast<f32>(0x7f800000u);
    var hi = -lo;
    for (var k = lid; k < p.chunks; k = k + WG) {
        lo = min(lo, partials[2u * k]);
        hi = max(hi, partials[2u * k + 1u]);
    }
    rf0[lid] = lo;
    rf1[lid] = hi;
    for (var j = lid; j < p.bins; j = j + WG) { atomicStore(&counts[j], 0u); }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            rf0[lid] = min(rf0[lid], rf0[lid + s]);
            rf1[lid] = max(rf1[lid], rf1[lid + s]);
        }
        workgroupBarrier();
    }
    if (lid != 0u) { return; }
    let live = qs[1] != 0.0;
    hs[4] = select(0.0, 1.0, live);
    if (!live) { return; }
    let bmin = rf0[0];
    let bmax = rf1[0];
    if (hs[6] == 0.0 || hs[0] == hs[1]) {
        hs[2] = bmin;
        hs[3] = bmax;
        hs[5] = 1.0;
    } else {
        hs[2] = min(hs[0], bmin);
        hs[3] = max(hs[1], bmax);
        hs[5] = 0.0;
    }
    // torch.histc widens a degenerate range by 1 on each side.
    let eq = hs[2] == hs[3];
    hs[7] = select(hs[2], hs[2] - 1.0, eq);
    hs[8] = select(hs[3], hs[3] + 1.0, eq);
    hs[6] = 1.0;
}

fn fine_bucket(k: u32, cur_min: f32, fine_w: f32, new_min: f32, new_w: f32) -> i32 {
    let mid = cur_min + (f32(k) + 0.5) * fine_w;
    let b = floor((mid - new_min) / new_w);
    return i32(clamp(b, 0.0, f32(p.bins - 1u)));
}

// One invocation per new bin: tmp[j] = old histogram re-binned into the new range.
@compute @workgroup_size(256)
fn hist_rebin(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    touch();
    let j = flat_index(gid, nwg, WG);
    if (j >= p.bins || hs[4] == 0.0) { return; }
    if (hs[5] != 0.0) { tmp[j] = 0.0; return; }
    let cur_min = hs[0];
    let cur_max = hs[1];
    let new_min = hs[2];
    let new_max = hs[3];
    if (cur_min == new_min && cur_max == new_max) { tmp[j] = hs[H + j]; return; }
    let nfine = p.bins * p.up;
    let fine_w = (cur_max - cur_min) * p.inv_fine;
    let new_w = (new_max - new_min) * p.inv_bins;
    // Fine bins whose midpoints can land in bin j (monotone), with a margin.
    var k_lo = 0u;
    var k_hi = nfine;
    if (j > 0u) {
        let e = (new_min + f32(j) * new_w - cur_min) / fine_w - 4.0;
        k_lo = u32(clamp(e, 0.0, f32(nfine)));
    }
    if (j + 1u < p.bins) {
        let e = (new_min + f32(j + 1u) * new_w - cur_min) / fine_w + 4.0;
        k_hi = u32(clamp(e, 0.0, f32(nfine)));
    }
    var acc = 0.0;
    for (var k = k_lo; k < k_hi; k = k + 1u) {
        if (fine_bucket(k, cur_min, fine_w, new_min, new_w) == i32(j)) {
            acc = acc + hs[H + k / p.up] * p.inv_up;
        }
    }
    tmp[j] = acc;
}

// One invocation per element of the batch: atomic bin counts over [edge_lo, edge_hi].
@compute @workgroup_size(256)
fn hist_accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    touch();
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n || hs[4] == 0.0) { return; }
    let lo = hs[7];
    let hi = hs[8];
    let v = x[i];
    if (!(v >= lo && v <= hi)) { return; }
    let b = min(u32((v - lo) / (hi - lo) * f32(p.bins)), p.bins - 1u);
    atomicAdd(&counts[b], 1u);
}

// One invocation per bin: hist = batch counts + re-binned old histogram; range = new range.
@compute @workgroup_size(256)
fn hist_commit(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    touch();
    let j = flat_index(gid, nwg, WG);
    if (j >= p.bins || hs[4] == 0.0) { return; }
    hs[H + j] = f32(atomicLoad(&counts[j])) + tmp[j];
    if (j == 0u) {
        hs[0] = hs[2];
        hs[1] = hs[3];
    }
}

fn get_norm(delta_begin: f32, delta_end: f32, density: f32) -> f32 {
    let n = (delta_end * delta_end * delta_end - delta_begin * delta_begin * delta_begin) / 3.0;
    return density * n;
}

// PyTorch's _compute_quantization_error for bin i; 0 when dst_w == 0 (caller checks).
fn bin_error(i: u32, ns: u32, ne: u32, bw: f32, dst_w: f32) -> f32 {
    let dmax = f32(p.dst_nbins - 1u);
    let src_begin = (f32(i) - f32(ns)) * bw;
    let src_end = src_begin + bw;
    let db = clamp(floor(src_begin / dst_w), 0.0, dmax);
    let db_center = (db + 0.5) * dst_w;
    let de = clamp(floor(src_end / dst_w), 0.0, dmax);
    let density = hs[H + i] / bw;
    let half_w = dst_w / 2.0;
    var norm = get_norm(src_begin - db_center, half_w, density);
    norm = norm + (de - db - 1.0) * get_norm(-half_w, half_w, density);
    let de_center = de * dst_w + half_w;
    norm = norm + get_norm(-half_w, src_end - de_center, density);
    return norm;
}

// One workgroup: greedy L2 range search; writes qs min[0], max[0].
@compute @workgroup_size(256)
fn hist_search(@builtin(local_invocation_index) lid: u32) {
    touch();
    let live = hs[4] != 0.0;
    let mn = hs[0];
    let mx = hs[1];
    if (lid == 0u && live) {
        var c = 0.0;
        for (var i = 0u; i < p.bins; i = i + 1u) {
            c = c + hs[H + i];
            tmp[i] = c;
        }
        if (mn == mx) {
            qs[4u + 3u] = mn;
            qs[4u + 4u] = mx;
        }
    }
    if (lid == 0u) { wl = select(0u, 1u, live && mn != mx); }
    storageBarrier();
    if (workgroupUniformLoad(&wl) == 0u) { return; }
    let total = tmp[p.bins - 1u];
    let bw = (mx - mn) * p.inv_bins;
    var alpha = 0.0;
    var beta = 1.0;
    var start = 0u;
    var end = p.bins - 1u;
    var norm_min = bitcast<f32>(0x7f800000u);
    loop {
        if (!(alpha < beta)) { break; }
        let na = alpha + p.step;
        let nb = beta - p.step;
        let ta = na * total;
        let tb = nb * total;
        var cl = 0u;
        var cr = 0u;
        for (var i = start + lid; i <= end; i = i + WG) {
            let v = tmp[i];
            if (i < end && v < ta) { cl = cl + 1u; }
            if (i > start && v > tb) { cr = cr + 1u; }
        }
        ru0[lid] = cl;
        ru1[lid] = cr;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s = s / 2u) {
            if (lid < s) {
                ru0[lid] = ru0[lid] + ru0[lid + s];
                ru1[lid] = ru1[lid] + ru1[lid + s];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            wl = start + ru0[0];
            wr = end - ru1[0];
        }
        let l = workgroupUniformLoad(&wl);
        let r = workgroupUniformLoad(&wr);
        var ns = start;
        var ne = end;
        if (i32(l) - i32(start) > i32(end) - i32(r)) {
            ns = l;
            alpha = na;
        } else {
            ne = r;
            beta = nb;
        }
        if (ns == start && ne == end) { continue; }
        let dst_w = bw * f32(ne - ns + 1u) * p.inv_dst;
        var part = 0.0;
        if (dst_w != 0.0) {
            for (var i = lid; i < p.bins; i = i + WG) {
                part = part + bin_error(i, ns, ne, bw, dst_w);
            }
        }
        rf0[lid] = part;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s = s / 2u) {
            if (lid < s) { rf0[lid] = rf0[lid] + rf0[lid + s]; }
            workgroupBarrier();
        }
        if (lid == 0u) { wnorm = rf0[0]; }
        let norm = workgroupUniformLoad(&wnorm);
        if (norm > norm_min) { break; }
        norm_min = norm;
        start = ns;
        end = ne;
    }
    if (lid == 0u) {
        qs[4u + 3u] = mn + bw * f32(start);
        qs[4u + 4u] = mn + bw * f32(end + 1u);
    }
}

// One invocation: the central `fraction` of the counts (reference::histogram::percentile_range).
@compute @workgroup_size(1)
fn hist_percentile() {
    touch();
    if (hs[4] == 0.0) { return; }
    let mn = hs[0];
    let mx = hs[1];
    if (mn == mx) {
        qs[4u + 3u] = mn;
        qs[4u + 4u] = mx;
        return;
    }
    var total = 0.0;
    for (var i = 0u; i < p.bins; i = i + 1u) { total = total + hs[H + i]; }
    let thr = p.fraction * total;
    var c = 0.0;
    var end = p.bins - 1u;
    for (var i = 0u; i < p.bins; i = i + 1u) {
        c = c + hs[H + i];
        if (c >= thr) { end = i; break; }
    }
    c = 0.0;
    var start = 0u;
    for (var j = 0u; j < p.bins; j = j + 1u) {
        let i = p.bins - 1u - j;
        c = c + hs[H + i];
        if (c >= thr) { start = i; break; }
    }
    let bw = (mx - mn) * p.inv_bins;
    qs[4u + 3u] = mn + bw * f32(start);
    qs[4u + 4u] = mn + bw * f32(end + 1u);
}

// Expected squared error of one bin [a, a + bw] with h values spread uniformly, quantized
// with scale s and zero point z (reference::histogram::mse_bin_error).
fn mse_bin_error(a: f32, bw: f32, h: f32, s: f32, z: f32) -> f32 {
    let b = a + bw;
    let lo = (p.qmin - z) * s;
    let hi = (p.qmax - z) * s;
    var e = 0.0;
    if (a < lo) {
        let u = min(b, lo) - lo;
        let v = a - lo;
        e = e + (u * u * u - v * v * v) / 3.0;
    }
    if (b > hi) {
        let u = b - hi;
        let v = max(a, hi) - hi;
        e = e + (u * u * u - v * v * v) / 3.0;
    }
    let u = max(a, lo);
    let v = min(b, hi);
    if (u < v) {
        let tu = u / s;
        let tv = v / s;
        let nu = floor(tu + 0.5);
        let nv = floor(tv + 0.5);
        let fu = tu - nu;
        let fv = tv - nv;
        e = e + s * s * s * ((nv - nu) / 12.0 + (fv * fv * fv - fu * fu * fu) / 3.0);
    }
    return e * (h / bw);
}

// One workgroup: for k = grid..1 the range [min(mn, 0), max(mx, 0)] * k / grid, its qparams
// (as the `qparams` kernel), the error summed over the bins in wg_sum order; the first
// least error wins (reference::histogram::mse_range).
@compute @workgroup_size(256)
fn hist_mse(@builtin(local_invocation_index) lid: u32) {
    touch();
    let live = hs[4] != 0.0;
    let mn = hs[0];
    let mx = hs[1];
    if (lid == 0u) {
        if (live && mn == mx) {
            qs[4u + 3u] = mn;
            qs[4u + 4u] = mx;
        }
        wl = select(0u, 1u, live && mn != mx);
    }
    if (workgroupUniformLoad(&wl) == 0u) { return; }
    let bw = (mx - mn) * p.inv_bins;
    let cmn = min(mn, 0.0);
    let cmx = max(mx, 0.0);
    var best = bitcast<f32>(0x7f800000u);
    var best_k = p.grid;
    for (var k = p.grid; k >= 1u; k = k - 1u) {
        let t = f32(k) / f32(p.grid);
        let lo = cmn * t;
        let hi = cmx * t;
        var s: f32;
        var z: f32;
        if (p.symmetric != 0u) {
            s = max(hi, -lo) * p.inv_den;
            if (!(s > 1.17549435e-38)) { s = 1.0; }
            z = select(p.qmin, 0.0, p.signed_codes != 0u);
        } else {
            s = (hi - lo) * p.inv_den;
            if (!(s > 1.17549435e-38)) { s = 1.0; }
            z = clamp(p.qmin - round(lo / s), p.qmin, p.qmax);
        }
        var part = 0.0;
        for (var i = lid; i < p.bins; i = i + WG) {
            let h = hs[H + i];
            if (h != 0.0) { part = part + mse_bin_error(mn + bw * f32(i), bw, h, s, z); }
        }
        rf0[lid] = part;
        workgroupBarrier();
        for (var st = WG / 2u; st > 0u; st = st / 2u) {
            if (lid < st) { rf0[lid] = rf0[lid] + rf0[lid + st]; }
            workgroupBarrier();
        }
        if (lid == 0u && rf0[0] < best) {
            best = rf0[0];
            best_k = k;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let t = f32(best_k) / f32(p.grid);
        qs[4u + 3u] = cmn * t;
        qs[4u + 4u] = cmx * t;
    }
}
