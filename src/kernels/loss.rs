//! Host wrappers for `shaders/loss.wgsl`: fused softmax cross-entropy forward+backward,
//! forward-only evaluation, argmax predictions, and the on-GPU metrics buffer with its
//! non-finite guard.
//!
//! The metrics buffer is a `U32` tensor of [`MetricsLayout::LEN`] words that kernels
//! accumulate into across steps; the host reads it every N steps with [`read_metrics`] and
//! clears it with [`reset_metrics`] (queued write) or the [`metrics_reset`] dispatch.
//! Scratch buffers (the per-row loss/status buffer) are created when a dispatch is built and
//! kept alive by its bind group.

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, tensor::read_buffer, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};

/// Word layout of the metrics buffer (`array<u32, 4>`).
pub struct MetricsLayout;

impl MetricsLayout {
    /// f32 bits: sum over samples of the per-sample cross-entropy.
    pub const LOSS_SUM: usize = 0;
    /// u32: samples whose argmax (ties -> first index) equals the label.
    pub const CORRECT: usize = 1;
    /// u32: samples seen.
    pub const SAMPLES: usize = 2;
    /// u32 bitmask: [`Self::FLAG_NONFINITE`] | [`Self::FLAG_BAD_LABEL`].
    pub const FLAGS: usize = 3;
    /// Words in the buffer.
    pub const LEN: usize = 4;
    /// A logit, the loss, or a tensor given to [`nonfinite_check`] held NaN or Inf.
    pub const FLAG_NONFINITE: u32 = 1;
    /// A label was >= the number of classes (that row got zero gradient and no loss).
    pub const FLAG_BAD_LABEL: u32 = 2;
}

/// The metrics buffer as the host reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    pub loss_sum: f32,
    pub correct: u32,
    pub samples: u32,
    pub flags: u32,
}

impl Metrics {
    /// Decodes the four words of the metrics buffer.
    pub fn from_words(w: &[u32]) -> Result<Metrics> {
        if w.len() < MetricsLayout::LEN {
            return Err(WqatError::shape(format!(
                "metrics buffer has {} words, needs {}",
                w.len(),
                MetricsLayout::LEN
            )));
        }
        Ok(Metrics {
            loss_sum: f32::from_bits(w[MetricsLayout::LOSS_SUM]),
            correct: w[MetricsLayout::CORRECT],
            samples: w[MetricsLayout::SAMPLES],
            flags: w[MetricsLayout::FLAGS],
        })
    }
    /// Encodes as the buffer's words.
    pub fn to_words(&self) -> [u32; 4] {
        [self.loss_sum.to_bits(), self.correct, self.samples, self.flags]
    }
    /// Mean loss over the samples seen (0 when none).
    pub fn mean_loss(&self) -> f32 {
        if self.samples == 0 {
            0.0
        } else {
            self.loss_sum / self.samples as f32
        }
    }
    /// Fraction of samples predicted correctly (0 when none).
    pub fn accuracy(&self) -> f32 {
        if self.samples == 0 {
            0.0
        } else {
            self.correct as f32 / self.samples as f32
        }
    }
    /// A NaN/Inf was seen since the last reset.
    pub fn non_finite(&self) -> bool {
        self.flags & MetricsLayout::FLAG_NONFINITE != 0
    }
    /// A label out of range was seen since the last reset.
    pub fn bad_label(&self) -> bool {
        self.flags & MetricsLayout::FLAG_BAD_LABEL != 0
    }
}

/// A zeroed metrics buffer.
pub fn new_metrics(ctx: &GpuContext) -> Result<GpuTensor> {
    GpuTensor::zeros(ctx, &[MetricsLayout::LEN], DType::U32)
}

/// Reads the metrics (one GPU sync; call every N steps, not every step).
pub fn read_metrics(ctx: &GpuContext, metrics: &GpuTensor) -> Result<Metrics> {
    check_metrics(metrics)?;
    Metrics::from_words(&read_buffer::<u32>(ctx, &metrics.buffer)?)
}

