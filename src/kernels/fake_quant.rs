//! Host wrappers for `shaders/fake_quant.wgsl`: elementwise fake-quant forward and the
//! straight-through-estimator backward, per tensor or per channel along any axis.

use super::same_shape;
use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::quant::{channel_geometry, QStateLayout, QuantSpec};

super::kernel_params! {
    pub(crate) struct Params for ["fake_quant"] {
        n: u32,
        channels: u32,
        inner: u32,
        _pad: u32,
        qmin: f32,
        qmax: f32,
        _pad2: [f32; 2],
    }
}

fn params(x: &GpuTensor, state: &GpuTensor, spec: &QuantSpec) -> Result<(Params, usize)> {
    spec.validate()?;
    let (channels, inner) = channel_geometry(&x.shape, spec.channel_axis)?;
    if state.len() != QStateLayout::new(channels).len() {
        return Err(WqatError::shape(format!(
            "quantizer state has {} slots, {} channels need {}",
            state.len(),
            channels,
            QStateLayout::new(channels).len()
        )));
    }
    let p = Params {
        n: x.len() as u32,
        channels: channels as u32,
        inner: inner as u32,
        _pad: 0,
        qmin: spec.qmin() as f32,
        qmax: spec.qmax() as f32,
        _pad2: [0.0; 2],
    };
    Ok((p, x.len()))
}

/// Elements per invocation of the elementwise kernels (override `EPT` of
/// `shaders/fake_quant.wgsl` and `shaders/copy.wgsl`): 1 on GPUs; on CPU adapters (lavapipe),
/// where every workgroup has a fixed cost, each invocation takes several.
pub fn elements_per_invocation(ctx: &GpuContext) -> u32 {
    if let Some(e) = std::env::var("WQAT_EPT").ok().and_then(|v| v.parse().ok()) {
        return e;
    }
    if ctx.summary.device_type == "Cpu" {
        4
    } else {
        1
    }
}

/// The pipeline key and grid of an elementwise entry point over `n` elements.
pub(crate) fn elementwise(
    ctx: &GpuContext,
    shader: &'static str,
    entry: &'static str,
    n: usize,
) -> (PipelineKey, [u32; 3]) {
    let ept = elements_per_invocation(ctx);
    (PipelineKey::new(shader, entry).with("EPT", ept as f64), grid_1d(n.div_ceil(ept as usize), 256))
}

/// `out = fake_quant(x)` with the scales and zero points held in `state`.
pub fn fake_quant_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    state: &GpuTensor,
    out: &GpuTensor,
    spec: &QuantSpec,
) -> Result<Dispatch> {
    same_shape(x, out, "fake_quant_forward")?;
    let (p, n) = params(x, state, spec)?;
    let (key, grid) = elementwise(ctx, "fake_quant", "fake_quant_forward", n);
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &[&x.buffer, &state.buffer, &out.buffer], grid)
}

/// `dx = dy * [qmin <= round(x/s)+z <= qmax]` (straight-through estimator).
pub fn ste_backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    state: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    spec: &QuantSpec,
) -> Result<Dispatch> {
    same_shape(x, dy, "ste_backward")?;
    same_shape(x, dx, "ste_backward")?;
    let (p, n) = params(x, state, spec)?;
    let (key, grid) = elementwise(ctx, "fake_quant", "ste_backward", n);
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &[&x.buffer, &state.buffer, &dy.buffer, &dx.buffer], grid)
}
