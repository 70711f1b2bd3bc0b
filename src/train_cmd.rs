//! `wqat train`: its arguments, the progress bars (plain lines when stdout is not a
//! terminal) and the closing fp32 / PTQ / QAT / int8 table.

use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use wqat::engine::bit_schedule::BitSchedule;
use wqat::engine::config::Optimizer;
use wqat::engine::run::AutoBits;
use wqat::engine::sensitivity::{parse_bits, Budget};
use wqat::engine::train::{install_interrupt_handler, Phase, ProgressSink, RunReport, Schedule, TrainConfig, Trainer};
use wqat::engine::{LayerQConfig, ObserverKind};
use wqat::gpu::{GpuContext, GpuOptions};
use wqat::qconfig::QuantizerKind;

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    pub(crate) data: DataArgs,
    #[command(flatten)]
    pub(crate) quant: QuantArgs,
    /// fp32 training epochs (0 with --init: quantize the given weights).
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// QAT fine-tuning epochs.
    #[arg(long, default_value_t = 3)]
    qat_epochs: usize,
    /// Peak learning rate of the fp32 phase (cosine schedule to 0).
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Peak learning rate of the QAT phase (cosine schedule to 0).
    #[arg(long, default_value_t = 0.005)]
    qat_lr: f32,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay of conv/linear weights (not biases or BN).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    clip_grad_norm: Option<f32>,
    /// Optimizer of both phases: `sgd` (momentum, `--momentum`) or `adamw` (betas 0.9/0.999,
    /// eps 1e-8, decoupled `--weight-decay`). Weight decay never applies to biases, BN or
    /// LayerNorm affine, embeddings, CLS tokens or positions.
    #[arg(long, default_value = "sgd")]
    optimizer: String,
    /// Linear learning-rate warm-up over the first N steps of the fp32 phase, then the cosine.
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use only the first N training images.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Output directory (checkpoints, metrics.json).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Start from these weights: a wqat checkpoint or a PyTorch state_dict (safetensors).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Continue the run whose checkpoint is in this directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Quantizer scales: `observer` (the observers set them), `lsq` (learned step sizes,
    /// Esser et al. 2020, initialized from the calibrated observers) or `lsq+` (LSQ plus a
    /// learned activation zero point, Bhalgat et al. 2020).
    #[arg(long, default_value = "observer")]
    quantizer: String,
    /// Learning-rate multiplier of the learned scales and zero points (`--quantizer lsq|lsq+`).
    #[arg(long, default_value_t = 1.0)]
    lsq_lr_mult: f32,
    /// Freeze observers after N QAT steps, or after E QAT epochs with `Eep`.
    #[arg(long)]
    freeze_observers_after: Option<String>,
    /// Freeze BN statistics after N QAT steps, or after E QAT epochs with `Eep`.
    #[arg(long)]
    freeze_bn_after: Option<String>,
    /// Read loss/accuracy every N steps (the only GPU-to-CPU sync of training).
    #[arg(long, default_value_t = 50)]
    log_every: usize,
    /// Skip steps with a NaN/Inf loss or gradient instead of stopping.
    #[arg(long)]
    skip_nonfinite: bool,
    /// Random crop (pad 4) and horizontal flip of training images (CIFAR recipe; never
    /// applied to text).
    #[arg(long)]
    augment: bool,
    /// Gradual bit width over the QAT phase: stages `8,6,4` (weight bits) or `w8a8,w6a6,w4a4`,
    /// never increasing, the last being the model's bits; stage k starts at QAT step
    /// floor(k T / n) of T, and the observers are re-calibrated at each stage's bits.
    #[arg(long, value_name = "STAGES")]
    bit_schedule: Option<String>,
    /// Automatic mixed precision: per-layer weight bits within this budget, average weight
    /// bits (`5`) or packed weight size (`40KiB`), chosen from a sensitivity scan of the fp32
    /// model on the validation split (needs --val-split) before PTQ.
    #[arg(long)]
    auto_bits: Option<String>,
    /// Bit widths --auto-bits may give a layer.
    #[arg(long, default_value = "8,7,6,5,4,3,2")]
    auto_bits_candidates: String,
    /// Validation images each --auto-bits scan point is evaluated on.
    #[arg(long, default_value_t = 2000)]
    scan_images: usize,
}

