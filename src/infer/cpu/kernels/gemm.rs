//! Pre-packed int8 GEMM on i16 pairs (the `Portable` and `Avx2` kernels).
//!
//! Inputs are stored as `x - z_x` in i16 (so padding is 0 and no zero-point correction is
//! needed), weights as i16. The reduction runs over *steps*: step `s` reads two adjacent
//! i16 of a row at `base(row) + offs[s]` (one i32 broadcast) and multiplies them with the
//! step's weights, packed `[step][block of 8 channels][channel][2]`, so one `vpmaddwd`
//! gives 8 channels x 2 products summed into i32 lanes (each pair sum is at most
//! `2 * 255 * 128` in magnitude: exact; the lane sums wrap mod 2^32 like the scalar
//! reference). A step's two slots come from any two reduction indices (`Step::k`), so the
//! same packing serves linear rows, im2col-free convs (one tap, two input channels) and
//! single-channel convs (two horizontal taps), with zero weights where a slot is unused.
//!
//! Rows are computed 4 at a time against 16 channels (8 ymm accumulators), bias added,
//! and requantized in registers ([`super::x86`]), bit-exact with [`Requant::apply`].

use super::simd::SimdKernel;
use crate::error::{Result, WqatError};
use crate::infer::requant::{requantize, Requant};

/// One reduction step: the two i16 at `off`, `off + 1` of a row times weights of reduction
/// indices `k[0]`, `k[1]` (`None`: zero weight).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub off: u32,
    pub k: [Option<u32>; 2],
}

/// Weights, bias and requantization of `n` output channels packed for the pair kernels.
#[derive(Debug, Clone)]
pub struct PackedGemm {
    pub(crate) n: usize,
    /// Blocks of 8 channels.
    pub(crate) nb: usize,
    pub(crate) offs: Vec<u32>,
    /// Panel-major, see [`PackedGemm::widx`].
    pub(crate) w: Vec<i16>,
    /// Per channel (padded to `nb * 8`): bias, `M0`, `shift` (`M = M0 * 2^(shift - 31)`).
    pub(crate) bias: Vec<i32>,
    pub(crate) m0: Vec<i32>,
    pub(crate) shift: Vec<i32>,
    pub(crate) out_zero: i32,
    /// Clamp range relative to the zero point: `act_min - z`, `act_max - z`.
    pub(crate) lo: i32,
    pub(crate) hi: i32,
    /// Largest step offset.
    pub(crate) max_off: usize,
}

impl PackedGemm {
    /// Packs channels `ch0..ch0 + n` (`w(c, k)`: the weight of channel `ch0 + c` at reduction
    /// index `k`; bias and requantization indexed by `ch0 + c`).
    pub(crate) fn new(
        steps: &[Step],
        n: usize,
        w: impl Fn(usize, usize) -> i8,
        bias: &[i32],
        rq: &Requant,
        ch0: usize,
    ) -> Self {
        let nb = n.div_ceil(8);
        let pad =
            |f: &dyn Fn(usize) -> i32| -> Vec<i32> { (0..nb * 8).map(|c| if c < n { f(c) } else { 0 }).collect() };
        let shift = |c: usize| rq.shift[ch0 + c];
        let mut p = PackedGemm {
            n,
            nb,
            offs: steps.iter().map(|s| s.off).collect(),
            w: vec![0i16; steps.len() * nb * 16],
            bias: pad(&|c| bias[ch0 + c]),
            m0: pad(&|c| rq.multiplier[ch0 + c]),
            shift: pad(&shift),
            out_zero: rq.out_zero,
            lo: rq.act_min - rq.out_zero,
            hi: rq.act_max - rq.out_zero,
            max_off: steps.iter().map(|s| s.off as usize).max().unwrap_or(0),
        };
        for (s, st) in steps.iter().enumerate() {
            for c in 0..n {
                for (t, k) in st.k.iter().enumerate() {
                    if let Some(k) = k {
                        let i = p.widx(s, c / 8, (c % 8) * 2 + t);
                        p.w[i] = w(c, *k as usize) as i16;
                    }
                }
            }
        }
        p
    }

    /// Bytes of the packed weight panels (i16 per code, zero slots included).
    pub(crate) fn weight_bytes(&self) -> usize {
        2 * self.w.len()
    }

