//! Configuration of a run: quantization (a QConfig with per-layer overrides, defined in
//! `crate::qconfig`) and training hyper-parameters. Plain structs with defaults; the CLI
//! fills them.

pub use crate::qconfig::{LayerQConfig, ObserverKind, QConfig, QuantizerKind};
use serde::{Deserialize, Serialize};

/// Which optimizer updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// SGD with momentum (PyTorch `torch.optim.SGD`, dampening 0).
    #[default]
    Sgd,
    /// AdamW (PyTorch `torch.optim.AdamW`: betas 0.9/0.999, eps 1e-8, decoupled decay).
    AdamW,
}

impl Optimizer {
    /// Parses `sgd` or `adamw`.
    pub fn parse(s: &str) -> crate::Result<Optimizer> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(Optimizer::Sgd),
            "adamw" => Ok(Optimizer::AdamW),
            _ => Err(crate::WqatError::invalid(format!("optimizer {s:?}: choose sgd or adamw"))),
        }
    }
}

/// Optimizer settings (SGD with momentum or AdamW, weight decay, linear warm-up + cosine LR).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptimConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f32>,
    /// Steps of linear warm-up from `lr / warmup_steps` to `lr` before the cosine.
    #[serde(default)]
    pub warmup_steps: u64,
}

impl OptimConfig {
    /// Linear warm-up over `warmup_steps` (step k gets `lr (k+1) / warmup`), then a cosine
    /// from `lr` to 0 over the remaining steps of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f32 {
        if step < self.warmup_steps {
            return (self.lr as f64 * (step + 1) as f64 / self.warmup_steps as f64) as f32;
        }
        let total = total.saturating_sub(self.warmup_steps);
        if total == 0 {
            return self.lr;
        }
        let t = ((step - self.warmup_steps).min(total) as f64) / (total as f64);
        (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let c = OptimConfig { lr: 1.0, momentum: 0.0, weight_decay: 0.0, clip_grad_norm: None, warmup_steps: 4 };
        let lrs: Vec<f32> = (0..14).map(|s| c.lr_at(s, 14)).collect();
        assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert_eq!(lrs[4], 1.0);
        assert!((lrs[9] - 0.5).abs() < 1e-6, "{lrs:?}");
        assert!(lrs.windows(2).skip(4).all(|w| w[1] <= w[0]));
        let plain = OptimConfig { warmup_steps: 0, ..c };
        assert_eq!(plain.lr_at(0, 10), 1.0);
        assert!(plain.lr_at(10, 10).abs() < 1e-6);
    }
}
