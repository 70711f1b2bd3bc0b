//! Host wrappers for `shaders/optim.wgsl`: SGD (momentum, weight decay, Nesterov) and AdamW
//! over flat parameter buffers, gradient-norm clipping, and the skip-on-non-finite guard.
//!
//! Per-step values live in GPU buffers so the dispatches are built once:
//! * the hyper buffer (f32 `[HyperLayout::LEN]`: learning rate, step count), rewritten by the
//!   host each step with [`write_hyper`] (a queued `write_buffer`, no readback);
//! * the norm buffer (f32 `[NormLayout::len(k)]`): one sum-of-squares slot per gradient
//!   tensor, written by [`grad_sum_squares`], and the clip factor computed by
//!   [`clip_finalize`];
//! * the metrics buffer of [`crate::kernels::loss`], whose non-finite flag (bit 0 of the
//!   flags word; the bad-label bit does not count) makes the step a no-op when
//!   `skip_nonfinite` is on. The host cannot see the skip without a readback, so its step
//!   count still advances (PyTorch's GradScaler would not advance AdamW's `step`); the flag
//!   stays set until the metrics are reset, so every step until then is skipped.
//!
//! Per-tensor constants (weight decay, momentum, betas, eps) are the kernels' `Params`.
//! A step with clipping records, in order: `grad_sum_squares` for every gradient tensor,
//! `clip_finalize`, then one optimizer dispatch per parameter tensor.

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::kernels::loss::check_metrics;

/// Layout of the hyper buffer (f32).
pub struct HyperLayout;

impl HyperLayout {
    /// Learning rate of this step.
    pub const LR: usize = 0;
    /// Step count t, 1-based (AdamW bias correction), stored as f32 (exact up to 2^24).
    pub const STEP: usize = 1;
    /// Floats in the buffer (the rest is padding).
    pub const LEN: usize = 4;
}

/// Layout of the norm buffer (f32): header then one slot per gradient tensor.
pub struct NormLayout;

impl NormLayout {
    /// `min(1, max_norm / (sqrt(total) + 1e-6))`, written by `clip_finalize`.
    pub const CLIP_FACTOR: usize = 0;
    /// `sqrt(total)`: the global gradient norm.
    pub const TOTAL_NORM: usize = 1;
    /// `total`: sum of the slots.
    pub const TOTAL_SUMSQ: usize = 2;
    /// Index of slot 0.
    pub const SLOTS: usize = 4;
    /// Floats needed for `slots` gradient tensors.
    pub fn len(slots: usize) -> usize {
        Self::SLOTS + slots
    }
}

/// Most workgroups stage 1 of the sum of squares uses (so stage 2 is one workgroup).
pub const MAX_PARTIALS: usize = 256;
/// The cap on CPU adapters (lavapipe), where fewer, longer workgroups are faster
/// (1M elements: ~4 ms with 32 against ~11 ms with 256).
pub const MAX_PARTIALS_CPU: usize = 32;
/// Elements each invocation sums at least before another workgroup is added.
const SUMSQ_PER_THREAD: usize = 8;
const WG: u32 = 256;

/// A zeroed hyper buffer.
pub fn new_hyper(ctx: &GpuContext) -> Result<GpuTensor> {
    GpuTensor::zeros(ctx, &[HyperLayout::LEN], DType::F32)
}

/// Queues this step's learning rate and step count (1-based) into the hyper buffer.
pub fn write_hyper(ctx: &GpuContext, hyper: &GpuTensor, lr: f32, step: u32) -> Result<()> {
    check_f32(hyper, HyperLayout::LEN, "hyper buffer")?;
    if !lr.is_finite() || step == 0 || step > 1 << 24 {
        return Err(WqatError::invalid(format!("learning rate {lr} / step {step} out of range (step in 1..=2^24)")));
    }
    hyper.write(ctx, &[lr, step as f32, 0.0, 0.0])
}

/// A zeroed norm buffer with `slots` gradient slots.
pub fn new_norm(ctx: &GpuContext, slots: usize) -> Result<GpuTensor> {
    GpuTensor::zeros(ctx, &[NormLayout::len(slots)], DType::F32)
}

super::kernel_params! {
    #[derive(Default)]
    pub(crate) struct Params for ["optim"] {
        n: u32,
        slot: u32,
        stride: u32,
        _pad: u32,
        wd: f32,
        momentum: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        max_norm: f32,
        _pad2: [f32; 2],
    }
}

fn check_f32(t: &GpuTensor, len: usize, what: &str) -> Result<()> {
    if t.dtype != DType::F32 || t.len() != len {
        return Err(WqatError::shape(format!("{what} must be f32 [{len}], got {:?} {:?}", t.dtype, t.shape)));
    }
    Ok(())
}

