//! The SIMD int8 GEMM / conv drivers behind [`super::linear`] / [`super::conv2d`].
//!
//! * `Avx2` and `Portable` ([`SimdKernel::uses_pairs`]) run the pre-packed pair GEMM of
//!   [`super::gemm`] / [`super::packed_conv`] (i16 pairs, `vpmaddwd`, 4 rows x 16 channels,
//!   im2col-free convs, requantization in registers). These entry points pack per call (the
//!   CPU executor of converted models packs once per model, see `infer::cpu`) and split
//!   rows over threads ([`par_rows`]).
//! * `Neon`, `NeonDot` and `Avx512Vnni` run the dot-product micro-kernels of this file:
//!   weights packed per call, each output row's K inputs gathered (linear: a copy; conv:
//!   an im2col row with `x_zero` padding), 2-row x 4-channel micro-kernels of raw `sum x*w`,
//!   then `acc = raw + bias - (z_x - x_offset) * sum(w)` (wrapping i32, equal mod 2^32 to
//!   the scalar `sum (x - z_x) * w + bias`) and the requantization.
//!
//! Rows (and conv groups) are split into contiguous ranges over `std::thread::scope`
//! threads (none inside [`single_threaded`]); each output is computed by exactly one
//! thread in a fixed order, so results do not depend on the thread count.

use crate::error::{Result, WqatError};
use crate::infer::ops::{Conv2dConfig, LinearConfig};
use crate::infer::requant::Requant;

/// A micro-kernel implementation of the int8 dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdKernel {
    /// Plain Rust loops on i16-widened data (any CPU).
    Portable,
    /// x86-64 AVX2, i16 widening + `vpmaddwd`.
    Avx2,
    /// x86-64 AVX-512 VNNI `vpdpbusd` (u8 x i8 -> i32).
    Avx512Vnni,
    /// aarch64 NEON, i16 widening + `smlal`.
    Neon,
    /// aarch64 NEON dotprod `sdot` on `x - 128`.
    NeonDot,
}

