//! What a `wqat train` run is configured with and records: [`TrainConfig`] (every flag),
//! schedules, the run state stored in checkpoints (so `--resume` continues exactly), the
//! report written to `metrics.json`, and the run's QConfig.

use super::bit_schedule::{BitSchedule, StageStart};
use super::config::{LayerQConfig, ObserverKind, Optimizer, QConfig};
use crate::error::{Result, WqatError};
use crate::model::Graph;
use crate::qconfig::QuantizerKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// When a schedule fires: after a number of QAT steps or QAT epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    Steps(u64),
    Epochs(u64),
}

impl Schedule {
    /// Parses `300` (steps) or `2ep` (epochs).
    pub fn parse(s: &str) -> Result<Schedule> {
        let bad = || WqatError::invalid(format!("schedule {s:?}: use a step count (300) or epochs (2ep)"));
        if let Some(e) = s.strip_suffix("ep") {
            e.parse().map(Schedule::Epochs).map_err(|_| bad())
        } else {
            s.parse().map(Schedule::Steps).map_err(|_| bad())
        }
    }
    pub(crate) fn fired(&self, qat_step: u64, steps_per_epoch: u64) -> bool {
        match *self {
            Schedule::Steps(n) => qat_step >= n,
            Schedule::Epochs(e) => qat_step >= e * steps_per_epoch,
        }
    }
}

/// Everything `wqat train` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// `digits`, a directory of IDX or CIFAR files, or an image folder.
    pub data: String,
    /// A zoo name or a JSON spec path.
    pub model: String,
    pub epochs: usize,
    pub qat_epochs: usize,
    pub weight_bits: u32,
    pub act_bits: u32,
    pub batch: usize,
    pub lr: f32,
    pub qat_lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub clip_grad_norm: Option<f32>,
    /// SGD with momentum or AdamW (both phases).
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Linear warm-up steps at the start of the fp32 phase (then the cosine).
    #[serde(default)]
    pub warmup_steps: u64,
    pub seed: u64,
    pub limit_train: Option<usize>,
    pub out: PathBuf,
    /// Start from this checkpoint (a wqat checkpoint or a PyTorch state_dict).
    pub init: Option<PathBuf>,
    pub observer: ObserverKind,
    /// Per-tensor weight scales instead of per output channel.
    pub per_tensor_weights: bool,
    /// Weights use the full signed range `[-2^(b-1), 2^(b-1)-1]` (PyTorch's qint8 symmetric).
    #[serde(default)]
    pub full_range_weights: bool,
    pub freeze_observers_after: Option<Schedule>,
    pub freeze_bn_after: Option<Schedule>,
    pub fp32_first: bool,
    pub fp32_last: bool,
    /// Per-layer overrides of the quantization settings (`--layer-qconfig`), applied in order.
    #[serde(default)]
    pub layer_qconfig: Vec<LayerQConfig>,
    /// Images of the training split used for PTQ calibration.
    pub calib_images: usize,
    /// Read the metrics (loss, accuracy, non-finite flag) every this many steps.
    pub log_every: usize,
    /// Skip steps with a non-finite loss/gradient instead of stopping.
    pub skip_nonfinite: bool,
    /// Random crop + flip (CIFAR-style) on training batches.
    pub augment: bool,
    /// Limit of test images evaluated (all when None).
    pub limit_test: Option<usize>,
    /// Fraction of the training images held out as a validation split (a fixed seeded
    /// choice, the same for every `--seed`); every stage is then also evaluated on it.
    #[serde(default)]
    pub val_split: Option<f32>,
    /// Observer-driven or learned (LSQ / LSQ+) quantizer scales (`--quantizer`).
    #[serde(default)]
    pub quantizer: QuantizerKind,
    /// Learning-rate multiplier of learned quantizer scales and zero points (`--lsq-lr-mult`).
    #[serde(default = "default_lsq_lr_mult")]
    pub lsq_lr_mult: f32,
    /// Tokens per sequence of a text data set, CLS included (`--max-len`); image sets ignore it.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Gradual bit width over the QAT phase (`--bit-schedule`, see `engine::bit_schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bit_schedule: Option<BitSchedule>,
    /// Automatic mixed precision (`--auto-bits`): a weight-bit budget; the run scans each
    /// layer's sensitivity on the validation split before PTQ and picks per-layer bits.
    #[serde(default)]
    pub auto_bits: Option<AutoBits>,
}

/// `--auto-bits` settings and, once made, the choice (kept in checkpoints, so a resumed
/// run does not scan again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoBits {
    pub budget: super::sensitivity::Budget,
    /// Bit widths a layer may get.
    pub candidates: Vec<u32>,
    /// Validation images each scan point is evaluated on.
    pub scan_images: usize,
    /// The choice, written into `layer_qconfig` too.
    #[serde(default)]
    pub choice: Option<super::sensitivity::BitChoice>,
}

fn default_lsq_lr_mult() -> f32 {
    1.0
}

fn default_max_len() -> usize {
    crate::data::DEFAULT_MAX_LEN
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: "digits".into(),
            model: "mnist-cnn".into(),
            epochs: 12,
            qat_epochs: 3,
            weight_bits: 8,
            act_bits: 8,
            batch: 32,
            lr: 0.05,
            qat_lr: 0.005,
            momentum: 0.9,
            weight_decay: 5e-4,
            clip_grad_norm: None,
            optimizer: Optimizer::Sgd,
            warmup_steps: 0,
            seed: 0,
            limit_train: None,
            out: PathBuf::from("out"),
            init: None,
            observer: ObserverKind::MovingAverage { c: 0.01 },
            per_tensor_weights: false,
            full_range_weights: false,
            freeze_observers_after: None,
            freeze_bn_after: None,
            fp32_first: false,
            fp32_last: false,
            layer_qconfig: Vec::new(),
            calib_images: 2048,
            log_every: 50,
            skip_nonfinite: false,
            augment: false,
            limit_test: None,
            val_split: None,
            max_len: crate::data::DEFAULT_MAX_LEN,
            quantizer: QuantizerKind::Observer,
            lsq_lr_mult: 1.0,
            bit_schedule: None,
            auto_bits: None,
        }
    }
}

