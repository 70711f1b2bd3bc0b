//! Interrupt-and-resume reproduces the uninterrupted run bit for bit (own test binary: the
//! interrupt flag is process-wide).

use std::sync::atomic::Ordering;
use wqat::engine::train::{Phase, ProgressSink, Quiet, TrainConfig, Trainer, INTERRUPTED};
use wqat::testing;
use wqat::WqatError;

/// Raises the interrupt flag after `at` steps of the given phase's first epoch.
struct InterruptAt {
    phase: Phase,
    at: usize,
    current: Option<Phase>,
}

impl ProgressSink for InterruptAt {
    fn epoch_start(&mut self, phase: Phase, _epoch: usize, _epochs: usize, _batches: usize) {
        self.current = Some(phase);
    }
    fn step(&mut self, done: usize, _reading: Option<(f32, f32)>, _ips: f32) {
        if self.current == Some(self.phase) && done == self.at {
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
    }
}

fn config(dir: &str) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        qat_epochs: 2,
        batch: 32,
        limit_train: Some(256),
        limit_test: Some(64),
        log_every: 3,
        calib_images: 64,
        observer: wqat::engine::ObserverKind::Histogram { bins: 256 },
        freeze_bn_after: Some(wqat::engine::Schedule::Steps(10)),
        // Per-layer settings on top of the W8A8 defaults: they must survive the checkpoint.
        // The percentile and MSE observers (histograms in the checkpoint) resume bit for bit too.
        layer_qconfig: [
            "conv2=w4,a6,per-tensor,observer=mse",
            "fc*=w6,observer=minmax",
            "input=a7,observer=percentile:99.9",
        ]
        .iter()
        .map(|s| wqat::engine::LayerQConfig::parse(s).unwrap())
        .collect(),
        out: std::env::temp_dir().join(format!("wqat-resume-{dir}-{}", std::process::id())),
        ..TrainConfig::default()
    }
}

/// The per-layer settings reached the quantizer states and the converted int8 model.
fn check_layer_qconfig(out: &std::path::Path) {
    use wqat::infer::{Domain, Int8Model, LayerKind};
    let m = Int8Model::load(&out.join(wqat::engine::train::INT8_FILE)).unwrap();
    assert_eq!(m.qconfig.layers.len(), 3);
    let layer = |n: &str| &m.layers[m.graph.nodes.iter().position(|x| x.name == n).unwrap()];
    let bits = |d: Domain| d.quant().unwrap().bits;
    assert_eq!(bits(m.input), 7, "input");
    for (n, wmax, abits, per_tensor) in
        [("conv1", 127, 8, false), ("conv2", 7, 6, true), ("fc1", 31, 8, false), ("fc2", 31, 8, false)]
    {
        let l = layer(n);
        assert_eq!(bits(l.out), abits, "{n} output bits");
        let LayerKind::Int(il) = &l.kind else { panic!("{n} is not an integer layer") };
        assert!(il.weight.iter().all(|w| (w as i32).abs() <= wmax), "{n}: weights outside ±{wmax}");
        assert!(il.weight.iter().any(|w| (w as i32).abs() == wmax), "{n}: no weight reaches ±{wmax}");
        let distinct = il.weight_scale.iter().map(|s| s.to_bits()).collect::<std::collections::BTreeSet<_>>().len();
        assert_eq!(distinct == 1, per_tensor, "{n}: {distinct} distinct weight scales");
    }
}

fn params(t: &Trainer) -> Vec<Vec<u32>> {
    let mut v: Vec<Vec<u32>> = t
        .state
        .params
        .iter()
        .map(|p| p.value.read_f32(&t.ctx).unwrap().iter().map(|x| x.to_bits()).collect())
        .collect();
    v.extend(
        t.state.quantizers.iter().map(|q| q.state.read_f32(&t.ctx).unwrap().iter().map(|x| x.to_bits()).collect()),
    );
    v
}