impl SimdKernel {
    /// Whether this CPU can run the kernel (runtime detection).
    pub fn is_available(self) -> bool {
        match self {
            SimdKernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdKernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            SimdKernel::Avx512Vnni => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"),
            #[cfg(target_arch = "aarch64")]
            SimdKernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            SimdKernel::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
    /// Every kernel this CPU can run.
    pub fn available() -> Vec<SimdKernel> {
        use SimdKernel::*;
        [Portable, Avx2, Avx512Vnni, Neon, NeonDot].into_iter().filter(|k| k.is_available()).collect()
    }
    /// The kernel `CpuBackend::Simd` uses: AVX2, NEON dotprod, NEON, else portable.
    ///
    /// `Avx512Vnni` is not picked automatically yet: it has only been checked by
    /// disassembly (no AVX-512 machine was available). It is reachable through
    /// `CpuBackend::Kernel` and `tests/int8_cpu.rs` compares it bit for bit with the scalar
    /// reference wherever the CPU has it; put it first here once that passes.
    pub fn best() -> SimdKernel {
        use SimdKernel::*;
        [Avx2, NeonDot, Neon].into_iter().find(|k| k.is_available()).unwrap_or(Portable)
    }
    fn pad(self) -> usize {
        if self == SimdKernel::Avx512Vnni {
            64
        } else {
            16
        }
    }
    /// Whether the kernel runs the pre-packed pair GEMM of [`super::gemm`] (else the
    /// dot-product micro-kernels of this file).
    pub fn uses_pairs(self) -> bool {
        matches!(self, SimdKernel::Portable | SimdKernel::Avx2)
    }
    fn wide(self) -> bool {
        matches!(self, SimdKernel::Portable | SimdKernel::Avx2 | SimdKernel::Neon)
    }
    fn x_offset(self) -> i32 {
        if self == SimdKernel::NeonDot {
            128
        } else {
            0
        }
    }
}

/// Weights packed for one kernel: per group, `n4` rows (cout_g rounded up to 4, zero rows
/// after) of `kp` elements (K rounded up, zero padded); i16 for widening kernels, i8 else.
struct Packed {
    kernel: SimdKernel,
    cout_g: usize,
    n4: usize,
    k: usize,
    kp: usize,
    w16: Vec<i16>,
    w8: Vec<i8>,
    /// Per channel: `bias - (z_x - x_offset) * sum(w)` (wrapping).
    corr: Vec<i32>,
}

impl Packed {
    fn new(kernel: SimdKernel, w: &[i8], groups: usize, cout_g: usize, k: usize, bias: &[i32], x_zero: i32) -> Self {
        let kp = k.div_ceil(kernel.pad()) * kernel.pad();
        let n4 = cout_g.div_ceil(4) * 4;
        let rows = groups * n4;
        let (mut w16, mut w8) = (Vec::new(), Vec::new());
        if kernel.wide() {
            w16 = vec![0i16; rows * kp];
        } else {
            w8 = vec![0i8; rows * kp];
        }
        let mut corr = vec![0i32; groups * cout_g];
        let zc = x_zero - kernel.x_offset();
        for g in 0..groups {
            for j in 0..cout_g {
                let c = g * cout_g + j;
                let src = &w[c * k..(c + 1) * k];
                let dst = (g * n4 + j) * kp;
                let mut sum = 0i32;
                for (t, &v) in src.iter().enumerate() {
                    sum += v as i32;
                    if kernel.wide() {
                        w16[dst + t] = v as i16;
                    } else {
                        w8[dst + t] = v;
                    }
                }
                corr[c] = bias[c].wrapping_sub(zc.wrapping_mul(sum));
            }
        }
        Packed { kernel, cout_g, n4, k, kp, w16, w8, corr }
    }

    /// Raw dot products of rows `xa`, `xb` (already converted) with channel block `row0..row0+4`.
    fn micro(&self, x16: &[i16], x8: &[u8], row0: usize) -> [[i32; 4]; 2] {
        let kp = self.kp;
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: availability checked by `run`; buffers hold 2*kp and 4 rows of kp.
            SimdKernel::Avx512Vnni => unsafe {
                super::x86::mk_vnni(x8.as_ptr(), x8.as_ptr().add(kp), self.w8.as_ptr().add(row0 * kp), kp, kp)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            SimdKernel::Neon => unsafe {
                super::neon::mk_neon(x16.as_ptr(), x16.as_ptr().add(kp), self.w16.as_ptr().add(row0 * kp), kp, kp)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            SimdKernel::NeonDot => unsafe {
                let x = x8.as_ptr() as *const i8;
                super::neon::mk_neon_dot(x, x.add(kp), self.w8.as_ptr().add(row0 * kp), kp, kp)
            },
            _ => {
                let _ = x8;
                let mut out = [[0i32; 4]; 2];
                for (r, o) in out.iter_mut().enumerate() {
                    let xr = &x16[r * kp..(r + 1) * kp];
                    for (j, oj) in o.iter_mut().enumerate() {
                        let wr = &self.w16[(row0 + j) * kp..(row0 + j + 1) * kp];
                        *oj = xr.iter().zip(wr).fold(0i32, |a, (&x, &w)| a.wrapping_add(x as i32 * w as i32));
                    }
                }
                out
            }
        }
    }

    /// Converts one raw input row into slot `slot` (0 or 1) of the scratch rows.
    fn load_row(&self, raw: &[u8], slot: usize, x16: &mut [i16], x8: &mut [u8]) {
        let base = slot * self.kp;
        match self.kernel {
            k if k.wide() => x16[base..base + self.k].iter_mut().zip(raw).for_each(|(d, &v)| *d = v as i16),
            SimdKernel::NeonDot => x8[base..base + self.k].iter_mut().zip(raw).for_each(|(d, &v)| *d = v ^ 0x80),
            _ => x8[base..base + self.k].copy_from_slice(raw),
        }
    }
}

/// Where the K inputs of output row `r` of group `g` come from.
trait RowSource: Sync {
    fn fill(&self, g: usize, r: usize, dst: &mut [u8]);
}

/// Computes `groups * rows` output rows of `cout_g` codes each and hands every row to
/// `store(g, r, codes)` in order.
fn run<S: RowSource>(
    src: &S,
    groups: usize,
    rows: usize,
    p: &Packed,
    rq: &Requant,
    mut store: impl FnMut(usize, usize, &[u8]),
) -> Result<()> {
    if !p.kernel.is_available() {
        return Err(WqatError::invalid(format!("SIMD kernel {:?} is not available on this CPU", p.kernel)));
    }
    let total = groups * rows;
    let work = total as u64 * p.n4 as u64 * p.kp as u64;
    let cpus = layer_threads();
    let threads = (work / (1 << 18)).clamp(1, cpus as u64).min(total as u64) as usize;
    let chunk = total.div_ceil(threads);
    let cout_g = p.cout_g;
    let worker = |lo: usize, hi: usize| -> Vec<u8> {
        let mut out = vec![0u8; (hi - lo) * cout_g];
        let mut raw = vec![0u8; p.k];
        let (mut x16, mut x8) = (Vec::new(), Vec::new());
        if p.kernel.wide() {
            x16 = vec![0i16; 2 * p.kp];
        } else {
            x8 = vec![0u8; 2 * p.kp];
        }
        let mut i = lo;
        while i < hi {
            let (g, r) = (i / rows, i % rows);
            let pair = i + 1 < hi && (i + 1) / rows == g;
            src.fill(g, r, &mut raw);
            p.load_row(&raw, 0, &mut x16, &mut x8);
            if pair {
                src.fill(g, r + 1, &mut raw);
            }
            p.load_row(&raw, 1, &mut x16, &mut x8);
            for jb in (0..cout_g).step_by(4) {
                let res = p.micro(&x16, &x8, g * p.n4 + jb);
                for t in 0..4.min(cout_g - jb) {
                    let c = g * cout_g + jb + t;
                    out[(i - lo) * cout_g + jb + t] = rq.apply(res[0][t].wrapping_add(p.corr[c]), c);
                    if pair {
                        out[(i + 1 - lo) * cout_g + jb + t] = rq.apply(res[1][t].wrapping_add(p.corr[c]), c);
                    }
                }
            }
            i += if pair { 2 } else { 1 };
        }
        out
    };
    let ranges: Vec<(usize, usize)> = (0..threads).map(|t| (t * chunk, ((t + 1) * chunk).min(total))).collect();
    let results: Vec<Vec<u8>> = if threads == 1 {
        vec![worker(0, total)]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = ranges.iter().map(|&(lo, hi)| s.spawn(move || worker(lo, hi))).collect();
            hs.into_iter().map(|h| h.join().expect("int8 worker thread panicked")).collect()
        })
    };
    for (&(lo, hi), buf) in ranges.iter().zip(&results) {
        for i in lo..hi {
            store(i / rows, i % rows, &buf[(i - lo) * cout_g..(i - lo + 1) * cout_g]);
        }
    }
    Ok(())
}

struct LinearRows<'a> {
    x: &'a [u8],
    k: usize,
}

