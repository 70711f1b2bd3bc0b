//! Evaluation inside the pipeline: accuracy and predictions of a compiled model on the test
//! or validation split (optionally its logits, for the sensitivity scan), the converted
//! integer model's accuracy and agreement with fake-quant, and the activation statistics
//! `wqat report` reads.

use super::compile::Compiled;
use super::train::{val_note, ProgressSink, Trainer, INT8_FILE};
use crate::data::Batcher;
use crate::error::Result;
use crate::tensorfile::TensorFile;

/// What [`Trainer::eval_pass`] measured.
pub(super) struct EvalPass {
    pub accuracy: f32,
    pub preds: Vec<u32>,
    /// `[images, classes]`, empty unless asked for.
    pub logits: Vec<f32>,
}

/// Accuracy of the converted integer model and its agreement with fake-quant.
pub(super) struct Int8Eval {
    pub acc: f32,
    pub val_acc: Option<f32>,
    pub agreement: f32,
}

impl Trainer {
    /// Accuracy and predictions on the test split with the current flags (no observers).
    pub fn evaluate(&self, c: &Compiled) -> Result<(f32, Vec<u32>)> {
        self.evaluate_on(c, &self.test_batches)
    }

    /// Accuracy on the validation split, when the run holds one out.
    pub(super) fn val_accuracy(&self, c: &Compiled) -> Result<Option<f32>> {
        self.val_batches.as_ref().map(|v| Ok(self.evaluate_on(c, v)?.0)).transpose()
    }

    fn evaluate_on(&self, c: &Compiled, batches: &Batcher) -> Result<(f32, Vec<u32>)> {
        let r = self.eval_pass(c, batches, false)?;
        Ok((r.accuracy, r.preds))
    }

    /// One evaluation pass over `batches` with the current quantizer flags: accuracy and
    /// predictions, and the logits `[images, classes]` when `with_logits` (one more readback
    /// per batch).
    pub(super) fn eval_pass(&self, c: &Compiled, batches: &Batcher, with_logits: bool) -> Result<EvalPass> {
        let ctx = &self.ctx;
        let plan = c.eval_plan();
        let classes = self.graph.num_classes;
        let mut preds = Vec::with_capacity(batches.num_images());
        let mut logits = Vec::new();
        let mut correct = 0usize;
        let per = c.batch * self.ds.image_len();
        let mut padded = vec![0f32; per];
        for b in batches.epoch(0) {
            padded[..b.images.len()].copy_from_slice(&b.images);
            padded[b.images.len()..].fill(0.0);
            c.images.write(ctx, &padded)?;
            ctx.submit_plan(&plan)?;
            let p = c.preds.read_u32(ctx)?;
            for (k, &l) in b.labels.iter().enumerate() {
                correct += (p[k] == l) as usize;
                preds.push(p[k]);
            }
            if with_logits {
                logits.extend_from_slice(&c.logits.read_f32(ctx)?[..b.labels.len() * classes]);
            }
        }
        Ok(EvalPass { accuracy: correct as f32 / preds.len().max(1) as f32, preds, logits })
    }

    /// Converts `file` (a QAT or PTQ checkpoint) into `OUT/model.int8.safetensors`, evaluates
    /// it on the CPU integer backend on the test split (and the validation split when held
    /// out) and measures its top-1 agreement with the fake-quant predictions `fake_preds`.
    pub(super) fn convert_and_evaluate(
        &self,
        file: &TensorFile,
        fake_preds: &[u32],
        sink: &mut dyn ProgressSink,
    ) -> Result<Int8Eval> {
        use crate::infer::{evaluate, Backend};
        let int8 = crate::convert::convert(&self.graph, file)?;
        int8.save(&self.cfg.out.join(INT8_FILE))?;
        let test = self.ds.test.truncated(self.test_batches.num_images());
        let r = evaluate(&int8, &Backend::Cpu, &test, 256)?;
        let val_acc = match &self.val_batches {
            Some(v) => {
                let split = v.split().truncated(v.num_images());
                Some(evaluate(&int8, &Backend::Cpu, &split, 256)?.accuracy as f32)
            }
            None => None,
        };
        let agree = r.predictions.iter().zip(fake_preds).filter(|(a, b)| **a == **b as usize).count();
        let agreement = agree as f32 / fake_preds.len().max(1) as f32;
        sink.message(&format!(
            "int8 test accuracy {:.2}%{} (CPU integer backend), agreement with fake-quant {:.2}%",
            r.accuracy * 100.0,
            val_note(val_acc),
            agreement * 100.0
        ));
        Ok(Int8Eval { acc: r.accuracy as f32, val_acc, agreement })
    }

    /// Samples activation statistics for `wqat report` (`OUT/report/{stage}.json`) on held-out
    /// images (validation when held out, else test); leaves fake-quant on, observers off.
    /// The report is an extra: when sampling fails (e.g. a diverged model whose ranges are
    /// not finite, under `--skip-nonfinite`) the run says so and goes on.
    pub(super) fn record_report(&self, c: &Compiled, stage: &str, file: &TensorFile, sink: &mut dyn ProgressSink) {
        let (batches, split) = match &self.val_batches {
            Some(v) => (v, "validation"),
            None => (&self.test_batches, "test"),
        };
        let out = &self.cfg.out;
        let r = crate::report::sample::record_stage(
            &self.ctx,
            c,
            &self.state,
            &self.graph,
            file,
            batches,
            split,
            stage,
            out,
        );
        if let Err(e) = r {
            sink.message(&format!("report data of the {stage} stage not recorded: {e}"));
        }
    }
}
