//! The whole pipeline of `wqat train`: fp32 training (or `--init`), post-training
//! calibration (PTQ) and its accuracy, QAT fine-tuning, evaluation, checkpoints and
//! `metrics.json`. Each phase replays one compiled step; the host only uploads batches,
//! queues the learning rate and reads the metrics every `log_every` steps.
//!
//! A run checkpoint (`OUT/checkpoint.safetensors`) is written atomically at the end of
//! every epoch and when SIGINT/SIGTERM arrives (after the current step); `--resume OUT`
//! continues from it and reproduces the uninterrupted run bit for bit on the same adapter.

use super::compile::{CompileOptions, Compiled, StepOptions};
use super::config::{OptimConfig, QConfig};
use super::run::validate;
pub use super::run::{run_qconfig, LossPoint, Phase, RunReport, RunState, Schedule, TrainConfig, ValReport};
use super::state::ModelState;
use crate::data::{self, BatchConfig, Batcher, Dataset};
use crate::error::{Result, WqatError};
use crate::gpu::{GpuContext, Plan};
use crate::kernels::loss::{self, Metrics, MetricsLayout};
use crate::kernels::optim;
use crate::model::{zoo, Graph, Op};
use crate::tensorfile::{HostData, HostTensor, TensorFile};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Set by the SIGINT/SIGTERM handler; checked after every step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT/SIGTERM handler (once per process).
pub fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                // A second signal: the user insists.
                eprintln!("\nwqat: second interrupt, exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\nwqat: interrupt received, finishing the current step and writing a checkpoint...");
        });
    });
}

/// Builds the graph for a dataset: a zoo name or a JSON spec, with fp32 first/last flags.
pub fn build_graph(model: &str, ds: &Dataset, fp32_first: bool, fp32_last: bool) -> Result<Graph> {
    let (c, h, w) = ds.shape;
    let mut g = if model.ends_with(".json") {
        let path = Path::new(model);
        let text = std::fs::read_to_string(path).map_err(|e| WqatError::io(path, e))?;
        Graph::from_json(path, &text)?
    } else {
        zoo::build(model, [c, h, w], ds.num_classes)?
    };
    if g.input != [c, h, w] || g.num_classes != ds.num_classes {
        return Err(WqatError::invalid(format!(
            "model {} takes {:?} images and {} classes; the data has {:?} and {}",
            g.name, g.input, g.num_classes, ds.shape, ds.num_classes
        )));
    }
    let weighted: Vec<usize> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Conv { .. } | Op::Linear { .. }))
        .map(|(i, _)| i)
        .collect();
    if fp32_first {
        if let Some(&i) = weighted.first() {
            g.nodes[i].fp32 = true;
        }
    }
    if fp32_last {
        if let Some(&i) = weighted.last() {
            g.nodes[i].fp32 = true;
        }
    }
    g.resolve()?;
    Ok(g)
}

/// Receives progress (the CLI draws bars; tests stay quiet).
pub trait ProgressSink {
    /// A phase epoch starts with `batches` steps.
    fn epoch_start(&mut self, _phase: Phase, _epoch: usize, _epochs: usize, _batches: usize) {}
    /// `done` steps of the epoch are queued; the latest metrics reading when one was taken.
    fn step(&mut self, _done: usize, _reading: Option<(f32, f32)>, _images_per_s: f32) {}
    /// The epoch ended.
    fn epoch_end(&mut self, _phase: Phase, _epoch: usize, _loss: f32, _acc: f32, _images_per_s: f32) {}
    /// A one-line message.
    fn message(&mut self, _m: &str) {}
}

/// A sink that ignores everything.
pub struct Quiet;
impl ProgressSink for Quiet {}

