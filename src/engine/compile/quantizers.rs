//! Quantizers in the compiled graph: which quantizer a tensor carries (pools and flatten
//! inherit their input's), each quantizer's spec and observer from the run's QConfig, the
//! observer dispatches (QAT and calibration), the simulated bias on the integer grid, and
//! materialized fake-quant copies where a consumer cannot fuse it.

use super::{Builder, Tag, Q};
use crate::engine::config::{ObserverKind, QConfig};
use crate::error::Result;
use crate::gpu::GpuTensor;
use crate::kernels::bias_quant;
use crate::kernels::fake_quant;
use crate::kernels::histogram::{HistogramObserver, RangeChoice, DEFAULT_BINS};
use crate::kernels::observer::{Observer, ObserverMode};
use crate::model::params::{self, QuantizerRole};
use crate::model::{Op, INPUT};

impl Builder<'_> {
    /// The quantizer tensor `t` carries (pending fake-quant), in quantized builds.
    pub(super) fn carried(&self, t: usize) -> Option<Q> {
        if !self.opts.quant {
            return None;
        }
        let nodes = &self.m.nodes;
        let mut j = t;
        loop {
            let role = if j == INPUT {
                if params::input_is_quantized(nodes) {
                    QuantizerRole::Output(INPUT)
                } else {
                    return None;
                }
            } else if params::has_output_quant(nodes, j) {
                QuantizerRole::Output(j)
            } else {
                match nodes[j].node.op {
                    Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool | Op::Flatten | Op::Patchify { .. } => {
                        j = nodes[j].inputs[0];
                        continue;
                    }
                    _ => return None,
                }
            };
            return self.q(role);
        }
    }

    pub(super) fn q(&self, role: QuantizerRole) -> Option<Q> {
        let name = params::quantizer_name(&self.m.nodes, role);
        let q = self.m.quantizer(&name)?;
        let spec = self.m.qconfig.spec_for_state(&self.m.nodes, role, q.spec.channels);
        let observer = self.m.qconfig.observer_for(QConfig::layer_of(&self.m.nodes, role));
        Some(Q { state: q.state.clone(), spec, observer })
    }

    /// The bias a quantized conv/linear adds: `round(b / (s_x s_w[c])) * s_x s_w[c]`, the
    /// integer model's int32 bias (recorded after the weight observer, whose scales it reads;
    /// the gradient passes straight through to the f32 bias). Unchanged when either operand
    /// is not quantized.
    pub(super) fn quantized_bias(
        &mut self,
        bias: Option<GpuTensor>,
        xq: &Option<Q>,
        wq: &Option<Q>,
    ) -> Result<Option<GpuTensor>> {
        match (bias, xq, wq) {
            (Some(b), Some(x), Some(w)) => {
                let bq = self.zeros(&b.shape)?;
                let d = bias_quant::quantize_bias(self.ctx, &b, None, &x.state, &w.state, &bq)?;
                self.fwd(Tag::Always, d);
                Ok(Some(bq))
            }
            (b, _, _) => Ok(b),
        }
    }

    /// The softmax-output quantizer of attention node `i`, in quantized builds.
    pub(super) fn probs_q(&self, i: usize) -> Option<Q> {
        if !self.opts.quant {
            return None;
        }
        self.q(QuantizerRole::Probs(i))
    }

    pub(super) fn weight_q(&self, i: usize) -> Option<Q> {
        if !self.opts.quant {
            return None;
        }
        self.q(QuantizerRole::Weight(i))
    }

    /// Observer dispatches for quantizer `q` observing `x`: the QAT observer (tag Observe)
    /// and the calibration observer (tag Calibrate).
    pub(super) fn observe(&mut self, name: &str, q: &Q, x: &GpuTensor, weight: bool) -> Result<()> {
        let ctx = self.ctx;
        if weight {
            // Weights: the exact current range (EMA with c = 1), for QAT and calibration.
            let o = Observer::new(ctx, q.spec, ObserverMode::MovingAverage { c: 1.0 }, x, &q.state)?;
            for d in o.dispatches() {
                self.fwd(Tag::Observe, d.clone());
                self.fwd(Tag::Calibrate, d.clone());
            }
            return Ok(());
        }
        let histogram = match q.observer {
            ObserverKind::Histogram { bins } => Some((bins as usize, RangeChoice::L2)),
            ObserverKind::Percentile { percentile } => {
                Some((DEFAULT_BINS, RangeChoice::Percentile { fraction: percentile / 100.0 }))
            }
            ObserverKind::Mse => Some((DEFAULT_BINS, RangeChoice::Mse)),
            _ => None,
        };
        if let Some((bins, choice)) = histogram {
            let h = HistogramObserver::with_range(ctx, q.spec, x, &q.state, bins, 128, choice)?;
            for d in h.dispatches() {
                self.fwd(Tag::Observe, d.clone());
            }
            self.histograms.push((name.to_string(), h));
            let hc = HistogramObserver::with_range(ctx, q.spec, x, &q.state, bins, 128, choice)?;
            for d in hc.dispatches() {
                self.fwd(Tag::Calibrate, d.clone());
            }
            self.keep.push(hc.state().clone());
            // The calibration histogram's scratch lives in its dispatches' bind groups.
            return Ok(());
        }
        // Calibration always takes the running min/max; QAT the observer's own statistic.
        let o = Observer::new(ctx, q.spec, ObserverMode::MinMax, x, &q.state)?;
        for d in o.dispatches() {
            self.fwd(Tag::Calibrate, d.clone());
        }
        match q.observer {
            ObserverKind::MovingAverage { c } => {
                let oq = Observer::new(ctx, q.spec, ObserverMode::MovingAverage { c }, x, &q.state)?;
                for d in oq.dispatches() {
                    self.fwd(Tag::Observe, d.clone());
                }
            }
            _ => {
                for d in o.dispatches() {
                    self.fwd(Tag::Observe, d.clone());
                }
            }
        }
        Ok(())
    }

    /// The materialized fake-quant of tensor `t` (or its raw buffer when it carries none).
    pub(super) fn materialized(&mut self, t: usize) -> Result<GpuTensor> {
        let Some(q) = self.carried(t) else { return Ok(self.raw(t).clone()) };
        let slot = if t == INPUT { self.m.nodes.len() } else { t };
        if let Some(f) = &self.fq[slot] {
            return Ok(f.clone());
        }
        let raw = self.raw(t).clone();
        let out = self.zeros(&raw.shape)?;
        let d = fake_quant::fake_quant_forward(self.ctx, &raw, &q.state, &out, &q.spec)?;
        self.fwd(Tag::Always, d);
        self.fq[slot] = Some(out.clone());
        Ok(out)
    }
}