    /// Index of weight lane `l` (0..16: channel `l / 2`, slot `l % 2`) of block `b` at step
    /// `s`: panels of two blocks `[panel][step][2][16]` (the micro-kernel's 16 channels
    /// stream contiguously), then a last single block `[step][16]` when `nb` is odd.
    pub(crate) fn widx(&self, s: usize, b: usize, l: usize) -> usize {
        let steps = self.offs.len();
        let even = self.nb / 2 * 2;
        if b < even {
            ((b / 2 * steps + s) * 2 + b % 2) * 16 + l
        } else {
            (even * steps + s) * 16 + l
        }
    }

    /// Output rows `rows`: row `r` reads `x[base(r) + offs[s] ..][..2]` and writes its `n`
    /// codes to `out[obase(r)..][..n]`. An error (never out-of-bounds access) when a row
    /// does not fit its buffers.
    pub(crate) fn run(
        &self,
        kernel: SimdKernel,
        x: &[i16],
        rows: std::ops::Range<usize>,
        base: impl Fn(usize) -> usize,
        out: &mut [u8],
        obase: impl Fn(usize) -> usize,
    ) -> Result<()> {
        let mut r = rows.start;
        while r < rows.end {
            let nrows = (rows.end - r).min(4);
            let xb = std::array::from_fn(|t| base(r + t.min(nrows - 1)));
            let ob = std::array::from_fn(|t| obase(r + t.min(nrows - 1)));
            self.block(kernel, x, xb, out, ob, nrows, false)?;
            r += nrows;
        }
        Ok(())
    }

    /// Max-pooled output rows: row `t` is `requant(max_i acc(x0 + b4[t][i]))` (equal to
    /// the max of the four requantized codes: the requantization is monotone), written to
    /// `out[o0 + t * ostride..][..n]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_pool4(
        &self,
        kernel: SimdKernel,
        x: &[i16],
        x0: usize,
        b4: &[[usize; 4]],
        out: &mut [u8],
        o0: usize,
        ostride: usize,
    ) -> Result<()> {
        let Some(last) = b4.len().checked_sub(1) else { return Ok(()) };
        let max_base = b4.iter().flatten().max().copied().unwrap_or(0);
        if x0 + max_base + self.max_off + 2 > x.len() || o0 + last * ostride + self.n > out.len() {
            return Err(WqatError::invalid("int8 gemm row outside its buffers"));
        }
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 checked; every row's reads and writes checked in bounds above.
            SimdKernel::Avx2 if kernel.is_available() => unsafe {
                super::x86::pair_pool_rows(self, x.as_ptr(), x0, b4, out.as_mut_ptr(), o0, ostride)
            },
            _ => {
                for (t, b) in b4.iter().enumerate() {
                    self.block(kernel, x, b.map(|q| x0 + q), out, [o0 + t * ostride; 4], 1, true)?;
                }
            }
        }
        Ok(())
    }

    /// Four rows (the first `nrows` stored), or with `pool` their max into `ob[0]`.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        kernel: SimdKernel,
        x: &[i16],
        xb: [usize; 4],
        out: &mut [u8],
        ob: [usize; 4],
        nrows: usize,
        pool: bool,
    ) -> Result<()> {
        if xb.iter().any(|&b| b + self.max_off + 2 > x.len()) || ob.iter().any(|&o| o + self.n > out.len()) {
            return Err(WqatError::invalid("int8 gemm row outside its buffers"));
        }
        match kernel {
            #[cfg(target_arch = "x86_64")]
            SimdKernel::Avx2 if kernel.is_available() => {
                let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
                // SAFETY: AVX2 checked; every row's reads and writes checked in bounds above.
                unsafe {
                    match nrows {
                        _ if pool => super::x86::pair_rows::<4>(self, xp, xb, op, ob, 1, true),
                        3 | 4 => super::x86::pair_rows::<4>(self, xp, xb, op, ob, nrows, false),
                        2 => super::x86::pair_rows::<2>(self, xp, xb, op, ob, 2, false),
                        _ => super::x86::pair_rows::<1>(self, xp, xb, op, ob, 1, false),
                    }
                }
            }
            SimdKernel::Portable => self.portable_rows(x, &xb, out, &ob, nrows, pool),
            _ => return Err(WqatError::invalid(format!("SIMD kernel {kernel:?} is not available on this CPU"))),
        }
        Ok(())
    }

    /// Plain loops over the packed layout (any CPU).
    fn portable_rows(&self, x: &[i16], xb: &[usize; 4], out: &mut [u8], ob: &[usize; 4], nrows: usize, pool: bool) {
        let (lo, hi) = (self.lo + self.out_zero, self.hi + self.out_zero);
        for c in 0..self.n {
            let acc = |xb: usize| {
                let mut acc = self.bias[c];
                for (s, &off) in self.offs.iter().enumerate() {
                    let i = xb + off as usize;
                    let w0 = self.w[self.widx(s, c / 8, (c % 8) * 2)] as i32;
                    let w1 = self.w[self.widx(s, c / 8, (c % 8) * 2 + 1)] as i32;
                    acc = acc.wrapping_add(x[i] as i32 * w0 + x[i + 1] as i32 * w1);
                }
                acc
            };
            let rq = |a: i32| requantize(a, self.m0[c], self.shift[c], self.out_zero, lo, hi) as u8;
            if pool {
                out[ob[0] + c] = rq(xb.iter().map(|&b| acc(b)).max().unwrap_or(0));
            } else {
                for r in 0..nrows {
                    out[ob[r] + c] = rq(acc(xb[r]));
                }
            }
        }
    }
}