/// A small text folder (three classes of made-up words) for the transformer resume run.
fn text_folder() -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("wqat-resume-text-{}", std::process::id()));
    for split in ["train", "test"] {
        std::fs::create_dir_all(root.join(split)).unwrap();
        for (c, stem) in ["ab", "xyz", "mo"].iter().enumerate() {
            let words: Vec<String> = (0..48).map(|k| format!("{}{}{}", stem, k % 7, "q".repeat(k % (c + 2)))).collect();
            std::fs::write(root.join(split).join(format!("class{c}.txt")), words.join("\n")).unwrap();
        }
    }
    root
}

/// text-tiny with AdamW, warm-up and quantized attention matmuls: the optimizer's second
/// moment and every new quantizer must survive the checkpoint too.
fn text_config(dir: &str, data: &std::path::Path) -> TrainConfig {
    TrainConfig {
        data: data.to_string_lossy().into_owned(),
        model: "text-tiny".into(),
        max_len: 8,
        epochs: 2,
        qat_epochs: 2,
        batch: 16,
        lr: 1e-3,
        qat_lr: 1e-4,
        weight_decay: 0.05,
        optimizer: wqat::engine::config::Optimizer::AdamW,
        warmup_steps: 3,
        log_every: 3,
        calib_images: 32,
        layer_qconfig: vec![wqat::engine::LayerQConfig::parse("blocks.*.attn.core=matmul").unwrap()],
        out: std::env::temp_dir().join(format!("wqat-resume-text-{dir}-{}", std::process::id())),
        ..TrainConfig::default()
    }
}

/// Learned scales (LSQ+ with a per-layer LSQ override and its own learning rate) and
/// AdamW: the scales, zero points and their moments must survive the checkpoint too.
fn lsq_config(dir: &str) -> TrainConfig {
    TrainConfig {
        epochs: 1,
        qat_epochs: 2,
        batch: 32,
        limit_train: Some(256),
        limit_test: Some(64),
        log_every: 3,
        calib_images: 64,
        lr: 3e-3,
        qat_lr: 1e-3,
        weight_bits: 4,
        act_bits: 4,
        optimizer: wqat::engine::config::Optimizer::AdamW,
        quantizer: wqat::engine::QuantizerKind::LsqPlus,
        lsq_lr_mult: 0.5,
        layer_qconfig: vec![wqat::engine::LayerQConfig::parse("conv2=quantizer=lsq").unwrap()],
        out: std::env::temp_dir().join(format!("wqat-resume-lsq-{dir}-{}", std::process::id())),
        ..TrainConfig::default()
    }
}

#[test]
fn resume_after_interrupt_matches_uninterrupted_run() {
    // One test for every model: the interrupt flag is process-wide.
    check_resume(&config, true);
    check_resume(&lsq_config, false);
    let data = text_folder();
    check_resume(&|dir: &str| text_config(dir, &data), false);
    let _ = std::fs::remove_dir_all(&data);
    check_bit_schedule_resume();
}

