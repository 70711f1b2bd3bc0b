//! Host wrappers for `shaders/int8_ops.wgsl`: input quantization (optionally after GELU),
//! max pool, average pool, residual add, dequantization and patchify on packed uint8 tensors
//! ([`DType::I8x4`], see [`crate::infer::gpu::gemm`]).
//! CPU references: [`crate::infer::ActQuant::quantize`] / [`crate::infer::ActQuant::dequantize`], [`crate::infer::cpu::kernels::scalar::max_pool`],
//! [`crate::infer::cpu::avg_pool_codes`], [`crate::infer::cpu::kernels::scalar::add`],
//! [`crate::reference::graph::patchify`].

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::infer::ActQuant;
use crate::infer::{AddConfig, AvgDivisor, AvgRequant, PoolConfig};
use crate::kernels::sequence::PatchConfig;

const WG: u32 = 64;

crate::kernels::kernel_params! {
    #[derive(Default)]
    pub(crate) struct Params for ["int8_ops"] {
        total: u32,
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
        zero_a: i32,
        zero_b: i32,
        zero_out: i32,
        m0_a: i32,
        shift_a: i32,
        m0_b: i32,
        shift_b: i32,
        m0_out: i32,
        shift_out: i32,
        act_min: i32,
        act_max: i32,
        inv_s: f32,
        qmax: f32,
        scale: f32,
        channels: u32,
    }
}

fn check(t: &GpuTensor, dtype: DType, n: usize, what: &str) -> Result<()> {
    if t.dtype != dtype || t.len() != n || n == 0 {
        return Err(WqatError::shape(format!(
            "{what}: expected a {dtype:?} tensor of {n} elements, got {:?} of {}",
            t.dtype,
            t.len()
        )));
    }
    if n as u64 >= (1u64 << 32) - 8 {
        return Err(WqatError::Limit(format!("{what}: {n} elements exceed 32-bit indexing")));
    }
    Ok(())
}

fn dispatch(ctx: &GpuContext, entry: &'static str, p: &Params, bufs: &[&wgpu::Buffer]) -> Result<Dispatch> {
    Dispatch::new(
        ctx,
        &PipelineKey::new("int8_ops", entry),
        bytemuck::bytes_of(p),
        bufs,
        grid_1d((p.total as usize).div_ceil(4), WG),
    )
}

/// Quantizes f32 `x` into packed codes `out` (same length) with `q`.
pub fn quantize_f32(ctx: &GpuContext, q: &ActQuant, x: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    quantize_with(ctx, q, x, out, false)
}

/// Quantizes `gelu(x)` (erf form, `common/erf.wgsl`, as `shaders/gelu.wgsl`) into packed
/// codes `out` with `q`: an MLP's fc1 output in the integer model. The CPU's GELU uses libm's
/// erf, so a value within a few ulp of a rounding tie may get the neighbouring code.
pub fn gelu_quantize_f32(ctx: &GpuContext, q: &ActQuant, x: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    quantize_with(ctx, q, x, out, true)
}

fn quantize_with(ctx: &GpuContext, q: &ActQuant, x: &GpuTensor, out: &GpuTensor, gelu: bool) -> Result<Dispatch> {
    q.validate()?;
    let n = x.len();
    check(x, DType::F32, n, "quantize_f32 x")?;
    check(out, DType::I8x4, n, "quantize_f32 out")?;
    let p =
        Params { total: n as u32, zero_out: q.zero, inv_s: q.inv_scale, qmax: q.qmax() as f32, ..Default::default() };
    Dispatch::new(
        ctx,
        &PipelineKey::new("int8_ops", "quantize_f32").with("GELU", if gelu { 1.0 } else { 0.0 }),
        bytemuck::bytes_of(&p),
        &[&x.buffer, &out.buffer],
        grid_1d(n.div_ceil(4), WG),
    )
}

/// Non-overlapping patches of packed codes: x `[B, C, H, W]` -> out `[B, T, C*P*P]` (both
/// packed, flat), the permutation of [`crate::kernels::sequence::patchify_forward`].
pub fn patchify_u8(ctx: &GpuContext, cfg: &PatchConfig, x: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    cfg.validate()?;
    let n = cfg.x_shape().iter().product::<usize>();
    check(x, DType::I8x4, n, "patchify_u8 x")?;
    check(out, DType::I8x4, n, "patchify_u8 out")?;
    let p = Params {
        total: n as u32,
        h: cfg.height as u32,
        w: cfg.width as u32,
        kh: cfg.patch as u32,
        channels: cfg.channels as u32,
        ..Default::default()
    };
    dispatch(ctx, "patchify_u8", &p, &[&x.buffer, &out.buffer])
}