impl RowSource for LinearRows<'_> {
    fn fill(&self, _g: usize, r: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.x[r * self.k..(r + 1) * self.k]);
    }
}

/// SIMD linear (same contract as [`super::scalar::linear`]).
pub fn linear(
    kernel: SimdKernel,
    cfg: &LinearConfig,
    x: &[u8],
    w: &[i8],
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    cfg.validate(x.len(), w.len(), bias.len(), out.len())?;
    rq.validate(cfg.n)?;
    if kernel.uses_pairs() {
        if !kernel.is_available() {
            return Err(WqatError::invalid(format!("SIMD kernel {kernel:?} is not available on this CPU")));
        }
        let p = super::gemm::PackedLinear::new(cfg.k, cfg.n, cfg.x_zero, w, bias, rq, |m| m)?;
        let mut xp = Vec::new();
        p.load(x, cfg.m, &mut xp)?;
        let work = cfg.k * cfg.n.div_ceil(8) * 8;
        return par_rows(cfg.m, work, cfg.n, out, |rows, o| p.run(kernel, &xp, rows, o));
    }
    let p = Packed::new(kernel, w, 1, cfg.n, cfg.k, bias, cfg.x_zero);
    let n = cfg.n;
    run(&LinearRows { x, k: cfg.k }, 1, cfg.m, &p, rq, |_, r, v| out[r * n..(r + 1) * n].copy_from_slice(v))
}

struct ConvRows<'a> {
    x: &'a [u8],
    cfg: &'a Conv2dConfig,
    oh: usize,
    ow: usize,
}

impl RowSource for ConvRows<'_> {
    fn fill(&self, g: usize, r: usize, dst: &mut [u8]) {
        let c = self.cfg;
        let ohw = self.oh * self.ow;
        let (b, pos) = (r / ohw, r % ohw);
        let (oy, ox) = (pos / self.ow, pos % self.ow);
        let [kh, kw] = c.kernel;
        let cin_g = c.cin_g();
        let zero = c.x_zero as u8;
        let mut t = 0;
        for ci in 0..cin_g {
            let plane = &self.x[(b * c.c_in + g * cin_g + ci) * c.h * c.w..][..c.h * c.w];
            for ky in 0..kh {
                let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.padding[0] as isize;
                let row_ok = iy >= 0 && (iy as usize) < c.h;
                for kx in 0..kw {
                    let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize - c.padding[1] as isize;
                    dst[t] = if row_ok && ix >= 0 && (ix as usize) < c.w {
                        plane[iy as usize * c.w + ix as usize]
                    } else {
                        zero
                    };
                    t += 1;
                }
            }
        }
    }
}

