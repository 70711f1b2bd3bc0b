// Pooling over NCHW planes (plane = n * C + c), forward and backward.
//
// max pool: window [oy*sh - ph, +kh) x [ox*sw - pw, +kw), padding never wins; argmax
//   stored as the index inside the plane (iy * W + ix); ties keep the first max in
//   row-major window order. Backward gathers per input element over the windows that
//   contain it (race-free, no atomics).
// avg pool: count_include_pad (PyTorch default, ceil_mode off): divisor kh * kw.
// global avg pool: [N, C, H, W] -> [N, C], one workgroup per plane.

struct Params {
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    total: u32,   // invocations needed (outputs for forward, inputs for backward)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

const WG: u32 = 256u;
// maxpool_forward: the windows tile the input exactly (see maxpool_backward_tiled).
override TILED: bool = false;
const GWG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;

// #include common/index.wgsl

// First and last output row/column whose window contains input coordinate `i`:
// o * s - pad <= i <= o * s - pad + k - 1. Returns (lo, hi); empty when lo > hi.
fn out_range(i: u32, k: u32, s: u32, pad: u32, o: u32) -> vec2<i32> {
    let lo_num = i32(i + pad) - i32(k) + 1;
    var lo = 0;
    if (lo_num > 0) { lo = (lo_num + i32(s) - 1) / i32(s); }
    let hi = min(i32((i + pad) / s), i32(o) - 1);
    return vec2<i32>(lo, hi);
}

// Bindings: 1 x, 2 y, 3 argmax (u32, plane-local index).
@compute @workgroup_size(256)
fn maxpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    let plane = i / (p.oh * p.ow);
    let r = i - plane * (p.oh * p.ow);
    let oy = r / p.ow;
    let ox = r - oy * p.ow;
    let base = plane * p.h * p.w;
    if (TILED) {
        // Windows tile the input (stride = kernel, no padding): always inside, no checks.
        let row0 = oy * p.kh * p.w + ox * p.kw;
        var tb = src[base + row0];
        var ti = row0;
        for (var ky = 0u; ky < p.kh; ky++) {
            let row = row0 + ky * p.w;
            for (var kx = 0u; kx < p.kw; kx++) {
                let idx = row + kx;
                let v = src[base + idx];
                if (v > tb) {
                    tb = v;
                    ti = idx;
                }
            }
        }
        dst[i] = tb;
        argmax[i] = ti;
        return;
    }
    let hs = i32(oy * p.sh) - i32(p.ph);
    let ws = i32(ox * p.sw) - i32(p.pw);
    var best = 0.0;
    var bi = 0u;
    var found = false;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = hs + i32(ky);
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = ws + i32(kx);
            if (ix < 0 || ix >= i32(p.w)) { continue; }
            let idx = u32(iy) * p.w + u32(ix);
            let v = src[base + idx];
            if (!found || v > best) {
                best = v;
                bi = idx;
                found = true;
            }
        }
    }
    dst[i] = best;
    argmax[i] = bi;
}

// Bindings: 1 dy, 2 dx, 3 argmax from the forward. One invocation per input element.
@compute @workgroup_size(256)
fn maxpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    let plane = i / (p.h * p.w);
    let idx = i % (p.h * p.w);
    let iy = idx / p.w;
    let ix = idx % p.w;
    let ry = out_range(iy, p.kh, p.sh, p.ph, p.oh);
    let rx = out_range(ix, p.kw, p.sw, p.pw, p.ow);
    let obase = plane * p.oh * p.ow;
    var g = 0.0;
    for (var oy = ry.x; oy <= ry.y; oy++) {
        for (var ox = rx.x; ox <= rx.y; ox++) {
            let o = obase + u32(oy) * p.ow + u32(ox);
            if (argmax[o] == idx) { g += src[o]; }
        }
    }
    dst[i] = g;
}

// Bindings: 1 dy, 2 dx, 3 argmax. Non-overlapping windows that tile the input exactly
// (stride = kernel, no padding, H = OH * KH, W = OW * KW): one invocation per OUTPUT writes
// every input of its window (dy at the argmax, 0 elsewhere), the same values as the gather
// of maxpool_backward without its search over windows.
@compute @workgroup_size(256)
fn maxpool_backward_tiled(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = flat_index(gid, nwg, WG);
    if (o >= p.total) { return; }
    let plane = o / (p.oh * p.ow);
    let r = o - plane * (p.oh * p.ow);
    let oy = r / p.ow;
    let ox = r - oy * p.ow;
    let am = argmax[o];
    let g = 0.0 + src[o];
    let base = plane * p.h * p.w;
    for (var ky = 0u; ky < p.kh; ky++) {
        let row = (oy * p.kh + ky) * p.w + ox * p.kw;
        for (var kx = 0u; kx < p.kw; kx++) {
            dst[base + row + kx] = select(0.0, g, row + kx == am);
        }
    }
}

