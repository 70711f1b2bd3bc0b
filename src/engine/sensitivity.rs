//! Per-layer sensitivity to weight bit width, and the automatic mixed-precision choice built
//! on it (`wqat sensitivity`, `wqat train --auto-bits`).
//!
//! The scan quantizes the weights of ONE layer at `b` bits while every other quantized
//! layer keeps 8-bit weights (or fp32 weights, [`Rest::Fp32`]); activations keep the run's
//! settings. Each candidate is a fresh model state built from the same fp32 weights,
//! calibrated like PTQ (observers over the calibration images), then evaluated on the
//! validation split (the test split only when the run holds none out, and the report says
//! so). Damage is measured two ways: top-1 accuracy, and the noise the quantization adds to
//! the logits, `mean((z_q - z_fp32)^2)`, with the SQNR `10 log10(sum z_fp32^2 / sum
//! (z_q - z_fp32)^2)`. Accuracy on a few thousand images moves in steps of one image; the
//! logit noise is smooth, and noise from different layers adds up (to first order,
//! independent errors), so the mixed-precision choice minimizes the summed noise.
//!
//! The choice ([`choose_bits`]) is a multiple-choice knapsack: one bit width per layer,
//! total weight bits within the budget, least summed noise; solved exactly by dynamic
//! programming over the budget cut into [`BUDGET_UNITS`] units, with each layer's cost
//! rounded up (so a solution never exceeds the budget).

use super::compile::{CompileOptions, Compiled};
use super::config::{LayerQConfig, QConfig};
use super::evaluate::EvalPass;
use super::state::ModelState;
use super::train::{ProgressSink, Trainer};
use crate::data::{BatchConfig, Batcher};
use crate::error::{Result, WqatError};
use crate::model::params::QuantizerRole;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The scan and choice of `--auto-bits`, in the run directory.
pub const AUTO_BITS_FILE: &str = "auto_bits.json";

/// Resolution of the budget in [`choose_bits`].
pub const BUDGET_UNITS: usize = 4000;

/// What the layers not under test use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rest {
    /// 8-bit weights.
    Int8,
    /// fp32 weights (activations keep the run's quantizers).
    Fp32,
}

impl Rest {
    pub fn parse(s: &str) -> Result<Rest> {
        match s {
            "8" | "int8" | "w8" => Ok(Rest::Int8),
            "fp32" => Ok(Rest::Fp32),
            _ => Err(WqatError::invalid(format!("--rest {s:?}: expected 8 or fp32"))),
        }
    }
}

/// A layer the scan visits: one with a weight quantizer in the run's QConfig.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanLayer {
    pub name: String,
    /// Weight values (the count the bit budget is charged for).
    pub weights: usize,
}

/// One measurement: `layer` at `bits`, the rest per [`Rest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanPoint {
    pub layer: String,
    pub bits: u32,
    pub accuracy: f32,
    /// `mean((z_q - z_fp32)^2)` over every logit of the evaluated images.
    pub logit_noise: f64,
    pub sqnr_db: f64,
}

/// Everything a scan measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SensitivityReport {
    /// `validation` or `test`: which split the numbers are on.
    pub split: String,
    pub images: usize,
    pub rest: Rest,
    pub act_bits: u32,
    pub fp32_accuracy: f32,
    /// Every scanned layer at 8 bits (or the rest alone in fp32 with `Rest::Fp32`: no
    /// weight quantized, activations quantized).
    pub baseline_accuracy: f32,
    pub baseline_sqnr_db: f64,
    pub layers: Vec<ScanLayer>,
    pub points: Vec<ScanPoint>,
}

impl SensitivityReport {
    /// The points of one bit width, most damaging (highest logit noise) first.
    pub fn ranked(&self, bits: u32) -> Vec<&ScanPoint> {
        let mut v: Vec<&ScanPoint> = self.points.iter().filter(|p| p.bits == bits).collect();
        v.sort_by(|a, b| b.logit_noise.total_cmp(&a.logit_noise));
        v
    }
}

/// A mixed-precision budget: average weight bits, or the packed size of the quantized
/// layers' weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Budget {
    AvgBits(f64),
    KiB(f64),
}