fn check_norm(norm: &GpuTensor) -> Result<usize> {
    if norm.dtype != DType::F32 || norm.len() <= NormLayout::SLOTS {
        return Err(WqatError::shape(format!(
            "norm buffer must be f32 [{} + slots], got {:?} {:?}",
            NormLayout::SLOTS,
            norm.dtype,
            norm.shape
        )));
    }
    Ok(norm.len() - NormLayout::SLOTS)
}

/// Two dispatches writing `sum(g^2)` of one gradient tensor into slot `slot` of `norm`
/// (overwritten each step, so no reset is needed): up to [`MAX_PARTIALS`] workgroups
/// ([`MAX_PARTIALS_CPU`] on a CPU adapter) reduce
/// grid-stride shares into a partials buffer created here, then one workgroup sums them
/// in a fixed order.
pub fn grad_sum_squares(ctx: &GpuContext, grad: &GpuTensor, norm: &GpuTensor, slot: usize) -> Result<Vec<Dispatch>> {
    let slots = check_norm(norm)?;
    if slot >= slots {
        return Err(WqatError::invalid(format!("norm slot {slot} out of range (buffer has {slots})")));
    }
    if grad.dtype != DType::F32 || grad.is_empty() || grad.len() > u32::MAX as usize / 2 {
        return Err(WqatError::shape(format!("gradient must be a non-empty f32 tensor, got {:?}", grad.dtype)));
    }
    let cap = if ctx.summary.device_type == "Cpu" { MAX_PARTIALS_CPU } else { MAX_PARTIALS };
    let groups = grad.len().div_ceil(WG as usize * SUMSQ_PER_THREAD).clamp(1, cap);
    let partials = GpuTensor::zeros(ctx, &[groups], DType::F32)?;
    let p1 = Params { n: grad.len() as u32, stride: groups as u32 * WG, ..Default::default() };
    let stage1 = Dispatch::new(
        ctx,
        &PipelineKey::new("optim", "sumsq_partial"),
        bytemuck::bytes_of(&p1),
        &[&grad.buffer, &partials.buffer],
        [groups as u32, 1, 1],
    )?;
    let p2 = Params { n: groups as u32, slot: slot as u32, ..Default::default() };
    let stage2 = Dispatch::new(
        ctx,
        &PipelineKey::new("optim", "sumsq_final"),
        bytemuck::bytes_of(&p2),
        &[&partials.buffer, &norm.buffer],
        [1, 1, 1],
    )?;
    Ok(vec![stage1, stage2])
}

/// Sums every slot of `norm` and writes the clip factor
/// `min(1, max_norm / (sqrt(total) + 1e-6))`, the norm and the total into its header.
pub fn clip_finalize(ctx: &GpuContext, norm: &GpuTensor, max_norm: f32) -> Result<Dispatch> {
    let slots = check_norm(norm)?;
    if !(max_norm > 0.0 && max_norm.is_finite()) {
        return Err(WqatError::invalid(format!("max_norm {max_norm} must be positive and finite")));
    }
    let p = Params { n: slots as u32, max_norm, ..Default::default() };
    Dispatch::new(ctx, &PipelineKey::new("optim", "clip_finalize"), bytemuck::bytes_of(&p), &[&norm.buffer], [1, 1, 1])
}

/// The buffers every optimizer step reads besides its parameter, gradient and state.
#[derive(Clone, Copy)]
pub struct StepInputs<'a> {
    /// Hyper buffer (learning rate, step count), see [`HyperLayout`].
    pub hyper: &'a GpuTensor,
    /// Metrics buffer of `kernels::loss`; only bit 0 of its flag word is read, and only used
    /// when `skip_nonfinite` is set.
    pub metrics: &'a GpuTensor,
    /// Norm buffer; when `Some`, gradients are multiplied by its clip factor.
    pub clip: Option<&'a GpuTensor>,
    /// Leave parameters and state unchanged when the metrics' non-finite flag is set.
    pub skip_nonfinite: bool,
}

/// SGD hyper-parameters (PyTorch `torch.optim.SGD`, dampening 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// AdamW hyper-parameters (PyTorch `torch.optim.AdamW`, no amsgrad).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

fn check_step(param: &GpuTensor, grad: &GpuTensor, state: &[&GpuTensor], inp: &StepInputs) -> Result<()> {
    if param.dtype != DType::F32 || param.is_empty() || param.len() > u32::MAX as usize {
        return Err(WqatError::shape(format!("parameter must be a non-empty f32 tensor, got {:?}", param.dtype)));
    }
    for (t, what) in std::iter::once((grad, "gradient")).chain(state.iter().map(|s| (*s, "optimizer state"))) {
        if t.dtype != DType::F32 || t.len() != param.len() {
            return Err(WqatError::shape(format!(
                "{what} {:?} {:?} does not match parameter {:?}",
                t.dtype, t.shape, param.shape
            )));
        }
    }
    check_f32(inp.hyper, HyperLayout::LEN, "hyper buffer")?;
    check_metrics(inp.metrics)?;
    if let Some(n) = inp.clip {
        check_norm(n)?;
    }
    Ok(())
}

