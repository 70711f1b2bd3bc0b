// Int8 inference GEMM: linear and conv2d (implicit GEMM), bit-exact with src/int8/scalar.rs.
//
// Data: activations are uint8 codes packed four per u32, flat, little end first (element e
// is byte e % 4 of word e / 4). Weights are int8 packed four per u32 per output-channel row
// of `kw4 = ceil(k / 4)` words, zero padded. chan[c] = (bias, M0, shift, sum_k w[c, k]).
//
// acc = sum_k (x - z_x) * w + bias in wrapping i32 arithmetic:
// * dot4 path (USE_DOT4): x' = x ^ 0x80 = x - 128 is an int8, `dot4I8Packed(x', w)` is
//   exact, and acc = sum x' w + (128 - z_x) * sum(w) + bias. (x - z_x itself can leave the
//   int8 range, so it is never packed.)
// * fallback: unpack4xU8(x) . unpack4xI8(w) + bias - z_x * sum(w).
// Both equal the scalar sum mod 2^32. Padding bytes meet zero weights, so they add 0.
//
// Requantization (TFLite MultiplyByQuantizedMultiplier with double rounding) emulates the
// 64-bit product of SaturatingRoundingDoublingHighMul with 16-bit limbs in u32 math.
// Each invocation writes one output word = 4 consecutive output codes.

struct Params {
    total: u32,    // output elements
    k: u32,        // reduction length
    kw4: u32,      // u32 words per weight row
    n: u32,        // linear: output features; conv: c_out
    cin: u32,
    h: u32,
    w: u32,
    cout_g: u32,
    cin_g: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kwid: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    x_zero: i32,
    out_zero: i32,
    act_min: i32,
    act_max: i32,
    raw: u32,      // requant probe only: 1 = write mul_round(acc) without zero point or clamp
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> wt: array<u32>;
@group(0) @binding(3) var<storage, read> chan: array<vec4<i32>>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

override USE_DOT4: bool = true;
const WG: u32 = 64u;

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// ---- fixed-point requantization ----

// Full 64-bit product of two u32 as (lo, hi).
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    var t = a0 * b0;
    let w0 = t & 0xffffu;
    var k = t >> 16u;
    t = a1 * b0 + k;
    let w1 = t & 0xffffu;
    let w2 = t >> 16u;
    t = a0 * b1 + w1;
    k = t >> 16u;
    return vec2<u32>((t << 16u) + w0, a1 * b1 + w2 + k);
}

// round_half_even(x * m0 * 2^(shift - 31)) from the exact 64-bit product (m0 >= 0), saturated
// to +-(2^31 - 1): the single rounding of conv / linear / average-pool outputs, the same
// rounding the fake-quant simulation does (src/int8/requant.rs,
// `multiply_by_quantized_multiplier_rounded`). Half to even is symmetric, so it rounds the
// magnitude and puts the sign back.
fn mul_round(x: i32, m0: i32, shift: i32) -> i32 {
    let k = u32(clamp(31 - shift, 1, 62));
    let neg = x < 0;
    let ux = select(bitcast<u32>(x), 0u - bitcast<u32>(x), neg);
    let prod = mul_wide(ux, bitcast<u32>(m0));
    var q_lo = 0u;
    var q_hi = 0u;
    var above = false;
    var tie = false;
    if (k < 32u) {
        q_lo = (prod.x >> k) | (prod.y << (32u - k));
        q_hi = prod.y >> k;
        let rem = prod.x & ((1u << k) - 1u);
        let half = 1u << (k - 1u);
        above = rem > half;
        tie = rem == half;
    } else if (k == 32u) {
        q_lo = prod.y;
        above = prod.x > 0x80000000u;
        tie = prod.x == 0x80000000u;
    } else {
        let s = k - 32u;
        q_lo = prod.y >> s;
        let rem_hi = prod.y & ((1u << s) - 1u);
        let half_hi = 1u << (s - 1u);
        above = rem_hi > half_hi || (rem_hi == half_hi && prod.x > 0u);
        tie = rem_hi == half_hi && prod.x == 0u;
    }
    var m = q_lo + select(0u, 1u, above || (tie && (q_lo & 1u) == 1u));
    if (q_hi != 0u || m < q_lo || m > 0x7fffffffu) {
        m = 0x7fffffffu;
    }
    return select(bitcast<i32>(m), -bitcast<i32>(m), neg);
}

fn requant(acc_raw: i32, c: u32) -> u32 {
    let ch = chan[c];
    var acc = acc_raw + ch.x - p.x_zero * ch.w;
    if (USE_DOT4) {
        acc += 128 * ch.w;
    }
    let v = mul_round(acc, ch.y, ch.z);
    return u32(clamp(v, p.act_min - p.out_zero, p.act_max - p.out_zero) + p.out_zero);
}