/// Data, model and evaluation flags shared by `wqat train` and `wqat calibrate`.
#[derive(Args)]
pub(crate) struct DataArgs {
    /// `digits` (embedded UCI digits), a directory of MNIST-style IDX files, CIFAR-10 binaries,
    /// an image folder, or a text folder (train/<class>.txt + test/<class>.txt).
    #[arg(long, default_value = "digits")]
    pub(crate) data: String,
    /// Tokens per text sequence (a CLS token then up to N-1 UTF-8 bytes, padded); text data only.
    #[arg(long, default_value_t = wqat::data::DEFAULT_MAX_LEN)]
    pub(crate) max_len: usize,
    /// Model: mlp, mnist-cnn, resnet20, resnet18, or a JSON spec file.
    #[arg(long, default_value = "mnist-cnn")]
    pub(crate) model: String,
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub(crate) limit_test: Option<usize>,
    /// Hold out this fraction of the training images as a validation split (a fixed seeded
    /// choice); every stage is also evaluated on it (choose hyper-parameters there, report test).
    #[arg(long)]
    pub(crate) val_split: Option<f32>,
    /// Adapter name substring (see `wqat devices`).
    #[arg(long)]
    pub(crate) adapter: Option<String>,
}

/// Quantization flags shared by `wqat train` and `wqat calibrate`.
#[derive(Args)]
pub(crate) struct QuantArgs {
    /// Weight bits [default: 8; with --bit-schedule, its last stage's].
    #[arg(long)]
    pub(crate) weight_bits: Option<u32>,
    /// Activation bits [default: 8; with a wNaM --bit-schedule, its last stage's].
    #[arg(long)]
    pub(crate) act_bits: Option<u32>,
    /// Activation observer: minmax, ema[:C] (default ema:0.01; calibration takes the running
    /// min/max), histogram[:BINS], percentile[:P] (keep the central P %, default 99.99) or mse
    /// (least expected quantization MSE over 128 clipping thresholds).
    #[arg(long, default_value = "ema:0.01")]
    pub(crate) observer: String,
    /// Per-tensor weight scales (default: per output channel).
    #[arg(long)]
    pub(crate) per_tensor_weights: bool,
    /// Weights in the full signed range [-2^(b-1), 2^(b-1)-1] with scale max|w|/((qmax-qmin)/2),
    /// as PyTorch's symmetric qint8 observers (default: [-(2^(b-1)-1), 2^(b-1)-1], max|w|/qmax).
    #[arg(long)]
    pub(crate) full_range_weights: bool,
    /// Per-layer quantization settings, `PATTERN=SETTING,...` (repeatable, later ones win):
    /// PATTERN is a layer name (`conv1`, `input` for the image) or has `*` wildcards
    /// (`layer3.*`); settings: `wN` weight bits, `aN` output-activation bits, `per-channel`,
    /// `per-tensor`, `fp32` (keep the layer's weights in fp32), `int`, `observer=KIND`
    /// (`observer=percentile:99.99`, `observer=mse`, ...), `quantizer=observer|lsq|lsq+`.
    /// Example: `--layer-qconfig input=a8 --layer-qconfig conv1=w8,a8`.
    #[arg(long = "layer-qconfig", value_name = "PATTERN=SETTINGS")]
    pub(crate) layer_qconfig: Vec<String>,
    /// Keep the first conv/linear layer in fp32.
    #[arg(long)]
    pub(crate) fp32_first: bool,
    /// Keep the last layer in fp32.
    #[arg(long)]
    pub(crate) fp32_last: bool,
    /// Training images used for PTQ calibration.
    #[arg(long, default_value_t = 2048)]
    pub(crate) calib_images: usize,
}

impl QuantArgs {
    /// Parses the observer and the per-layer overrides.
    pub(crate) fn parsed(&self) -> wqat::Result<(ObserverKind, Vec<LayerQConfig>)> {
        let layers = self.layer_qconfig.iter().map(|s| LayerQConfig::parse(s)).collect::<wqat::Result<_>>()?;
        Ok((ObserverKind::parse(&self.observer)?, layers))
    }
}

/// Progress bars on a terminal, one line per epoch otherwise.
struct Bars {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    last: Option<(f32, f32)>,
}

