//! Host wrappers for `shaders/activation.wgsl`: ReLU / ReLU6 forward and backward, residual
//! add, gradient accumulation and fill. Elementwise over the flat buffer; no aliasing.

use super::same_shape;
use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuTensor, PipelineKey};

super::kernel_params! {
    pub(crate) struct Params for ["activation"] {
        n: u32,
        _pad: [u32; 2],
        value: f32,
    }
}

/// Which clamp the ReLU applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relu {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

fn launch(
    ctx: &GpuContext,
    entry: &'static str,
    kind: Relu,
    n: usize,
    value: f32,
    bufs: &[&GpuTensor],
) -> Result<Dispatch> {
    let p = Params { n: n as u32, _pad: [0; 2], value };
    let key = PipelineKey::new("activation", entry).with("RELU6", (kind == Relu::Relu6) as u32 as f64);
    super::launch(ctx, &key, &p, bufs, grid_1d(n, 256))
}

/// `y = relu(x)` (or ReLU6).
pub fn relu_forward(ctx: &GpuContext, x: &GpuTensor, y: &GpuTensor, kind: Relu) -> Result<Dispatch> {
    same_shape(x, y, "relu_forward")?;
    launch(ctx, "relu_forward", kind, x.len(), 0.0, &[x, y])
}

/// `dx = dy * [0 < x (< 6)]`; `x` is the forward INPUT (for plain ReLU the output also works).
pub fn relu_backward(ctx: &GpuContext, x: &GpuTensor, dy: &GpuTensor, dx: &GpuTensor, kind: Relu) -> Result<Dispatch> {
    same_shape(x, dy, "relu_backward")?;
    same_shape(x, dx, "relu_backward")?;
    launch(ctx, "relu_backward", kind, x.len(), 0.0, &[x, dy, dx])
}

/// Residual add `out = a + b`.
pub fn add_forward(ctx: &GpuContext, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    same_shape(a, b, "add_forward")?;
    same_shape(a, out, "add_forward")?;
    launch(ctx, "add_forward", Relu::Relu, a.len(), 0.0, &[a, b, out])
}

/// Gradient fan-out `dst += src`.
pub fn accumulate(ctx: &GpuContext, src: &GpuTensor, dst: &GpuTensor) -> Result<Dispatch> {
    same_shape(src, dst, "accumulate")?;
    launch(ctx, "accumulate", Relu::Relu, src.len(), 0.0, &[src, dst])
}

/// `buf = value` for every element.
pub fn fill(ctx: &GpuContext, buf: &GpuTensor, value: f32) -> Result<Dispatch> {
    if buf.is_empty() {
        return Err(WqatError::shape("fill of an empty tensor"));
    }
    launch(ctx, "fill", Relu::Relu, buf.len(), value, &[buf])
}
