//! CPU references for `shaders/optim.wgsl`: SGD and AdamW steps (PyTorch semantics, f32,
//! the kernel's operation order), the sum of squares, and the clip factor.

use crate::kernels::optim::{AdamWConfig, SgdConfig};

/// `sumsq`: sum of `g^2` in f32, in order.
pub fn sum_squares(g: &[f32]) -> f32 {
    g.iter().map(|&v| v * v).sum()
}

/// `clip_finalize`: returns (clip factor, total norm, total) from the per-tensor slots.
pub fn clip_factor(slots: &[f32], max_norm: f32) -> (f32, f32, f32) {
    let total: f32 = slots.iter().sum();
    let tn = total.sqrt();
    ((max_norm / (tn + 1e-6)).min(1.0), tn, total)
}

/// `1 - b^t` as the kernel computes it, without cancellation when `b^t` is close to 1:
/// for `b >= 0.5`, `ln b = 2u * P(u^2)` (the atanh series to `u^17`), `u = -x/(2-x)`,
/// `x = 1 - b`; `y = t ln b`; then `1 - exp(y)`, or `-y * Q(y)` (the Taylor series of
/// `expm1` to `y^11`) when `|y| < 0.5`; for `b < 0.5`, `1 - b^t` directly. Same Horner order
/// as the kernel.
pub fn one_minus_pow(b: f32, t: u32) -> f32 {
    if t == 0 {
        return 0.0;
    }
    if b <= 0.0 {
        return 1.0;
    }
    if b < 0.5 {
        return 1.0 - b.powf(t as f32);
    }
    let x = 1.0 - b;
    let u = -x / (2.0 - x);
    let w = u * u;
    let mut s = 1.0f32 / 17.0;
    for d in [15.0f32, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0] {
        s = s * w + 1.0 / d;
    }
    let y = t as f32 * (2.0 * u * s);
    if y < -0.5 {
        return 1.0 - y.exp();
    }
    let mut q = 1.0f32 / 39916800.0;
    for f in [3628800.0f32, 362880.0, 40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0] {
        q = q * y + 1.0 / f;
    }
    -(y * q)
}

/// Per-step inputs of the reference steps, as the GPU reads them from its buffers.
#[derive(Debug, Clone, Copy)]
pub struct StepState {
    pub lr: f32,
    /// 1-based step count.
    pub step: u32,
    /// Clip factor (1.0 when clipping is off).
    pub clip: f32,
    /// The step is skipped (non-finite flag set and skipping on).
    pub skip: bool,
}

/// `sgd_step`: updates `p` and `buf` in place.
pub fn sgd_step(p: &mut [f32], g: &[f32], buf: &mut [f32], cfg: &SgdConfig, s: &StepState) {
    if s.skip {
        return;
    }
    for i in 0..p.len() {
        let w = p[i];
        let gi = g[i] * s.clip + cfg.weight_decay * w;
        let b = cfg.momentum * buf[i] + gi;
        buf[i] = b;
        let upd = if cfg.nesterov { gi + cfg.momentum * b } else { b };
        p[i] = w - s.lr * upd;
    }
}

/// `adamw_step`: updates `p`, `m`, `v` in place.
pub fn adamw_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], cfg: &AdamWConfig, s: &StepState) {
    if s.skip {
        return;
    }
    let bc1 = one_minus_pow(cfg.beta1, s.step);
    let bc2 = one_minus_pow(cfg.beta2, s.step);
    let step_size = s.lr / bc1;
    for i in 0..p.len() {
        let gi = g[i] * s.clip;
        let w = p[i] * (1.0 - s.lr * cfg.weight_decay);
        let mi = m[i] + (1.0 - cfg.beta1) * (gi - m[i]);
        let vi = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        let denom = vi.sqrt() / bc2.sqrt() + cfg.eps;
        p[i] = w - step_size * (mi / denom);
    }
}