/// Zeroes the metrics with a queued write (takes effect before the next submit).
pub fn reset_metrics(ctx: &GpuContext, metrics: &GpuTensor) -> Result<()> {
    check_metrics(metrics)?;
    metrics.write(ctx, &[0u32; MetricsLayout::LEN])
}

super::kernel_params! {
    pub(crate) struct Params for ["loss"] {
        rows: u32,
        classes: u32,
        n: u32,
        _pad: u32,
        scale: f32,
        _pad1: [f32; 3],
    }
}

impl Params {
    fn new(rows: usize, classes: usize, n: usize, scale: f32) -> Params {
        Params { rows: rows as u32, classes: classes as u32, n: n as u32, _pad: 0, scale, _pad1: [0.0; 3] }
    }
}

pub(crate) fn check_metrics(m: &GpuTensor) -> Result<()> {
    if m.dtype != DType::U32 || m.len() != MetricsLayout::LEN {
        return Err(WqatError::shape(format!(
            "metrics buffer must be U32 [{}], got {:?} {:?}",
            MetricsLayout::LEN,
            m.dtype,
            m.shape
        )));
    }
    Ok(())
}

/// Checks logits `[B, C]` f32 and returns (B, C).
fn logits_shape(logits: &GpuTensor) -> Result<(usize, usize)> {
    if logits.dtype != DType::F32 || logits.shape.len() != 2 {
        return Err(WqatError::shape(format!("logits must be f32 [B, C], got {:?} {:?}", logits.dtype, logits.shape)));
    }
    let (b, c) = (logits.shape[0], logits.shape[1]);
    if b == 0 || c == 0 || b > u32::MAX as usize / 2 || logits.len() > u32::MAX as usize {
        return Err(WqatError::shape(format!("logits shape {:?} is empty or too large", logits.shape)));
    }
    Ok((b, c))
}

fn check_labels(labels: &GpuTensor, rows: usize) -> Result<()> {
    if labels.dtype != DType::U32 || labels.len() != rows {
        return Err(WqatError::shape(format!(
            "labels must be U32 [{rows}], got {:?} {:?}",
            labels.dtype, labels.shape
        )));
    }
    Ok(())
}

/// Up to this many classes a row is handled by one invocation (no barriers: ~4x faster on
/// lavapipe for C = 10); above it by a workgroup of 64.
pub const SMALL_C: usize = 32;

/// The entry point and grid for a per-row kernel: thread-per-row for few classes.
fn row_entry(entry: &'static str, thread_entry: &'static str, b: usize, c: usize) -> (&'static str, [u32; 3]) {
    if c <= SMALL_C {
        (thread_entry, grid_1d(b, 64))
    } else {
        (entry, grid_1d(b, 1))
    }
}

/// Row-reduction dispatches plus the finalize that adds them into the metrics.
fn ce_dispatches(
    ctx: &GpuContext,
    entries: (&'static str, &'static str),
    logits: &GpuTensor,
    labels: &GpuTensor,
    dlogits: Option<&GpuTensor>,
    metrics: &GpuTensor,
    loss_scale: f32,
) -> Result<Vec<Dispatch>> {
    let (b, c) = logits_shape(logits)?;
    check_labels(labels, b)?;
    check_metrics(metrics)?;
    if !loss_scale.is_finite() {
        return Err(WqatError::invalid(format!("loss scale {loss_scale} is not finite")));
    }
    let rows = GpuTensor::zeros(ctx, &[2 * b], DType::U32)?;
    let p = Params::new(b, c, b * c, loss_scale / b as f32);
    let mut storage = vec![&logits.buffer, &labels.buffer, &rows.buffer];
    if let Some(d) = dlogits {
        if d.shape != logits.shape || d.dtype != DType::F32 {
            return Err(WqatError::shape(format!("dlogits {:?} must match logits {:?}", d.shape, logits.shape)));
        }
        storage.push(&d.buffer);
    }
    let (entry, grid) = row_entry(entries.0, entries.1, b, c);
    let first = Dispatch::new(ctx, &PipelineKey::new("loss", entry), bytemuck::bytes_of(&p), &storage, grid)?;
    let fin = Dispatch::new(
        ctx,
        &PipelineKey::new("loss", "ce_finalize"),
        bytemuck::bytes_of(&p),
        &[&rows.buffer, &metrics.buffer],
        [1, 1, 1],
    )?;
    Ok(vec![first, fin])
}

