//! Host wrappers for `shaders/layernorm.wgsl`: LayerNorm over the last dimension (PyTorch
//! `nn.LayerNorm(D)` with its affine gamma/beta), forward and backward.
//!
//! Tensors are flat: `x` is any F32 tensor of `R * D` elements with `D = gamma.len()`
//! (`[B, T, D]` and `[B * T, D]` alike), `stats` is `[R, 2]` (mean, rstd per row) written by
//! the forward and read by the backward. The backward's column sums run as two fixed-order
//! passes through a partials buffer that [`layernorm_backward`] allocates once and the
//! returned dispatches keep alive (bind groups hold their buffers), so the caller sees no
//! scratch tensor and every replay gives the same bits.
//!
//! The row kernels come in two forms with the same results up to rounding ([`LnRows`]): one
//! workgroup per row (GPUs) and one invocation per row (CPU adapters, where workgroup
//! barriers cost ~10x an elementwise pass). The plain functions pick by adapter, following
//! `ctx.conv_direct` (so `WQAT_CONV_DIRECT=0/1` forces either); the `_with` forms take it.

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};

/// Rows per partial sum of the dgamma/dbeta reduction (raised when R would need more than
/// 65535 chunks).
pub const LAYERNORM_ROW_CHUNK: usize = 32;

const WG: usize = 64;
const MAX_GROUPS: usize = 65535;

super::kernel_params! {
    pub(crate) struct Params for ["layernorm"] {
        rows: u32,
        d: u32,
        chunk: u32,
        chunks: u32,
        eps: f32,
        _pad: [u32; 3],
    }
}

/// How the row kernels (forward, backward dx) map rows to the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LnRows {
    /// One 64-wide workgroup per row, tree sums in workgroup memory (GPUs).
    Workgroup,
    /// One invocation per row, serial sums, no barriers (CPU adapters).
    Invocation,
}

impl LnRows {
    /// The adapter's choice: [`LnRows::Invocation`] where `ctx.conv_direct` (CPU adapters,
    /// unless `WQAT_CONV_DIRECT` says otherwise), else [`LnRows::Workgroup`].
    pub fn for_adapter(ctx: &GpuContext) -> LnRows {
        if ctx.conv_direct {
            LnRows::Invocation
        } else {
            LnRows::Workgroup
        }
    }
    fn entry_grid(self, entry: &'static str, rows_entry: &'static str, rows: usize) -> (&'static str, [u32; 3]) {
        match self {
            LnRows::Workgroup => (entry, grid_1d(rows, 1)),
            LnRows::Invocation => (rows_entry, grid_1d(rows, WG as u32)),
        }
    }
}

/// Rows, width and the dgamma/dbeta chunking of a LayerNorm problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LnGeometry {
    /// R: rows normalized independently.
    pub rows: usize,
    /// D: the normalized (last) dimension.
    pub d: usize,
    /// Rows summed per partial in the backward.
    pub chunk: usize,
    /// `ceil(rows / chunk)`.
    pub chunks: usize,
}

fn f32_only(what: &str, ts: &[(&str, &GpuTensor)]) -> Result<()> {
    for (name, t) in ts {
        if t.dtype != DType::F32 {
            return Err(WqatError::shape(format!("{what}: {name} must be F32, got {:?}", t.dtype)));
        }
    }
    Ok(())
}

fn expect_len(what: &str, name: &str, t: &GpuTensor, n: usize) -> Result<()> {
    if t.len() != n {
        return Err(WqatError::shape(format!("{what}: {name} must have {n} elements, got shape {:?}", t.shape)));
    }
    Ok(())
}

/// Checks `x` against `gamma` (`x.len() = R * D`, `D = gamma.len()`) and the limits.
pub fn ln_geometry(what: &str, x: &GpuTensor, gamma: &GpuTensor) -> Result<LnGeometry> {
    let d = gamma.len();
    let n = x.len();
    if d == 0 || n == 0 {
        return Err(WqatError::shape(format!("{what}: empty x {:?} or gamma {:?}", x.shape, gamma.shape)));
    }
    if !n.is_multiple_of(d) {
        return Err(WqatError::shape(format!(
            "{what}: x {:?} has {n} elements, not a multiple of D = {d} (gamma {:?})",
            x.shape, gamma.shape
        )));
    }
    let rows = n / d;
    if n > u32::MAX as usize || 2 * rows > u32::MAX as usize {
        return Err(WqatError::Limit(format!("{what}: x {:?} does not fit u32 indexing", x.shape)));
    }
    if d.div_ceil(WG) > MAX_GROUPS {
        return Err(WqatError::Limit(format!("{what}: D = {d} needs more than {MAX_GROUPS} workgroups")));
    }
    let chunk = LAYERNORM_ROW_CHUNK.max(rows.div_ceil(MAX_GROUPS));
    Ok(LnGeometry { rows, d, chunk, chunks: rows.div_ceil(chunk) })
}

