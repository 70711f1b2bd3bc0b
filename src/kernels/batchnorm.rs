//! Host wrappers for `shaders/batchnorm.wgsl`: BatchNorm2d training statistics (with the
//! running-stat update), eval statistics, the normalize/affine apply (optional fused ReLU)
//! and the backward (dgamma/dbeta reduction, then dx).
//!
//! `saved` is an F32 tensor `[2 * C]` = `[mean[C], invstd[C]]`: written by [`bn_stats`]
//! (training) or [`bn_eval_stats`] (eval/frozen), read by everything else.
//! Training step: `bn_stats`, `bn_apply`; backward: `bn_backward_reduce`, `bn_backward_dx`.

use super::{expect_len, launch, same_shape};
use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuTensor, PipelineKey};
pub use crate::reference::batchnorm::Nchw;

super::kernel_params! {
    pub(crate) struct Params for ["batchnorm"] {
        c: u32,
        hw: u32,
        m: u32,
        total: u32,
        eps: f32,
        momentum: f32,
        _pad: [f32; 2],
    }
}

/// `(n, c, hw)` of an `[N, C]` or `[N, C, H, W]` activation.
pub fn bn_geometry(shape: &[usize]) -> Result<Nchw> {
    let g = match shape {
        [n, c] => Nchw { n: *n, c: *c, hw: 1 },
        [n, c, h, w] => Nchw { n: *n, c: *c, hw: h * w },
        _ => return Err(WqatError::shape(format!("batchnorm expects [N, C] or [N, C, H, W], got {shape:?}"))),
    };
    if g.is_empty() {
        return Err(WqatError::shape(format!("batchnorm of an empty tensor {shape:?}")));
    }
    if g.len() > u32::MAX as usize / 2 {
        return Err(WqatError::Limit(format!("batchnorm input {shape:?} too large")));
    }
    Ok(g)
}

fn params(g: Nchw, eps: f32, momentum: f32) -> Params {
    Params { c: g.c as u32, hw: g.hw as u32, m: g.m() as u32, total: g.len() as u32, eps, momentum, _pad: [0.0; 2] }
}

/// Training statistics of `x`: `saved = [mean, 1/sqrt(var_biased + eps)]`, and
/// `running = (1 - momentum) * running + momentum * batch` (running_var unbiased).
/// Needs more than one value per channel (as PyTorch).
pub fn bn_stats(
    ctx: &GpuContext,
    x: &GpuTensor,
    saved: &GpuTensor,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
    eps: f32,
    momentum: f32,
) -> Result<Dispatch> {
    let g = bn_geometry(&x.shape)?;
    if g.m() < 2 {
        return Err(WqatError::shape(format!(
            "batchnorm training needs more than 1 value per channel, got {:?}",
            x.shape
        )));
    }
    if (eps.is_nan() || eps <= 0.0) || !(0.0..=1.0).contains(&momentum) {
        return Err(WqatError::invalid(format!("batchnorm eps {eps} must be > 0, momentum {momentum} in [0, 1]")));
    }
    expect_len(saved, 2 * g.c, "bn_stats saved")?;
    expect_len(running_mean, g.c, "bn_stats running_mean")?;
    expect_len(running_var, g.c, "bn_stats running_var")?;
    let key = PipelineKey::new("batchnorm", "bn_stats");
    launch(ctx, &key, &params(g, eps, momentum), &[x, saved, running_mean, running_var], grid_1d(g.c, 1))
}

/// Eval (or frozen) statistics: `saved = [running_mean, 1/sqrt(running_var + eps)]`.
pub fn bn_eval_stats(
    ctx: &GpuContext,
    running_mean: &GpuTensor,
    running_var: &GpuTensor,
    saved: &GpuTensor,
    eps: f32,
) -> Result<Dispatch> {
    let c = running_mean.len();
    expect_len(running_var, c, "bn_eval_stats running_var")?;
    expect_len(saved, 2 * c, "bn_eval_stats saved")?;
    if eps.is_nan() || eps <= 0.0 {
        return Err(WqatError::invalid(format!("batchnorm eps {eps} must be > 0")));
    }
    let g = Nchw { n: 1, c, hw: 1 };
    let key = PipelineKey::new("batchnorm", "bn_eval_stats");
    launch(ctx, &key, &params(g, eps, 0.0), &[running_mean, running_var, saved], grid_1d(c, 256))
}

