//! The model's GPU-resident state: parameters and BN buffers, their gradients and momentum,
//! and one quantizer state per quantizer (see `model::params` for names and placement).
//! Converts to and from a checkpoint (`TensorFile`) with every field validated.

use crate::engine::config::QConfig;
use crate::error::{Result, WqatError};
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::model::params::{self, ParamKind, ParamSpec, QuantizerRole, QuantizerSpec};
use crate::model::{Graph, ResolvedNode};
use crate::qconfig::QuantizerKind;
use crate::quant::QStateLayout;
use crate::tensorfile::{HostTensor, TensorFile};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

/// Checkpoint `format` metadata value.
pub const CHECKPOINT_FORMAT: &str = "wqat-checkpoint";
/// Checkpoint format version.
pub const CHECKPOINT_VERSION: &str = "1";

/// One parameter (or BN buffer) with its gradient and momentum (trainable ones only).
pub struct Param {
    pub spec: ParamSpec,
    pub value: GpuTensor,
    pub grad: Option<GpuTensor>,
    pub momentum: Option<GpuTensor>,
    /// AdamW's second moment (`exp_avg_sq`; `momentum` is its first), trainable ones only.
    pub second_moment: Option<GpuTensor>,
}

/// One quantizer's GPU state (`QStateLayout`).
pub struct Quantizer {
    pub spec: QuantizerSpec,
    pub state: GpuTensor,
}

/// Name of the learned scale of quantizer `quantizer` (LSQ).
pub fn lsq_scale_name(quantizer: &str) -> String {
    format!("{quantizer}.scale")
}
/// Name of the learned zero point of quantizer `quantizer` (LSQ+).
pub fn lsq_zero_name(quantizer: &str) -> String {
    format!("{quantizer}.zero_point")
}

/// The whole GPU state of a model.
pub struct ModelState {
    pub graph: Graph,
    pub nodes: Vec<ResolvedNode>,
    pub qconfig: QConfig,
    pub params: Vec<Param>,
    pub quantizers: Vec<Quantizer>,
    index: BTreeMap<String, usize>,
    qindex: BTreeMap<String, usize>,
}

/// Host values of a fresh model, PyTorch's default initialization (uniform in
/// `±1/sqrt(fan_in)` for conv/linear weights and biases; BN gamma 1, beta 0, running mean
/// 0, running var 1; LayerNorm weight 1, bias 0; token embeddings N(0, 1)), CLS tokens and
/// positions N(0, 0.02^2), from a seed.
pub fn init_params(specs: &[ParamSpec], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut fan_in = 1usize;
    specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            match s.kind {
                ParamKind::Weight => {
                    fan_in = s.shape[1..].iter().product::<usize>().max(1);
                    let b = 1.0 / (fan_in as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-b..b)).collect()
                }
                ParamKind::Bias => {
                    let b = 1.0 / (fan_in as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-b..b)).collect()
                }
                ParamKind::BnGamma | ParamKind::BnRunningVar | ParamKind::LnWeight | ParamKind::QuantScale => {
                    vec![1.0; n]
                }
                ParamKind::BnBeta | ParamKind::BnRunningMean | ParamKind::LnBias | ParamKind::QuantZeroPoint => {
                    vec![0.0; n]
                }
                // Token tables: N(0, 1), PyTorch's nn.Embedding default; CLS tokens and
                // positions (plain parameters in PyTorch): N(0, 0.02^2), timm's ViT.
                ParamKind::Embedding => {
                    let std = if s.name.ends_with(".weight") { 1.0 } else { 0.02 };
                    (0..n)
                        .map(|_| {
                            let (u1, u2): (f32, f32) =
                                (rng.random_range(f32::EPSILON..1.0), rng.random_range(0.0..1.0));
                            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                        })
                        .collect()
                }
            }
        })
        .collect()
}

impl ModelState {
    /// A freshly initialized model on the GPU; quantizers start with fake-quant and
    /// observers off (fp32 training) and scale 1.
    pub fn new(ctx: &GpuContext, graph: &Graph, qconfig: QConfig, seed: u64) -> Result<ModelState> {
        let specs = params::param_specs(graph)?;
        let values = init_params(&specs, seed);
        Self::from_values(ctx, graph, qconfig, specs, values)
    }

    /// A model whose parameters come from `f` by name (a wqat checkpoint or a PyTorch
    /// state_dict with torchvision names), with fresh quantizers and optimizer state.
    pub fn from_params(
        ctx: &GpuContext,
        path: &Path,
        f: &TensorFile,
        graph: &Graph,
        qconfig: QConfig,
    ) -> Result<ModelState> {
        let specs = params::param_specs(graph)?;
        let missing: Vec<&str> =
            specs.iter().filter(|s| !f.tensors.contains_key(&s.name)).map(|s| s.name.as_str()).collect();
        if !missing.is_empty() {
            return Err(WqatError::format(
                path,
                format!("missing tensors for model {}: {}", graph.name, missing.join(", ")),
            ));
        }
        let mut values = Vec::new();
        for s in &specs {
            values.push(f.get(path, &s.name, &s.shape)?.as_f32(&s.name)?.to_vec());
        }
        Self::from_values(ctx, graph, qconfig, specs, values)
    }

