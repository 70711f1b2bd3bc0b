//! Host wrappers for `shaders/gelu.wgsl`: GELU in its exact erf form (PyTorch's default
//! `nn.GELU()`), forward and backward. Elementwise over the flat buffer; no aliasing.
//!
//! The transformer recipe keeps GELU in fp32 (the quantizers sit on the Linear inputs around
//! it), so there is no fused fake-quant variant. The tanh approximation is deliberately not
//! offered: a model trained with one form and converted with the other would break parity.

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};

super::kernel_params! {
    pub(crate) struct Params for ["gelu"] {
        n: u32,
        _pad: [u32; 3],
    }
}

fn check(what: &str, x: &GpuTensor, others: &[(&str, &GpuTensor)]) -> Result<usize> {
    for (name, t) in std::iter::once(&("x", x)).chain(others) {
        if t.dtype != DType::F32 {
            return Err(WqatError::shape(format!("{what}: {name} must be F32, got {:?}", t.dtype)));
        }
    }
    for (name, t) in others {
        if t.len() != x.len() {
            return Err(WqatError::shape(format!(
                "{what}: {name} shape {:?} has {} elements, x {:?} has {}",
                t.shape,
                t.len(),
                x.shape,
                x.len()
            )));
        }
    }
    let n = x.len();
    if n == 0 {
        return Err(WqatError::shape(format!("{what} of an empty tensor")));
    }
    if n > u32::MAX as usize {
        return Err(WqatError::Limit(format!("{what}: {n} elements do not fit a u32 index")));
    }
    Ok(n)
}

fn launch(ctx: &GpuContext, entry: &'static str, n: usize, bufs: &[&GpuTensor]) -> Result<Dispatch> {
    let p = Params { n: n as u32, _pad: [0; 3] };
    let storage: Vec<&wgpu::Buffer> = bufs.iter().map(|t| &t.buffer).collect();
    Dispatch::new(ctx, &PipelineKey::new("gelu", entry), bytemuck::bytes_of(&p), &storage, grid_1d(n, 256))
}

/// `y = 0.5 x (1 + erf(x / sqrt 2))` elementwise. Tensors are flat buffers: `y` needs `x`'s
/// element count (any shape, e.g. `[B, T, F]` against `[B * T, F]`).
pub fn gelu_forward(ctx: &GpuContext, x: &GpuTensor, y: &GpuTensor) -> Result<Dispatch> {
    let n = check("gelu_forward", x, &[("y", y)])?;
    launch(ctx, "gelu_forward", n, &[x, y])
}

/// `dx = dy * (Phi(x) + x phi(x))` (overwrites `dx`); `x` is the forward INPUT; `dy` and `dx`
/// need `x`'s element count.
pub fn gelu_backward(ctx: &GpuContext, x: &GpuTensor, dy: &GpuTensor, dx: &GpuTensor) -> Result<Dispatch> {
    let n = check("gelu_backward", x, &[("dy", dy), ("dx", dx)])?;
    launch(ctx, "gelu_backward", n, &[x, dy, dx])
}
