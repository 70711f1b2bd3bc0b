//! Gradual bit width (`wqat train --bit-schedule 8,6,4`): the QAT phase steps the model-wide
//! bit widths down in stages, the last stage being the run's `--weight-bits/--act-bits`.
//!
//! * Syntax: comma-separated stages, each `N` (weight bits; activations stay at `--act-bits`
//!   throughout) or `wNaM` (weights and activations), all stages in the same form. Widths
//!   are 2..=8 and never increase from one stage to the next (equal is allowed); at least two
//!   stages. The last stage must equal `--weight-bits/--act-bits` (the CLI takes them from
//!   the schedule when they are not given).
//! * Boundaries: with `T` QAT steps and `n` stages, stage `k` starts at QAT step
//!   `floor(k T / n)`: equal segments, which fall on epoch boundaries whenever the stage count
//!   divides `--qat-epochs` (e.g. 3 stages over 3 or 6 epochs).
//! * What a stage sets: the QConfig's model-wide default bits. Per-layer settings (a
//!   `--layer-qconfig conv1=w8`, a spec's per-node qconfig, `--auto-bits`) that name bits keep
//!   winning: such a layer is not stepped.
//! * PTQ is measured at the final bits (comparable with an unscheduled run; `ptq.safetensors`
//!   is a final-bit model); QAT then starts at stage 0.
//! * At each boundary (and at the start of stage 0) the step is recompiled once for the new
//!   code ranges (no allocation per step otherwise) and the quantizer ranges follow: while the
//!   observers are live they are re-calibrated on the calibration images exactly as PTQ does
//!   (fake-quant off, `calib_images` images), because the range an observer picks depends on
//!   the bit width (the histogram observer clips harder at 4 bits than at 8); once observers
//!   are frozen (`--freeze-observers-after`) the frozen ranges are kept and only scale and
//!   zero point are recomputed for the new code range (`QuantSpec::qparams` of the stored
//!   min/max: for symmetric weights `s * qmax_old / qmax_new`), since re-observing would undo
//!   the freeze. Weights, BN statistics, the optimizer's momentum and the one cosine
//!   learning-rate schedule of the QAT phase carry over unchanged (the optimizer keeps
//!   optimizing the same parameters; only the fake-quant grid under them changes).
//! * The stages entered so far are kept in the run state (`RunState::bit_stages`), so a run
//!   resumed in stage 2 continues there with stage 2's bits (the checkpoint's QConfig holds
//!   them) and reproduces the uninterrupted run bit for bit; `metrics.json` lists them.

use super::compile::Compiled;
use super::train::{ProgressSink, Trainer};
use crate::error::{Result, WqatError};
use crate::qconfig::QConfig;
use crate::quant::QStateLayout;
use serde::{Deserialize, Serialize};

/// One stage of a bit schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitStage {
    pub weight_bits: u32,
    /// `None`: the run's `--act-bits` (a plain `N` stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_bits: Option<u32>,
}

/// `--bit-schedule`: the stages of the QAT phase, widest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitSchedule {
    pub stages: Vec<BitStage>,
}

/// How a stage's quantizer ranges were set when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageRanges {
    /// Observers re-run over the calibration images at the new bit widths.
    Recalibrated,
    /// Observers frozen: the stored ranges kept, scales and zero points recomputed.
    Rescaled,
}

/// A stage as it began: recorded in the run state and `metrics.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStart {
    pub stage: usize,
    pub weight_bits: u32,
    pub act_bits: u32,
    /// QAT step (0-based, within the QAT phase) before which the stage began.
    pub qat_step: u64,
    /// The same as a global step (fp32 steps included).
    pub step: u64,
    pub ranges: StageRanges,
}

