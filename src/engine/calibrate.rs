//! `wqat calibrate`: post-training quantization alone. A trained model (a wqat checkpoint or a
//! PyTorch state_dict, loaded as `wqat train --init` loads it) is evaluated in fp32, its
//! observers run over `calib_images` training images (the calibration plan of `wqat train`,
//! fake-quant off), and the fake-quant model is evaluated with the ranges frozen. The
//! result is `OUT/ptq.safetensors` (a model checkpoint with its quantizer states, histograms
//! and qconfig, which `wqat convert` accepts) and `OUT/metrics.json` (a [`RunReport`] with
//! `fp32_acc`, `ptq_acc`, no QAT). With `convert`, the checkpoint is also converted to
//! `OUT/model.int8.safetensors` and evaluated on the CPU integer backend (`int8_acc`,
//! `agreement` with the fake-quant predictions).

use super::compile::{CompileOptions, Compiled};
use super::run::{RunReport, ValReport};
use super::train::{val_note, write_report, ProgressSink, Trainer};
use crate::error::{Result, WqatError};
use std::time::Instant;

/// Name of the calibrated checkpoint inside the output directory.
pub const PTQ_FILE: &str = "ptq.safetensors";

/// Wall-clock seconds of the parts of a calibration run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CalibrateTimes {
    pub fp32_eval: f64,
    /// Observers over the calibration images plus the fake-quant evaluation.
    pub calibrate_and_eval: f64,
    pub convert_and_int8_eval: f64,
}

impl Trainer {
    /// Runs post-training calibration on a trainer built with `epochs = 0` and `init` set
    /// (see the module doc). `fp32_eval` evaluates the fp32 model first (`fp32_acc`);
    /// `convert` also writes and evaluates the integer model.
    pub fn calibrate_only(
        &mut self,
        fp32_eval: bool,
        convert: bool,
        sink: &mut dyn ProgressSink,
    ) -> Result<(RunReport, CalibrateTimes)> {
        if self.cfg.init.is_none() || self.cfg.epochs != 0 {
            return Err(WqatError::invalid("calibration takes a trained model (init) and no fp32 epochs"));
        }
        std::fs::create_dir_all(&self.cfg.out).map_err(|e| WqatError::io(&self.cfg.out, e))?;
        let mut times = CalibrateTimes::default();
        let opts = |quant| CompileOptions { batch: self.cfg.batch, quant, train: false };
        let (mut fp32_acc, mut fp32_val_acc) = (None, None);
        if fp32_eval {
            let t0 = Instant::now();
            let fp32 = Compiled::new(&self.ctx, &self.state, &opts(false), None)?;
            self.state.set_quant_flags(&self.ctx, false, false, None)?;
            let acc = self.evaluate(&fp32)?.0;
            fp32_val_acc = self.val_accuracy(&fp32)?;
            drop(fp32);
            times.fp32_eval = t0.elapsed().as_secs_f64();
            sink.message(&format!("fp32 test accuracy {:.2}%{}", acc * 100.0, val_note(fp32_val_acc)));
            fp32_acc = Some(acc);
        }
        self.run.fp32_acc = fp32_acc;
        self.run.fp32_val_acc = fp32_val_acc;

        let t0 = Instant::now();
        let c = Compiled::new(&self.ctx, &self.state, &opts(true), None)?;
        self.run_observers(&c)?;
        let (ptq_acc, ptq_preds) = self.evaluate(&c)?;
        let ptq_val_acc = self.val_accuracy(&c)?;
        times.calibrate_and_eval = t0.elapsed().as_secs_f64();
        self.run.ptq_acc = Some(ptq_acc);
        self.run.ptq_val_acc = ptq_val_acc;
        sink.message(&format!(
            "PTQ W{}A{} test accuracy {:.2}%{} (calibrated on {} images)",
            self.cfg.weight_bits,
            self.cfg.act_bits,
            ptq_acc * 100.0,
            val_note(ptq_val_acc),
            self.calib_count()
        ));
        let file = self.save_model(PTQ_FILE, Some(&c))?;
        drop(c);

        let (mut int8_acc, mut int8_val_acc, mut agreement) = (None, None, None);
        if convert {
            let t0 = Instant::now();
            let r = self.convert_and_evaluate(&file, &ptq_preds, sink)?;
            (int8_acc, int8_val_acc, agreement) = (Some(r.acc), r.val_acc, Some(r.agreement));
            times.convert_and_int8_eval = t0.elapsed().as_secs_f64();
        }
        let val = self.val_batches.as_ref().map(|v| ValReport {
            images: v.num_images(),
            fp32_acc: fp32_val_acc,
            ptq_acc: ptq_val_acc,
            qat_acc: None,
            int8_acc: int8_val_acc,
        });
        let report = RunReport {
            dataset: self.ds.name.clone(),
            model: self.graph.name.clone(),
            adapter: format!("{} ({})", self.ctx.summary.name, self.ctx.summary.backend),
            weight_bits: self.cfg.weight_bits,
            act_bits: self.cfg.act_bits,
            fp32_acc,
            ptq_acc: Some(ptq_acc),
            qat_acc: None,
            int8_acc,
            agreement,
            train_images_per_s_fp32: None,
            train_images_per_s_qat: None,
            train_images: self.calib_count(),
            test_images: self.test_batches.num_images(),
            val,
            steps: 0,
            skipped_nonfinite_windows: 0,
            losses: Vec::new(),
            bit_stages: Vec::new(),
            config: self.cfg.clone(),
        };
        write_report(&self.cfg.out, &report)?;
        Ok((report, times))
    }
}