impl Budget {
    /// `5`, `5.5` (average bits per weight) or `40KiB` (packed weight bytes / 1024).
    pub fn parse(s: &str) -> Result<Budget> {
        let bad = || {
            WqatError::invalid(format!(
                "--auto-bits {s:?}: expected average weight bits (e.g. 5 or 4.5) or a size like 40KiB"
            ))
        };
        let t = s.trim();
        let (num, kib) = match t.strip_suffix("KiB").or_else(|| t.strip_suffix("kib")) {
            Some(n) => (n.trim(), true),
            None => (t, false),
        };
        let v: f64 = num.parse().map_err(|_| bad())?;
        if !v.is_finite() || v <= 0.0 {
            return Err(bad());
        }
        if kib {
            Ok(Budget::KiB(v))
        } else if (1.0..=8.0).contains(&v) {
            Ok(Budget::AvgBits(v))
        } else {
            Err(WqatError::invalid(format!("--auto-bits {s}: average weight bits must be within 1..8")))
        }
    }

    /// The budget in weight bits for `total_weights` weights.
    pub fn bits(&self, total_weights: usize) -> f64 {
        match *self {
            Budget::AvgBits(b) => b * total_weights as f64,
            Budget::KiB(k) => k * 1024.0 * 8.0,
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::AvgBits(b) => write!(f, "{b}"),
            Budget::KiB(k) => write!(f, "{k}KiB"),
        }
    }
}

/// The per-layer bit widths [`choose_bits`] picked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BitChoice {
    pub budget: Budget,
    /// `(layer, bits)` in scan order.
    pub bits: Vec<(String, u32)>,
    pub average_bits: f64,
    pub packed_kib: f64,
    /// Summed logit noise of the chosen points (the objective).
    pub predicted_noise: f64,
}

impl BitChoice {
    /// The choice as `--layer-qconfig` settings (`NAME=wB`).
    pub fn layer_qconfigs(&self) -> Vec<String> {
        self.bits.iter().map(|(n, b)| format!("{n}=w{b}")).collect()
    }
}

/// Parses a comma-separated list of bit widths (2..=8), e.g. `8,6,4`.
pub fn parse_bits(s: &str) -> Result<Vec<u32>> {
    let mut v = Vec::new();
    for t in s.split(',') {
        let b: u32 = t.trim().parse().map_err(|_| WqatError::invalid(format!("bit width {t:?} in {s:?}")))?;
        if !(2..=8).contains(&b) {
            return Err(WqatError::invalid(format!("bit width {b} in {s:?}: expected 2..8")));
        }
        if !v.contains(&b) {
            v.push(b);
        }
    }
    Ok(v)
}

/// Picks one bit width per layer from `candidates` so the total weight bits fit `budget`
/// with the least summed logit noise (see the module doc). Every layer needs a point per
/// candidate in `report`.
pub fn choose_bits(report: &SensitivityReport, candidates: &[u32], budget: Budget) -> Result<BitChoice> {
    let layers = &report.layers;
    if layers.is_empty() || candidates.is_empty() {
        return Err(WqatError::invalid("mixed precision: no quantized layer or no candidate bit width"));
    }
    let total: usize = layers.iter().map(|l| l.weights).sum();
    let budget_bits = budget.bits(total);
    let min_bits: f64 = layers.iter().map(|l| l.weights as f64 * *candidates.iter().min().unwrap() as f64).sum();
    if budget_bits < min_bits {
        return Err(WqatError::invalid(format!(
            "--auto-bits {budget}: below the smallest model the candidates allow ({:.2} average bits, {:.2} KiB)",
            min_bits / total as f64,
            min_bits / 8192.0
        )));
    }
    let unit = budget_bits / BUDGET_UNITS as f64;
    // options[l] = (bits, cost in units rounded up, noise)
    let mut options = Vec::with_capacity(layers.len());
    for l in layers {
        let mut o = Vec::new();
        for &b in candidates {
            let p = report.points.iter().find(|p| p.layer == l.name && p.bits == b).ok_or_else(|| {
                WqatError::invalid(format!("mixed precision: no measurement of {} at {b} bits", l.name))
            })?;
            let cost = ((l.weights as f64 * b as f64) / unit - 1e-9).ceil().max(0.0) as usize;
            o.push((b, cost, p.logit_noise));
        }
        options.push(o);
    }
    // best[l][u]: least noise of layers 0..=l using at most u units; pick[l][u] its option.
    let n = BUDGET_UNITS;
    let mut best = vec![f64::INFINITY; n + 1];
    let mut picks: Vec<Vec<u8>> = Vec::with_capacity(layers.len());
    let mut prev = vec![0.0f64; n + 1];
    for opts in &options {
        let mut pick = vec![u8::MAX; n + 1];
        best.iter_mut().for_each(|b| *b = f64::INFINITY);
        for u in 0..=n {
            for (k, &(_, cost, noise)) in opts.iter().enumerate() {
                if cost <= u && prev[u - cost].is_finite() {
                    let v = prev[u - cost] + noise;
                    if v < best[u] {
                        best[u] = v;
                        pick[u] = k as u8;
                    }
                }
            }
        }
        picks.push(pick);
        std::mem::swap(&mut prev, &mut best);
    }
    if !prev[n].is_finite() {
        return Err(WqatError::invalid(format!(
            "--auto-bits {budget}: no choice fits once each layer's share is rounded up; raise the budget slightly"
        )));
    }
    // Walk back from the full budget.
    let mut u = n;
    let mut chosen = vec![0u32; layers.len()];
    for l in (0..layers.len()).rev() {
        let k = picks[l][u] as usize;
        let (b, cost, _) = options[l][k];
        chosen[l] = b;
        u -= cost;
    }
    let bits_used: f64 = layers.iter().zip(&chosen).map(|(l, &b)| l.weights as f64 * b as f64).sum();
    let packed: f64 = layers.iter().zip(&chosen).map(|(l, &b)| ((l.weights * b as usize).div_ceil(8)) as f64).sum();
    Ok(BitChoice {
        budget,
        bits: layers.iter().zip(&chosen).map(|(l, &b)| (l.name.clone(), b)).collect(),
        average_bits: bits_used / total as f64,
        packed_kib: packed / 1024.0,
        predicted_noise: prev[n],
    })
}

