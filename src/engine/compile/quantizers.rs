//! Quantizers in the compiled graph: which quantizer a tensor carries (pools and flatten
//! inherit their input's), each quantizer's spec and observer from the run's QConfig, the
//! observer dispatches (QAT and calibration), the simulated bias on the integer grid, and
//! materialized fake-quant copies where a consumer cannot fuse it.

use super::{view, Builder, LsqQ, Partials, Tag, Q};
use crate::engine::config::{ObserverKind, QConfig};
use crate::engine::state::{lsq_scale_name, lsq_zero_name};
use crate::error::Result;
use crate::gpu::{Dispatch, GpuTensor};
use crate::kernels::activation;
use crate::kernels::bias_quant;
use crate::kernels::fake_quant;
use crate::kernels::histogram::{HistogramObserver, RangeChoice, DEFAULT_BINS};
use crate::kernels::lsq::{self, LsqGrad, LsqParams};
use crate::kernels::observer::{Observer, ObserverMode};
use crate::model::params::{self, QuantizerRole};
use crate::model::{Op, INPUT};
use crate::quant::channel_geometry;

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
        // Learned (LSQ) exactly when the model state holds its scale parameter.
        let lsq = self.m.param(&lsq_scale_name(&name)).ok().map(|p| LsqQ {
            name: name.clone(),
            dscale: p.grad.clone().expect("learned scales are trainable"),
            dzero: self.m.param(&lsq_zero_name(&name)).ok().and_then(|z| z.grad.clone()),
        });
        Some(Q { state: q.state.clone(), spec, observer, lsq })
    }

    /// The LSQ gradients of a learned quantizer `q` (nothing for an observer one) from the
    /// raw values `x` it fake-quantizes and the gradient `dy` wrt its fake-quantized output
    /// (before the STE mask): written by the first contribution, accumulated by the others.
    /// Gradient scale `1/sqrt(n qmax)` with `n` the values per channel of one sample
    /// (activations: per-sample features, Esser et al.'s N_F; weights: per output channel).
    /// `weight`: `x` is a weight tensor (no batch dimension).
    pub(super) fn lsq_grad(&mut self, q: &Q, x: &GpuTensor, dy: &GpuTensor, weight: bool) -> Result<()> {
        let Some(l) = &q.lsq else { return Ok(()) };
        let ctx = self.ctx;
        let channels = l.dscale.len();
        let n = if weight { x.len() / channels } else { x.len() / (self.b * channels).max(1) };
        let factor = lsq::grad_scale(n, q.spec.qmax());
        let first = self.lsq_written.insert(l.name.clone());
        let (ds, dz) = if first {
            let dz = match &l.dzero {
                Some(z) => z.clone(),
                None => self.zeros(&[channels])?,
            };
            (l.dscale.clone(), dz)
        } else {
            (self.zeros(&[channels])?, self.zeros(&[channels])?)
        };
        let dy = view(dy, &x.shape);
        let g = LsqGrad::new(ctx, &q.spec, x, &dy, &q.state, &ds, &dz, factor)?;
        for d in g.dispatches() {
            self.bwd(Tag::Always, d.clone());
        }
        if !first {
            self.bwd(Tag::Always, activation::accumulate(ctx, &ds, &l.dscale)?);
            if let Some(z) = &l.dzero {
                self.bwd(Tag::Always, activation::accumulate(ctx, &dz, z)?);
            }
        }
        Ok(())
    }

    /// Every learned quantizer's `lsq_init` (parameters <- calibrated state).
    pub(super) fn lsq_init_dispatches(&self) -> Result<Vec<Dispatch>> {
        let mut out = Vec::new();
        for qz in &self.m.quantizers {
            if let Some((spec, lp)) = self.lsq_params_of(&qz.spec)? {
                let zero = lp.1.as_ref().map(|z| &z.value);
                out.push(lsq::lsq_init(self.ctx, &spec, &qz.state, &LsqParams { scale: &lp.0.value, zero })?);
            }
        }
        Ok(out)
    }

    /// Every learned quantizer's `lsq_sync` (state <- clamped parameters), after the step.
    pub(super) fn lsq_sync_dispatches(&self) -> Result<Vec<Dispatch>> {
        let mut out = Vec::new();
        for qz in &self.m.quantizers {
            if let Some((spec, lp)) = self.lsq_params_of(&qz.spec)? {
                let zero = lp.1.as_ref().map(|z| &z.value);
                out.push(lsq::lsq_sync(self.ctx, &spec, &qz.state, &LsqParams { scale: &lp.0.value, zero })?);
            }
        }
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    fn lsq_params_of(
        &self,
        qs: &params::QuantizerSpec,
    ) -> Result<Option<(crate::quant::QuantSpec, (&crate::engine::state::Param, Option<&crate::engine::state::Param>))>>
    {
        let Ok(scale) = self.m.param(&lsq_scale_name(&qs.name)) else { return Ok(None) };
        let zero = self.m.param(&lsq_zero_name(&qs.name)).ok();
        let spec = self.m.qconfig.spec_for_state(&self.m.nodes, qs.role, qs.channels);
        Ok(Some((spec, (scale, zero))))
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
    /// A learned (LSQ) quantizer gets only the calibration observer: during QAT its scale
    /// is a parameter.
    pub(super) fn observe(&mut self, name: &str, q: &Q, x: &GpuTensor, weight: bool) -> Result<()> {
        self.observe_from(name, q, x, weight, None)
    }

    /// [`Self::observe`] where the producer of `x` may have written the min/max observer's
    /// first stage (`partials`): then the observer is its second stage alone, when the
    /// quantizer's channel axis fits (per tensor, or per channel along the partials' axis).
    pub(super) fn observe_from(
        &mut self,
        name: &str,
        q: &Q,
        x: &GpuTensor,
        weight: bool,
        partials: Option<&Partials>,
    ) -> Result<()> {
        let ctx = self.ctx;
        let minmax = |mode: ObserverMode| -> Result<Observer> {
            if let Some(p) = partials {
                let (channels, _) = channel_geometry(&x.shape, q.spec.channel_axis)?;
                let groups = p.t.len() / 2;
                let chunks = match q.spec.channel_axis {
                    None => Some(groups),
                    Some(a) if a == p.axis && channels == groups => Some(1),
                    _ => None,
                };
                if let Some(chunks) = chunks {
                    return Observer::from_partials(ctx, q.spec, mode, &p.t, chunks, &q.state, channels);
                }
            }
            Observer::new(ctx, q.spec, mode, x, &q.state)
        };
        if q.lsq.is_some() {
            let mode = match (weight, q.observer) {
                (true, _) => ObserverMode::MovingAverage { c: 1.0 },
                (false, ObserverKind::Histogram { bins }) => {
                    let hc = HistogramObserver::new(ctx, q.spec, x, &q.state, bins as usize, 128)?;
                    for d in hc.dispatches() {
                        self.fwd(Tag::Calibrate, d.clone());
                    }
                    self.keep.push(hc.state().clone());
                    return Ok(());
                }
                (false, _) => ObserverMode::MinMax,
            };
            let o = minmax(mode)?;
            for d in o.dispatches() {
                self.fwd(Tag::Calibrate, d.clone());
            }
            return Ok(());
        }
        if weight {
            // Weights: the exact current range (EMA with c = 1), for QAT and calibration.
            let o = minmax(ObserverMode::MovingAverage { c: 1.0 })?;
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
        let o = minmax(ObserverMode::MinMax)?;
        for d in o.dispatches() {
            self.fwd(Tag::Calibrate, d.clone());
        }
        match q.observer {
            ObserverKind::MovingAverage { c } => {
                let oq = minmax(ObserverMode::MovingAverage { c })?;
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
