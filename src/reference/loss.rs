//! CPU references for `shaders/loss.wgsl`: softmax cross-entropy forward+backward, the
//! forward-only evaluation, argmax, and the metrics accumulation. Plain loops in f32 with
//! the kernel's formulas; [`mean_loss_f64`] is the f64 forward for finite differences.

use crate::kernels::loss::{Metrics, MetricsLayout};

fn nonfinite(x: f32) -> bool {
    !x.is_finite()
}

/// One row's statistics: max logit, its first index, sum of `exp(x - max)`, any NaN/Inf.
pub fn row_stats(row: &[f32]) -> (f32, usize, f32, bool) {
    let mut mx = row[0];
    let mut arg = 0;
    for (c, &v) in row.iter().enumerate() {
        if v > mx {
            mx = v;
            arg = c;
        }
    }
    let sum: f32 = row.iter().map(|&v| (v - mx).exp()).sum();
    (mx, arg, sum, row.iter().any(|&v| nonfinite(v)))
}

/// Per-row loss (`log(sum) - (x[label] - max)`; 0 for a bad label) and status, then the
/// metrics update exactly as `ce_finalize` does it: rows summed, then added.
fn accumulate(logits: &[f32], labels: &[u32], classes: usize, metrics: &mut Metrics) {
    let rows = labels.len();
    let mut total = 0.0f32;
    let mut flags = metrics.flags;
    let mut correct = 0;
    for (r, &label) in labels.iter().enumerate() {
        let row = &logits[r * classes..(r + 1) * classes];
        let (mx, arg, sum, bad) = row_stats(row);
        if bad {
            flags |= MetricsLayout::FLAG_NONFINITE;
        }
        if label as usize >= classes {
            flags |= MetricsLayout::FLAG_BAD_LABEL;
            continue;
        }
        total += sum.ln() - (row[label as usize] - mx);
        if arg == label as usize {
            correct += 1;
        }
    }
    if nonfinite(total) {
        flags |= MetricsLayout::FLAG_NONFINITE;
    }
    metrics.loss_sum += total;
    metrics.correct += correct;
    metrics.samples += rows as u32;
    metrics.flags = flags;
}

/// `softmax_cross_entropy`: returns `dlogits = (softmax - onehot) * (loss_scale / B)` (zero
/// rows for labels >= C) and accumulates into `metrics`.
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    loss_scale: f32,
    metrics: &mut Metrics,
) -> Vec<f32> {
    let rows = labels.len();
    let scale = loss_scale / rows as f32;
    let mut d = vec![0.0f32; rows * classes];
    for (r, &label) in labels.iter().enumerate() {
        if label as usize >= classes {
            continue;
        }
        let row = &logits[r * classes..(r + 1) * classes];
        let (mx, _, sum, _) = row_stats(row);
        let inv = 1.0 / sum;
        for c in 0..classes {
            let sm = (row[c] - mx).exp() * inv;
            let onehot = if c == label as usize { 1.0 } else { 0.0 };
            d[r * classes + c] = (sm - onehot) * scale;
        }
    }
    accumulate(logits, labels, classes, metrics);
    d
}

/// `cross_entropy_eval`: the metrics update only.
pub fn cross_entropy_eval(logits: &[f32], labels: &[u32], classes: usize, metrics: &mut Metrics) {
    accumulate(logits, labels, classes, metrics);
}

/// `argmax`: first index of each row's maximum.
pub fn argmax(logits: &[f32], classes: usize) -> Vec<u32> {
    logits.chunks(classes).map(|row| row_stats(row).1 as u32).collect()
}

/// `nonfinite_check`: sets the non-finite flag when any element is NaN/Inf.
pub fn nonfinite_check(x: &[f32], metrics: &mut Metrics) {
    if x.iter().any(|&v| nonfinite(v)) {
        metrics.flags |= MetricsLayout::FLAG_NONFINITE;
    }
}

/// Mean cross-entropy over the batch in f64 (labels must be < classes), times `loss_scale`:
/// the function whose gradient `softmax_cross_entropy` computes.
pub fn mean_loss_f64(logits: &[f64], labels: &[u32], classes: usize, loss_scale: f64) -> f64 {
    let rows = labels.len();
    let mut total = 0.0;
    for (r, &label) in labels.iter().enumerate() {
        let row = &logits[r * classes..(r + 1) * classes];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = row.iter().map(|&v| (v - mx).exp()).sum::<f64>().ln() + mx;
        total += lse - row[label as usize];
    }
    total / rows as f64 * loss_scale
}
