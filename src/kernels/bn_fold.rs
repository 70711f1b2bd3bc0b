//! Host wrappers for `shaders/bn_fold.wgsl`: QAT conv-BN folding exactly as PyTorch's
//! ConvBn2d `_forward_approximate` (running_var is a constant of the step).
//!
//! Forward: `fold_forward` (sf, w_fold) -> [fake-quant w_fold] -> conv -> `channel_div`
//! (y_orig = y_conv / sf) -> BatchNorm on y_orig (batch stats, or frozen running stats).
//! Backward: BN backward (dy_orig = its dx; dgamma, dbeta) -> `channel_div` (dy_conv =
//! dy_orig / sf) -> conv backward (dw_fold) -> `fold_weight_backward` (dw, dsf partial) ->
//! `fold_gamma_backward` (dsf, dgamma += dsf / sqrt(running_var + eps)).
//! The conv is assumed bias-free (ResNet style).

use super::{expect_len, same_shape};
use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuTensor, PipelineKey};

super::kernel_params! {
    pub(crate) struct Params for ["bn_fold"] {
        n: u32,
        c: u32,
        inner: u32,
        m: u32,
        eps: f32,
        _pad: [f32; 3],
    }
}

/// `(cout, inner)` of a weight `[Cout, ...]`.
fn weight_geom(w: &GpuTensor) -> Result<(usize, usize)> {
    if w.shape.len() < 2 || w.is_empty() {
        return Err(WqatError::shape(format!("bn_fold weight must be [Cout, ...], got {:?}", w.shape)));
    }
    Ok((w.shape[0], w.len() / w.shape[0]))
}

/// `(n, c, hw)` of an activation `[N, C]` or `[N, C, H, W]`.
fn act_geom(t: &GpuTensor) -> Result<(usize, usize, usize)> {
    match t.shape.as_slice() {
        [n, c] if n * c > 0 => Ok((*n, *c, 1)),
        [n, c, h, w] if n * c * h * w > 0 => Ok((*n, *c, h * w)),
        s => Err(WqatError::shape(format!("bn_fold activation must be [N, C] or [N, C, H, W], got {s:?}"))),
    }
}

fn launch(ctx: &GpuContext, entry: &'static str, p: &Params, bufs: &[&GpuTensor], wg: [u32; 3]) -> Result<Dispatch> {
    super::launch(ctx, &PipelineKey::new("bn_fold", entry), p, bufs, wg)
}

/// `sf[c] = gamma[c] / sqrt(running_var[c] + eps)`, `w_fold = w * sf[c]` (per output channel).
pub fn fold_forward(
    ctx: &GpuContext,
    w: &GpuTensor,
    gamma: &GpuTensor,
    running_var: &GpuTensor,
    sf: &GpuTensor,
    w_fold: &GpuTensor,
    eps: f32,
) -> Result<Dispatch> {
    let (c, inner) = weight_geom(w)?;
    same_shape(w, w_fold, "fold_forward w_fold")?;
    expect_len(gamma, c, "fold_forward gamma")?;
    expect_len(running_var, c, "fold_forward running_var")?;
    expect_len(sf, c, "fold_forward sf")?;
    if eps.is_nan() || eps <= 0.0 {
        return Err(WqatError::invalid(format!("bn_fold eps {eps} must be > 0")));
    }
    let n = w.len();
    let p = Params { n: n as u32, c: c as u32, inner: inner as u32, m: 1, eps, _pad: [0.0; 3] };
    launch(ctx, "fold_forward", &p, &[w, gamma, running_var, sf, w_fold], grid_1d(n.max(c), 256))
}

/// `dst = src / sf[c]` per channel of an activation (y_orig from y_conv, dy_conv from dy_orig).
pub fn channel_div(ctx: &GpuContext, src: &GpuTensor, sf: &GpuTensor, dst: &GpuTensor) -> Result<Dispatch> {
    let (_, c, hw) = act_geom(src)?;
    same_shape(src, dst, "channel_div")?;
    expect_len(sf, c, "channel_div sf")?;
    let n = src.len();
    let p = Params { n: n as u32, c: c as u32, inner: hw as u32, m: 1, eps: 0.0, _pad: [0.0; 3] };
    launch(ctx, "channel_div", &p, &[src, sf, dst], grid_1d(n, 256))
}

/// `dw = dw_fold * sf[c]`, `dsf[c] = sum(dw_fold[c, ...] * w[c, ...])` (the weight part).
/// One workgroup per output channel.
pub fn fold_weight_backward(
    ctx: &GpuContext,
    w: &GpuTensor,
    dw_fold: &GpuTensor,
    sf: &GpuTensor,
    dw: &GpuTensor,
    dsf: &GpuTensor,
) -> Result<Dispatch> {
    let (c, inner) = weight_geom(w)?;
    same_shape(w, dw_fold, "fold_weight_backward dw_fold")?;
    same_shape(w, dw, "fold_weight_backward dw")?;
    expect_len(sf, c, "fold_weight_backward sf")?;
    expect_len(dsf, c, "fold_weight_backward dsf")?;
    let p = Params { n: w.len() as u32, c: c as u32, inner: inner as u32, m: 1, eps: 0.0, _pad: [0.0; 3] };
    launch(ctx, "fold_weight_backward", &p, &[w, dw_fold, sf, dw, dsf], grid_1d(c, 1))
}