/// The training pipeline.
pub struct Trainer {
    pub ctx: Arc<GpuContext>,
    pub cfg: TrainConfig,
    pub ds: Dataset,
    pub graph: Graph,
    pub state: ModelState,
    pub run: RunState,
    pub(super) train_batches: Batcher,
    pub(super) test_batches: Batcher,
    /// The validation split held out of the training images (`--val-split`).
    pub(super) val_batches: Option<Batcher>,
    step_opts: StepOptions,
    /// Metrics words of an interrupted window, restored into the first compiled step.
    pending_metrics: Option<Vec<u32>>,
    /// Histogram observer states of a resumed run (`{quantizer}.histogram`).
    pending_histograms: Vec<(String, Vec<f32>)>,
}

/// Seed of the `--val-split` choice: fixed, so runs with different `--seed`s are compared
/// on the same validation images.
pub const VAL_SPLIT_SEED: u64 = 0x05ee_d0a1;

/// `" (validation X%)"` when there is a validation accuracy.
pub(super) fn val_note(acc: Option<f32>) -> String {
    acc.map(|a| format!(" (validation {:.2}%)", a * 100.0)).unwrap_or_default()
}

/// Name of the run checkpoint inside the output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Name of the converted integer model inside the output directory.
pub const INT8_FILE: &str = "model.int8.safetensors";

impl Trainer {
    /// Loads data, builds the model (fresh, `--init`, or resumed from `resume_dir`).
    pub fn new(ctx: Arc<GpuContext>, cfg: TrainConfig, resume_dir: Option<&Path>) -> Result<Trainer> {
        let (cfg, resume) = match resume_dir {
            Some(dir) => {
                let path = dir.join(CHECKPOINT_FILE);
                let f = TensorFile::load(&path)?;
                let text = f
                    .metadata
                    .get("train_config")
                    .ok_or_else(|| WqatError::format(&path, "not a run checkpoint (no train_config)"))?;
                let mut stored: TrainConfig =
                    serde_json::from_str(text).map_err(|e| WqatError::format(&path, format!("train_config: {e}")))?;
                stored.out = dir.to_path_buf();
                (stored, Some((path, f)))
            }
            None => (cfg, None),
        };
        validate(&cfg)?;
        let ds = data::load_with(&cfg.data, &data::LoadOptions { max_len: cfg.max_len })?;
        let (ds, val_ds) = match cfg.val_split {
            Some(f) => {
                let (train, val) = ds.train.split_off_validation(f, VAL_SPLIT_SEED)?;
                let val_ds = Dataset { test: Arc::new(val), ..ds.clone() };
                (Dataset { train: Arc::new(train), ..ds }, Some(val_ds))
            }
            None => (ds, None),
        };
        let mut graph = build_graph(&cfg.model, &ds, cfg.fp32_first, cfg.fp32_last)?;
        let qconfig = run_qconfig(&cfg, &graph)?;
        // `fp32` overrides mark graph nodes, like `--fp32-first/--fp32-last`.
        qconfig.apply_fp32(&mut graph);
        let mut train_cfg = BatchConfig::train(cfg.batch, cfg.seed);
        if let Some(l) = cfg.limit_train {
            train_cfg = train_cfg.with_limit(l);
        }
        if cfg.augment {
            train_cfg = train_cfg.with_augment(crate::data::Augment::cifar());
        }
        let train_batches = Batcher::train(&ds, train_cfg)?;
        let mut test_cfg = BatchConfig::eval(cfg.batch);
        if let Some(l) = cfg.limit_test {
            test_cfg = test_cfg.with_limit(l);
        }
        let test_batches = Batcher::test(&ds, test_cfg.clone())?;
        let val_batches = val_ds.as_ref().map(|v| Batcher::test(v, BatchConfig::eval(cfg.batch))).transpose()?;
        let fresh_run = RunState {
            phase: if cfg.epochs > 0 { Phase::Fp32 } else { Phase::Qat },
            epoch: 0,
            next_batch: 0,
            step: 0,
            phase_step: 0,
            fp32_acc: None,
            ptq_acc: None,
            fp32_val_acc: None,
            ptq_val_acc: None,
            train_images_per_s_fp32: None,
            train_images_per_s_qat: None,
            phase_seconds: 0.0,
            phase_images: 0,
            losses: Vec::new(),
            skipped_nonfinite: 0,
            bit_stages: Vec::new(),
        };
        let mut pending_metrics = None;
        let mut pending_histograms = Vec::new();
        let (state, run) = match resume {
            Some((path, f)) => {
                for (name, t) in &f.tensors {
                    if name.ends_with(".histogram") {
                        pending_histograms.push((name.clone(), t.as_f32(name)?.to_vec()));
                    }
                }
                if let Some(t) = f.tensors.get("train_metrics") {
                    match &t.data {
                        HostData::I32(w) if w.len() == MetricsLayout::LEN => {
                            pending_metrics = Some(w.iter().map(|&x| x as u32).collect())
                        }
                        _ => return Err(WqatError::format(&path, "train_metrics must be 4 i32 words")),
                    }
                }
                let state = ModelState::from_checkpoint(&ctx, &path, &f, Some(&graph))?;
                let text = f.metadata.get("run").ok_or_else(|| WqatError::format(&path, "no run state"))?;
                let run: RunState =
                    serde_json::from_str(text).map_err(|e| WqatError::format(&path, format!("run state: {e}")))?;
                (state, run)
            }
            None => {
                let state = match &cfg.init {
                    Some(p) => load_init(&ctx, p, &graph, qconfig)?,
                    None => ModelState::new(&ctx, &graph, qconfig, cfg.seed)?,
                };
                (state, fresh_run)
            }
        };
        let step_opts = StepOptions {
            optimizer: cfg.optimizer,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            clip_grad_norm: cfg.clip_grad_norm,
            // Always on: a non-finite step never reaches the parameters, so they stay the
            // last good ones whether the run stops or skips.
            skip_nonfinite: true,
            lsq_lr_mult: cfg.lsq_lr_mult,
        };
        Ok(Trainer {
            ctx,
            cfg,
            ds,
            graph,
            state,
            run,
            train_batches,
            test_batches,
            val_batches,
            step_opts,
            pending_metrics,
            pending_histograms,
        })
    }