/// A loss reading (mean over the steps since the previous one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub phase: Phase,
    /// Global step after which it was read.
    pub step: u64,
    pub loss: f32,
    pub accuracy: f32,
}

/// Training phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Fp32,
    Qat,
    Done,
}

/// Where a run stands: stored in checkpoints so `--resume` continues exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub phase: Phase,
    /// Epoch within the phase and the next batch within it.
    pub epoch: usize,
    pub next_batch: usize,
    /// Steps done overall and within the current phase.
    pub step: u64,
    pub phase_step: u64,
    pub fp32_acc: Option<f32>,
    pub ptq_acc: Option<f32>,
    /// The same on the validation split (`--val-split`).
    #[serde(default)]
    pub fp32_val_acc: Option<f32>,
    #[serde(default)]
    pub ptq_val_acc: Option<f32>,
    pub train_images_per_s_fp32: Option<f32>,
    pub train_images_per_s_qat: Option<f32>,
    /// Seconds and images of training in the current phase so far (for images/s).
    pub phase_seconds: f64,
    pub phase_images: u64,
    pub losses: Vec<LossPoint>,
    pub skipped_nonfinite: u64,
    /// The `--bit-schedule` stages entered so far (the last is the current one).
    #[serde(default)]
    pub bit_stages: Vec<StageStart>,
}

/// Accuracies on the validation split: what hyper-parameters are chosen on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValReport {
    pub images: usize,
    pub fp32_acc: Option<f32>,
    pub ptq_acc: Option<f32>,
    pub qat_acc: Option<f32>,
    pub int8_acc: Option<f32>,
}

/// What a run reports (`metrics.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub dataset: String,
    pub model: String,
    pub adapter: String,
    pub weight_bits: u32,
    pub act_bits: u32,
    pub fp32_acc: Option<f32>,
    pub ptq_acc: Option<f32>,
    pub qat_acc: Option<f32>,
    pub int8_acc: Option<f32>,
    pub agreement: Option<f32>,
    pub train_images_per_s_fp32: Option<f32>,
    pub train_images_per_s_qat: Option<f32>,
    pub train_images: usize,
    pub test_images: usize,
    /// Accuracy of every stage on the validation split held out of the training images
    /// (`--val-split`; the `*_acc` fields above are on the test split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<ValReport>,
    pub steps: u64,
    pub skipped_nonfinite_windows: u64,
    pub losses: Vec<LossPoint>,
    /// `--bit-schedule` runs: each stage's bits and the step it began at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bit_stages: Vec<StageStart>,
    pub config: TrainConfig,
}

pub(crate) fn validate(cfg: &TrainConfig) -> Result<()> {
    let bad = |m: &str| Err(WqatError::invalid(m.to_string()));
    if cfg.batch < 2 {
        return bad("--batch must be at least 2 (batch norm needs more than one sample)");
    }
    if !(cfg.lr.is_finite() && cfg.lr >= 0.0 && cfg.qat_lr.is_finite() && cfg.qat_lr >= 0.0) {
        return bad("learning rates must be finite and non-negative");
    }
    if !(0.0..1.0).contains(&cfg.momentum) {
        return bad("--momentum must be in [0, 1)");
    }
    if cfg.val_split.is_some_and(|f| !(f > 0.0 && f < 1.0)) {
        return bad("--val-split must be a fraction in (0, 1)");
    }
    if !(cfg.lsq_lr_mult.is_finite() && cfg.lsq_lr_mult >= 0.0) {
        return bad("--lsq-lr-mult must be finite and non-negative");
    }
    if cfg.auto_bits.is_some() && cfg.val_split.is_none() {
        return bad("--auto-bits chooses bit widths on a validation split: add --val-split (e.g. 0.1)");
    }
    if cfg.epochs == 0 && cfg.init.is_none() {
        return bad("--epochs 0 needs --init CHECKPOINT (nothing to quantize otherwise)");
    }
    if let Some(s) = &cfg.bit_schedule {
        s.validate(cfg.weight_bits, cfg.act_bits, cfg.qat_epochs)?;
    }
    Ok(())
}

/// The run's QConfig: `--weight-bits/--act-bits/--observer/--per-tensor-weights` as the
/// defaults, then the model spec's per-node `qconfig` settings, then the `--layer-qconfig`
/// overrides (so the command line wins), each checked to select a layer.
pub fn run_qconfig(cfg: &TrainConfig, graph: &Graph) -> Result<QConfig> {
    let mut qconfig = QConfig::new(cfg.weight_bits, cfg.act_bits)?;
    if cfg.per_tensor_weights {
        qconfig.weight.channel_axis = None;
    }
    qconfig.weight.full_range = cfg.full_range_weights;
    qconfig.observer = cfg.observer;
    qconfig.quantizer = cfg.quantizer;
    for node in &graph.nodes {
        if let Some(l) = node.layer_qconfig()? {
            qconfig = qconfig.with_layer(l)?;
        }
    }
    for l in &cfg.layer_qconfig {
        qconfig = qconfig.with_layer(l.clone())?;
    }
    qconfig.check_layers(graph)?;
    Ok(qconfig)
}