/// A linear layer packed once: x rows of `k` codes (in the order given by `perm`) times
/// `[n, k]` weights.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    pub k: usize,
    pub n: usize,
    /// Row stride of the i16 input (`k` rounded up to even).
    pub kp: usize,
    pub x_zero: i32,
    gemm: PackedGemm,
}

impl PackedLinear {
    /// Bytes of the packed weight panels (i16 per code: the pair kernels' `vpmaddwd` operand).
    pub fn weight_bytes(&self) -> usize {
        self.gemm.weight_bytes()
    }

    /// `perm(m)`: the weight column of input element `m` (identity for plain rows; a
    /// permutation of `0..k`). Sizes are checked as for [`crate::infer::ops::LinearConfig`].
    pub fn new(
        k: usize,
        n: usize,
        x_zero: i32,
        w: &[i8],
        bias: &[i32],
        rq: &Requant,
        perm: impl Fn(usize) -> usize,
    ) -> Result<Self> {
        crate::infer::ops::LinearConfig { m: 1, k, n, x_zero }.validate(k, w.len(), bias.len(), n)?;
        rq.validate(n)?;
        if (0..k).any(|m| perm(m) >= k) {
            return Err(WqatError::invalid("packed linear column permutation out of range"));
        }
        let kp = k.div_ceil(2) * 2;
        let steps: Vec<Step> = (0..kp / 2)
            .map(|s| {
                let slot = |m: usize| (m < k).then(|| perm(m) as u32);
                Step { off: 2 * s as u32, k: [slot(2 * s), slot(2 * s + 1)] }
            })
            .collect();
        let gemm = PackedGemm::new(&steps, n, |c, kk| w[c * k + kk], bias, rq, 0);
        Ok(PackedLinear { k, n, kp, x_zero, gemm })
    }

    /// Converts `m` rows of `k` codes into `x - z` i16 rows of stride `kp`.
    pub fn load(&self, x: &[u8], m: usize, dst: &mut Vec<i16>) -> Result<()> {
        if x.len() != m * self.k {
            return Err(WqatError::shape(format!("packed linear input of {} codes for {m} x {}", x.len(), self.k)));
        }
        if dst.len() != m * self.kp {
            dst.clear();
            dst.resize(m * self.kp, 0);
        }
        for (d, s) in dst.chunks_exact_mut(self.kp).zip(x.chunks_exact(self.k)).take(m) {
            widen_sub(s, self.x_zero, &mut d[..self.k]);
        }
        Ok(())
    }

    /// Rows `rows` of the loaded input into `out` (`[m, n]`, the slice starting at row
    /// `rows.start`).
    pub fn run(&self, kernel: SimdKernel, xp: &[i16], rows: std::ops::Range<usize>, out: &mut [u8]) -> Result<()> {
        let (kp, n, r0) = (self.kp, self.n, rows.start);
        self.gemm.run(kernel, xp, rows, |r| r * kp, out, |r| (r - r0) * n)
    }
}

/// `dst[i] = src[i] - z` as i16 (vectorized by the compiler).
pub fn widen_sub(src: &[u8], z: i32, dst: &mut [i16]) {
    let z = z as i16;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as i16 - z;
    }
}