impl BitSchedule {
    /// Parses `8,6,4` or `w8a8,w6a6,w4a4` (see the module docs).
    pub fn parse(s: &str) -> Result<BitSchedule> {
        let bad = |why: String| {
            WqatError::invalid(format!(
                "bit schedule {s:?}: {why} (use decreasing widths such as 8,6,4 (weights) or w8a8,w6a6,w4a4)"
            ))
        };
        let bits = |t: &str, tok: &str| -> Result<u32> {
            let b: u32 = t.parse().map_err(|_| bad(format!("stage {tok:?} is not N or wNaM")))?;
            if !(2..=8).contains(&b) {
                return Err(bad(format!("bit width {b} in stage {tok:?} is outside 2..=8")));
            }
            Ok(b)
        };
        let mut stages = Vec::new();
        for tok in s.split(',').map(str::trim) {
            let stage = match tok.strip_prefix('w') {
                Some(rest) => {
                    let (w, a) = rest.split_once('a').ok_or_else(|| bad(format!("stage {tok:?} is not N or wNaM")))?;
                    BitStage { weight_bits: bits(w, tok)?, act_bits: Some(bits(a, tok)?) }
                }
                None => BitStage { weight_bits: bits(tok, tok)?, act_bits: None },
            };
            stages.push(stage);
        }
        let sched = BitSchedule { stages };
        sched.check().map_err(|e| bad(e.to_string()))?;
        Ok(sched)
    }

    /// Form, width range and order of the stages.
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(WqatError::invalid(m));
        if self.stages.len() < 2 {
            return bad("a schedule needs at least two stages".into());
        }
        if self.stages.iter().any(|s| s.act_bits.is_some() != self.stages[0].act_bits.is_some()) {
            return bad("mixes N and wNaM stages".into());
        }
        for s in &self.stages {
            for b in std::iter::once(s.weight_bits).chain(s.act_bits) {
                if !(2..=8).contains(&b) {
                    return bad(format!("bit width {b} is outside 2..=8"));
                }
            }
        }
        for (k, w) in self.stages.windows(2).enumerate() {
            if w[1].weight_bits > w[0].weight_bits || w[1].act_bits > w[0].act_bits {
                return bad(format!(
                    "stage {} ({}) is wider than stage {} ({}); a schedule only steps precision down",
                    k + 2,
                    w[1],
                    k + 1,
                    w[0]
                ));
            }
        }
        Ok(())
    }

    /// Checks the schedule against the run: its last stage is `weight_bits/act_bits`, and
    /// there is a QAT phase (the step count per stage is checked when QAT starts).
    pub fn validate(&self, weight_bits: u32, act_bits: u32, qat_epochs: usize) -> Result<()> {
        self.check().map_err(|e| WqatError::invalid(format!("bit schedule {self}: {e}")))?;
        let last = self.stages[self.stages.len() - 1];
        if last.weight_bits != weight_bits || last.act_bits.unwrap_or(act_bits) != act_bits {
            return Err(WqatError::invalid(format!(
                "bit schedule {self} ends at W{}A{} but the run is W{weight_bits}A{act_bits}: the last stage is the \
                 model's bits (leave out --weight-bits/--act-bits or make them equal)",
                last.weight_bits,
                last.act_bits.unwrap_or(act_bits)
            )));
        }
        if qat_epochs == 0 {
            return Err(WqatError::invalid("--bit-schedule needs QAT steps (--qat-epochs of at least 1)"));
        }
        Ok(())
    }

    /// `(weight_bits, act_bits)` of stage `k` in a run with `act_bits` activations.
    pub fn bits(&self, k: usize, act_bits: u32) -> (u32, u32) {
        let s = self.stages[k];
        (s.weight_bits, s.act_bits.unwrap_or(act_bits))
    }

    /// QAT step at which stage `k` starts, of `total` QAT steps: `floor(k total / n)`.
    pub fn start(&self, k: usize, total: u64) -> u64 {
        (k as u128 * total as u128 / self.stages.len() as u128) as u64
    }

    /// The stage QAT step `qat_step` (0-based) belongs to.
    pub fn stage_at(&self, qat_step: u64, total: u64) -> usize {
        (1..self.stages.len()).filter(|&k| self.start(k, total) <= qat_step).count()
    }

    /// The QConfig of stage `k`: `base` (the run's final QConfig) with the stage's default bits;
    /// per-layer overrides are kept, so layers whose bits they set are not stepped.
    pub fn qconfig(&self, k: usize, base: &QConfig) -> QConfig {
        let (w, a) = self.bits(k, base.activation.bits);
        let mut q = base.clone();
        q.weight.bits = w;
        q.activation.bits = a;
        q
    }
}

