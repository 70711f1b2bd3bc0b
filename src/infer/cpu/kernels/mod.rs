//! CPU integer inference backend for converted models (gemmlowp / TFLite arithmetic).
//!
//! * Activations: uint8 codes with zero point `z_x` (affine; `[0, 2^b - 1]` for b bits).
//! * Weights: int8 symmetric per output channel (`z = 0`, `[-(2^(b-1)-1), 2^(b-1)-1]`).
//! * Bias: int32 `round(b / (s_x * s_w[c]))` ([`requant::quantize_bias`]).
//! * Accumulator: `acc[i, c] = sum_k (x_q - z_x) * w_q + bias_q` in int32 (wrapping).
//! * Output: `z_out + MultiplyByQuantizedMultiplier(acc, M0[c], shift[c])` clamped to
//!   `[act_min, act_max]` (ReLU / ReLU6 are clamps), see [`requant`].
//!
//! [`scalar`] is the definition (plain loops); [`simd`] runs the same arithmetic with
//! AVX2 / NEON / NEON sdot micro-kernels chosen at runtime (AVX-512 VNNI on request, see
//! [`SimdKernel::best`]), multithreaded, and bit-exact with the scalar code. The GPU kernels (`shaders/int8_gemm.wgsl`,
//! [`crate::infer::gpu::gemm`]) match both. AVX2 (and the portable fallback) use layers packed
//! once ([`PackedConv`], [`PackedLinear`]: [`gemm`], [`packed_conv`]) on channels-last
//! activations ([`nhwc`]), which the CPU executor of converted models keeps per model.
//!
//! Pooling and add are memory-bound: the `Simd` backend runs the scalar code for them (the
//! model executor's channels-last path has its own pools, and fuses 2x2 max pools into
//! the conv before them).

pub mod gemm;
pub mod nhwc;
pub mod packed_conv;
pub mod scalar;
pub mod simd;

#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use gemm::PackedLinear;
pub use packed_conv::PackedConv;
pub use simd::SimdKernel;

use crate::error::Result;
use crate::infer::weights::PackedWeights;
use crate::infer::{AddConfig, AvgRequant, Conv2dConfig, LinearConfig, PoolConfig, Requant};

/// Which CPU implementation runs an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuBackend {
    /// The scalar reference (single thread).
    Scalar,
    /// The best SIMD kernel of this CPU ([`SimdKernel::best`]), multithreaded.
    #[default]
    Simd,
    /// A given SIMD kernel (tests and benchmarks); an error if the CPU lacks it.
    Kernel(SimdKernel),
}

impl CpuBackend {
    /// The SIMD kernel this backend runs (`None`: scalar).
    pub fn kernel(self) -> Option<SimdKernel> {
        match self {
            CpuBackend::Scalar => None,
            CpuBackend::Simd => Some(SimdKernel::best()),
            CpuBackend::Kernel(k) => Some(k),
        }
    }
}

/// Int8 linear layer: x `[m, k]` u8, w `[n, k]` i8, bias `[n]` i32 -> out `[m, n]` u8.
pub fn linear(
    backend: CpuBackend,
    cfg: &LinearConfig,
    x: &[u8],
    w: &[i8],
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    match backend.kernel() {
        None => scalar::linear(cfg, x, w, bias, rq, out),
        Some(k) => simd::linear(k, cfg, x, w, bias, rq, out),
    }
}

/// Int32 accumulators of an int8 linear layer (bias included, no requantization): x `[m, k]`
/// u8, w `[n, k]` i8, bias `[n]` i32 -> acc `[m, n]`. Integer sums are exact, so every
/// backend gives the same bits; all of them run the (auto-vectorized) scalar loop today.
pub fn linear_acc(
    _backend: CpuBackend,
    cfg: &LinearConfig,
    x: &[u8],
    w: &[i8],
    bias: &[i32],
    acc: &mut [i32],
) -> Result<()> {
    scalar::linear_acc(cfg, x, w, bias, acc)
}

/// Int8 NCHW conv2d (stride, zero-point padding, dilation, groups / depthwise).
pub fn conv2d(
    backend: CpuBackend,
    cfg: &Conv2dConfig,
    x: &[u8],
    w: &[i8],
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    match backend.kernel() {
        None => scalar::conv2d(cfg, x, w, bias, rq, out),
        Some(k) => simd::conv2d(k, cfg, x, w, bias, rq, out),
    }
}

/// [`linear`] of a model's packed weights: the scalar kernel reads them packed (one
/// channel row unpacked at a time); the SIMD kernels repack the layer into their own
/// transient layout per call, from a transient int8 copy.
pub fn linear_packed(
    backend: CpuBackend,
    cfg: &LinearConfig,
    x: &[u8],
    w: &PackedWeights,
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    match backend.kernel() {
        None => scalar::linear_packed(cfg, x, w, bias, rq, out),
        Some(k) => simd::linear(k, cfg, x, &w.codes(), bias, rq, out),
    }
}

/// [`linear_acc`] of packed weights (read packed by every backend, see [`linear_acc`]).
pub fn linear_acc_packed(
    _backend: CpuBackend,
    cfg: &LinearConfig,
    x: &[u8],
    w: &PackedWeights,
    bias: &[i32],
    acc: &mut [i32],
) -> Result<()> {
    scalar::linear_acc_packed(cfg, x, w, bias, acc)
}

/// [`conv2d`] of a model's packed weights (as [`linear_packed`]).
pub fn conv2d_packed(
    backend: CpuBackend,
    cfg: &Conv2dConfig,
    x: &[u8],
    w: &PackedWeights,
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    match backend.kernel() {
        None => scalar::conv2d_packed(cfg, x, w, bias, rq, out),
        Some(k) => simd::conv2d(k, cfg, x, &w.codes(), bias, rq, out),
    }
}

/// Max pool on uint8 codes (scale and zero point unchanged).
pub fn max_pool(_backend: CpuBackend, cfg: &PoolConfig, x: &[u8], out: &mut [u8]) -> Result<()> {
    scalar::max_pool(cfg, x, out)
}

/// Average pool with integer rescaling (see [`AvgRequant`]).
pub fn avg_pool(_backend: CpuBackend, cfg: &PoolConfig, rq: &AvgRequant, x: &[u8], out: &mut [u8]) -> Result<()> {
    scalar::avg_pool(cfg, rq, x, out)
}

/// Global average pool: `[batch, channels, h, w]` -> `[batch, channels]`.
pub fn global_avg_pool(
    _backend: CpuBackend,
    cfg: &PoolConfig,
    rq: &AvgRequant,
    x: &[u8],
    out: &mut [u8],
) -> Result<()> {
    scalar::global_avg_pool(cfg, rq, x, out)
}

/// Residual add of two uint8 tensors with different scales (see [`AddConfig`]).
pub fn add(_backend: CpuBackend, cfg: &AddConfig, a: &[u8], b: &[u8], out: &mut [u8]) -> Result<()> {
    scalar::add(cfg, a, b, out)
}