fn params(g: LnGeometry, eps: f32) -> Params {
    Params { rows: g.rows as u32, d: g.d as u32, chunk: g.chunk as u32, chunks: g.chunks as u32, eps, _pad: [0; 3] }
}

fn launch(ctx: &GpuContext, entry: &'static str, p: &Params, bufs: &[&GpuTensor], wg: [u32; 3]) -> Result<Dispatch> {
    let storage: Vec<&wgpu::Buffer> = bufs.iter().map(|t| &t.buffer).collect();
    Dispatch::new(ctx, &PipelineKey::new("layernorm", entry), bytemuck::bytes_of(p), &storage, wg)
}

/// `y = (x - mean) * rstd * gamma + beta` per row of `D = gamma.len()` values, with
/// `rstd = 1 / sqrt(var + eps)` (biased variance, as PyTorch); writes `stats[r] = (mean,
/// rstd)` for the backward. `y` has `x`'s element count, `beta` D, `stats` 2 R.
pub fn layernorm_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    y: &GpuTensor,
    stats: &GpuTensor,
    eps: f32,
) -> Result<Dispatch> {
    layernorm_forward_with(ctx, x, gamma, beta, y, stats, eps, LnRows::for_adapter(ctx))
}

/// [`layernorm_forward`] with the row mapping chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward_with(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    y: &GpuTensor,
    stats: &GpuTensor,
    eps: f32,
    rows: LnRows,
) -> Result<Dispatch> {
    const W: &str = "layernorm_forward";
    f32_only(W, &[("x", x), ("gamma", gamma), ("beta", beta), ("y", y), ("stats", stats)])?;
    let g = ln_geometry(W, x, gamma)?;
    expect_len(W, "beta", beta, g.d)?;
    expect_len(W, "y", y, x.len())?;
    expect_len(W, "stats", stats, 2 * g.rows)?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(WqatError::invalid(format!("{W}: eps {eps} must be finite and > 0")));
    }
    let (entry, grid) = rows.entry_grid(W, "layernorm_forward_rows", g.rows);
    launch(ctx, entry, &params(g, eps), &[x, gamma, beta, y, stats], grid)
}

/// Backward of [`layernorm_forward`] from its input `x`, `gamma` and saved `stats`:
/// `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` with `g = gamma * dy` (overwrites
/// `dx`), and `dgamma = sum_r dy * xhat`, `dbeta = sum_r dy` (overwritten, not
/// accumulated). Three dispatches, in order: dx, the per-chunk column partials, their sum.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    stats: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    dgamma: &GpuTensor,
    dbeta: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    layernorm_backward_with(ctx, x, gamma, stats, dy, dx, dgamma, dbeta, LnRows::for_adapter(ctx))
}

/// [`layernorm_backward`] with the row mapping of its dx kernel chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_with(
    ctx: &GpuContext,
    x: &GpuTensor,
    gamma: &GpuTensor,
    stats: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    dgamma: &GpuTensor,
    dbeta: &GpuTensor,
    rows: LnRows,
) -> Result<Vec<Dispatch>> {
    const W: &str = "layernorm_backward";
    f32_only(
        W,
        &[("x", x), ("gamma", gamma), ("stats", stats), ("dy", dy), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)],
    )?;
    let g = ln_geometry(W, x, gamma)?;
    expect_len(W, "stats", stats, 2 * g.rows)?;
    expect_len(W, "dy", dy, x.len())?;
    expect_len(W, "dx", dx, x.len())?;
    expect_len(W, "dgamma", dgamma, g.d)?;
    expect_len(W, "dbeta", dbeta, g.d)?;
    let partials = GpuTensor::zeros(ctx, &[2, g.chunks, g.d], DType::F32)?;
    let p = params(g, 1.0);
    let col_groups = g.d.div_ceil(WG) as u32;
    let (dx_entry, dx_grid) = rows.entry_grid("layernorm_backward_dx", "layernorm_backward_dx_rows", g.rows);
    Ok(vec![
        launch(ctx, dx_entry, &p, &[x, gamma, stats, dy, dx], dx_grid)?,
        launch(ctx, "layernorm_backward_partial", &p, &[x, stats, dy, &partials], [col_groups, g.chunks as u32, 1])?,
        launch(ctx, "layernorm_backward_reduce", &p, &[&partials, dgamma, dbeta], [col_groups, 1, 1])?,
    ])
}
