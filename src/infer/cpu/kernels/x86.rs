//! x86-64 micro-kernels.
//!
//! * [`pair_rows`]: the AVX2 pair GEMM of [`super::gemm`] (4 rows x 16 channels of
//!   `vpmaddwd` on broadcast i16 input pairs, bias, exact requantization, optional 2x2 max
//!   pool) and [`quantize_f32`], the vectorized input quantization.
//!   `_mm256_madd_epi16` sums pairs of i16 products into i32: each pair is at most
//!   2 * 255 * 128 = 65280 in magnitude, so nothing saturates (unlike
//!   `_mm256_maddubs_epi16`, whose i16 pair sum 255*127 + 255*127 = 64770 would clip).
//!
//! The dot-product kernel below computes 2 rows x 4 output channels of raw
//! `sum_k x[k] * w[k]`:
//!
//! * AVX-512 VNNI: `_mm512_dpbusd_epi32` multiplies u8 by i8 and adds groups of four
//!   products straight into i32 lanes (no intermediate saturation; the saturating form is
//!   `dpbusds`, not used).
//!
//! Lane sums wrap modulo 2^32 exactly like the scalar reference.

use std::arch::x86_64::*;

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

/// Rows `xb[..R]` (row offsets into `x`; rows past `nrows` repeat a valid row) of the pair
/// GEMM `p` (see [`super::gemm`]): all channels, 16 (then 8) at a time, bias, exact
/// requantization ([`Rq8::apply`]) and a store of the first `nrows` rows at `out + ob[r]`;
/// with `pool`, the lane-wise max of the `R` rows (bias added first) into `out + ob[0]`.
///
/// # Safety
/// AVX2 must be available; `x[xb[r] + off .. + 2]` readable for every step offset and
/// `out[ob[r] .. + p.n]` writable for every stored row.
#[target_feature(enable = "avx2")]
pub unsafe fn pair_rows<const R: usize>(
    p: &super::gemm::PackedGemm,
    x: *const i16,
    xb: [usize; 4],
    out: *mut u8,
    ob: [usize; 4],
    nrows: usize,
    pool: bool,
) {
    let xr: [*const i16; R] = std::array::from_fn(|r| x.add(xb[r]));
    let mut blk = 0;
    if R == 1 && !pool {
        // One row: 32 channels (two panels) per pass, for more independent accumulators.
        while blk + 4 <= p.nb / 2 * 2 {
            pair_tile_1x4(p, xr[0], blk, out, ob[0]);
            blk += 4;
        }
    }
    while blk + 2 <= p.nb {
        pair_tile::<R, 2>(p, &xr, blk, out, &ob, nrows, pool);
        blk += 2;
    }
    if blk < p.nb {
        pair_tile::<R, 1>(p, &xr, blk, out, &ob, nrows, pool);
    }
}

/// Max-pooled rows of the pair GEMM `p`: for each `t`, the lane-wise max of the four rows
/// at `x + x0 + b4[t][i]` (bias added), requantized into `out + o0 + t * ostride`.
///
/// # Safety
/// AVX2 must be available; every row's reads (`x0 + b4[t][i] + off + 2` for every step
/// offset) and writes (`o0 + t * ostride + p.n`) in bounds.
#[target_feature(enable = "avx2")]
pub unsafe fn pair_pool_rows(
    p: &super::gemm::PackedGemm,
    x: *const i16,
    x0: usize,
    b4: &[[usize; 4]],
    out: *mut u8,
    o0: usize,
    ostride: usize,
) {
    for (t, b) in b4.iter().enumerate() {
        let xr = b.map(|q| x.add(x0 + q));
        let ob = [o0 + t * ostride; 4];
        let mut blk = 0;
        while blk + 2 <= p.nb {
            pair_tile::<4, 2>(p, &xr, blk, out, &ob, 1, true);
            blk += 2;
        }
        if blk < p.nb {
            pair_tile::<4, 1>(p, &xr, blk, out, &ob, 1, true);
        }
    }
}

