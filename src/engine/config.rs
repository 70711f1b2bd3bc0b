//! Configuration of a run: quantization (a QConfig applied per layer) and training
//! hyper-parameters. Plain structs with defaults; the CLI fills them.

use crate::error::{Result, WqatError};
use crate::quant::QuantSpec;
use serde::{Deserialize, Serialize};

/// How an activation quantizer picks its range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObserverKind {
    /// Running min/max over every batch seen.
    MinMax,
    /// Exponential moving average of batch min/max: `r += c * (batch - r)`.
    MovingAverage { c: f32 },
    /// PyTorch-style histogram observer (L2-minimizing range).
    Histogram { bins: u32 },
}

impl ObserverKind {
    /// Parses `minmax`, `ema` / `ema:0.01`, `histogram` / `histogram:2048`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').map(|(a, b)| (a, Some(b))).unwrap_or((s, None));
        let bad = || WqatError::invalid(format!("observer {s:?}: use minmax, ema[:C] or histogram[:BINS]"));
        match name {
            "minmax" => Ok(ObserverKind::MinMax),
            "ema" => Ok(ObserverKind::MovingAverage {
                c: arg.map(|a| a.parse().map_err(|_| bad())).transpose()?.unwrap_or(0.01),
            }),
            "histogram" => Ok(ObserverKind::Histogram {
                bins: arg.map(|a| a.parse().map_err(|_| bad())).transpose()?.unwrap_or(2048),
            }),
            _ => Err(bad()),
        }
    }
}

/// Per-layer quantization settings (PyTorch's QConfig).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    /// Weights: symmetric per output channel by default.
    pub weight: QuantSpec,
    /// Activations: affine per tensor by default.
    pub activation: QuantSpec,
    pub observer: ObserverKind,
}

impl QConfig {
    /// `weight_bits`/`act_bits` with the defaults (per-channel symmetric weights, affine
    /// unsigned per-tensor activations, moving-average min/max with c = 0.01).
    pub fn new(weight_bits: u32, act_bits: u32) -> Result<QConfig> {
        let q = QConfig {
            weight: QuantSpec::weight(weight_bits),
            activation: QuantSpec::activation(act_bits),
            observer: ObserverKind::MovingAverage { c: 0.01 },
        };
        q.weight.validate()?;
        q.activation.validate()?;
        Ok(q)
    }
}

/// QAT schedule and placement options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QatOptions {
    pub qconfig: QConfig,
    /// Freeze observers after this many QAT steps (None: never).
    pub freeze_observers_after: Option<u64>,
    /// Freeze BN statistics (switch to running stats) after this many QAT steps.
    pub freeze_bn_after: Option<u64>,
    /// Keep the first conv/linear layer in fp32.
    pub fp32_first: bool,
    /// Keep the last layer in fp32.
    pub fp32_last: bool,
}

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