    pub(super) fn compile(&self, quant: bool) -> Result<Compiled> {
        let opts = CompileOptions { batch: self.cfg.batch, quant, train: true };
        Compiled::new(&self.ctx, &self.state, &opts, Some(&self.step_opts))
    }

    /// Runs (or continues) the whole pipeline.
    pub fn run(&mut self, sink: &mut dyn ProgressSink) -> Result<RunReport> {
        std::fs::create_dir_all(&self.cfg.out).map_err(|e| WqatError::io(&self.cfg.out, e))?;
        if self.run.phase == Phase::Fp32 {
            self.state.set_quant_flags(&self.ctx, false, false, None)?;
            let mut c = self.compile(false)?;
            if let Some(m) = self.pending_metrics.take() {
                c.metrics.write(&self.ctx, &m)?;
            }
            self.train_phase(&mut c, Phase::Fp32, sink)?;
            let (acc, _) = self.evaluate(&c)?;
            self.run.fp32_acc = Some(acc);
            self.run.fp32_val_acc = self.val_accuracy(&c)?;
            sink.message(&format!("fp32 test accuracy {:.2}%{}", acc * 100.0, val_note(self.run.fp32_val_acc)));
            self.save_model("fp32.safetensors", None)?;
            self.run.phase = Phase::Qat;
            self.run.epoch = 0;
            self.run.next_batch = 0;
            self.run.phase_step = 0;
            self.run.phase_seconds = 0.0;
            self.run.phase_images = 0;
        }
        if self.run.phase == Phase::Qat && self.run.phase_step == 0 && self.run.next_batch == 0 && self.run.epoch == 0 {
            // `--auto-bits`: per-layer weight bits from a sensitivity scan of the fp32 model.
            self.choose_auto_bits(sink)?;
        }
        let mut c = self.compile(true)?;
        for (name, v) in std::mem::take(&mut self.pending_histograms) {
            match c.histograms().into_iter().find(|(n, _)| *n == name) {
                Some((_, t)) if t.len() == v.len() => t.write(&self.ctx, &v)?,
                _ => return Err(WqatError::invalid(format!("checkpoint histogram {name} does not fit this run"))),
            }
        }
        if self.run.phase == Phase::Qat && self.run.phase_step == 0 && self.run.next_batch == 0 && self.run.epoch == 0 {
            if self.run.fp32_acc.is_none() {
                // Started from --init with no fp32 epochs: its accuracy is the fp32 baseline.
                let f = self.compile(false)?;
                self.state.set_quant_flags(&self.ctx, false, false, None)?;
                self.run.fp32_acc = Some(self.evaluate(&f)?.0);
                self.run.fp32_val_acc = self.val_accuracy(&f)?;
            }
            let ptq = self.calibrate(&c)?;
            // Learned quantizers (LSQ / LSQ+) start from the calibrated scales.
            self.ctx.submit_plan(&c.lsq_init_plan())?;
            self.run.ptq_acc = Some(ptq);
            self.run.ptq_val_acc = self.val_accuracy(&c)?;
            sink.message(&format!(
                "PTQ W{}A{}{} test accuracy {:.2}%{} (calibrated on {} images)",
                self.cfg.weight_bits,
                self.cfg.act_bits,
                if self.state.qconfig.layers.is_empty() { "" } else { " with per-layer overrides" },
                ptq * 100.0,
                val_note(self.run.ptq_val_acc),
                self.calib_count()
            ));
            let ptq_file = self.save_model("ptq.safetensors", Some(&c))?;
            self.record_report(&c, "ptq", &ptq_file, sink);
            self.start_bit_schedule(&mut c, sink)?;
            self.state.reset_momentum(&self.ctx)?;
        }
        if self.run.phase == Phase::Qat {
            if let Some(m) = self.pending_metrics.take() {
                c.metrics.write(&self.ctx, &m)?;
            }
            self.state.set_quant_flags(&self.ctx, true, !self.observers_frozen(), None)?;
            self.train_phase(&mut c, Phase::Qat, sink)?;
            self.run.phase = Phase::Done;
        }
        self.state.set_quant_flags(&self.ctx, true, false, None)?;
        let (qat_acc, qat_preds) = self.evaluate(&c)?;
        let qat_val_acc = self.val_accuracy(&c)?;
        sink.message(&format!("QAT test accuracy {:.2}%{}", qat_acc * 100.0, val_note(qat_val_acc)));
        let qat_file = self.save_model("qat.safetensors", Some(&c))?;
        self.record_report(&c, "qat", &qat_file, sink);
        self.save_checkpoint(&c, None)?;
        let int8 = self.convert_and_evaluate(&qat_file, &qat_preds, sink)?;
        let (int8_val_acc, agreement) = (int8.val_acc, int8.agreement);
        let val = self.val_batches.as_ref().map(|v| ValReport {
            images: v.num_images(),
            fp32_acc: self.run.fp32_val_acc,
            ptq_acc: self.run.ptq_val_acc,
            qat_acc: qat_val_acc,
            int8_acc: int8_val_acc,
        });
        let report = RunReport {
            dataset: self.ds.name.clone(),
            model: self.graph.name.clone(),
            adapter: format!("{} ({})", self.ctx.summary.name, self.ctx.summary.backend),
            weight_bits: self.cfg.weight_bits,
            act_bits: self.cfg.act_bits,
            fp32_acc: self.run.fp32_acc,
            ptq_acc: self.run.ptq_acc,
            qat_acc: Some(qat_acc),
            int8_acc: Some(int8.acc),
            agreement: Some(agreement),
            train_images_per_s_fp32: self.run.train_images_per_s_fp32,
            train_images_per_s_qat: self.run.train_images_per_s_qat,
            train_images: self.train_batches.num_images(),
            test_images: self.test_batches.num_images(),
            val,
            steps: self.run.step,
            skipped_nonfinite_windows: self.run.skipped_nonfinite,
            losses: self.run.losses.clone(),
            bit_stages: self.run.bit_stages.clone(),
            config: self.cfg.clone(),
        };
        write_report(&self.cfg.out, &report)?;
        Ok(report)
    }

