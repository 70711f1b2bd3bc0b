//! x86-64 micro-kernels: 2 rows x 4 output channels of raw `sum_k x[k] * w[k]`.
//!
//! * AVX2: x (u8) and w (i8) are widened to i16 once when packed, then
//!   `_mm256_madd_epi16` sums pairs into i32. Each pair is at most 2 * 255 * 128 = 65280 in
//!   magnitude, so nothing saturates (unlike `_mm256_maddubs_epi16`, whose i16 pair sum
//!   255*127 + 255*127 = 64770 would clip at 32767).
//! * AVX-512 VNNI: `_mm512_dpbusd_epi32` multiplies u8 by i8 and adds groups of four
//!   products straight into i32 lanes (no intermediate saturation; the saturating form is
//!   `dpbusds`, not used).
//!
//! Lane sums wrap modulo 2^32 exactly like the scalar reference.

use std::arch::x86_64::*;

#[target_feature(enable = "avx2")]
unsafe fn hsum256(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// `xa`, `xb`: `kp` i16 each; `w`: 4 rows of `kp` i16 at a stride of `ws` elements;
/// `kp` is a multiple of 16.
///
/// # Safety
/// AVX2 must be available and every pointer valid for the lengths above.
#[target_feature(enable = "avx2")]
pub unsafe fn mk_avx2(xa: *const i16, xb: *const i16, w: *const i16, ws: usize, kp: usize) -> [[i32; 4]; 2] {
    let z = _mm256_setzero_si256();
    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
    let (mut b0, mut b1, mut b2, mut b3) = (z, z, z, z);
    let mut k = 0;
    while k < kp {
        let va = _mm256_loadu_si256(xa.add(k) as *const __m256i);
        let vb = _mm256_loadu_si256(xb.add(k) as *const __m256i);
        let w0 = _mm256_loadu_si256(w.add(k) as *const __m256i);
        let w1 = _mm256_loadu_si256(w.add(ws + k) as *const __m256i);
        let w2 = _mm256_loadu_si256(w.add(2 * ws + k) as *const __m256i);
        let w3 = _mm256_loadu_si256(w.add(3 * ws + k) as *const __m256i);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(va, w0));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(va, w1));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(va, w2));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(va, w3));
        b0 = _mm256_add_epi32(b0, _mm256_madd_epi16(vb, w0));
        b1 = _mm256_add_epi32(b1, _mm256_madd_epi16(vb, w1));
        b2 = _mm256_add_epi32(b2, _mm256_madd_epi16(vb, w2));
        b3 = _mm256_add_epi32(b3, _mm256_madd_epi16(vb, w3));
        k += 16;
    }
    [[hsum256(a0), hsum256(a1), hsum256(a2), hsum256(a3)], [hsum256(b0), hsum256(b1), hsum256(b2), hsum256(b3)]]
}

/// `xa`, `xb`: `kp` u8 each; `w`: 4 rows of `kp` i8 at a stride of `ws` bytes; `kp` is a
/// multiple of 64 and at least 64.
///
/// Written as inline assembly: the AVX-512 intrinsics and target features need Rust 1.89,
/// above the crate's MSRV. The compiler is told every vector register is clobbered
/// (`clobber_abi("C")`), and `vzeroupper` ends the block.
///
/// # Safety
/// AVX-512F and AVX-512 VNNI must be available and every pointer valid.
pub unsafe fn mk_vnni(xa: *const u8, xb: *const u8, w: *const i8, ws: usize, kp: usize) -> [[i32; 4]; 2] {
    debug_assert!(kp >= 64 && kp.is_multiple_of(64));
    let mut lanes = [0i32; 8 * 16];
    std::arch::asm!(
        "vpxord zmm0, zmm0, zmm0",
        "vpxord zmm1, zmm1, zmm1",
        "vpxord zmm2, zmm2, zmm2",
        "vpxord zmm3, zmm3, zmm3",
        "vpxord zmm4, zmm4, zmm4",
        "vpxord zmm5, zmm5, zmm5",
        "vpxord zmm6, zmm6, zmm6",
        "vpxord zmm7, zmm7, zmm7",
        "xor eax, eax",
        "2:",
        "vmovdqu32 zmm8, [{xa} + rax]",
        "vmovdqu32 zmm9, [{xb} + rax]",
        "vmovdqu32 zmm10, [{w0} + rax]",
        "vmovdqu32 zmm11, [{w1} + rax]",
        "vmovdqu32 zmm12, [{w2} + rax]",
        "vmovdqu32 zmm13, [{w3} + rax]",
        "vpdpbusd zmm0, zmm8, zmm10",
        "vpdpbusd zmm1, zmm8, zmm11",
        "vpdpbusd zmm2, zmm8, zmm12",
        "vpdpbusd zmm3, zmm8, zmm13",
        "vpdpbusd zmm4, zmm9, zmm10",
        "vpdpbusd zmm5, zmm9, zmm11",
        "vpdpbusd zmm6, zmm9, zmm12",
        "vpdpbusd zmm7, zmm9, zmm13",
        "add rax, 64",
        "cmp rax, {kp}",
        "jb 2b",
        "vmovdqu32 [{out}], zmm0",
        "vmovdqu32 [{out} + 64], zmm1",
        "vmovdqu32 [{out} + 128], zmm2",
        "vmovdqu32 [{out} + 192], zmm3",
        "vmovdqu32 [{out} + 256], zmm4",
        "vmovdqu32 [{out} + 320], zmm5",
        "vmovdqu32 [{out} + 384], zmm6",
        "vmovdqu32 [{out} + 448], zmm7",
        "vzeroupper",
        xa = in(reg) xa,
        xb = in(reg) xb,
        w0 = in(reg) w,
        w1 = in(reg) w.add(ws),
        w2 = in(reg) w.add(2 * ws),
        w3 = in(reg) w.add(3 * ws),
        kp = in(reg) kp,
        out = in(reg) lanes.as_mut_ptr(),
        out("rax") _,
        clobber_abi("C"),
        options(nostack),
    );
    let mut out = [[0i32; 4]; 2];
    for (a, lane) in lanes.chunks(16).enumerate() {
        out[a / 4][a % 4] = lane.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    }
    out
}
