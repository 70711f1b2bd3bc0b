//! Host wrappers for `shaders/lsq.wgsl`: LSQ gradients of the learnable scale and zero
//! point (PyTorch's `_fake_quantize_learnable_*` backward), reduced per channel on the GPU.
//! The input gradient is the straight-through estimator (`kernels::fake_quant::ste_backward`).

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::kernels::observer::check_state;
use crate::kernels::optim::HyperLayout;
use crate::quant::{channel_geometry, QuantSpec};

/// Smallest learned scale: `lsq_sync` clamps the parameter to it after every step
/// (PyTorch's `_LearnableFakeQuantize` clamps to `torch.finfo(float32).eps`).
pub const SCALE_EPS: f32 = f32::EPSILON;

/// LSQ's gradient scale `1 / sqrt(n * qmax)` for a quantizer whose scale sees `n` values
/// per channel and step (Esser et al. 2020, section 2.2).
pub fn grad_scale(n: usize, qmax: i32) -> f32 {
    (1.0 / ((n.max(1) as f64) * (qmax.max(1) as f64)).sqrt()) as f32
}

/// Elements reduced by one workgroup of `lsq_partial`.
pub const CHUNK_LEN: usize = 4096;

super::kernel_params! {
    pub(crate) struct Params for ["lsq"] {
        channels: u32,
        inner: u32,
        per_channel: u32,
        chunks: u32,
        chunk_len: u32,
        flags: u32,
        qmin: f32,
        qmax: f32,
        grad_factor: f32,
        eps: f32,
        _pad2: [f32; 2],
    }
}

/// The LSQ scale/zero-point gradient dispatches of one quantizer.
pub struct LsqGrad {
    dispatches: Vec<Dispatch>,
    _scratch: GpuTensor,
}

impl LsqGrad {
    /// Builds the two-stage reduction writing (overwriting) `dscale[c]` and `dzero[c]`
    /// (`[C]` f32 each) from `x`, `dy` (shape of `x`) and `state`, both multiplied by
    /// `grad_factor` (LSQ's `1/sqrt(n * qmax)`, or 1.0).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: &GpuContext,
        spec: &QuantSpec,
        x: &GpuTensor,
        dy: &GpuTensor,
        state: &GpuTensor,
        dscale: &GpuTensor,
        dzero: &GpuTensor,
        grad_factor: f32,
    ) -> Result<LsqGrad> {
        spec.validate()?;
        if x.is_empty() || x.shape != dy.shape || x.dtype != DType::F32 || dy.dtype != DType::F32 {
            return Err(WqatError::shape(format!(
                "lsq: x {:?} and dy {:?} must be equal non-empty f32",
                x.shape, dy.shape
            )));
        }
        let (channels, inner) = channel_geometry(&x.shape, spec.channel_axis)?;
        if channels == 0 {
            return Err(WqatError::shape("lsq: zero channels"));
        }
        check_state(state, channels)?;
        for (t, name) in [(dscale, "dscale"), (dzero, "dzero")] {
            if t.len() != channels || t.dtype != DType::F32 {
                return Err(WqatError::shape(format!("lsq: {name} has {} elements, want {channels} f32", t.len())));
            }
        }
        if !grad_factor.is_finite() {
            return Err(WqatError::invalid(format!("lsq: grad factor {grad_factor}")));
        }
        if x.len() > u32::MAX as usize / 2 {
            return Err(WqatError::Limit(format!("lsq input of {} elements", x.len())));
        }
        let per_channel = x.len() / channels;
        let chunks = per_channel.div_ceil(CHUNK_LEN);
        let p = Params {
            channels: channels as u32,
            inner: inner as u32,
            per_channel: per_channel as u32,
            chunks: chunks as u32,
            chunk_len: CHUNK_LEN as u32,
            flags: 0,
            qmin: spec.qmin() as f32,
            qmax: spec.qmax() as f32,
            grad_factor,
            eps: 0.0,
            _pad2: [0.0; 2],
        };
        let scratch = GpuTensor::zeros(ctx, &[2 * channels * chunks], DType::F32)?;
        let part = Dispatch::new(
            ctx,
            &PipelineKey::new("lsq", "lsq_partial"),
            bytemuck::bytes_of(&p),
            &[&x.buffer, &dy.buffer, &state.buffer, &scratch.buffer],
            grid_1d(channels * chunks, 1),
        )?;
        let fin = Dispatch::new(
            ctx,
            &PipelineKey::new("lsq", "lsq_final"),
            bytemuck::bytes_of(&p),
            &[&scratch.buffer, &dscale.buffer, &dzero.buffer],
            grid_1d(channels, 1),
        )?;
        Ok(LsqGrad { dispatches: vec![part, fin], _scratch: scratch })
    }
    /// The dispatches in order (partial sums, final sums).
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }
}