impl ProgressSink for Bars {
    fn epoch_start(&mut self, phase: Phase, epoch: usize, epochs: usize, batches: usize) {
        if self.tty {
            let bar = indicatif::ProgressBar::new(batches as u64);
            let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_prefix(format!("{} epoch {}/{}", phase_name(phase), epoch + 1, epochs));
            self.bar = Some(bar);
        }
        self.last = None;
    }
    fn step(&mut self, done: usize, reading: Option<(f32, f32)>, ips: f32) {
        if reading.is_some() {
            self.last = reading;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            if let Some((l, a)) = self.last {
                bar.set_message(format!("loss {l:.4} acc {:.2}% {ips:.0} img/s", a * 100.0));
            }
        }
    }
    fn epoch_end(&mut self, phase: Phase, epoch: usize, loss: f32, acc: f32, ips: f32) {
        let line = format!(
            "{} epoch {}: loss {loss:.4}, train accuracy {:.2}%, {ips:.0} images/s",
            phase_name(phase),
            epoch + 1,
            acc * 100.0
        );
        match self.bar.take() {
            Some(bar) => bar.finish_with_message(format!("loss {loss:.4} acc {:.2}% {ips:.0} img/s", acc * 100.0)),
            None => println!("{line}"),
        }
    }
    fn message(&mut self, m: &str) {
        println!("{m}");
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Fp32 => "fp32",
        Phase::Qat => "QAT",
        Phase::Done => "done",
    }
}

fn pct(x: Option<f32>) -> String {
    x.map(|v| format!("{:.2}%", v * 100.0)).unwrap_or_else(|| "-".into())
}

fn print_report(r: &RunReport, out: &std::path::Path) {
    println!();
    let overrides = match r.config.layer_qconfig.len() {
        0 => String::new(),
        n => format!(" + {n} layer override{}", if n == 1 { "" } else { "s" }),
    };
    println!("{} on {} (W{}A{}{overrides}), adapter {}", r.model, r.dataset, r.weight_bits, r.act_bits, r.adapter);
    match &r.val {
        None => {
            println!("  {:<8} {:>9}", "stage", "test");
            for (stage, acc) in [("fp32", r.fp32_acc), ("PTQ", r.ptq_acc), ("QAT", r.qat_acc), ("int8", r.int8_acc)] {
                println!("  {:<8} {:>9}", stage, pct(acc));
            }
        }
        Some(v) => {
            println!("  {:<8} {:>11} {:>9}", "stage", "validation", "test");
            let rows = [
                ("fp32", v.fp32_acc, r.fp32_acc),
                ("PTQ", v.ptq_acc, r.ptq_acc),
                ("QAT", v.qat_acc, r.qat_acc),
                ("int8", v.int8_acc, r.int8_acc),
            ];
            for (stage, val, test) in rows {
                println!("  {:<8} {:>11} {:>9}", stage, pct(val), pct(test));
            }
            println!("  validation: {} images held out of the training split", v.images);
        }
    }
    if let Some(a) = r.agreement {
        println!("  fake-quant/int8 agreement {:.2}%", a * 100.0);
    }
    if !r.bit_stages.is_empty() {
        let stages: Vec<String> = r
            .bit_stages
            .iter()
            .map(|s| format!("W{}A{} from QAT step {}", s.weight_bits, s.act_bits, s.qat_step))
            .collect();
        println!("  bit schedule: {}", stages.join(", "));
    }
    let ips = |x: Option<f32>| x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    println!("  training images/s: fp32 {}, QAT {}", ips(r.train_images_per_s_fp32), ips(r.train_images_per_s_qat));
    println!("  wrote {}", out.join("metrics.json").display());
}

/// A TrainConfig with the shared data and quantization flags, the rest at defaults.
pub(crate) fn base_config(d: &DataArgs, q: &QuantArgs) -> wqat::Result<TrainConfig> {
    let (observer, layer_qconfig) = q.parsed()?;
    Ok(TrainConfig {
        data: d.data.clone(),
        model: d.model.clone(),
        weight_bits: q.weight_bits.unwrap_or(8),
        act_bits: q.act_bits.unwrap_or(8),
        batch: d.batch,
        observer,
        per_tensor_weights: q.per_tensor_weights,
        full_range_weights: q.full_range_weights,
        fp32_first: q.fp32_first,
        fp32_last: q.fp32_last,
        layer_qconfig,
        calib_images: q.calib_images,
        limit_test: d.limit_test,
        val_split: d.val_split,
        max_len: d.max_len,
        ..TrainConfig::default()
    })
}