    pub(super) fn observers_frozen(&self) -> bool {
        let spe = self.train_batches.batches_per_epoch() as u64;
        self.run.phase == Phase::Qat
            && self.cfg.freeze_observers_after.is_some_and(|s| s.fired(self.run.phase_step, spe))
    }
    fn bn_frozen(&self) -> bool {
        let spe = self.train_batches.batches_per_epoch() as u64;
        self.run.phase == Phase::Qat && self.cfg.freeze_bn_after.is_some_and(|s| s.fired(self.run.phase_step, spe))
    }

    pub(super) fn calib_count(&self) -> usize {
        let per = self.cfg.batch;
        (self.cfg.calib_images.div_ceil(per).max(1) * per).min(self.train_batches.batches_per_epoch() * per)
    }

    /// PTQ: observers on the fp32 model (fake-quant off) over the calibration images, then
    /// the fake-quant accuracy with the ranges frozen.
    pub(super) fn calibrate(&mut self, c: &Compiled) -> Result<f32> {
        self.run_observers(c)?;
        Ok(self.evaluate(c)?.0)
    }

    /// The calibration half of [`Trainer::calibrate`]: observers over the calibration
    /// images, then fake-quant on with the ranges frozen.
    pub(super) fn run_observers(&mut self, c: &Compiled) -> Result<()> {
        let ctx = &self.ctx;
        self.state.set_quant_flags(ctx, false, true, Some(true))?;
        let plan = c.calibrate_plan();
        let batches = self.calib_count() / self.cfg.batch;
        // Calibration reads the training split in its fixed (epoch 0) order, no augmentation.
        let mut calib_cfg = BatchConfig::eval(self.cfg.batch);
        calib_cfg.drop_last = true;
        let calib = Batcher::train(&self.ds, calib_cfg)?;
        for (k, b) in calib.epoch(0).enumerate() {
            if k >= batches {
                break;
            }
            c.images.write(ctx, &b.images)?;
            ctx.submit_plan(&plan)?;
        }
        self.state.set_quant_flags(ctx, true, false, None)?;
        Ok(())
    }