/// Options of [`Trainer::sensitivity`].
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Bit widths to try on each layer.
    pub bits: Vec<u32>,
    pub rest: Rest,
    /// Images of the evaluation split used (at most).
    pub images: usize,
}

impl Trainer {
    /// The layers with a weight quantizer under the run's QConfig, in graph order.
    pub fn scan_layers(&self) -> Vec<ScanLayer> {
        let mut out = Vec::new();
        for q in &self.state.quantizers {
            if let QuantizerRole::Weight(i) = q.spec.role {
                let name = self.state.nodes[i].node.name.clone();
                let wname = crate::model::params::weight_name(&name);
                let weights = self
                    .state
                    .params
                    .iter()
                    .find(|p| p.spec.name == wname)
                    .map_or(0, |p| p.spec.shape.iter().product());
                out.push(ScanLayer { name, weights });
            }
        }
        out
    }

    /// The sensitivity scan of the current (fp32) weights: see the module doc.
    pub fn sensitivity(
        &mut self,
        opts: &ScanOptions,
        progress: &mut dyn FnMut(&ScanPoint),
    ) -> Result<SensitivityReport> {
        let layers = self.scan_layers();
        if layers.is_empty() {
            return Err(WqatError::invalid(format!("model {} has no layer with quantized weights", self.graph.name)));
        }
        let (split, source) = match &self.val_batches {
            Some(v) => ("validation", v),
            None => ("test", &self.test_batches),
        };
        let images = opts.images.min(source.num_images()).max(1);
        let batches = Batcher::new(
            source.split().clone(),
            self.ds.shape,
            &self.ds.norm,
            BatchConfig::eval(self.cfg.batch).with_limit(images),
        )?;
        let weights = self.state.to_checkpoint(&self.ctx, &[])?;
        let here = Path::new("<fp32 weights>");

        // The fp32 reference logits.
        self.state.set_quant_flags(&self.ctx, false, false, None)?;
        let fp32 = {
            let c = Compiled::new(&self.ctx, &self.state, &self.eval_options(false), None)?;
            self.eval_pass(&c, &batches, true)?
        };
        let base = self.state.qconfig.clone();
        let candidate = |l: Option<(&str, u32)>| -> Result<QConfig> {
            let mut q = base.clone();
            for s in &layers {
                let setting = match l {
                    Some((name, b)) if name == s.name => format!("{}=int,w{b}", s.name),
                    _ if opts.rest == Rest::Fp32 => format!("{}=fp32", s.name),
                    _ => format!("{}=int,w8", s.name),
                };
                q = q.with_layer(LayerQConfig::parse(&setting)?)?;
            }
            Ok(q)
        };
        let baseline = self.measure(&weights, here, candidate(None)?, &batches)?;
        let (_, baseline_sqnr) = noise(&fp32.logits, &baseline.logits);
        let mut points = Vec::new();
        for l in &layers {
            for &b in &opts.bits {
                let out = self.measure(&weights, here, candidate(Some((&l.name, b)))?, &batches)?;
                let (logit_noise, sqnr_db) = noise(&fp32.logits, &out.logits);
                let p = ScanPoint { layer: l.name.clone(), bits: b, accuracy: out.accuracy, logit_noise, sqnr_db };
                progress(&p);
                points.push(p);
            }
        }
        Ok(SensitivityReport {
            split: split.into(),
            images: batches.num_images(),
            rest: opts.rest,
            act_bits: self.cfg.act_bits,
            fp32_accuracy: fp32.accuracy,
            baseline_accuracy: baseline.accuracy,
            baseline_sqnr_db: baseline_sqnr,
            layers,
            points,
        })
    }