/// The GPU context of `--adapter` (or the environment's choice).
pub(crate) fn gpu_context(adapter: Option<String>) -> wqat::Result<std::sync::Arc<GpuContext>> {
    let mut opts = GpuOptions::from_env();
    if adapter.is_some() {
        opts.adapter = adapter;
    }
    GpuContext::new(&opts)
}

/// `--bit-schedule`: parsed into the config; its last stage gives the bits not set by
/// `--weight-bits/--act-bits` (those given must agree; `Trainer::new` checks).
fn with_bit_schedule(mut cfg: TrainConfig, s: Option<&str>, q: &QuantArgs) -> wqat::Result<TrainConfig> {
    if let Some(s) = s {
        let sched = BitSchedule::parse(s)?;
        let last = sched.stages[sched.stages.len() - 1];
        cfg.weight_bits = q.weight_bits.unwrap_or(last.weight_bits);
        cfg.act_bits = q.act_bits.or(last.act_bits).unwrap_or(8);
        cfg.bit_schedule = Some(sched);
    }
    Ok(cfg)
}

pub(crate) fn train(a: TrainArgs) -> wqat::Result<()> {
    let base = base_config(&a.data, &a.quant)?;
    let cfg = TrainConfig {
        epochs: a.epochs,
        qat_epochs: a.qat_epochs,
        lr: a.lr,
        qat_lr: a.qat_lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        clip_grad_norm: a.clip_grad_norm,
        optimizer: Optimizer::parse(&a.optimizer)?,
        warmup_steps: a.warmup_steps,
        seed: a.seed,
        limit_train: a.limit_train,
        out: a.out,
        init: a.init,
        freeze_observers_after: a.freeze_observers_after.as_deref().map(Schedule::parse).transpose()?,
        freeze_bn_after: a.freeze_bn_after.as_deref().map(Schedule::parse).transpose()?,
        log_every: a.log_every,
        skip_nonfinite: a.skip_nonfinite,
        augment: a.augment,
        quantizer: QuantizerKind::parse(&a.quantizer)?,
        lsq_lr_mult: a.lsq_lr_mult,
        auto_bits: match &a.auto_bits {
            Some(b) => Some(AutoBits {
                budget: Budget::parse(b)?,
                candidates: parse_bits(&a.auto_bits_candidates)?,
                scan_images: a.scan_images,
                choice: None,
            }),
            None => None,
        },
        ..base
    };
    let cfg = with_bit_schedule(cfg, a.bit_schedule.as_deref(), &a.quant)?;
    let ctx = gpu_context(a.data.adapter)?;
    install_interrupt_handler();
    let mut trainer = Trainer::new(ctx, cfg, a.resume.as_deref())?;
    let ds = &trainer.ds;
    let unit = if ds.text.is_some() { "sequences" } else { "images" };
    println!(
        "wqat: {} on {} ({} train / {} test {unit}), adapter {}",
        trainer.graph.name,
        ds.name,
        ds.train.len(),
        ds.test.len(),
        trainer.ctx.summary.name
    );
    if let Some(enc) = &ds.text {
        println!("text: {} tokens per sequence (CLS + up to {} bytes)", enc.max_len, enc.max_bytes());
        if trainer.cfg.augment {
            println!("note: --augment applies to images only; text is not augmented");
        }
    }
    let q = &trainer.state.qconfig;
    let per = if q.weight.channel_axis.is_some() { "per-channel" } else { "per-tensor" };
    println!("quantization: W{}A{} ({per} weights, observer {})", q.weight.bits, q.activation.bits, q.observer);
    if q.quantizer.learned() {
        println!("  learned scales: {} (lr multiplier {})", q.quantizer, trainer.cfg.lsq_lr_mult);
    }
    for l in &q.layers {
        println!("  layer override {l}");
    }
    if let Some(s) = &trainer.cfg.bit_schedule {
        println!("bit schedule {s} over the QAT phase (per-layer bit overrides are not stepped)");
    }
    let mut bars = Bars { bar: None, tty: std::io::stdout().is_terminal(), last: None };
    let report = trainer.run(&mut bars)?;
    print_report(&report, &trainer.cfg.out);
    Ok(())
}