/// One row against blocks `blk..blk + 4` (`blk` even: the panels `blk, blk + 1` and
/// `blk + 2, blk + 3`), stored at `out + ob`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pair_tile_1x4(p: &super::gemm::PackedGemm, x: *const i16, blk: usize, out: *mut u8, ob: usize) {
    let steps = p.offs.len();
    let mut wa = p.w.as_ptr().add(blk * steps * 16);
    let mut wb = p.w.as_ptr().add((blk + 2) * steps * 16);
    let z = _mm256_setzero_si256();
    let mut acc = [z; 4];
    for &off in p.offs.iter() {
        let xv = _mm256_set1_epi32(std::ptr::read_unaligned(x.add(off as usize) as *const i32));
        let w = [wa, wa.add(16), wb, wb.add(16)];
        for (a, w) in acc.iter_mut().zip(w) {
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, _mm256_loadu_si256(w as *const __m256i)));
        }
        wa = wa.add(32);
        wb = wb.add(32);
    }
    for (j, a) in acc.iter().enumerate() {
        let c0 = (blk + j) * 8;
        let q = Rq8::load(p, c0);
        store8(q.apply(_mm256_add_epi32(*a, q.bias)), out.add(ob + c0), (p.n - c0).min(8));
    }
}

#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pair_tile<const R: usize, const NV: usize>(
    p: &super::gemm::PackedGemm,
    xr: &[*const i16; R],
    blk: usize,
    out: *mut u8,
    ob: &[usize; 4],
    nrows: usize,
    pool: bool,
) {
    let z = _mm256_setzero_si256();
    let mut acc = [[z; NV]; R];
    // Blocks `blk..blk + NV` are one contiguous `[step][NV * 16]` panel (`PackedGemm::widx`).
    let mut wp = p.w.as_ptr().add(blk * p.offs.len() * 16);
    for &off in p.offs.iter() {
        let off = off as usize;
        let mut wv = [z; NV];
        for (j, v) in wv.iter_mut().enumerate() {
            *v = _mm256_loadu_si256(wp.add(16 * j) as *const __m256i);
        }
        for r in 0..R {
            let xv = _mm256_set1_epi32(std::ptr::read_unaligned(xr[r].add(off) as *const i32));
            for j in 0..NV {
                acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(xv, wv[j]));
            }
        }
        wp = wp.add(NV * 16);
    }
    for j in 0..NV {
        let c0 = (blk + j) * 8;
        let q = Rq8::load(p, c0);
        let valid = (p.n - c0).min(8);
        if pool {
            let mut m = _mm256_add_epi32(acc[0][j], q.bias);
            for a in acc.iter().skip(1) {
                m = _mm256_max_epi32(m, _mm256_add_epi32(a[j], q.bias));
            }
            store8(q.apply(m), out.add(ob[0] + c0), valid);
        } else {
            for (r, a) in acc.iter().enumerate().take(nrows) {
                store8(q.apply(_mm256_add_epi32(a[j], q.bias)), out.add(ob[r] + c0), valid);
            }
        }
    }
}

/// Stores the low `valid` (1..=8) bytes of `codes`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store8(codes: __m128i, dst: *mut u8, valid: usize) {
    if valid == 8 {
        _mm_storel_epi64(dst as *mut __m128i, codes);
    } else {
        let mut tmp = [0u8; 16];
        _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, codes);
        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, valid);
    }
}

/// Requantization constants of 8 channels.
struct Rq8 {
    bias: __m256i,
    m0: __m256i,
    m0_odd: __m256i,
    /// Total right shift `k = 31 - shift` of the even / odd lanes, as 64-bit lanes.
    k_even: __m256i,
    k_odd: __m256i,
    lo: __m256i,
    hi: __m256i,
    zero: __m256i,
}

impl Rq8 {
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load(p: &super::gemm::PackedGemm, c0: usize) -> Rq8 {
        let ld = |v: &Vec<i32>| _mm256_loadu_si256(v.as_ptr().add(c0) as *const __m256i);
        let m0 = ld(&p.m0);
        // k = 31 - shift, in 1..=62 (`Requant::validate` keeps shift in -31..=30).
        let k = _mm256_sub_epi32(_mm256_set1_epi32(31), ld(&p.shift));
        let low = _mm256_set1_epi64x(0xffff_ffff);
        Rq8 {
            bias: ld(&p.bias),
            m0,
            m0_odd: _mm256_srli_epi64::<32>(m0),
            k_even: _mm256_and_si256(k, low),
            k_odd: _mm256_srli_epi64::<32>(k),
            lo: _mm256_set1_epi32(p.lo),
            hi: _mm256_set1_epi32(p.hi),
            zero: _mm256_set1_epi32(p.out_zero),
        }
    }