    fn from_values(
        ctx: &GpuContext,
        graph: &Graph,
        qconfig: QConfig,
        specs: Vec<ParamSpec>,
        values: Vec<Vec<f32>>,
    ) -> Result<ModelState> {
        let nodes = graph.resolve()?;
        let mut params = Vec::new();
        let mut index = BTreeMap::new();
        for (spec, v) in specs.into_iter().zip(values) {
            let value = GpuTensor::from_f32(ctx, &spec.shape, &v)?;
            let (grad, momentum, second_moment) = if spec.kind.trainable() {
                (
                    Some(GpuTensor::zeros(ctx, &spec.shape, DType::F32)?),
                    Some(GpuTensor::zeros(ctx, &spec.shape, DType::F32)?),
                    Some(GpuTensor::zeros(ctx, &spec.shape, DType::F32)?),
                )
            } else {
                (None, None, None)
            };
            index.insert(spec.name.clone(), params.len());
            params.push(Param { spec, value, grad, momentum, second_moment });
        }
        let mut quantizers = Vec::new();
        let mut qindex = BTreeMap::new();
        for q in qconfig.quantizer_specs(graph)? {
            let l = QStateLayout::new(q.channels);
            let mut v = l.build(&vec![1.0; q.channels], &vec![0.0; q.channels]);
            v[QStateLayout::FQ_ENABLED] = 0.0;
            v[QStateLayout::OBS_ENABLED] = 0.0;
            let state = GpuTensor::from_f32(ctx, &[l.len()], &v)?;
            // Learned quantizers (LSQ / LSQ+): trainable `{name}.scale` (and, for an affine
            // LSQ+ quantizer, `{name}.zero_point`), set from the calibrated state by
            // `lsq_init` at the end of PTQ, then updated by the optimizer.
            let kind = qconfig.quantizer_kind(&nodes, q.role);
            if kind.learned() {
                let spec = qconfig.spec_for_state(&nodes, q.role, q.channels);
                let mut learned = vec![(lsq_scale_name(&q.name), ParamKind::QuantScale, 1.0)];
                if kind == QuantizerKind::LsqPlus && !spec.symmetric {
                    learned.push((lsq_zero_name(&q.name), ParamKind::QuantZeroPoint, 0.0));
                }
                let node = match q.role {
                    QuantizerRole::Weight(i) | QuantizerRole::Output(i) | QuantizerRole::Probs(i) => i,
                };
                for (name, kind, v0) in learned {
                    let shape = vec![q.channels];
                    let z = || GpuTensor::zeros(ctx, &shape, DType::F32);
                    let (grad, momentum, second_moment) = (Some(z()?), Some(z()?), Some(z()?));
                    let value = GpuTensor::from_f32(ctx, &shape, &vec![v0; q.channels])?;
                    index.insert(name.clone(), params.len());
                    let spec = ParamSpec { name, shape, kind, node };
                    params.push(Param { spec, value, grad, momentum, second_moment });
                }
            }
            qindex.insert(q.name.clone(), quantizers.len());
            quantizers.push(Quantizer { spec: q, state });
        }
        Ok(ModelState { graph: graph.clone(), nodes, qconfig, params, quantizers, index, qindex })
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Result<&Param> {
        self.index
            .get(name)
            .map(|&i| &self.params[i])
            .ok_or_else(|| WqatError::invalid(format!("model {} has no parameter {name}", self.graph.name)))
    }
    /// A quantizer by name.
    pub fn quantizer(&self, name: &str) -> Option<&Quantizer> {
        self.qindex.get(name).map(|&i| &self.quantizers[i])
    }

    /// Queues new flags into every quantizer's header: fake-quant on/off, observers on/off,
    /// and optionally clears `initialized` (a fresh observer). No readback.
    pub fn set_quant_flags(&self, ctx: &GpuContext, fq_on: bool, obs_on: bool, reset: Option<bool>) -> Result<()> {
        for q in &self.quantizers {
            let mut header = vec![fq_on as u32 as f32, obs_on as u32 as f32];
            if let Some(r) = reset {
                header.push(if r { 0.0 } else { 1.0 });
            }
            q.state.write(ctx, &header)?;
        }
        Ok(())
    }

    /// Zeroes every momentum buffer (a new optimizer for the QAT phase).
    pub fn reset_momentum(&self, ctx: &GpuContext) -> Result<()> {
        for p in &self.params {
            for m in p.momentum.iter().chain(&p.second_moment) {
                m.write(ctx, &vec![0f32; m.len()])?;
            }
        }
        Ok(())
    }

    /// Reads everything into a checkpoint: parameters, BN buffers, quantizer states,
    /// momentum (`{name}.momentum`), plus `extra` GPU tensors (observer histograms) and the
    /// metadata describing the graph and quantization.
    pub fn to_checkpoint(&self, ctx: &GpuContext, extra: &[(String, &GpuTensor)]) -> Result<TensorFile> {
        let mut f = TensorFile::new();
        for p in &self.params {
            f.insert(p.spec.name.clone(), HostTensor::f32(&p.spec.shape, p.value.read_f32(ctx)?));
            if let Some(m) = &p.momentum {
                f.insert(format!("{}.momentum", p.spec.name), HostTensor::f32(&p.spec.shape, m.read_f32(ctx)?));
            }
            // AdamW's second moment; SGD runs leave it zero and do not store it.
            if let Some(v) = &p.second_moment {
                let v = v.read_f32(ctx)?;
                if v.iter().any(|&x| x != 0.0) {
                    f.insert(format!("{}.exp_avg_sq", p.spec.name), HostTensor::f32(&p.spec.shape, v));
                }
            }
        }
        for q in &self.quantizers {
            f.insert(q.spec.name.clone(), HostTensor::f32(&[q.state.len()], q.state.read_f32(ctx)?));
        }
        for (name, t) in extra {
            f.insert(name.clone(), HostTensor::f32(&t.shape, t.read_f32(ctx)?));
        }
        f.metadata.insert("format".into(), CHECKPOINT_FORMAT.into());
        f.metadata.insert("version".into(), CHECKPOINT_VERSION.into());
        f.metadata.insert("graph".into(), serde_json::to_string(&self.graph).map_err(json_err)?);
        f.metadata.insert("qconfig".into(), serde_json::to_string(&self.qconfig).map_err(json_err)?);
        Ok(f)
    }

    /// Rebuilds the state from a checkpoint, validating names, shapes and metadata. The
    /// graph comes from the checkpoint unless `graph` is given (then they must agree).
    pub fn from_checkpoint(ctx: &GpuContext, path: &Path, f: &TensorFile, graph: Option<&Graph>) -> Result<ModelState> {
        let bad = |m: String| WqatError::format(path, m);
        match f.metadata.get("format").map(String::as_str) {
            Some(CHECKPOINT_FORMAT) => {}
            other => return Err(bad(format!("not a wqat checkpoint (format {other:?})"))),
        }
        if f.metadata.get("version").map(String::as_str) != Some(CHECKPOINT_VERSION) {
            return Err(bad(format!(
                "checkpoint version {:?}, this build reads {CHECKPOINT_VERSION}",
                f.metadata.get("version")
            )));
        }
        let stored: Graph = serde_json::from_str(f.metadata.get("graph").ok_or_else(|| bad("no graph".into()))?)
            .map_err(|e| bad(format!("graph metadata: {e}")))?;
        stored.resolve().map_err(|e| bad(e.to_string()))?;
        if let Some(g) = graph {
            if g != &stored {
                return Err(bad(format!("checkpoint holds model {}, not the requested {}", stored.name, g.name)));
            }
        }
        let qconfig = QConfig::from_metadata(f, path)?;
        let specs = params::param_specs(&stored)?;
        let mut values = Vec::new();
        for s in &specs {
            values.push(f.get(path, &s.name, &s.shape)?.as_f32(&s.name)?.to_vec());
        }
        let state = Self::from_values(ctx, &stored, qconfig, specs, values)?;
        for p in state.params.iter().filter(|p| p.spec.kind.is_quantizer_param()) {
            let v = f.get(path, &p.spec.name, &p.spec.shape)?.as_f32(&p.spec.name)?;
            if p.spec.kind == ParamKind::QuantScale && !v.iter().all(|s| s.is_finite() && *s > 0.0) {
                return Err(bad(format!("learned scale {} must be finite and positive", p.spec.name)));
            }
            p.value.write(ctx, v)?;
        }
        for p in &state.params {
            for (buf, suffix) in [(&p.momentum, "momentum"), (&p.second_moment, "exp_avg_sq")] {
                let name = format!("{}.{suffix}", p.spec.name);
                if let (Some(m), true) = (buf, f.tensors.contains_key(&name)) {
                    m.write(ctx, f.get(path, &name, &p.spec.shape)?.as_f32(&name)?)?;
                }
            }
        }
        for q in &state.quantizers {
            let v = f.get(path, &q.spec.name, &[q.state.len()])?.as_f32(&q.spec.name)?;
            let l = QStateLayout::new(q.spec.channels);
            for c in 0..q.spec.channels {
                let (s, inv) = (v[l.scale() + c], v[l.inv_scale() + c]);
                if !(s.is_finite() && s > 0.0 && inv.is_finite()) {
                    return Err(bad(format!("quantizer {} has invalid scale {s}", q.spec.name)));
                }
            }
            q.state.write(ctx, v)?;
        }
        Ok(state)
    }
}

fn json_err(e: serde_json::Error) -> WqatError {
    WqatError::invalid(format!("serializing metadata: {e}"))
}