/// Fused softmax cross-entropy, mean over the batch. `logits` f32 `[B, C]`, `labels` U32
/// `[B]`; writes `dlogits = (softmax(logits) - onehot(label)) * loss_scale / B` (zero rows for
/// labels >= C) and adds loss sum, correct count, B samples and flags into `metrics`.
/// Two dispatches (rows, then a one-workgroup finalize); record both, in order.
pub fn softmax_cross_entropy(
    ctx: &GpuContext,
    logits: &GpuTensor,
    labels: &GpuTensor,
    dlogits: &GpuTensor,
    metrics: &GpuTensor,
    loss_scale: f32,
) -> Result<Vec<Dispatch>> {
    ce_dispatches(ctx, ("ce_rows", "ce_rows_thread"), logits, labels, Some(dlogits), metrics, loss_scale)
}

/// Forward-only cross-entropy for evaluation: adds loss sum, correct count, samples and
/// flags into `metrics` (use a separate metrics buffer for the test set). Two dispatches.
pub fn cross_entropy_eval(
    ctx: &GpuContext,
    logits: &GpuTensor,
    labels: &GpuTensor,
    metrics: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    ce_dispatches(ctx, ("ce_rows_eval", "ce_rows_eval_thread"), logits, labels, None, metrics, 1.0)
}

/// `preds[b] = argmax_c logits[b, c]` (ties -> first index), U32 `[B]`.
pub fn argmax(ctx: &GpuContext, logits: &GpuTensor, preds: &GpuTensor) -> Result<Dispatch> {
    let (b, c) = logits_shape(logits)?;
    if preds.dtype != DType::U32 || preds.len() != b {
        return Err(WqatError::shape(format!("preds must be U32 [{b}], got {:?} {:?}", preds.dtype, preds.shape)));
    }
    let p = Params::new(b, c, b * c, 1.0);
    let (entry, grid) = row_entry("ce_argmax", "ce_argmax_thread", b, c);
    Dispatch::new(ctx, &PipelineKey::new("loss", entry), bytemuck::bytes_of(&p), &[&logits.buffer, &preds.buffer], grid)
}

/// A dispatch that zeroes the metrics buffer inside a plan.
pub fn metrics_reset(ctx: &GpuContext, metrics: &GpuTensor) -> Result<Dispatch> {
    check_metrics(metrics)?;
    let p = Params::new(0, 0, MetricsLayout::LEN, 0.0);
    let key = PipelineKey::new("loss", "metrics_reset");
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &[&metrics.buffer], [1, 1, 1])
}

/// Sets the metrics' non-finite flag when any element of the f32 tensor `x` is NaN or Inf
/// (run it over gradients before the optimizer step).
pub fn nonfinite_check(ctx: &GpuContext, x: &GpuTensor, metrics: &GpuTensor) -> Result<Dispatch> {
    check_metrics(metrics)?;
    if x.dtype != DType::F32 || x.is_empty() || x.len() > u32::MAX as usize {
        return Err(WqatError::shape(format!("nonfinite_check needs a non-empty f32 tensor, got {:?}", x.dtype)));
    }
    let p = Params::new(0, 0, x.len(), 0.0);
    let key = PipelineKey::new("loss", "nonfinite_check");
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &[&x.buffer, &metrics.buffer], grid_1d(x.len(), 256))
}