fn dot4(xw: u32, ww: u32) -> i32 {
    if (USE_DOT4) {
        return dot4I8Packed(xw ^ 0x80808080u, ww);
    }
    return dot(bitcast<vec4<i32>>(unpack4xU8(xw)), unpack4xI8(ww));
}

// Four bytes of x starting at byte b (any alignment).
fn x_word(b: u32) -> u32 {
    let i = b >> 2u;
    let s = (b & 3u) * 8u;
    let lo = x[i];
    if (s == 0u) { return lo; }
    let hi = x[min(i + 1u, arrayLength(&x) - 1u)];
    return (lo >> s) | (hi << (32u - s));
}

fn x_byte(e: u32) -> u32 {
    return (x[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu;
}

// ---- linear: out[i, c] for x [m, k], w [n, k] ----
@compute @workgroup_size(64)
fn int8_linear(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_index(gid, nwg);
    if (t * 4u >= p.total) { return; }
    let e0 = t * 4u;
    if (e0 + 3u < p.total && e0 / p.n == (e0 + 3u) / p.n) {
        // Fast path: the four outputs share one input row, so each x word is loaded once.
        let c0 = e0 % p.n;
        let xb = (e0 / p.n) * p.k;
        var acc = vec4<i32>(0);
        for (var q = 0u; q < p.kw4; q++) {
            let xw = x_word(xb + 4u * q);
            acc += vec4<i32>(
                dot4(xw, wt[c0 * p.kw4 + q]),
                dot4(xw, wt[(c0 + 1u) * p.kw4 + q]),
                dot4(xw, wt[(c0 + 2u) * p.kw4 + q]),
                dot4(xw, wt[(c0 + 3u) * p.kw4 + q]));
        }
        out[t] = requant(acc.x, c0) | (requant(acc.y, c0 + 1u) << 8u) | (requant(acc.z, c0 + 2u) << 16u)
            | (requant(acc.w, c0 + 3u) << 24u);
        return;
    }
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = t * 4u + j;
        if (e >= p.total) { break; }
        let row = e / p.n;
        let c = e % p.n;
        let xb = row * p.k;
        let wb = c * p.kw4;
        var acc = 0;
        for (var q = 0u; q < p.kw4; q++) {
            acc += dot4(x_word(xb + 4u * q), wt[wb + q]);
        }
        word |= requant(acc, c) << (8u * j);
    }
    out[t] = word;
}

// ---- conv2d NCHW, implicit GEMM: K index = (ci, ky, kx), padding reads z_x ----
@compute @workgroup_size(64)
fn int8_conv2d(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = linear_index(gid, nwg);
    if (t * 4u >= p.total) { return; }
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let e = t * 4u + j;
        if (e >= p.total) { break; }
        let ox = e % p.ow;
        let oy = (e / p.ow) % p.oh;
        let c = (e / (p.ow * p.oh)) % p.n;
        let b = e / (p.ow * p.oh * p.n);
        let g = c / p.cout_g;
        let wb = c * p.kw4;
        var acc = 0;
        var packed = 0u;
        var nb = 0u;
        var q = 0u;
        for (var ci = 0u; ci < p.cin_g; ci++) {
            let plane = (b * p.cin + g * p.cin_g + ci) * p.h * p.w;
            for (var ky = 0u; ky < p.kh; ky++) {
                let iy = i32(oy * p.sh + ky * p.dh) - i32(p.ph);
                for (var kx = 0u; kx < p.kwid; kx++) {
                    let ix = i32(ox * p.sw + kx * p.dw) - i32(p.pw);
                    var v = u32(p.x_zero);
                    if (iy >= 0 && ix >= 0 && u32(iy) < p.h && u32(ix) < p.w) {
                        v = x_byte(plane + u32(iy) * p.w + u32(ix));
                    }
                    packed |= v << (8u * nb);
                    nb++;
                    if (nb == 4u) {
                        acc += dot4(packed, wt[wb + q]);
                        q++;
                        packed = 0u;
                        nb = 0u;
                    }
                }
            }
        }
        if (nb > 0u) {
            acc += dot4(packed, wt[wb + q]);
        }
        word |= requant(acc, c) << (8u * j);
    }
    out[t] = word;
}

// ---- requant probe: out[i] = requant(bitcast<i32>(x[i]), wt[i]) for testing ----
// (x_zero = 0 and no dot-product correction: the probe feeds the accumulator directly.)
@compute @workgroup_size(64)
fn int8_requant_probe(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.total) { return; }
    let ch = chan[wt[i]];
    let v = mul_round(bitcast<i32>(x[i]) + ch.x, ch.y, ch.z);
    if (p.raw != 0u) {
        out[i] = bitcast<u32>(v);
    } else {
        out[i] = u32(clamp(v, p.act_min - p.out_zero, p.act_max - p.out_zero) + p.out_zero);
    }
}
