//! Host wrappers for `shaders/pool.wgsl`: max pool (with argmax), average pool
//! (count_include_pad) and global average pool, forward and backward, NCHW.

use super::expect_shape;
use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
pub use crate::reference::pool::Pool2dGeom;

super::kernel_params! {
    pub(crate) struct Params for ["pool"] {
        planes: u32,
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
        total: u32,
        _pad: [u32; 4],
    }
}

/// Pooling window: kernel, stride and zero padding (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

fn nchw(shape: &[usize], what: &str) -> Result<(usize, usize, usize, usize)> {
    match shape {
        [n, c, h, w] if n * c * h * w > 0 => Ok((*n, *c, *h, *w)),
        _ => Err(WqatError::shape(format!("{what}: expected a non-empty NCHW tensor, got {shape:?}"))),
    }
}

/// Checks `x` against `spec` (PyTorch's rules: padding at most half the kernel, the
/// window fits the padded input) and returns the geometry and output shape.
pub fn pool_geometry(x_shape: &[usize], spec: &PoolSpec) -> Result<(Pool2dGeom, [usize; 4])> {
    let (n, c, h, w) = nchw(x_shape, "pool")?;
    let (kh, kw) = spec.kernel;
    let (sh, sw) = spec.stride;
    let (ph, pw) = spec.padding;
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(WqatError::invalid(format!("pool kernel and stride must be positive: {spec:?}")));
    }
    if 2 * ph > kh || 2 * pw > kw {
        return Err(WqatError::invalid(format!("pool padding must be at most half the kernel: {spec:?}")));
    }
    if h + 2 * ph < kh || w + 2 * pw < kw {
        return Err(WqatError::shape(format!("pool window {spec:?} larger than the padded input {x_shape:?}")));
    }
    let g = Pool2dGeom { planes: n * c, h, w, kh, kw, sh, sw, ph, pw };
    let total = (n * c * h * w).max(n * c * g.oh() * g.ow());
    if total > u32::MAX as usize / 2 {
        return Err(WqatError::Limit(format!("pool input {x_shape:?} too large")));
    }
    Ok((g, [n, c, g.oh(), g.ow()]))
}

fn params(g: &Pool2dGeom, total: usize) -> Params {
    Params {
        planes: g.planes as u32,
        h: g.h as u32,
        w: g.w as u32,
        oh: g.oh() as u32,
        ow: g.ow() as u32,
        kh: g.kh as u32,
        kw: g.kw as u32,
        sh: g.sh as u32,
        sw: g.sw as u32,
        ph: g.ph as u32,
        pw: g.pw as u32,
        total: total as u32,
        _pad: [0; 4],
    }
}

fn launch(ctx: &GpuContext, entry: &'static str, p: &Params, bufs: &[&GpuTensor], wg: [u32; 3]) -> Result<Dispatch> {
    super::launch(ctx, &PipelineKey::new("pool", entry), p, bufs, wg)
}

/// Max pool: `y [N,C,OH,OW]`, `argmax` (U32, same shape as y, plane-local `iy * W + ix`).
pub fn maxpool_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    y: &GpuTensor,
    argmax: &GpuTensor,
    spec: &PoolSpec,
) -> Result<Dispatch> {
    let (g, os) = pool_geometry(&x.shape, spec)?;
    expect_shape(y, &os, "maxpool_forward y")?;
    expect_shape(argmax, &os, "maxpool_forward argmax")?;
    if argmax.dtype != DType::U32 {
        return Err(WqatError::invalid("maxpool argmax must be a U32 tensor"));
    }
    let n = y.len();
    let key = PipelineKey::new("pool", "maxpool_forward").with("TILED", maxpool_tiles(&g) as u32 as f64);
    super::launch(ctx, &key, &params(&g, n), &[x, y, argmax], grid_1d(n, 256))
}

/// Max pool backward: `dx[i] = sum of dy over the windows whose argmax is i`. Windows that
/// tile the input exactly (stride = kernel, no padding, sizes divisible) take the scatter
/// kernel (one invocation per output writes its whole window), others the gather.
pub fn maxpool_backward(
    ctx: &GpuContext,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    dx: &GpuTensor,
    spec: &PoolSpec,
) -> Result<Dispatch> {
    maxpool_backward_path(ctx, dy, argmax, dx, spec, true)
}

/// Whether max pool windows tile the input exactly (the scatter backward applies).
pub fn maxpool_tiles(g: &Pool2dGeom) -> bool {
    g.sh == g.kh && g.sw == g.kw && g.ph == 0 && g.pw == 0 && g.oh() * g.kh == g.h && g.ow() * g.kw == g.w
}