/// A learned quantizer's parameters: `scale[C]` and, for a learned zero point (LSQ+),
/// `zero[C]` (continuous; the state holds it rounded and clamped).
pub struct LsqParams<'a> {
    pub scale: &'a GpuTensor,
    pub zero: Option<&'a GpuTensor>,
}

fn lsq_params(spec: &QuantSpec, state: &GpuTensor, lp: &LsqParams) -> Result<Params> {
    spec.validate()?;
    let channels = lp.scale.len();
    if channels == 0 || lp.scale.dtype != DType::F32 {
        return Err(WqatError::shape(format!("lsq: scale parameter {:?} must be non-empty f32", lp.scale.shape)));
    }
    check_state(state, channels)?;
    if let Some(z) = lp.zero {
        if z.len() != channels || z.dtype != DType::F32 {
            return Err(WqatError::shape(format!("lsq: zero point has {} elements, want {channels} f32", z.len())));
        }
    }
    Ok(Params {
        channels: channels as u32,
        inner: 1,
        per_channel: 1,
        chunks: 1,
        chunk_len: 1,
        flags: lp.zero.is_some() as u32,
        qmin: spec.qmin() as f32,
        qmax: spec.qmax() as f32,
        grad_factor: 1.0,
        eps: SCALE_EPS,
        _pad2: [0.0; 2],
    })
}

fn lsq_param_dispatch(
    ctx: &GpuContext,
    entry: &'static str,
    spec: &QuantSpec,
    state: &GpuTensor,
    lp: &LsqParams,
) -> Result<Dispatch> {
    let p = lsq_params(spec, state, lp)?;
    let zero = lp.zero.unwrap_or(lp.scale);
    Dispatch::new(
        ctx,
        &PipelineKey::new("lsq", entry),
        bytemuck::bytes_of(&p),
        &[&lp.scale.buffer, &state.buffer, &zero.buffer],
        [(lp.scale.len() as u32).div_ceil(64), 1, 1],
    )
}

/// `scale <- state.scale` (and `zero <- state.zero_point`): a learned quantizer starts
/// from its calibrated observer.
pub fn lsq_init(ctx: &GpuContext, spec: &QuantSpec, state: &GpuTensor, lp: &LsqParams) -> Result<Dispatch> {
    lsq_param_dispatch(ctx, "lsq_init", spec, state, lp)
}

/// After the optimizer step: `scale = max(scale, SCALE_EPS)` (written back), the state's
/// scale, `inv_scale = 1/scale` and zero point `clamp(round(zero), qmin, qmax)`.
pub fn lsq_sync(ctx: &GpuContext, spec: &QuantSpec, state: &GpuTensor, lp: &LsqParams) -> Result<Dispatch> {
    lsq_param_dispatch(ctx, "lsq_sync", spec, state, lp)
}

/// `out = hyper` with the learning rate times `lr_mult` (the learned quantizer
/// parameters' own hyper buffer, derived on the GPU every step).
pub fn lsq_hyper(ctx: &GpuContext, hyper: &GpuTensor, out: &GpuTensor, lr_mult: f32) -> Result<Dispatch> {
    for (t, what) in [(hyper, "hyper"), (out, "LSQ hyper")] {
        if t.dtype != DType::F32 || t.len() != HyperLayout::LEN {
            return Err(WqatError::shape(format!("lsq_hyper: {what} buffer must be f32 [{}]", HyperLayout::LEN)));
        }
    }
    if !(lr_mult.is_finite() && lr_mult >= 0.0) {
        return Err(WqatError::invalid(format!("LSQ learning-rate multiplier {lr_mult} must be finite and >= 0")));
    }
    let p = Params {
        channels: 1,
        inner: 1,
        per_channel: 1,
        chunks: 1,
        chunk_len: 1,
        flags: 0,
        qmin: 0.0,
        qmax: 0.0,
        grad_factor: lr_mult,
        eps: 0.0,
        _pad2: [0.0; 2],
    };
    Dispatch::new(
        ctx,
        &PipelineKey::new("lsq", "lsq_hyper"),
        bytemuck::bytes_of(&p),
        &[&hyper.buffer, &out.buffer],
        [1, 1, 1],
    )
}