    /// Trains the current phase's remaining epochs.
    fn train_phase(&mut self, c: &mut Compiled, phase: Phase, sink: &mut dyn ProgressSink) -> Result<()> {
        let ctx = self.ctx.clone();
        let (epochs, lr) = match phase {
            Phase::Fp32 => (self.cfg.epochs, self.cfg.lr),
            _ => (self.cfg.qat_epochs, self.cfg.qat_lr),
        };
        let spe = self.train_batches.batches_per_epoch();
        let total = (epochs * spe) as u64;
        let sched = OptimConfig {
            lr,
            momentum: self.cfg.momentum,
            weight_decay: self.cfg.weight_decay,
            clip_grad_norm: None,
            warmup_steps: if phase == Phase::Fp32 { self.cfg.warmup_steps } else { 0 },
        };
        let mut plan_key = (self.observers_frozen(), self.bn_frozen());
        let mut plan: Plan = c.train_plan(phase == Phase::Qat && !plan_key.0, plan_key.1);
        let log_every = self.cfg.log_every.max(1) as u64;
        let mut window_start = self.run.step;
        while self.run.epoch < epochs {
            let epoch = self.run.epoch;
            sink.epoch_start(phase, epoch, epochs, spe);
            let t0 = Instant::now();
            let mut images = 0u64;
            let mut epoch_loss = (0.0f64, 0u64, 0u64);
            let start = self.run.next_batch;
            for b in self.train_batches.epoch(epoch as u64).skip(start) {
                let frozen = (self.observers_frozen(), self.bn_frozen());
                let restaged = phase == Phase::Qat && self.next_bit_stage(c, sink)?;
                if frozen != plan_key || restaged {
                    if frozen.0 && !plan_key.0 {
                        self.state.set_quant_flags(&ctx, true, false, None)?;
                        sink.message(&format!("observers frozen at QAT step {}", self.run.phase_step));
                    }
                    if frozen.1 && !plan_key.1 {
                        sink.message(&format!("BN statistics frozen at QAT step {}", self.run.phase_step));
                    }
                    plan_key = frozen;
                    plan = c.train_plan(phase == Phase::Qat && !plan_key.0, plan_key.1);
                }
                c.images.write(&ctx, &b.images)?;
                c.labels.write(&ctx, &b.labels)?;
                optim::write_hyper(
                    &ctx,
                    &c.hyper,
                    sched.lr_at(self.run.phase_step, total),
                    (self.run.phase_step + 1) as u32,
                )?;
                ctx.submit_plan(&plan)?;
                self.run.step += 1;
                self.run.phase_step += 1;
                self.run.next_batch = b.index + 1;
                images += b.size as u64;
                let last = b.index + 1 == spe;
                let interrupted = INTERRUPTED.load(Ordering::SeqCst);
                let mut reading = None;
                if self.run.step.is_multiple_of(log_every) || last {
                    let m = loss::read_metrics(&ctx, &c.metrics)?;
                    loss::reset_metrics(&ctx, &c.metrics)?;
                    self.check_metrics(&m, window_start)?;
                    window_start = self.run.step;
                    let point = LossPoint { phase, step: self.run.step, loss: m.mean_loss(), accuracy: m.accuracy() };
                    self.run.losses.push(point);
                    epoch_loss.0 += m.loss_sum as f64;
                    epoch_loss.1 += m.samples as u64;
                    epoch_loss.2 += m.correct as u64;
                    reading = Some((point.loss, point.accuracy));
                }
                let secs = t0.elapsed().as_secs_f64();
                sink.step(b.index + 1 - start, reading, (images as f64 / secs.max(1e-9)) as f32);
                if interrupted && !last {
                    ctx.wait()?;
                    self.run.phase_seconds += t0.elapsed().as_secs_f64();
                    self.run.phase_images += images;
                    self.save_checkpoint(c, Some(&c.metrics))?;
                    return Err(self.interrupted());
                }
            }
            ctx.wait()?;
            let secs = t0.elapsed().as_secs_f64();
            self.run.phase_seconds += secs;
            self.run.phase_images += images;
            let ips = (self.run.phase_images as f64 / self.run.phase_seconds.max(1e-9)) as f32;
            match phase {
                Phase::Fp32 => self.run.train_images_per_s_fp32 = Some(ips),
                _ => self.run.train_images_per_s_qat = Some(ips),
            }
            let (l, a) = if epoch_loss.1 > 0 {
                ((epoch_loss.0 / epoch_loss.1 as f64) as f32, epoch_loss.2 as f32 / epoch_loss.1 as f32)
            } else {
                (f32::NAN, f32::NAN)
            };
            sink.epoch_end(phase, epoch, l, a, (images as f64 / secs.max(1e-9)) as f32);
            self.run.epoch += 1;
            self.run.next_batch = 0;
            self.save_checkpoint(c, None)?;
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err(self.interrupted());
            }
        }
        Ok(())
    }

    /// The error a run stops with after writing its interrupt checkpoint.
    fn interrupted(&self) -> WqatError {
        WqatError::Interrupted(format!(
            "checkpoint written to {}; continue with `wqat train --resume {}`",
            self.cfg.out.join(CHECKPOINT_FILE).display(),
            self.cfg.out.display()
        ))
    }

    fn check_metrics(&mut self, m: &Metrics, window_start: u64) -> Result<()> {
        if m.bad_label() {
            return Err(WqatError::invalid(format!(
                "a label is out of range for {} classes (steps {}..{})",
                self.ds.num_classes,
                window_start + 1,
                self.run.step
            )));
        }
        if m.non_finite() {
            if self.cfg.skip_nonfinite {
                self.run.skipped_nonfinite += 1;
                return Ok(());
            }
            return Err(WqatError::NonFinite(format!(
                "the loss or gradients between steps {} and {} (the parameters were not updated from the first \
                 bad step on; the last checkpoint in {} is intact). Lower --lr, add --clip-grad-norm, or pass \
                 --skip-nonfinite",
                window_start + 1,
                self.run.step,
                self.cfg.out.display()
            )));
        }
        Ok(())
    }

    /// Metadata shared by every file this run writes.
    fn metadata(&self, f: &mut TensorFile) -> Result<()> {
        let n = &self.ds.norm;
        let norm = serde_json::json!({ "max_value": n.max_value, "mean": n.mean, "std": n.std });
        f.metadata.insert("normalization".into(), norm.to_string());
        f.metadata.insert("class_names".into(), serde_json::to_string(&self.ds.class_names).map_err(json)?);
        f.metadata.insert("dataset".into(), self.ds.name.clone());
        if let Some(t) = &self.ds.text {
            // How text becomes token ids, so conversion and inference encode alike.
            f.metadata.insert("text_encoding".into(), serde_json::to_string(t).map_err(json)?);
        }
        f.metadata.insert("step".into(), self.run.step.to_string());
        f.metadata.insert("phase".into(), serde_json::to_string(&self.run.phase).map_err(json)?);
        Ok(())
    }

    /// Writes a model file (parameters and quantizer states) into the output directory.
    pub(super) fn save_model(&self, name: &str, c: Option<&Compiled>) -> Result<TensorFile> {
        let extra = c.map(|c| c.histograms()).unwrap_or_default();
        let mut f = self.state.to_checkpoint(&self.ctx, &extra)?;
        self.metadata(&mut f)?;
        f.save(&self.cfg.out.join(name))?;
        Ok(f)
    }

    /// Writes the run checkpoint (model, optimizer, observers, run state, and the metrics
    /// window in progress when interrupted mid-window).
    fn save_checkpoint(&self, c: &Compiled, metrics: Option<&crate::gpu::GpuTensor>) -> Result<()> {
        let mut f = self.state.to_checkpoint(&self.ctx, &c.histograms())?;
        self.metadata(&mut f)?;
        f.metadata.insert("train_config".into(), serde_json::to_string(&self.cfg).map_err(json)?);
        f.metadata.insert("run".into(), serde_json::to_string(&self.run).map_err(json)?);
        if let Some(m) = metrics {
            let words = m.read_u32(&self.ctx)?;
            let data = HostData::I32(words.iter().map(|&w| w as i32).collect());
            f.insert("train_metrics", HostTensor { shape: vec![MetricsLayout::LEN], data });
        }
        f.save(&self.cfg.out.join(CHECKPOINT_FILE))
    }
}

fn json(e: serde_json::Error) -> WqatError {
    WqatError::invalid(format!("serializing metadata: {e}"))
}

/// Loads `--init`: a wqat checkpoint, or a PyTorch state_dict in safetensors.
fn load_init(ctx: &GpuContext, path: &Path, graph: &Graph, qconfig: QConfig) -> Result<ModelState> {
    // Only the parameters are taken: quantizers and optimizer start fresh.
    let f = TensorFile::load(path)?;
    if f.metadata.get("format").map(String::as_str) == Some(super::state::CHECKPOINT_FORMAT) {
        return ModelState::from_params(ctx, path, &f, graph, qconfig);
    }
    // A PyTorch state_dict: names mapped, dtypes converted, every problem listed at once.
    let imported = crate::model::import::import_state_dict(graph, path)?;
    ModelState::from_params(ctx, path, &imported, graph, qconfig)
}

/// Writes `metrics.json` atomically.
pub fn write_report(out: &Path, report: &RunReport) -> Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(json)?;
    crate::tensorfile::write_atomic(&out.join("metrics.json"), text.as_bytes())
}
