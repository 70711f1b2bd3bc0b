// Bit-exact fixed-point requantization of the integer model: the heart of the GPU = CPU
// integer promise (src/infer/requant.rs is the CPU side; tests/kernels/int8*.rs check both
// against each other bit for bit).

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
// rounding the fake-quant simulation does (src/infer/requant.rs,
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