impl std::fmt::Display for BitStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.act_bits {
            Some(a) => write!(f, "w{}a{a}", self.weight_bits),
            None => write!(f, "{}", self.weight_bits),
        }
    }
}

impl std::fmt::Display for BitSchedule {
    /// The `--bit-schedule` syntax ([`BitSchedule::parse`] reads it back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.stages.iter().map(|s| s.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl Trainer {
    /// QAT steps of the run (all QAT epochs).
    fn qat_total_steps(&self) -> u64 {
        (self.cfg.qat_epochs * self.train_batches.batches_per_epoch()) as u64
    }

    /// At the start of QAT (after PTQ at the final bits): enters stage 0 of the schedule, if
    /// any. `c` is replaced by the stage's compiled step.
    pub(super) fn start_bit_schedule(&mut self, c: &mut Compiled, sink: &mut dyn ProgressSink) -> Result<()> {
        if let (Some(s), true) = (&self.cfg.bit_schedule, self.run.bit_stages.is_empty()) {
            let total = self.qat_total_steps();
            if total < s.stages.len() as u64 {
                return Err(WqatError::invalid(format!(
                    "bit schedule {s}: {} stages but only {total} QAT steps (add --qat-epochs or images)",
                    s.stages.len()
                )));
            }
            self.enter_bit_stage(0, c, sink)?;
        }
        Ok(())
    }

    /// Before every QAT step: enters the next stage when the step is its first. Returns
    /// whether `c` was replaced (the caller rebuilds its plans). Arithmetic only otherwise.
    pub(super) fn next_bit_stage(&mut self, c: &mut Compiled, sink: &mut dyn ProgressSink) -> Result<bool> {
        let Some(s) = &self.cfg.bit_schedule else { return Ok(false) };
        let current = self.run.bit_stages.len().saturating_sub(1);
        let due = s.stage_at(self.run.phase_step, self.qat_total_steps());
        if self.run.bit_stages.is_empty() || due <= current {
            return Ok(false);
        }
        self.enter_bit_stage(current + 1, c, sink)?;
        Ok(true)
    }

    fn enter_bit_stage(&mut self, k: usize, c: &mut Compiled, sink: &mut dyn ProgressSink) -> Result<()> {
        let sched = self.cfg.bit_schedule.clone().ok_or_else(|| WqatError::invalid("no bit schedule"))?;
        let ctx = self.ctx.clone();
        let base = super::run::run_qconfig(&self.cfg, &self.graph)?;
        let frozen = self.observers_frozen();
        // The metrics window in progress moves to the new step's buffer.
        let window = c.metrics.read_u32(&ctx)?;
        self.state.qconfig = sched.qconfig(k, &base);
        let next = self.compile(true)?;
        next.metrics.write(&ctx, &window)?;
        let ranges = if frozen {
            self.rescale_quantizers()?;
            StageRanges::Rescaled
        } else {
            self.run_observers(&next)?;
            StageRanges::Recalibrated
        };
        // Learned quantizers (LSQ / LSQ+) restart from the stage's observer ranges: a scale
        // learned for the previous code range would be off by qmax_old / qmax_new.
        ctx.submit_plan(&next.lsq_init_plan())?;
        self.state.set_quant_flags(&ctx, true, !frozen, None)?;
        *c = next;
        let (w, a) = sched.bits(k, self.cfg.act_bits);
        let start = StageStart {
            stage: k,
            weight_bits: w,
            act_bits: a,
            qat_step: self.run.phase_step,
            step: self.run.step,
            ranges,
        };
        self.run.bit_stages.push(start);
        let how = match ranges {
            StageRanges::Recalibrated => format!("observers re-calibrated on {} images", self.calib_count()),
            StageRanges::Rescaled => "observers frozen: ranges kept, scales recomputed".to_string(),
        };
        sink.message(&format!(
            "bit schedule: stage {}/{} W{w}A{a} from QAT step {} ({how})",
            k + 1,
            sched.stages.len(),
            self.run.phase_step
        ));
        Ok(())
    }