    /// `--auto-bits` (when set and not yet chosen): scans the fp32 model at every candidate
    /// bit width, picks per-layer bits within the budget, appends them to the run's
    /// `layer_qconfig` (so checkpoints, `metrics.json` and a resumed run carry them), writes
    /// `OUT/auto_bits.json`, and rebuilds the model state under the new QConfig.
    pub(super) fn choose_auto_bits(&mut self, sink: &mut dyn ProgressSink) -> Result<()> {
        let Some(auto) = self.cfg.auto_bits.clone() else { return Ok(()) };
        if auto.choice.is_some() {
            return Ok(());
        }
        sink.message(&format!(
            "auto-bits {}: scanning {} layers at {:?} bits on {} validation images",
            auto.budget,
            self.scan_layers().len(),
            auto.candidates,
            auto.scan_images
        ));
        let opts = ScanOptions { bits: auto.candidates.clone(), rest: Rest::Int8, images: auto.scan_images };
        let report = self.sensitivity(&opts, &mut |_| {})?;
        let choice = choose_bits(&report, &auto.candidates, auto.budget)?;
        sink.message(&format!(
            "auto-bits chose {} (average {:.2} weight bits, {:.1} KiB packed)",
            choice.layer_qconfigs().join(" "),
            choice.average_bits,
            choice.packed_kib
        ));
        let record = serde_json::json!({ "scan": &report, "choice": &choice });
        let text = serde_json::to_string_pretty(&record)
            .map_err(|e| WqatError::invalid(format!("serializing auto_bits.json: {e}")))?;
        crate::tensorfile::write_atomic(&self.cfg.out.join(AUTO_BITS_FILE), text.as_bytes())?;
        for s in choice.layer_qconfigs() {
            self.cfg.layer_qconfig.push(LayerQConfig::parse(&s)?);
        }
        if let Some(a) = self.cfg.auto_bits.as_mut() {
            a.choice = Some(choice);
        }
        let qconfig = super::run::run_qconfig(&self.cfg, &self.graph)?;
        let weights = self.state.to_checkpoint(&self.ctx, &[])?;
        self.state = ModelState::from_params(&self.ctx, Path::new("<fp32 weights>"), &weights, &self.graph, qconfig)?;
        Ok(())
    }

    fn eval_options(&self, quant: bool) -> CompileOptions {
        CompileOptions { batch: self.cfg.batch, quant, train: false }
    }

    /// PTQ of `weights` under `qconfig` (observers over the calibration images) and its
    /// evaluation; the trainer's own state is put back afterwards, also on error.
    fn measure(
        &mut self,
        weights: &crate::tensorfile::TensorFile,
        path: &Path,
        qconfig: QConfig,
        batches: &Batcher,
    ) -> Result<EvalPass> {
        let mut graph = self.graph.clone();
        qconfig.apply_fp32(&mut graph);
        let state = ModelState::from_params(&self.ctx, path, weights, &graph, qconfig)?;
        let own = std::mem::replace(&mut self.state, state);
        let result = (|| {
            let c = Compiled::new(&self.ctx, &self.state, &self.eval_options(true), None)?;
            self.run_observers(&c)?;
            self.eval_pass(&c, batches, true)
        })();
        self.state = own;
        result
    }
}

