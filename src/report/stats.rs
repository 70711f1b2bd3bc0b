//! What a training run records for `wqat report` at the end of PTQ calibration and of QAT
//! (`RUN_DIR/report/{ptq,qat}.json`): per node, on a few hundred held-out images, the
//! activations its quantizer sees (range, clipped fraction, a histogram) and the energy of
//! the fake-quant error against the fp32 forward of the same weights (SQNR).
//!
//! [`LayerAcc`] accumulates one node over batches in O(1) memory per value except a stride
//! subsample (at most [`MAX_SAMPLES`] values) the histogram is drawn from; the clipped
//! counts, extremes and energies are exact.

use crate::model::checkpoint::QState;
use serde::{Deserialize, Serialize};

/// Sub-folder of the run directory with the report data and the PNGs.
pub const REPORT_DIR: &str = "report";
/// Held-out images a stage is sampled on.
pub const SAMPLE_IMAGES: usize = 256;
/// Histogram bins per layer.
pub const HIST_BINS: usize = 80;
/// Values per layer kept for the histogram (a fixed stride over the sample).
pub const MAX_SAMPLES: usize = 1 << 16;

/// One stage's statistics (`report/{stage}.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageStats {
    /// `ptq` (fp32 weights, calibrated ranges) or `qat` (the fine-tuned model).
    pub stage: String,
    /// The held-out split sampled: `validation` when the run holds one out, else `test`.
    pub split: String,
    pub images: usize,
    /// Per node in graph order (the image's quantizer first, as `input`).
    pub layers: Vec<LayerStats>,
}

/// One node's output on the sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerStats {
    pub name: String,
    /// `input`, `conv`, `linear`, `max_pool`, ...
    pub op: String,
    /// Values seen (images x output elements).
    pub values: u64,
    /// Sum of squares of the fp32 forward's output.
    pub signal: f64,
    /// Sum of squares of (fake-quant forward's output - fp32 output); 0 when they agree.
    pub noise: f64,
    /// The node's own activation quantizer and what it sees; `None` without one.
    pub act: Option<ActStats>,
}

impl LayerStats {
    /// SQNR in dB; `None` when the outputs agree exactly (infinite SQNR) or carry no signal.
    pub fn sqnr_db(&self) -> Option<f64> {
        (self.noise > 0.0 && self.signal > 0.0).then(|| 10.0 * (self.signal / self.noise).log10())
    }
}

/// The values an activation quantizer sees (pre-quantization outputs of the fake-quant
/// forward) against its range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActStats {
    pub bits: u32,
    /// The representable range `[(qmin - z) s, (qmax - z) s]`.
    pub range: [f32; 2],
    /// The quantization step `s`.
    pub step: f32,
    /// Extremes of the values seen.
    pub min: f32,
    pub max: f32,
    /// Values the clamp changes: below `range[0] - s/2` or above `range[1] + s/2`.
    pub clipped_low: u64,
    pub clipped_high: u64,
    /// Histogram of a stride subsample: `counts.len()` equal bins over `[hist_lo, hist_hi]`.
    pub hist_lo: f32,
    pub hist_hi: f32,
    pub counts: Vec<u64>,
}

impl ActStats {
    /// Fraction of the values clipped (`values` of the owning [`LayerStats`]).
    pub fn clipped_fraction(&self, values: u64) -> f64 {
        (self.clipped_low + self.clipped_high) as f64 / values.max(1) as f64
    }
}

/// A quantizer's range for the accumulator.
#[derive(Debug, Clone, Copy)]
pub struct QRange {
    pub bits: u32,
    pub lo: f32,
    pub hi: f32,
    pub step: f32,
}

impl QRange {
    /// The range of a per-tensor activation quantizer (channel 0).
    pub fn of(q: &QState) -> QRange {
        let (s, z) = (q.scale[0], q.zero_point[0]);
        QRange { bits: q.spec.bits, lo: (q.spec.qmin() as f32 - z) * s, hi: (q.spec.qmax() as f32 - z) * s, step: s }
    }
}

/// Accumulates one node's statistics over batches.
#[derive(Debug, Clone)]
pub struct LayerAcc {
    name: String,
    op: String,
    range: Option<QRange>,
    /// Keep every `stride`-th value for the histogram.
    stride: u64,
    values: u64,
    signal: f64,
    noise: f64,
    min: f32,
    max: f32,
    below: u64,
    above: u64,
    samples: Vec<f32>,
}