    /// Frozen observers: every quantizer's scale, inverse scale and zero point recomputed
    /// from its stored range for the current QConfig's code range (host `QuantSpec::qparams`,
    /// the GPU `qparams` kernel's arithmetic). One readback and write per quantizer.
    fn rescale_quantizers(&self) -> Result<()> {
        let ctx = &self.ctx;
        for q in &self.state.quantizers {
            let spec = self.state.qconfig.spec_for_state(&self.state.nodes, q.spec.role, q.spec.channels);
            let l = QStateLayout::new(q.spec.channels);
            let mut v = q.state.read_f32(ctx)?;
            for ch in 0..l.channels {
                let (s, inv, z) = spec.qparams(v[l.min() + ch], v[l.max() + ch]);
                v[l.scale() + ch] = s;
                v[l.inv_scale() + ch] = inv;
                v[l.zero_point() + ch] = z;
            }
            q.state.write(ctx, &v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let s = BitSchedule::parse("8,6,4").unwrap();
        assert_eq!(s.stages.len(), 3);
        assert_eq!(s.bits(1, 4), (6, 4));
        assert_eq!(s.to_string(), "8,6,4");
        let s = BitSchedule::parse(" w8a8, w4a6 ,w4a4").unwrap();
        assert_eq!(s.bits(1, 8), (4, 6));
        assert_eq!(BitSchedule::parse(&s.to_string()).unwrap(), s);
        assert!(BitSchedule::parse("8,8,4").is_ok());
    }

    #[test]
    fn bad_schedules_are_clear_errors() {
        for (s, want) in [
            ("8,9", "outside 2..=8"),
            ("4,8", "wider than stage 1"),
            ("w8a4,w8a8", "wider than stage 1"),
            ("x", "not N or wNaM"),
            ("8,,4", "not N or wNaM"),
            ("w8,w4", "not N or wNaM"),
            ("8,w4a4", "mixes"),
            ("4", "at least two stages"),
            ("8,1", "outside 2..=8"),
        ] {
            let e = BitSchedule::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        let s = BitSchedule::parse("8,6,4").unwrap();
        assert!(s.validate(4, 8, 1).is_ok());
        assert!(s.validate(8, 8, 1).unwrap_err().to_string().contains("ends at W4A8"));
        assert!(s.validate(4, 8, 0).unwrap_err().to_string().contains("--qat-epochs"));
        let s = BitSchedule::parse("w8a8,w4a4").unwrap();
        assert!(s.validate(4, 8, 1).unwrap_err().to_string().contains("ends at W4A4"));
    }

    #[test]
    fn boundaries() {
        let s = BitSchedule::parse("8,6,4").unwrap();
        // 3 stages over 3 epochs of 10 steps: epoch boundaries.
        assert_eq!((0..3).map(|k| s.start(k, 30)).collect::<Vec<_>>(), [0, 10, 20]);
        // 3 stages over 1 epoch of 10 steps: floor(k T / n).
        assert_eq!((0..3).map(|k| s.start(k, 10)).collect::<Vec<_>>(), [0, 3, 6]);
        let stages: Vec<usize> = (0..10).map(|t| s.stage_at(t, 10)).collect();
        assert_eq!(stages, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn stage_qconfig_keeps_pinned_layers() {
        let base =
            QConfig::new(4, 4).unwrap().with_layer(crate::qconfig::LayerQConfig::parse("conv1=w8").unwrap()).unwrap();
        let s = BitSchedule::parse("w8a8,w6a6,w4a4").unwrap();
        let q = s.qconfig(1, &base);
        assert_eq!((q.weight_spec("conv2").bits, q.activation_spec("conv2").bits), (6, 6));
        assert_eq!(q.weight_spec("conv1").bits, 8);
        assert_eq!(s.qconfig(2, &base), base);
    }
}