/// `y = (x - mean) * invstd * gamma + beta`, then `max(y, 0)` when `relu`.
pub fn bn_apply(
    ctx: &GpuContext,
    x: &GpuTensor,
    saved: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    y: &GpuTensor,
    relu: bool,
) -> Result<Dispatch> {
    let g = bn_geometry(&x.shape)?;
    same_shape(x, y, "bn_apply")?;
    expect_len(saved, 2 * g.c, "bn_apply saved")?;
    expect_len(gamma, g.c, "bn_apply gamma")?;
    expect_len(beta, g.c, "bn_apply beta")?;
    let key = PipelineKey::new("batchnorm", "bn_apply").with("RELU", relu as u32 as f64);
    launch(ctx, &key, &params(g, 1.0, 0.0), &[x, saved, gamma, beta, y], grid_1d(g.len(), 256))
}

/// The tensors of the BatchNorm backward.
#[derive(Debug, Clone, Copy)]
pub struct BnBackward<'a> {
    /// Forward input.
    pub x: &'a GpuTensor,
    /// `[mean, invstd]` the forward used.
    pub saved: &'a GpuTensor,
    pub gamma: &'a GpuTensor,
    /// Gradient of the output.
    pub dy: &'a GpuTensor,
    /// Forward output when the forward fused a ReLU (masks `dy` by `y > 0`), else `None`.
    pub y_relu: Option<&'a GpuTensor>,
    /// Written by `bn_backward_reduce` (overwritten, not accumulated), read by `bn_backward_dx`.
    pub dgamma: &'a GpuTensor,
    pub dbeta: &'a GpuTensor,
    /// Gradient of the input (written by `bn_backward_dx`).
    pub dx: &'a GpuTensor,
}

impl BnBackward<'_> {
    fn check(&self) -> Result<Nchw> {
        let g = bn_geometry(&self.x.shape)?;
        same_shape(self.x, self.dy, "bn_backward dy")?;
        same_shape(self.x, self.dx, "bn_backward dx")?;
        if let Some(y) = self.y_relu {
            same_shape(self.x, y, "bn_backward y")?;
        }
        expect_len(self.saved, 2 * g.c, "bn_backward saved")?;
        expect_len(self.gamma, g.c, "bn_backward gamma")?;
        expect_len(self.dgamma, g.c, "bn_backward dgamma")?;
        expect_len(self.dbeta, g.c, "bn_backward dbeta")?;
        Ok(g)
    }
}

/// `dgamma = sum(g * xhat)`, `dbeta = sum(g)` per channel, `g = dy` (masked by `y > 0`
/// when `y_relu` is given). One workgroup per channel.
pub fn bn_backward_reduce(ctx: &GpuContext, t: &BnBackward<'_>) -> Result<Dispatch> {
    let g = t.check()?;
    let y = t.y_relu.unwrap_or(t.dy);
    let key = PipelineKey::new("batchnorm", "bn_backward_reduce").with("RELU", t.y_relu.is_some() as u32 as f64);
    launch(ctx, &key, &params(g, 1.0, 0.0), &[t.x, t.saved, t.dy, y, t.dgamma, t.dbeta], grid_1d(g.c, 1))
}

/// `dx`, after [`bn_backward_reduce`]. `training`: the statistics were the batch's own,
/// `dx = gamma * invstd / M * (M * g - dbeta - xhat * dgamma)`; otherwise (eval/frozen
/// statistics) `dx = gamma * invstd * g`.
pub fn bn_backward_dx(ctx: &GpuContext, t: &BnBackward<'_>, training: bool) -> Result<Dispatch> {
    let g = t.check()?;
    let y = t.y_relu.unwrap_or(t.dy);
    let key = PipelineKey::new("batchnorm", "bn_backward_dx")
        .with("RELU", t.y_relu.is_some() as u32 as f64)
        .with("TRAINING", training as u32 as f64);
    launch(
        ctx,
        &key,
        &params(g, 1.0, 0.0),
        &[t.x, t.saved, t.dy, y, t.gamma, t.dgamma, t.dbeta, t.dx],
        grid_1d(g.len(), 256),
    )
}

/// The tensors of the fused per-channel forward [`bn_forward`].
#[derive(Debug, Clone, Copy)]
pub struct BnForward<'a> {
    /// Input `[N, C]` or `[N, C, H, W]`: the BN input, or with `sf` the conv output whose
    /// division by `sf[c]` is the BN input (conv-BN folding, `bn_fold::channel_div` fused).
    pub x: &'a GpuTensor,
    pub sf: Option<&'a GpuTensor>,
    /// `[mean, invstd]` (written).
    pub saved: &'a GpuTensor,
    /// Updated in training, read otherwise.
    pub running_mean: &'a GpuTensor,
    pub running_var: &'a GpuTensor,
    pub gamma: &'a GpuTensor,
    pub beta: &'a GpuTensor,
    pub y: &'a GpuTensor,
    /// `[2 * C]`, written: `(min, max)` of channel `c`'s outputs at `2c, 2c + 1`, the first
    /// stage of an observer of `y` (see `observer::final_qparams`).
    pub partials: &'a GpuTensor,
}

