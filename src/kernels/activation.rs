//! Host wrappers for `shaders/activation.wgsl`: ReLU / ReLU6 forward and backward, residual
//! add, gradient accumulation and fill. Elementwise over the flat buffer; no aliasing.

use super::same_shape;
use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::quant::{QStateLayout, QuantSpec};

super::kernel_params! {
    pub(crate) struct Params for ["activation"] {
        n: u32,
        _pad: [u32; 2],
        value: f32,
        qmin_a: f32,
        qmax_a: f32,
        qmin_b: f32,
        qmax_b: f32,
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
    let p = Params { n: n as u32, _pad: [0; 2], value, qmin_a: 0.0, qmax_a: 0.0, qmin_b: 0.0, qmax_b: 0.0 };
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

/// A per-tensor quantizer whose fake-quant [`add_quant`] applies to one of its inputs.
#[derive(Debug, Clone, Copy)]
pub struct AddInputQuant<'a> {
    pub state: &'a GpuTensor,
    pub spec: QuantSpec,
}

/// Number of `(min, max)` partials [`add_quant`] writes for `n` elements (one per workgroup).
pub fn add_quant_chunks(ctx: &GpuContext, n: usize) -> usize {
    n.div_ceil(256 * super::fake_quant::elements_per_invocation(ctx) as usize).max(1)
}

/// Residual add of a quantized graph: `out = FQ(a) + FQ(b)` with each input's per-tensor
/// fake-quant fused (`None`: the input as is), then `max(., 0)` when `relu`; the same bits as
/// `fake_quant_forward` of the inputs, [`add_forward`] and [`relu_forward`]. Also writes the
/// `(min, max)` of each workgroup's outputs into `partials` (`2 * add_quant_chunks` values):
/// the first stage of a per-tensor observer of `out`.
#[allow(clippy::too_many_arguments)]
pub fn add_quant(
    ctx: &GpuContext,
    a: &GpuTensor,
    qa: Option<AddInputQuant<'_>>,
    b: &GpuTensor,
    qb: Option<AddInputQuant<'_>>,
    out: &GpuTensor,
    relu: bool,
    partials: &GpuTensor,
) -> Result<Dispatch> {
    same_shape(a, b, "add_quant")?;
    same_shape(a, out, "add_quant")?;
    if a.is_empty() || a.len() > u32::MAX as usize / 2 {
        return Err(WqatError::shape(format!("add_quant of {:?}", a.shape)));
    }
    let chunks = add_quant_chunks(ctx, a.len());
    super::expect_len(partials, 2 * chunks, "add_quant partials")?;
    let mut range = [0.0f32; 4];
    for (k, q) in [qa, qb].iter().enumerate() {
        if let Some(q) = q {
            q.spec.validate()?;
            if q.spec.channel_axis.is_some() || q.state.len() != QStateLayout::new(1).len() {
                return Err(WqatError::shape("add_quant fuses per-tensor quantizers only"));
            }
            range[2 * k] = q.spec.qmin() as f32;
            range[2 * k + 1] = q.spec.qmax() as f32;
        }
    }
    let p = Params {
        n: a.len() as u32,
        _pad: [0; 2],
        value: 0.0,
        qmin_a: range[0],
        qmax_a: range[1],
        qmin_b: range[2],
        qmax_b: range[3],
    };
    let ept = super::fake_quant::elements_per_invocation(ctx);
    let key = PipelineKey::new("activation", "add_quant")
        .with("FQ_A", qa.is_some() as u32 as f64)
        .with("FQ_B", qb.is_some() as u32 as f64)
        .with("RELU", relu as u32 as f64)
        .with("EPT", ept as f64);
    let sa = qa.map(|q| q.state).unwrap_or(a);
    let sb = qb.map(|q| q.state).unwrap_or(b);
    super::launch(ctx, &key, &p, &[a, b, out, sa, sb, partials], grid_1d(chunks, 1))
}