/// [`maxpool_backward`] with the path chosen: `allow_tiled = false` forces the gather (tests
/// run both on the same shapes).
pub fn maxpool_backward_path(
    ctx: &GpuContext,
    dy: &GpuTensor,
    argmax: &GpuTensor,
    dx: &GpuTensor,
    spec: &PoolSpec,
    allow_tiled: bool,
) -> Result<Dispatch> {
    let (g, os) = pool_geometry(&dx.shape, spec)?;
    expect_shape(dy, &os, "maxpool_backward dy")?;
    expect_shape(argmax, &os, "maxpool_backward argmax")?;
    if allow_tiled && maxpool_tiles(&g) {
        let n = dy.len();
        return launch(ctx, "maxpool_backward_tiled", &params(&g, n), &[dy, dx, argmax], grid_1d(n, 256));
    }
    let n = dx.len();
    launch(ctx, "maxpool_backward", &params(&g, n), &[dy, dx, argmax], grid_1d(n, 256))
}

/// Average pool (count_include_pad: divisor `kh * kw`).
pub fn avgpool_forward(ctx: &GpuContext, x: &GpuTensor, y: &GpuTensor, spec: &PoolSpec) -> Result<Dispatch> {
    let (g, os) = pool_geometry(&x.shape, spec)?;
    expect_shape(y, &os, "avgpool_forward y")?;
    let n = y.len();
    launch(ctx, "avgpool_forward", &params(&g, n), &[x, y], grid_1d(n, 256))
}

/// Average pool backward (gathered per input element).
pub fn avgpool_backward(ctx: &GpuContext, dy: &GpuTensor, dx: &GpuTensor, spec: &PoolSpec) -> Result<Dispatch> {
    let (g, os) = pool_geometry(&dx.shape, spec)?;
    expect_shape(dy, &os, "avgpool_backward dy")?;
    let n = dx.len();
    launch(ctx, "avgpool_backward", &params(&g, n), &[dy, dx], grid_1d(n, 256))
}

fn global_geom(x_shape: &[usize]) -> Result<(Pool2dGeom, [usize; 2])> {
    let (n, c, h, w) = nchw(x_shape, "global_avgpool")?;
    Ok((Pool2dGeom { planes: n * c, h, w, kh: h, kw: w, sh: 1, sw: 1, ph: 0, pw: 0 }, [n, c]))
}

/// Global average pool `[N,C,H,W] -> [N,C]`, one workgroup of 64 per plane.
pub fn global_avgpool_forward(ctx: &GpuContext, x: &GpuTensor, y: &GpuTensor) -> Result<Dispatch> {
    let (g, os) = global_geom(&x.shape)?;
    expect_shape(y, &os, "global_avgpool_forward y")?;
    launch(ctx, "global_avgpool_forward", &params(&g, g.planes), &[x, y], grid_1d(g.planes, 1))
}

/// Global average pool backward: `dx[n,c,h,w] = dy[n,c] / (H * W)`.
pub fn global_avgpool_backward(ctx: &GpuContext, dy: &GpuTensor, dx: &GpuTensor) -> Result<Dispatch> {
    let (g, os) = global_geom(&dx.shape)?;
    expect_shape(dy, &os, "global_avgpool_backward dy")?;
    let n = dx.len();
    launch(ctx, "global_avgpool_backward", &params(&g, n), &[dy, dx], grid_1d(n, 256))
}

/// The quantizer state of a pool's input: one channel (activations are per tensor).
fn check_pool_quant(q: &GpuTensor, what: &str) -> Result<()> {
    if q.dtype != DType::F32 || q.len() != crate::quant::QStateLayout::new(1).len() {
        return Err(WqatError::shape(format!(
            "{what}: expected a per-tensor quantizer state of {} values, got {:?}",
            crate::quant::QStateLayout::new(1).len(),
            q.shape
        )));
    }
    Ok(())
}

/// Average pool of a fake-quantized input as the integer model computes it: with the
/// quantizer `q` on, `round(sum of code offsets / (kh * kw)) * s` (exact, ties to even); off,
/// the float mean (see `shaders/pool.wgsl`).
pub fn avgpool_forward_q(
    ctx: &GpuContext,
    x: &GpuTensor,
    y: &GpuTensor,
    spec: &PoolSpec,
    q: &GpuTensor,
) -> Result<Dispatch> {
    let (g, os) = pool_geometry(&x.shape, spec)?;
    expect_shape(y, &os, "avgpool_forward_q y")?;
    check_pool_quant(q, "avgpool_forward_q")?;
    let n = y.len();
    launch(ctx, "avgpool_forward_q", &params(&g, n), &[x, y, q], grid_1d(n, 256))
}

/// Global average pool of a fake-quantized input, as [`avgpool_forward_q`].
pub fn global_avgpool_forward_q(ctx: &GpuContext, x: &GpuTensor, y: &GpuTensor, q: &GpuTensor) -> Result<Dispatch> {
    let (g, os) = global_geom(&x.shape)?;
    expect_shape(y, &os, "global_avgpool_forward_q y")?;
    check_pool_quant(q, "global_avgpool_forward_q")?;
    launch(ctx, "global_avgpool_forward_q", &params(&g, g.planes), &[x, y, q], grid_1d(g.planes, 1))
}