fn step_key(entry: &'static str, inp: &StepInputs) -> PipelineKey {
    PipelineKey::new("optim", entry)
        .with("CLIP", inp.clip.is_some() as u32 as f64)
        .with("SKIP_NONFINITE", inp.skip_nonfinite as u32 as f64)
}

/// The norm buffer to bind: the clip buffer, or a 5-float placeholder when clipping is off
/// (the kernel always binds one).
fn norm_or_dummy(ctx: &GpuContext, inp: &StepInputs) -> Result<Option<GpuTensor>> {
    match inp.clip {
        Some(_) => Ok(None),
        None => Ok(Some(new_norm(ctx, 1)?)),
    }
}

/// One SGD step on `param` with gradient `grad` and momentum buffer `momentum_buf` (start
/// it at zero): `g' = g*clip + wd*p; buf = momentum*buf + g'; p -= lr*(nesterov ? g' +
/// momentum*buf : buf)`.
pub fn sgd_step(
    ctx: &GpuContext,
    param: &GpuTensor,
    grad: &GpuTensor,
    momentum_buf: &GpuTensor,
    cfg: &SgdConfig,
    inp: &StepInputs,
) -> Result<Dispatch> {
    check_step(param, grad, &[momentum_buf], inp)?;
    if !(cfg.momentum.is_finite() && cfg.momentum >= 0.0 && cfg.weight_decay.is_finite()) {
        return Err(WqatError::invalid(format!("SGD config {cfg:?} out of range")));
    }
    if cfg.nesterov && cfg.momentum == 0.0 {
        return Err(WqatError::invalid("Nesterov momentum needs momentum > 0"));
    }
    let dummy = norm_or_dummy(ctx, inp)?;
    let norm = inp.clip.or(dummy.as_ref()).expect("one of them is set");
    let p = Params { n: param.len() as u32, wd: cfg.weight_decay, momentum: cfg.momentum, ..Default::default() };
    let key = step_key("sgd_step", inp).with("NESTEROV", cfg.nesterov as u32 as f64);
    Dispatch::new(
        ctx,
        &key,
        bytemuck::bytes_of(&p),
        &[&param.buffer, &grad.buffer, &inp.hyper.buffer, &inp.metrics.buffer, &norm.buffer, &momentum_buf.buffer],
        grid_1d(param.len(), WG),
    )
}

/// One AdamW step with first/second moment buffers `exp_avg`, `exp_avg_sq` (start at zero),
/// bias corrections from the hyper buffer's step count. Two dispatches, record both in
/// order: `adamw_bias` (one invocation writing `[1 - beta1^t, 1 - beta2^t]` into a small
/// buffer created here) and the elementwise step.
pub fn adamw_step(
    ctx: &GpuContext,
    param: &GpuTensor,
    grad: &GpuTensor,
    exp_avg: &GpuTensor,
    exp_avg_sq: &GpuTensor,
    cfg: &AdamWConfig,
    inp: &StepInputs,
) -> Result<Vec<Dispatch>> {
    check_step(param, grad, &[exp_avg, exp_avg_sq], inp)?;
    let ok = (0.0..1.0).contains(&cfg.beta1)
        && (0.0..1.0).contains(&cfg.beta2)
        && cfg.eps > 0.0
        && cfg.eps.is_finite()
        && cfg.weight_decay.is_finite();
    if !ok {
        return Err(WqatError::invalid(format!("AdamW config {cfg:?} out of range")));
    }
    let dummy = norm_or_dummy(ctx, inp)?;
    let norm = inp.clip.or(dummy.as_ref()).expect("one of them is set");
    let bias = GpuTensor::zeros(ctx, &[4], DType::F32)?;
    let p = Params {
        n: param.len() as u32,
        wd: cfg.weight_decay,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        ..Default::default()
    };
    let prepare = Dispatch::new(
        ctx,
        &PipelineKey::new("optim", "adamw_bias"),
        bytemuck::bytes_of(&p),
        &[&bias.buffer, &inp.hyper.buffer],
        [1, 1, 1],
    )?;
    let step = Dispatch::new(
        ctx,
        &step_key("adamw_step", inp),
        bytemuck::bytes_of(&p),
        &[
            &param.buffer,
            &grad.buffer,
            &inp.hyper.buffer,
            &inp.metrics.buffer,
            &norm.buffer,
            &exp_avg.buffer,
            &exp_avg_sq.buffer,
            &bias.buffer,
        ],
        grid_1d(param.len(), WG),
    )?;
    Ok(vec![prepare, step])
}