/// After [`fold_weight_backward`] and the BN backward (which WROTE dgamma):
/// `dsf[c] -= sum_{n,h,w}(dy_orig * y_conv) / sf[c]^2`, `dgamma[c] += dsf[c] / sqrt(running_var[c] + eps)`.
#[allow(clippy::too_many_arguments)]
pub fn fold_gamma_backward(
    ctx: &GpuContext,
    y_conv: &GpuTensor,
    dy_orig: &GpuTensor,
    sf: &GpuTensor,
    running_var: &GpuTensor,
    dsf: &GpuTensor,
    dgamma: &GpuTensor,
    eps: f32,
) -> Result<Dispatch> {
    let (n, c, hw) = act_geom(y_conv)?;
    same_shape(y_conv, dy_orig, "fold_gamma_backward dy_orig")?;
    for (t, what) in [(sf, "sf"), (running_var, "running_var"), (dsf, "dsf"), (dgamma, "dgamma")] {
        expect_len(t, c, &format!("fold_gamma_backward {what}"))?;
    }
    let p = Params { n: y_conv.len() as u32, c: c as u32, inner: hw as u32, m: n as u32, eps, _pad: [0.0; 3] };
    launch(ctx, "fold_gamma_backward", &p, &[y_conv, dy_orig, sf, running_var, dsf, dgamma], grid_1d(c, 1))
}

/// One workgroup per output channel: [`fold_forward`] (same bits), plus `rv_copy =
/// running_var` when given (the variance the fold used, kept for the backward) and the
/// `(min, max)` of each channel of `w_fold` into `partials` `[2 * Cout]` at `2c, 2c + 1`
/// (the first stage of the weight observer, see `observer::final_qparams`).
#[allow(clippy::too_many_arguments)]
pub fn fold_forward_obs(
    ctx: &GpuContext,
    w: &GpuTensor,
    gamma: &GpuTensor,
    running_var: &GpuTensor,
    sf: &GpuTensor,
    w_fold: &GpuTensor,
    rv_copy: Option<&GpuTensor>,
    partials: &GpuTensor,
    eps: f32,
) -> Result<Dispatch> {
    let (c, inner) = weight_geom(w)?;
    same_shape(w, w_fold, "fold_forward_obs w_fold")?;
    expect_len(gamma, c, "fold_forward_obs gamma")?;
    expect_len(running_var, c, "fold_forward_obs running_var")?;
    expect_len(sf, c, "fold_forward_obs sf")?;
    expect_len(partials, 2 * c, "fold_forward_obs partials")?;
    if let Some(r) = rv_copy {
        expect_len(r, c, "fold_forward_obs rv_copy")?;
    }
    if eps.is_nan() || eps <= 0.0 {
        return Err(WqatError::invalid(format!("bn_fold eps {eps} must be > 0")));
    }
    let p = Params { n: w.len() as u32, c: c as u32, inner: inner as u32, m: 1, eps, _pad: [0.0; 3] };
    let key = PipelineKey::new("bn_fold", "fold_forward_obs").with("COPY_RV", rv_copy.is_some() as u32 as f64);
    // Without COPY_RV the kernel never writes binding 6; sf only fills the slot.
    let rv_slot = rv_copy.unwrap_or(sf);
    super::launch(ctx, &key, &p, &[w, gamma, running_var, sf, w_fold, rv_slot, partials], grid_1d(c, 1))
}

/// One workgroup per output channel: [`fold_weight_backward`] then the finish of
/// [`fold_gamma_backward`] with the same bits, where `tsum[c] = sum(dy_orig * y_conv)` comes
/// from `batchnorm::bn_backward` (with `BnFoldGrad`) and `dgamma` was written by it:
/// `dw = dw_fold * sf`, `dsf = sum(dw_fold * w) - tsum / sf^2`,
/// `dgamma += dsf / sqrt(running_var + eps)`. With `guard` (the training metrics buffer), a
/// non-finite final `dgamma` sets the metrics' non-finite flag (as `loss::nonfinite_check`).
#[allow(clippy::too_many_arguments)]
pub fn fold_backward(
    ctx: &GpuContext,
    w: &GpuTensor,
    dw_fold: &GpuTensor,
    sf: &GpuTensor,
    dw: &GpuTensor,
    tsum: &GpuTensor,
    running_var: &GpuTensor,
    dgamma: &GpuTensor,
    eps: f32,
    guard: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let (c, inner) = weight_geom(w)?;
    if let Some(m) = guard {
        super::loss::check_metrics(m)?;
    }
    same_shape(w, dw_fold, "fold_backward dw_fold")?;
    same_shape(w, dw, "fold_backward dw")?;
    for (t, what) in [(sf, "sf"), (tsum, "tsum"), (running_var, "running_var"), (dgamma, "dgamma")] {
        expect_len(t, c, &format!("fold_backward {what}"))?;
    }
    let p = Params { n: w.len() as u32, c: c as u32, inner: inner as u32, m: 1, eps, _pad: [0.0; 3] };
    let key = PipelineKey::new("bn_fold", "fold_backward").with("GUARD", guard.is_some() as u32 as f64);
    let metrics = guard.unwrap_or(dgamma);
    super::launch(ctx, &key, &p, &[w, dw_fold, sf, dw, tsum, running_var, dgamma, metrics], grid_1d(c, 1))
}