impl LayerAcc {
    /// `expected` values will be added in all (sets the subsample stride).
    pub fn new(name: &str, op: &str, range: Option<QRange>, expected: usize) -> LayerAcc {
        LayerAcc {
            name: name.to_string(),
            op: op.to_string(),
            range,
            stride: expected.div_ceil(MAX_SAMPLES).max(1) as u64,
            values: 0,
            signal: 0.0,
            noise: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            below: 0,
            above: 0,
            samples: Vec::new(),
        }
    }

    /// One batch: the fp32 forward's output, the fake-quant forward's output before the
    /// node's quantizer (`raw`), and after it (`quantized`); equal lengths.
    pub fn add(&mut self, fp32: &[f32], raw: &[f32], quantized: &[f32]) {
        for (&r, &q) in fp32.iter().zip(quantized) {
            let (r, q) = (r as f64, q as f64);
            self.signal += r * r;
            self.noise += (q - r) * (q - r);
        }
        if let Some(q) = self.range {
            let (lo, hi) = (q.lo - 0.5 * q.step, q.hi + 0.5 * q.step);
            for (k, &v) in raw.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                self.min = self.min.min(v);
                self.max = self.max.max(v);
                self.below += (v < lo) as u64;
                self.above += (v > hi) as u64;
                if (self.values + k as u64).is_multiple_of(self.stride) {
                    self.samples.push(v);
                }
            }
        }
        self.values += fp32.len() as u64;
    }

    /// The statistics, with the histogram binned over the values and the range together.
    pub fn finish(self) -> LayerStats {
        let act = self.range.map(|q| {
            let (dmin, dmax) = if self.min <= self.max { (self.min, self.max) } else { (q.lo, q.hi) };
            let (mut lo, mut hi) = (dmin.min(q.lo), dmax.max(q.hi));
            let pad = 0.02 * (hi - lo);
            if pad > 0.0 {
                lo -= pad;
                hi += pad;
            } else {
                lo -= 0.5;
                hi += 0.5;
            }
            let mut counts = vec![0u64; HIST_BINS];
            let w = (hi - lo) / HIST_BINS as f32;
            for &v in &self.samples {
                let b = (((v - lo) / w) as usize).min(HIST_BINS - 1);
                counts[b] += 1;
            }
            ActStats {
                bits: q.bits,
                range: [q.lo, q.hi],
                step: q.step,
                min: dmin,
                max: dmax,
                clipped_low: self.below,
                clipped_high: self.above,
                hist_lo: lo,
                hist_hi: hi,
                counts,
            }
        });
        LayerStats { name: self.name, op: self.op, values: self.values, signal: self.signal, noise: self.noise, act }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_counts_histogram_and_sqnr() {
        let range = QRange { bits: 8, lo: 0.0, hi: 1.0, step: 0.1 };
        let mut a = LayerAcc::new("c", "conv", Some(range), 6);
        let raw = [-0.2, -0.04, 0.5, 1.04, 1.2, 0.7];
        let q = [0.0, 0.0, 0.5, 1.0, 1.0, 0.7];
        let fp32 = [-0.2, -0.04, 0.5, 1.04, 1.2, 0.7];
        a.add(&fp32, &raw, &q);
        let s = a.finish();
        let act = s.act.as_ref().unwrap();
        // -0.04 and 1.04 round onto the range's end codes: not clipped.
        assert_eq!((act.clipped_low, act.clipped_high), (1, 1));
        assert_eq!(act.counts.iter().sum::<u64>(), 6);
        assert!(act.hist_lo < -0.2 && act.hist_hi > 1.2);
        assert!((act.clipped_fraction(s.values) - 2.0 / 6.0).abs() < 1e-12);
        let noise: f64 = fp32.iter().zip(&q).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        assert!((s.noise - noise).abs() < 1e-9);
        assert!(s.sqnr_db().unwrap() > 0.0);
        // Identical outputs: infinite SQNR reported as None.
        let mut b = LayerAcc::new("p", "max_pool", None, 3);
        b.add(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
        let s = b.finish();
        assert!(s.act.is_none() && s.sqnr_db().is_none() && s.values == 3);
    }

    #[test]
    fn subsample_stride_keeps_at_most_max_samples() {
        let n = 3 * MAX_SAMPLES + 7;
        let range = QRange { bits: 4, lo: -1.0, hi: 1.0, step: 0.2 };
        let mut a = LayerAcc::new("x", "linear", Some(range), n);
        let v: Vec<f32> = (0..n).map(|i| (i % 100) as f32 / 100.0).collect();
        for chunk in v.chunks(1000) {
            a.add(chunk, chunk, chunk);
        }
        let s = a.finish();
        let kept: u64 = s.act.unwrap().counts.iter().sum();
        assert!(kept as usize <= MAX_SAMPLES && kept as usize >= MAX_SAMPLES / 2, "{kept}");
        assert_eq!(s.values, n as u64);
    }
}