// The pooled value of output i: the float mean, or with a quantizer `q` (on, inv_s, s) the
// exact mean of code offsets rounded half to even, times s (see the `*_q` entry points).
fn avg_window(i: u32, q: vec3<f32>) -> f32 {
    let plane = i / (p.oh * p.ow);
    let r = i % (p.oh * p.ow);
    let hs = i32((r / p.ow) * p.sh) - i32(p.ph);
    let ws = i32((r % p.ow) * p.sw) - i32(p.pw);
    let base = plane * p.h * p.w;
    var s = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = hs + i32(ky);
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = ws + i32(kx);
            if (ix < 0 || ix >= i32(p.w)) { continue; }
            s += pool_term(src[base + u32(iy) * p.w + u32(ix)], q);
        }
    }
    return pool_mean(s, p.kh * p.kw, q);
}

// One summand: the code offset round(v / s) when quantizing, else the value.
fn pool_term(v: f32, q: vec3<f32>) -> f32 {
    if (q.x != 0.0) { return round(v * q.y); }
    return v;
}

// The mean of a window sum of n terms (fake-quantized when quantizing).
fn pool_mean(sum: f32, n: u32, q: vec3<f32>) -> f32 {
    if (q.x != 0.0) { return round(sum / f32(n)) * q.z; }
    return sum / f32(n);
}

// Bindings: 1 x, 2 y.
@compute @workgroup_size(256)
fn avgpool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    dst[i] = avg_window(i, vec3<f32>(0.0));
}

// Bindings: 1 dy, 2 dx. One invocation per input element.
@compute @workgroup_size(256)
fn avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    let plane = i / (p.h * p.w);
    let idx = i % (p.h * p.w);
    let ry = out_range(idx / p.w, p.kh, p.sh, p.ph, p.oh);
    let rx = out_range(idx % p.w, p.kw, p.sw, p.pw, p.ow);
    let obase = plane * p.oh * p.ow;
    var g = 0.0;
    for (var oy = ry.x; oy <= ry.y; oy++) {
        for (var ox = rx.x; ox <= rx.y; ox++) {
            g += src[obase + u32(oy) * p.ow + u32(ox)];
        }
    }
    dst[i] = g / f32(p.kh * p.kw);
}

var<workgroup> red: array<f32, 64>;

// The pooled value of plane (wid.x + wid.y * nwg.x), as `avg_window`; every invocation of the
// workgroup calls it (barriers), lid 0 writes.
fn global_avg(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, q: vec3<f32>) {
    let plane = wid.x + wid.y * nwg.x;
    let hw = p.h * p.w;
    var s = 0.0;
    if (plane < p.planes) {
        for (var k = lid; k < hw; k += GWG) { s += pool_term(src[plane * hw + k], q); }
    }
    red[lid] = s;
    workgroupBarrier();
    for (var step = GWG / 2u; step > 0u; step = step / 2u) {
        if (lid < step) { red[lid] = red[lid] + red[lid + step]; }
        workgroupBarrier();
    }
    if (lid == 0u && plane < p.planes) { dst[plane] = pool_mean(red[0], hw, q); }
}

// Bindings: 1 x [planes, h*w], 2 y [planes]. Workgroup (wid.x + wid.y * nwg.x) = plane.
@compute @workgroup_size(64)
fn global_avgpool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    global_avg(wid, nwg, lid, vec3<f32>(0.0));
}

// Bindings: 1 dy [planes], 2 dx [planes, h*w].
@compute @workgroup_size(256)
fn global_avgpool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    let hw = p.h * p.w;
    dst[i] = src[i / hw] / f32(hw);
}

// ---- average pools of fake-quantized values, as the integer model computes them ----
// With the input's (per-tensor) quantizer on, the input holds values (q - z) * s. The pool
// sums the code offsets round(x / s) = q - z exactly, divides by the window size (kh * kw,
// padding counts as zero-valued) and rounds half to even: the integer model's exact
// `z + round(sum / n)` (src/infer/ops.rs AvgRequant). The output (k * s) is already a
// fake-quantized value, so the consumer's fake-quant keeps it. A float mean followed by the
// consumer's fake-quant would round ties (sum = n/2 mod n) either way through float error.
// With the quantizer off, the plain float mean. Binding 3: the quantizer state
// [fq_on, obs_on, initialized, _, scale, inv_scale, zero, min, max] (one channel).
@group(0) @binding(3) var<storage, read> pool_q: array<f32>;

// (fq_on, inv_s, s) of the state.
fn pool_qparams() -> vec3<f32> { return vec3<f32>(pool_q[0], pool_q[5], pool_q[4]); }

// Bindings: 1 x, 2 y, 3 quantizer state.
@compute @workgroup_size(256)
fn avgpool_forward_q(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.total) { return; }
    dst[i] = avg_window(i, pool_qparams());
}

// Bindings: 1 x [planes, h*w], 2 y [planes], 3 quantizer state. Workgroup = plane.
@compute @workgroup_size(64)
fn global_avgpool_forward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    global_avg(wid, nwg, lid, pool_qparams());
}