/// Dequantizes packed codes `x` into f32 `out` (same length): `(q - z) * s`.
pub fn dequantize_u8(ctx: &GpuContext, q: &ActQuant, x: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    q.validate()?;
    let n = x.len();
    check(x, DType::I8x4, n, "dequantize_u8 x")?;
    check(out, DType::F32, n, "dequantize_u8 out")?;
    let p = Params { total: n as u32, zero_a: q.zero, scale: q.scale, ..Default::default() };
    Dispatch::new(
        ctx,
        &PipelineKey::new("int8_ops", "dequantize_u8"),
        bytemuck::bytes_of(&p),
        &[&x.buffer, &out.buffer],
        grid_1d(n, WG),
    )
}

fn pool_params(cfg: &PoolConfig) -> Result<Params> {
    let (oh, ow) = cfg.out_hw()?;
    let total = cfg.batch * cfg.channels * oh * ow;
    Ok(Params {
        total: total as u32,
        h: cfg.h as u32,
        w: cfg.w as u32,
        oh: oh as u32,
        ow: ow as u32,
        kh: cfg.kernel[0] as u32,
        kw: cfg.kernel[1] as u32,
        sh: cfg.stride[0] as u32,
        sw: cfg.stride[1] as u32,
        ph: cfg.padding[0] as u32,
        pw: cfg.padding[1] as u32,
        ..Default::default()
    })
}

/// Max pool on packed codes (padding ignored).
pub fn maxpool_u8(ctx: &GpuContext, cfg: &PoolConfig, x: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    let p = pool_params(cfg)?;
    cfg.validate(x.len(), out.len())?;
    check(x, DType::I8x4, x.len(), "maxpool_u8 x")?;
    check(out, DType::I8x4, p.total as usize, "maxpool_u8 out")?;
    dispatch(ctx, "maxpool_u8", &p, &[&x.buffer, &out.buffer])
}

/// Average pool on packed codes, divisor `kh * kw` (padding counts as zero-valued; exact
/// half-to-even division when the scale is kept, see [`AvgRequant`]), as
/// [`crate::infer::cpu::avg_pool_codes`].
pub fn avgpool_u8(
    ctx: &GpuContext,
    cfg: &PoolConfig,
    rq: &AvgRequant,
    x: &GpuTensor,
    out: &GpuTensor,
) -> Result<Dispatch> {
    rq.validate()?;
    // m0_b = 1: m0_a is an exact divisor; else (m0_a, shift_a) a fixed-point multiplier.
    let (m0, shift, exact) = match rq.divisor(cfg.kernel[0] * cfg.kernel[1])? {
        AvgDivisor::Exact(n) => (n, 0, 1),
        AvgDivisor::Fixed(m0, shift) => (m0, shift, 0),
    };
    let p = Params {
        zero_a: rq.in_zero,
        zero_out: rq.out_zero,
        m0_a: m0,
        shift_a: shift,
        m0_b: exact,
        act_min: rq.act_min,
        act_max: rq.act_max,
        ..pool_params(cfg)?
    };
    cfg.validate(x.len(), out.len())?;
    check(x, DType::I8x4, x.len(), "avgpool_u8 x")?;
    check(out, DType::I8x4, p.total as usize, "avgpool_u8 out")?;
    dispatch(ctx, "avgpool_u8", &p, &[&x.buffer, &out.buffer])
}

/// Elementwise quantized add of two packed code tensors of equal length.
pub fn add_u8(ctx: &GpuContext, cfg: &AddConfig, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    let n = a.len();
    check(a, DType::I8x4, n, "add_u8 a")?;
    check(b, DType::I8x4, n, "add_u8 b")?;
    check(out, DType::I8x4, n, "add_u8 out")?;
    let p = Params {
        total: n as u32,
        zero_a: cfg.a_zero,
        zero_b: cfg.b_zero,
        zero_out: cfg.out_zero,
        m0_a: cfg.a_mult.0,
        shift_a: cfg.a_mult.1,
        m0_b: cfg.b_mult.0,
        shift_b: cfg.b_mult.1,
        m0_out: cfg.out_mult.0,
        shift_out: cfg.out_mult.1,
        act_min: cfg.act_min,
        act_max: cfg.act_max,
        ..Default::default()
    };
    dispatch(ctx, "add_u8", &p, &[&a.buffer, &out.buffer, &b.buffer])
}
