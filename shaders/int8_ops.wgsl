// Int8 inference ops around the GEMMs of int8_gemm.wgsl: input quantization (optionally
// after GELU), max pool, average pool, residual add and a transformer's patchify on uint8
// codes packed four per u32 (element e is byte e % 4 of word e / 4). Bit-exact with the CPU
// paths (src/infer/cpu/mod.rs, src/infer/cpu/kernels/scalar.rs), except GELU: common/erf.wgsl's erf is
// within a few ulp of the CPU's libm, so a GELU output within that of a rounding tie may
// quantize to the neighbouring code.
// Each invocation writes one output word = 4 consecutive output codes.
//
// Bindings: 0 params, 1 src (u32 words; f32 bits for quantize_f32), 2 out (f32 bits for
// dequantize_u8), 3 src2 (add only).

struct Params {
    total: u32,     // output elements
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
    zero_a: i32,    // input zero point (add: a)
    zero_b: i32,    // add: b
    zero_out: i32,
    m0_a: i32,      // avg pool: kh * kw (m0_b = 1) or the multiplier of s_in / (s_out kh kw); add: a
    shift_a: i32,
    m0_b: i32,      // avg pool: 1 = divide exactly by m0_a (same scale in and out); add: b
    shift_b: i32,
    m0_out: i32,
    shift_out: i32,
    act_min: i32,
    act_max: i32,
    inv_s: f32,     // quantize_f32
    qmax: f32,      // quantize_f32
    scale: f32,     // dequantize_u8
    channels: u32,  // patchify_u8 (with h, w and the patch size in kh)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<storage, read> src2: array<u32>;

const WG: u32 = 64u;
// quantize_f32: GELU (erf form) before the quantization (an MLP's fc1 output).
override GELU: bool = false;

// #include common/index.wgsl
// #include common/erf.wgsl

// ---- fixed-point arithmetic (see src/infer/requant.rs): mul_wide and the single-rounding
// mul_round shared with int8_gemm.wgsl; the TFLite MBQM of add below ----
// #include common/fixed_point.wgsl

fn srdhm(a: i32, b: i32) -> i32 {
    let min_i32 = bitcast<i32>(0x80000000u);
    if (a == min_i32 && b == min_i32) {
        return 2147483647;
    }
    let neg = (a < 0) != (b < 0);
    let ua = select(bitcast<u32>(a), 0u - bitcast<u32>(a), a < 0);
    let ub = select(bitcast<u32>(b), 0u - bitcast<u32>(b), b < 0);
    let prod = mul_wide(ua, ub);
    let lo = prod.x + select(0x40000000u, 0x3fffffffu, neg);
    let hi = prod.y + select(0u, 1u, lo < prod.x);
    let r = (hi << 1u) | (lo >> 31u);
    return select(bitcast<i32>(r), bitcast<i32>(0u - r), neg);
}

fn rdbpot(x: i32, e: u32) -> i32 {
    let mask = bitcast<i32>((1u << e) - 1u);
    let rem = x & mask;
    let thr = (mask >> 1u) + select(0, 1, x < 0);
    return (x >> e) + select(0, 1, rem > thr);
}

fn sat_shl(x: i32, l: u32) -> i32 {
    if (l == 0u) { return x; }
    if (x > (2147483647 >> l)) { return 2147483647; }
    if (x < (bitcast<i32>(0x80000000u) >> l)) { return bitcast<i32>(0x80000000u); }
    return x << l;
}

fn mbqm(x: i32, m0: i32, shift: i32) -> i32 {
    let l = u32(max(shift, 0));
    let r = u32(max(-shift, 0));
    return rdbpot(srdhm(sat_shl(x, l), m0), r);
}

fn clamp_out(v: i32) -> u32 {
    return u32(clamp(v, p.act_min - p.zero_out, p.act_max - p.zero_out) + p.zero_out);
}

fn src_byte(e: u32) -> u32 {
    return (src[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu;
}

fn src2_byte(e: u32) -> u32 {
    return (src2[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu;
}

// ---- quantize: f32 -> codes, clamp(round(x * inv_s) + z, 0, qmax) (round: ties to even) ----
@compute @workgroup_size(64)
fn quantize_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, WG);
    if (t * 4u >= p.total) { return; }
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = t * 4u + j;
        if (e >= p.total) { break; }
        var x = bitcast<f32>(src[e]);
        if (GELU) {
            x = gelu(x);
        }
        let q = clamp(round(x * p.inv_s) + f32(p.zero_out), 0.0, p.qmax);
        word |= u32(q) << (8u * j);
    }
    out[t] = word;
}

// ---- dequantize: codes -> f32, (q - z) * s (one element per invocation) ----
@compute @workgroup_size(64)
fn dequantize_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = flat_index(gid, nwg, WG);
    if (e >= p.total) { return; }
    out[e] = bitcast<u32>((f32(src_byte(e)) - f32(p.zero_a)) * p.scale);
}

// Output position (plane, oy, ox) of element e: decoded once per output word, then stepped
// (integer division is slow on CPU adapters).
fn position(e: u32) -> vec3<u32> {
    let row = e / p.ow;
    return vec3<u32>(row / p.oh, row % p.oh, e % p.ow);
}

fn next_position(q: vec3<u32>) -> vec3<u32> {
    var r = vec3<u32>(q.x, q.y, q.z + 1u);
    if (r.z == p.ow) {
        r = vec3<u32>(r.x, r.y + 1u, 0u);
        if (r.y == p.oh) {
            r = vec3<u32>(r.x + 1u, 0u, 0u);
        }
    }
    return r;
}

// Window of output position q: (plane base, y0, x0) with y0/x0 possibly negative.
fn window(q: vec3<u32>) -> vec3<i32> {
    return vec3<i32>(i32(q.x * p.h * p.w), i32(q.y * p.sh) - i32(p.ph), i32(q.z * p.sw) - i32(p.pw));
}

// Max of the in-row bytes of a window of p.kw <= 4 taps starting at byte address a, column
// x0 of its row (one word load, two when the window straddles words; bytes outside the row
// or past the window are masked to 0, which never wins a max of codes). Indices past either
// end of src are clamped by the runtime's bounds checks and only feed masked bytes.
fn row_max(a: i32, x0: i32) -> u32 {
    let i = u32(a >> 2u);
    let o = u32(a & 3);
    let lo = src[i];
    var hi = 0u;
    if (o + p.kw > 4u) {
        hi = src[i + 1u];
    }
    let sh = o * 8u;
    let raw = select((lo >> sh) | (hi << (32u - sh)), lo, sh == 0u);
    let lo_inv = u32(clamp(-x0, 0, 4));
    let hi_inv = max(u32(clamp(x0 + 4 - i32(p.w), 0, 4)), 4u - p.kw);
    let m = select(0xffffffffu << (8u * lo_inv), 0u, lo_inv >= 4u) & select(0xffffffffu >> (8u * hi_inv), 0u, hi_inv >= 4u);
    let v = unpack4xU8(raw & m);
    return max(max(v.x, v.y), max(v.z, v.w));
}

// ---- max pool on codes (padding ignored) ----
@compute @workgroup_size(64)
fn maxpool_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, WG);
    if (t * 4u >= p.total) { return; }
    var word = 0u;
    var pos = position(t * 4u);
    for (var j = 0u; j < 4u; j++) {
        let e = t * 4u + j;
        if (e >= p.total) { break; }
        let win = window(pos);
        pos = next_position(pos);
        var best = 0u;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = win.y + i32(ky);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            if (p.kw <= 4u) {
                best = max(best, row_max(win.x + iy * i32(p.w) + win.z, win.z));
                continue;
            }
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = win.z + i32(kx);
                if (ix < 0 || ix >= i32(p.w)) { continue; }
                best = max(best, src_byte(u32(win.x) + u32(iy) * p.w + u32(ix)));
            }
        }
        word |= best << (8u * j);
    }
    out[t] = word;
}