/// `--bit-schedule w8a8,w6a6,w4a4` over 2 QAT epochs of 8 steps: stages at QAT steps 0, 5, 10
/// (observers frozen after 8: stage 2 is rescaled). Interrupted right before the first
/// boundary and inside stage 1 (W6A6), each resume reproduces the uninterrupted run.
fn check_bit_schedule_resume() {
    use wqat::engine::bit_schedule::{BitSchedule, StageRanges};
    let config = |dir: &str| TrainConfig {
        epochs: 1,
        weight_bits: 4,
        act_bits: 4,
        bit_schedule: Some(BitSchedule::parse("w8a8,w6a6,w4a4").unwrap()),
        freeze_observers_after: Some(wqat::engine::Schedule::Steps(8)),
        ..config(&format!("bits-{dir}"))
    };
    let ctx = testing::ctx();
    let full_cfg = config("full");
    let mut full = Trainer::new(ctx.clone(), full_cfg.clone(), None).unwrap();
    let want = full.run(&mut Quiet).unwrap();
    let stages: Vec<(u32, u32, u64, StageRanges)> =
        want.bit_stages.iter().map(|s| (s.weight_bits, s.act_bits, s.qat_step, s.ranges)).collect();
    assert_eq!(
        stages,
        [(8, 8, 0, StageRanges::Recalibrated), (6, 6, 5, StageRanges::Recalibrated), (4, 4, 10, StageRanges::Rescaled)]
    );
    let want_params = params(&full);
    // The flag raised after `at` steps stops the run after step at + 1: checkpoints after
    // QAT step 5 (the boundary comes next) and after step 8 (inside stage 1).
    for at in [4usize, 7] {
        let cfg = config(&format!("at{at}"));
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut t = Trainer::new(ctx.clone(), cfg.clone(), None).unwrap();
        let err = t.run(&mut InterruptAt { phase: Phase::Qat, at, current: None }).expect_err("interrupted");
        assert!(matches!(err, WqatError::Interrupted(_)), "{err}");
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut resumed = Trainer::new(ctx.clone(), TrainConfig::default(), Some(&cfg.out)).unwrap();
        // The checkpoint holds the stage's bits: W8 before the boundary, W6 inside stage 1.
        assert_eq!(resumed.state.qconfig.weight.bits, if at == 4 { 8 } else { 6 });
        let got = resumed.run(&mut Quiet).unwrap();
        assert_eq!(got.bit_stages, want.bit_stages);
        assert_eq!(got.losses.len(), want.losses.len());
        for (g, w) in got.losses.iter().zip(&want.losses) {
            assert_eq!(
                (g.step, g.loss.to_bits(), g.accuracy.to_bits()),
                (w.step, w.loss.to_bits(), w.accuracy.to_bits())
            );
        }
        assert_eq!(got.qat_acc, want.qat_acc);
        assert!(params(&resumed) == want_params, "parameters differ after resume at QAT step {at}");
        let _ = std::fs::remove_dir_all(&cfg.out);
    }
    let _ = std::fs::remove_dir_all(&full_cfg.out);
}

fn check_resume(config: &dyn Fn(&str) -> TrainConfig, conv_net: bool) {
    let ctx = testing::ctx();
    let full_cfg = config("full");
    let mut full = Trainer::new(ctx.clone(), full_cfg.clone(), None).unwrap();
    let want = full.run(&mut Quiet).unwrap();
    let want_params = params(&full);
    if conv_net {
        check_layer_qconfig(&full_cfg.out);
    }

    // Interrupt mid-epoch in fp32, resume; interrupt again mid-epoch in QAT, resume.
    for (phase, at) in [(Phase::Fp32, 4usize), (Phase::Qat, 5)] {
        let cfg = config(&format!("{phase:?}"));
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut t = Trainer::new(ctx.clone(), cfg.clone(), None).unwrap();
        let err = t.run(&mut InterruptAt { phase, at, current: None }).expect_err("interrupted");
        assert!(matches!(err, WqatError::Interrupted(_)), "{err}");
        INTERRUPTED.store(false, Ordering::SeqCst);
        let mut resumed = Trainer::new(ctx.clone(), TrainConfig::default(), Some(&cfg.out)).unwrap();
        let got = resumed.run(&mut Quiet).unwrap();
        assert_eq!(got.losses.len(), want.losses.len());
        for (g, w) in got.losses.iter().zip(&want.losses) {
            assert_eq!(
                (g.step, g.loss.to_bits(), g.accuracy.to_bits()),
                (w.step, w.loss.to_bits(), w.accuracy.to_bits())
            );
        }
        assert_eq!(got.fp32_acc, want.fp32_acc);
        assert_eq!(got.ptq_acc, want.ptq_acc);
        assert_eq!(got.qat_acc, want.qat_acc);
        assert!(params(&resumed) == want_params, "parameters differ after resume ({phase:?})");
        let _ = std::fs::remove_dir_all(&cfg.out);
    }
    let _ = std::fs::remove_dir_all(&full_cfg.out);
}