/// SIMD conv2d as an implicit GEMM over im2col rows (same contract as
/// [`super::scalar::conv2d`]).
pub fn conv2d(
    kernel: SimdKernel,
    cfg: &Conv2dConfig,
    x: &[u8],
    w: &[i8],
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    cfg.validate(x.len(), w.len(), bias.len(), out.len())?;
    rq.validate(cfg.c_out)?;
    let (oh, ow) = cfg.out_hw()?;
    if kernel.uses_pairs() {
        if !kernel.is_available() {
            return Err(WqatError::invalid(format!("SIMD kernel {kernel:?} is not available on this CPU")));
        }
        let p = super::packed_conv::PackedConv::new(cfg, w, bias, rq)?;
        let mut xp = Vec::new();
        p.load_nchw(x, cfg.batch, &mut xp)?;
        let rows = p.rows(cfg.batch);
        let mut hwc = vec![0u8; rows * cfg.c_out];
        let work = cfg.k() * cfg.c_out.div_ceil(8) * 8;
        par_rows(rows, work, cfg.c_out, &mut hwc, |r, o| p.run(kernel, &xp, r, o))?;
        hwc_to_nchw(&hwc, cfg.batch, cfg.c_out, oh * ow, out);
        return Ok(());
    }
    let cout_g = cfg.cout_g();
    let p = Packed::new(kernel, w, cfg.groups, cout_g, cfg.k(), bias, cfg.x_zero);
    let ohw = oh * ow;
    let c_out = cfg.c_out;
    run(&ConvRows { x, cfg, oh, ow }, cfg.groups, cfg.batch * ohw, &p, rq, |g, r, v| {
        let (b, pos) = (r / ohw, r % ohw);
        for (j, &code) in v.iter().enumerate() {
            out[(b * c_out + g * cout_g + j) * ohw + pos] = code;
        }
    })
}

/// Threads worth using for `rows` rows of `work` multiply-adds each (at least 2^18 per
/// thread), at most the CPU count.
pub fn threads_for(rows: usize, work: usize) -> usize {
    let cpus = layer_threads();
    ((rows as u64 * work as u64) >> 18).clamp(1, cpus as u64).min(rows.max(1) as u64) as usize
}

/// Runs `f(rows, out rows)` over contiguous row ranges of `out` (`row_len` bytes a row),
/// on [`threads_for`] threads; each row is computed by one call, so results do not depend
/// on the split.
pub fn par_rows(
    rows: usize,
    work: usize,
    row_len: usize,
    out: &mut [u8],
    f: impl Fn(std::ops::Range<usize>, &mut [u8]) -> Result<()> + Sync,
) -> Result<()> {
    let threads = threads_for(rows, work);
    if threads <= 1 {
        return f(0..rows, out);
    }
    let chunk = rows.div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = out
            .chunks_mut(chunk * row_len)
            .enumerate()
            .map(|(t, o)| {
                let f = &f;
                s.spawn(move || f(t * chunk..((t + 1) * chunk).min(rows), o))
            })
            .collect();
        hs.into_iter().try_for_each(|h| h.join().unwrap_or_else(|_| Err(WqatError::invalid("int8 worker panicked"))))
    })
}

/// `[batch][hw][c]` -> `[batch][c][hw]`.
pub fn hwc_to_nchw(x: &[u8], batch: usize, c: usize, hw: usize, out: &mut [u8]) {
    for b in 0..batch {
        let (src, dst) = (&x[b * hw * c..][..hw * c], &mut out[b * hw * c..][..hw * c]);
        for p in 0..hw {
            for ch in 0..c {
                dst[ch * hw + p] = src[p * c + ch];
            }
        }
    }
}

/// `std::thread::available_parallelism()`, asked once per process (on Linux it reads
/// cgroup files, tens of microseconds a call).
pub fn cpu_count() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

thread_local! {
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the layer-level threads of this module turned off in this thread: for
/// callers that already split their work over the cores (the CPU executor's batch
/// chunks), so layers do not spawn threads of their own on top (oversubscription).
pub fn single_threaded<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_WORKER.with(|w| w.replace(true));
    let r = f();
    IN_WORKER.with(|w| w.set(was));
    r
}

/// Threads a layer may use: 1 inside [`single_threaded`], else the CPU count.
fn layer_threads() -> usize {
    if IN_WORKER.with(|w| w.get()) {
        1
    } else {
        cpu_count()
    }
}
