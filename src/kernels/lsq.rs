//! Host wrappers for `shaders/lsq.wgsl`: LSQ gradients of the learnable scale and zero
//! point (PyTorch's `_fake_quantize_learnable_*` backward), reduced per channel on the GPU.
//! The input gradient is the straight-through estimator (`kernels::fake_quant::ste_backward`).

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::kernels::observer::check_state;
use crate::quant::{channel_geometry, QuantSpec};

/// Elements reduced by one workgroup of `lsq_partial`.
pub const CHUNK_LEN: usize = 4096;

super::kernel_params! {
    pub(crate) struct Params for ["lsq"] {
        channels: u32,
        inner: u32,
        per_channel: u32,
        chunks: u32,
        chunk_len: u32,
        _pad: u32,
        qmin: f32,
        qmax: f32,
        grad_factor: f32,
        _pad2: [f32; 3],
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
            _pad: 0,
            qmin: spec.qmin() as f32,
            qmax: spec.qmax() as f32,
            grad_factor,
            _pad2: [0.0; 3],
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