    /// `round_half_even(p / 2^k)` of four signed 64-bit products `|p| < 2^62`, clamped to
    /// `[lo, hi]` (the output range minus the zero point, so no i32 saturation is needed).
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn round64(p: __m256i, k: __m256i, lo: __m256i, hi: __m256i) -> __m256i {
        let one = _mm256_set1_epi64x(1);
        let bias = _mm256_set1_epi64x(1 << 62);
        // u = p + 2^62 >= 0; floor(p / 2^k) = (u >> k) - 2^(62 - k), remainder = u mod 2^k.
        let u = _mm256_add_epi64(p, bias);
        let q = _mm256_srlv_epi64(u, k);
        let mask = _mm256_sub_epi64(_mm256_sllv_epi64(one, k), one);
        let rem = _mm256_and_si256(u, mask);
        let half = _mm256_sllv_epi64(one, _mm256_sub_epi64(k, one));
        let above = _mm256_cmpgt_epi64(rem, half);
        let tie = _mm256_cmpeq_epi64(rem, half);
        let off = _mm256_srlv_epi64(bias, k);
        let fl = _mm256_sub_epi64(q, off);
        let odd = _mm256_cmpeq_epi64(_mm256_and_si256(fl, one), one);
        let up = _mm256_or_si256(above, _mm256_and_si256(tie, odd));
        let r = _mm256_sub_epi64(fl, up); // up is all-ones (-1) where rounding up
                                          // Clamp in 64 bits to [lo, hi] (sign-extended from the i32 lanes).
        let lo64 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(lo));
        let hi64 = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(hi));
        let r = _mm256_blendv_epi8(r, lo64, _mm256_cmpgt_epi64(lo64, r));
        _mm256_blendv_epi8(r, hi64, _mm256_cmpgt_epi64(r, hi64))
    }

    /// `requantize(x)` (`x`: accumulator plus bias) of 8 lanes as u8 codes in the low 8
    /// bytes, bit-exact with [`crate::infer::requant::requantize`] (`M0 >= 0`): the exact 64-bit
    /// products `x * M0` of the even and odd lanes rounded once, half to even, by `2^k`
    /// ([`Rq8::round64`]), clamped to `[act_min - z, act_max - z]` (which also stands in for
    /// the reference's saturation at `±(2^31 - 1)`), `z` added, packed to u8.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn apply(&self, x: __m256i) -> __m128i {
        let even = Self::round64(_mm256_mul_epi32(x, self.m0), self.k_even, self.lo, self.hi);
        let odd =
            Self::round64(_mm256_mul_epi32(_mm256_srli_epi64::<32>(x), self.m0_odd), self.k_odd, self.lo, self.hi);
        let v = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
        let v = _mm256_add_epi32(v, self.zero);
        let w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        _mm_packus_epi16(w, w)
    }
}

/// `out[i] = clamp(round_ties_even(x[i] * inv_s) + z, 0, qmax) as u8`, bit-exact with
/// `crate::reference::fake_quant::quantize_code` followed by `as u8` (the same f32
/// multiply and add, `roundps` to nearest even; NaN gives 0 as the scalar `NaN as u8`;
/// `qmax <= 255`).
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_f32(x: &[f32], inv_s: f32, z: f32, qmax: f32, out: &mut [u8]) {
    let n = x.len().min(out.len());
    let (vi, vz, vmax, zero) = (_mm256_set1_ps(inv_s), _mm256_set1_ps(z), _mm256_set1_ps(qmax), _mm256_setzero_ps());
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vi);
        let r = _mm256_add_ps(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v), vz);
        // `max(r, 0)` returns 0 for a NaN `r`.
        let r = _mm256_min_ps(_mm256_max_ps(r, zero), vmax);
        let q = _mm256_cvttps_epi32(r);
        let w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
        _mm_storel_epi64(out.as_mut_ptr().add(i) as *mut __m128i, _mm_packus_epi16(w, w));
        i += 8;
    }
    for j in i..n {
        out[j] = ((x[j] * inv_s).round_ties_even() + z).clamp(0.0, qmax) as u8;
    }
}