/// One workgroup per channel: `training` = [`bn_stats`] then [`bn_apply`], else
/// [`bn_eval_stats`] then [`bn_apply`] (with `sf`: `bn_fold::channel_div` first), with
/// the same bits, plus each channel's output range into `partials`.
pub fn bn_forward(
    ctx: &GpuContext,
    t: &BnForward<'_>,
    training: bool,
    relu: bool,
    eps: f32,
    momentum: f32,
) -> Result<Dispatch> {
    let g = bn_geometry(&t.x.shape)?;
    if training && g.m() < 2 {
        return Err(WqatError::shape(format!(
            "batchnorm training needs more than 1 value per channel, got {:?}",
            t.x.shape
        )));
    }
    if (eps.is_nan() || eps <= 0.0) || !(0.0..=1.0).contains(&momentum) {
        return Err(WqatError::invalid(format!("batchnorm eps {eps} must be > 0, momentum {momentum} in [0, 1]")));
    }
    same_shape(t.x, t.y, "bn_forward y")?;
    expect_len(t.saved, 2 * g.c, "bn_forward saved")?;
    expect_len(t.partials, 2 * g.c, "bn_forward partials")?;
    for (b, what) in
        [(t.running_mean, "running_mean"), (t.running_var, "running_var"), (t.gamma, "gamma"), (t.beta, "beta")]
    {
        expect_len(b, g.c, &format!("bn_forward {what}"))?;
    }
    if let Some(sf) = t.sf {
        expect_len(sf, g.c, "bn_forward sf")?;
    }
    let key = PipelineKey::new("batchnorm", "bn_forward")
        .with("RELU", relu as u32 as f64)
        .with("TRAINING", training as u32 as f64)
        .with("DIV", t.sf.is_some() as u32 as f64);
    let sf = t.sf.unwrap_or(t.gamma);
    launch(
        ctx,
        &key,
        &params(g, eps, momentum),
        &[t.x, sf, t.saved, t.running_mean, t.running_var, t.gamma, t.beta, t.y, t.partials],
        grid_1d(g.c, 1),
    )
}

/// The conv-BN folding part of the fused backward [`bn_backward`].
#[derive(Debug, Clone, Copy)]
pub struct BnFoldGrad<'a> {
    /// The fold's scale factors: `BnBackward::x` is the conv output, the BN input is `x / sf`,
    /// and `dx` receives the gradient wrt the conv output (divided by `sf`).
    pub sf: &'a GpuTensor,
    /// `[C]`, written: `sum(dx_bn * x)` per channel (`bn_fold::fold_backward` finishes it).
    pub tsum: &'a GpuTensor,
}

/// One workgroup per channel: [`bn_backward_reduce`] then [`bn_backward_dx`] with the same
/// bits; with `fold`, also `bn_fold::channel_div` of `dx` and the activation sum of
/// `bn_fold::fold_gamma_backward` (same bits). With `guard` (the training metrics buffer), a
/// non-finite `dbeta` (and `dgamma` without `fold`, where it is final) sets the metrics'
/// non-finite flag as `loss::nonfinite_check` of those gradients would.
pub fn bn_backward(
    ctx: &GpuContext,
    t: &BnBackward<'_>,
    training: bool,
    fold: Option<BnFoldGrad<'_>>,
    guard: Option<&GpuTensor>,
) -> Result<Dispatch> {
    let g = t.check()?;
    if let Some(m) = guard {
        super::loss::check_metrics(m)?;
    }
    if let Some(f) = fold {
        expect_len(f.sf, g.c, "bn_backward sf")?;
        expect_len(f.tsum, g.c, "bn_backward tsum")?;
    }
    let y = t.y_relu.unwrap_or(t.dy);
    let key = PipelineKey::new("batchnorm", "bn_backward")
        .with("RELU", t.y_relu.is_some() as u32 as f64)
        .with("TRAINING", training as u32 as f64)
        .with("DIV", fold.is_some() as u32 as f64)
        .with("FOLD", fold.is_some() as u32 as f64)
        .with("GUARD", guard.is_some() as u32 as f64);
    let (sf, tsum) = match fold {
        Some(f) => (f.sf, f.tsum),
        None => (t.gamma, t.dbeta),
    };
    // Without FOLD the kernel never touches binding 10; dbeta only fills the slot.
    let tsum = if fold.is_some() { tsum } else { t.dgamma };
    let metrics = guard.unwrap_or(t.dgamma);
    launch(
        ctx,
        &key,
        &params(g, 1.0, 0.0),
        &[t.x, sf, t.saved, t.dy, y, t.gamma, t.dgamma, t.dbeta, t.dx, tsum, metrics],
        grid_1d(g.c, 1),
    )
}