// `t / n` rounded half to even, exactly (n > 0): floor division, then the remainder decides.
fn div_round_half_even(t: i32, n: i32) -> i32 {
    var q = t / n; // truncates toward zero
    var r = t - q * n;
    if (r < 0) {
        q -= 1;
        r += n;
    }
    if (2 * r > n || (2 * r == n && (q & 1) == 1)) { q += 1; }
    return q;
}

// ---- average pool on codes: with t = sum_inbounds(q) - count * z_in, z_out + round(t / (kh*kw))
// exactly (m0_b = 1, same scale) or z_out + MBQM(t, M) with M for s_in / (s_out kh kw) ----
@compute @workgroup_size(64)
fn avgpool_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, WG);
    if (t * 4u >= p.total) { return; }
    var word = 0u;
    var pos = position(t * 4u);
    for (var j = 0u; j < 4u; j++) {
        let e = t * 4u + j;
        if (e >= p.total) { break; }
        let win = window(pos);
        pos = next_position(pos);
        var sum = 0;
        var count = 0;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = win.y + i32(ky);
            if (iy < 0 || iy >= i32(p.h)) { continue; }
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = win.z + i32(kx);
                if (ix < 0 || ix >= i32(p.w)) { continue; }
                sum += i32(src_byte(u32(win.x) + u32(iy) * p.w + u32(ix)));
                count += 1;
            }
        }
        let t_sum = sum - count * p.zero_a;
        var v = 0;
        if (p.m0_b == 1) { v = div_round_half_even(t_sum, p.m0_a); } else { v = mul_round(t_sum, p.m0_a, p.shift_a); }
        word |= clamp_out(v) << (8u * j);
    }
    out[t] = word;
}

// ---- residual add (TFLite quantized ADD, left shift 20; see src/infer/ops.rs AddConfig) ----
@compute @workgroup_size(64)
fn add_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, WG);
    if (t * 4u >= p.total) { return; }
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = t * 4u + j;
        if (e >= p.total) { break; }
        let a = (i32(src_byte(e)) - p.zero_a) << 20u;
        let b = (i32(src2_byte(e)) - p.zero_b) << 20u;
        let ra = mbqm(a, p.m0_a, p.shift_a);
        let rb = mbqm(b, p.m0_b, p.shift_b);
        word |= clamp_out(mbqm(ra + rb, p.m0_out, p.shift_out)) << (8u * j);
    }
    out[t] = word;
}

// ---- patchify on codes: [B, C, H, W] -> [B, T, C * P * P] (P = p.kh), T = (H / P) * (W / P),
// token py * (W / P) + px, feature (c, ky, kx): the permutation of sequence.wgsl's
// patchify_forward ----
@compute @workgroup_size(64)
fn patchify_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat_index(gid, nwg, WG);
    if (t * 4u >= p.total) { return; }
    let pp = p.kh * p.kh;
    let f_len = p.channels * pp;
    let tw = p.w / p.kh;
    let tokens = (p.h / p.kh) * tw;
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = t * 4u + j;
        if (e >= p.total) { break; }
        let f = e % f_len;
        let tok = (e / f_len) % tokens;
        let b = e / (f_len * tokens);
        let c = f / pp;
        let y = (tok / tw) * p.kh + (f / p.kh) % p.kh;
        let x = (tok % tw) * p.kh + f % p.kh;
        word |= src_byte(((b * p.channels + c) * p.h + y) * p.w + x) << (8u * j);
    }
    out[t] = word;
}
