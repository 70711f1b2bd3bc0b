//! Configuration of a run: quantization (a QConfig with per-layer overrides, defined in
//! `crate::qconfig`) and training hyper-parameters. Plain structs with defaults; the CLI
//! fills them.

pub use crate::qconfig::{LayerQConfig, ObserverKind, QConfig};
use serde::{Deserialize, Serialize};

/// Optimizer settings (SGD with momentum and weight decay, cosine LR).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptimConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f32>,
}

impl OptimConfig {
    /// Cosine schedule from `lr` to 0 over `total` steps.
    pub fn lr_at(&self, step: u64, total: u64) -> f32 {
        if total == 0 {
            return self.lr;
        }
        let t = (step.min(total) as f64) / (total as f64);
        (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
    }
}