/// `(mean squared error, SQNR in dB)` of `q` against `reference`.
pub fn noise(reference: &[f32], q: &[f32]) -> (f64, f64) {
    let (mut sig, mut err) = (0f64, 0f64);
    for (&r, &v) in reference.iter().zip(q) {
        sig += r as f64 * r as f64;
        err += (v as f64 - r as f64).powi(2);
    }
    let mse = err / reference.len().max(1) as f64;
    let sqnr = if err == 0.0 { f64::INFINITY } else { 10.0 * (sig / err).log10() };
    (mse, sqnr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(points: &[(&str, u32, f64)], layers: &[(&str, usize)]) -> SensitivityReport {
        SensitivityReport {
            split: "validation".into(),
            images: 100,
            rest: Rest::Int8,
            act_bits: 8,
            fp32_accuracy: 1.0,
            baseline_accuracy: 1.0,
            baseline_sqnr_db: 40.0,
            layers: layers.iter().map(|&(n, w)| ScanLayer { name: n.into(), weights: w }).collect(),
            points: points
                .iter()
                .map(|&(l, b, noise)| ScanPoint {
                    layer: l.into(),
                    bits: b,
                    accuracy: 1.0,
                    logit_noise: noise,
                    sqnr_db: 0.0,
                })
                .collect(),
        }
    }

    #[test]
    fn budget_parses_bits_and_sizes() {
        assert_eq!(Budget::parse("5").unwrap(), Budget::AvgBits(5.0));
        assert_eq!(Budget::parse("4.5").unwrap(), Budget::AvgBits(4.5));
        assert_eq!(Budget::parse("40KiB").unwrap(), Budget::KiB(40.0));
        for bad in ["", "x", "0", "9", "-3", "NaNKiB", "0KiB"] {
            assert!(Budget::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_bits("8,6, 4,4").unwrap(), vec![8, 6, 4]);
        assert!(parse_bits("8,1").is_err());
        assert!(parse_bits("a").is_err());
    }

    /// Brute force over every assignment: the DP's choice must be at least as good as the
    /// best feasible one (up to its conservative rounding, which can only exclude
    /// assignments within one unit per layer of the budget).
    #[test]
    fn choice_matches_brute_force() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        let cands = [8u32, 6, 4, 2];
        for case in 0..30 {
            let names = ["a", "b", "c", "d"];
            let layers: Vec<(&str, usize)> = names.iter().map(|&n| (n, 100 + (rnd() * 5000.0) as usize)).collect();
            let mut pts = Vec::new();
            for &(n, _) in &layers {
                let s = rnd() * 10.0;
                for &b in &cands {
                    // Noise falls ~4x per bit, scaled per layer.
                    pts.push((n, b, s * 4f64.powi(-(b as i32))));
                }
            }
            let r = report(&pts, &layers);
            let avg = 3.0 + rnd() * 4.0;
            let choice = choose_bits(&r, &cands, Budget::AvgBits(avg)).unwrap();
            let total: usize = layers.iter().map(|l| l.1).sum();
            assert!(choice.average_bits <= avg + 1e-9, "case {case}: {} > {avg}", choice.average_bits);
            // Brute force with a budget shrunk by the rounding slack.
            let slack = layers.len() as f64 * avg * total as f64 / BUDGET_UNITS as f64;
            let mut best = f64::INFINITY;
            for code in 0..cands.len().pow(4) {
                let mut c = code;
                let (mut bits, mut noise) = (0f64, 0f64);
                for &(n, w) in &layers {
                    let b = cands[c % cands.len()];
                    c /= cands.len();
                    bits += (w * b as usize) as f64;
                    noise += pts.iter().find(|p| p.0 == n && p.1 == b).unwrap().2;
                }
                if bits <= avg * total as f64 - slack {
                    best = best.min(noise);
                }
            }
            assert!(
                choice.predicted_noise <= best + 1e-12,
                "case {case}: {} vs brute force {best}",
                choice.predicted_noise
            );
        }
    }

    #[test]
    fn too_small_budget_is_an_error() {
        let r = report(&[("a", 8, 0.0), ("a", 4, 1.0)], &[("a", 1000)]);
        let e = choose_bits(&r, &[8, 4], Budget::AvgBits(3.0)).unwrap_err().to_string();
        assert!(e.contains("below the smallest"), "{e}");
        let c = choose_bits(&r, &[8, 4], Budget::AvgBits(8.0)).unwrap();
        assert_eq!(c.bits, vec![("a".to_string(), 8)]);
        let c = choose_bits(&r, &[8, 4], Budget::AvgBits(7.9)).unwrap();
        assert_eq!(c.bits, vec![("a".to_string(), 4)]);
        assert_eq!(c.layer_qconfigs(), vec!["a=w4".to_string()]);
    }
}
