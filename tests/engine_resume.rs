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
        out: std::env::temp_dir().join(format!("wqat-resume-{dir}-{}", std::process::id())),
        ..TrainConfig::default()
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

#[test]
fn resume_after_interrupt_matches_uninterrupted_run() {
    let ctx = testing::ctx();
    let full_cfg = config("full");
    let mut full = Trainer::new(ctx.clone(), full_cfg.clone(), None).unwrap();
    let want = full.run(&mut Quiet).unwrap();
    let want_params = params(&full);

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
