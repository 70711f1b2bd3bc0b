//! Reading a QAT checkpoint: quantizer states ([`QState`]), the graph resolved against
//! them ([`GraphQuant`]), parameters by name ([`read_f32`], [`read_param`]) and conv-BN
//! folding ([`folded_params`], [`effective_params`]) as the converter ([`crate::convert`])
//! uses them. The checkpoint's contents and their eval semantics are
//! [`crate::reference::graph`]'s; that reference folds BN with its own code, so a folding
//! bug here shows up as a disagreement between converted models and the reference.

use crate::error::{Result, WqatError};
use crate::model::graph::{Graph, Op, ResolvedNode, INPUT};
use crate::model::params::{self, QuantizerRole, BN_EPS};
use crate::qconfig::QConfig;
use crate::quant::{QStateLayout, QuantSpec};
use crate::reference::fake_quant::quantize_code;
use crate::tensorfile::TensorFile;
use std::path::Path;

fn ckpt_err(msg: impl Into<String>) -> WqatError {
    WqatError::format(Path::new("checkpoint"), msg)
}

/// One quantizer's state read from a checkpoint (`QStateLayout` vector).
#[derive(Debug, Clone, PartialEq)]
pub struct QState {
    /// How it quantizes (from the checkpoint's QConfig for this quantizer).
    pub spec: QuantSpec,
    /// The fake-quant flag; off means pass-through.
    pub enabled: bool,
    pub scale: Vec<f32>,
    pub inv_scale: Vec<f32>,
    pub zero_point: Vec<f32>,
}

impl QState {
    /// Parses a raw `QStateLayout` vector of length `4 + 5 C` of a quantizer with `spec`.
    pub fn from_raw(name: &str, raw: &[f32], spec: QuantSpec) -> Result<QState> {
        let n = raw.len();
        if n < QStateLayout::HEADER + 5 || !(n - QStateLayout::HEADER).is_multiple_of(5) {
            return Err(ckpt_err(format!("quantizer {name} has {n} values, expected 4 + 5 * channels")));
        }
        let l = QStateLayout::new((n - QStateLayout::HEADER) / 5);
        let c = l.channels;
        let q = QState {
            spec,
            enabled: raw[QStateLayout::FQ_ENABLED] != 0.0,
            scale: raw[l.scale()..l.scale() + c].to_vec(),
            inv_scale: raw[l.inv_scale()..l.inv_scale() + c].to_vec(),
            zero_point: raw[l.zero_point()..l.zero_point() + c].to_vec(),
        };
        if q.enabled {
            let bad = q.scale.iter().chain(&q.inv_scale).any(|v| !(v.is_finite() && *v > 0.0))
                || q.zero_point.iter().any(|z| !z.is_finite() || z.fract() != 0.0);
            if bad {
                return Err(ckpt_err(format!("quantizer {name}: scales must be finite and > 0, zero points integral")));
            }
        }
        Ok(q)
    }
    /// The `QStateLayout` vector of a one-channel state (fake-quant flag, scale,
    /// inv_scale, zero point), as kernels and references read it.
    pub fn to_raw(&self) -> Vec<f32> {
        let mut v = QStateLayout::exact(self.scale[0], self.inv_scale[0], self.zero_point[0]);
        v[QStateLayout::FQ_ENABLED] = self.enabled as u32 as f32;
        v
    }
    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.scale.len()
    }
    /// Fake-quantizes `x` in place (channel `(i / inner) % channels`); no-op when disabled.
    pub fn fake_quant(&self, x: &mut [f32], inner: usize) {
        if !self.enabled {
            return;
        }
        let (qmin, qmax) = (self.spec.qmin() as f32, self.spec.qmax() as f32);
        let c = self.channels();
        for (i, v) in x.iter_mut().enumerate() {
            let ch = (i / inner.max(1)) % c;
            let z = self.zero_point[ch];
            *v = (quantize_code(*v, self.inv_scale[ch], z, qmin, qmax) - z) * self.scale[ch];
        }
    }
}

/// Reads the state of quantizer `name` (quantizing with `spec`) from a checkpoint.
pub fn read_quantizer(ckpt: &TensorFile, name: &str, spec: QuantSpec) -> Result<QState> {
    let t = ckpt.tensors.get(name).ok_or_else(|| ckpt_err(format!("missing quantizer {name}")))?;
    QState::from_raw(name, t.as_f32(name)?, spec)
}

/// An f32 tensor of the checkpoint with the expected shape.
pub fn read_f32<'a>(ckpt: &'a TensorFile, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let t = ckpt.tensors.get(name).ok_or_else(|| ckpt_err(format!("missing tensor {name}")))?;
    if t.shape != shape {
        return Err(ckpt_err(format!("tensor {name} has shape {:?}, expected {shape:?}", t.shape)));
    }
    let v = t.as_f32(name)?;
    if v.len() != shape.iter().product::<usize>() {
        return Err(ckpt_err(format!("tensor {name} has {} values for shape {shape:?}", v.len())));
    }
    Ok(v)
}

/// A graph resolved against a checkpoint: nodes, the qconfig and every quantizer state
/// (`None` where the graph places none).
#[derive(Debug, Clone)]
pub struct GraphQuant {
    pub nodes: Vec<ResolvedNode>,
    pub qconfig: QConfig,
    /// `input.output_quant`.
    pub input: Option<QState>,
    /// `{node}.weight_quant` per node (1 or out-channels channels).
    pub weight: Vec<Option<QState>>,
    /// `{node}.output_quant` per node (1 channel).
    pub output: Vec<Option<QState>>,
    /// `{node}.probs_quant` per attention node that quantizes its matmul inputs.
    pub probs: Vec<Option<QState>>,
}

impl GraphQuant {
    /// Resolves the graph and reads its quantizers from the checkpoint.
    pub fn new(graph: &Graph, ckpt: &TensorFile) -> Result<GraphQuant> {
        let nodes = graph.resolve()?;
        let qconfig = QConfig::from_metadata(ckpt, Path::new("checkpoint"))?;
        let mut input = None;
        let mut weight = vec![None; nodes.len()];
        let mut output = vec![None; nodes.len()];
        let mut probs = vec![None; nodes.len()];
        for spec in params::quantizer_specs(graph, |_| true)? {
            let q = read_quantizer(ckpt, &spec.name, qconfig.spec(&nodes, spec.role))?;
            // Per tensor or per channel is what the checkpoint stores.
            let q = QState { spec: qconfig.spec_for_state(&nodes, spec.role, q.channels()), ..q };
            match spec.role {
                QuantizerRole::Weight(i) => {
                    if q.channels() != 1 && q.channels() != spec.channels {
                        return Err(ckpt_err(format!(
                            "quantizer {} has {} channels, expected 1 or {}",
                            spec.name,
                            q.channels(),
                            spec.channels
                        )));
                    }
                    if q.enabled && q.zero_point.iter().any(|&z| z != 0.0) {
                        return Err(ckpt_err(format!(
                            "weight quantizer {} is not symmetric (zero point != 0)",
                            spec.name
                        )));
                    }
                    weight[i] = Some(q);
                }
                QuantizerRole::Probs(i) => {
                    if q.channels() != 1 {
                        return Err(ckpt_err(format!("quantizer {} must be per tensor", spec.name)));
                    }
                    probs[i] = Some(q);
                }
                QuantizerRole::Output(i) => {
                    if q.channels() != 1 {
                        return Err(ckpt_err(format!("activation quantizer {} must be per tensor", spec.name)));
                    }
                    if i == INPUT {
                        input = Some(q);
                    } else {
                        output[i] = Some(q);
                    }
                }
            }
        }
        Ok(GraphQuant { nodes, qconfig, input, weight, output, probs })
    }

    /// The enabled quantizer the first input of node `i` carries, if any.
    pub fn input_quant(&self, i: usize) -> Option<&QState> {
        match params::input_quantizer(&self.nodes, i, 0)? {
            QuantizerRole::Output(INPUT) => self.input.as_ref(),
            QuantizerRole::Output(j) => self.output[j].as_ref(),
            QuantizerRole::Weight(_) | QuantizerRole::Probs(_) => None,
        }
        .filter(|q| q.enabled)
    }
}

/// `(w_eff, b_eff)` of conv/linear node `i` with BN folded (before weight fake-quant).
pub fn folded_params(gq: &GraphQuant, ckpt: &TensorFile, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let r = &gq.nodes[i];
    let name = &r.node.name;
    let [c_in, _, _] = r.in_shapes[0];
    let (shape, has_bias, bn) = match &r.node.op {
        Op::Conv { out_channels, kernel, groups, bias, bn, .. } => {
            (vec![*out_channels, c_in / groups, *kernel, *kernel], *bias, *bn)
        }
        Op::Linear { out_features, bias, .. } => (vec![*out_features, r.in_features()], *bias, false),
        // An embedding table: rows are its channels, no bias.
        Op::Embedding { vocab, dim, .. } => {
            return Ok((read_f32(ckpt, &params::weight_name(name), &[*vocab, *dim])?.to_vec(), vec![0.0; *vocab]))
        }
        _ => return Err(WqatError::invalid(format!("node {name} has no weights"))),
    };
    let cout = shape[0];
    let inner: usize = shape[1..].iter().product();
    let wt = read_f32(ckpt, &params::weight_name(name), &shape)?;
    if has_bias && bn {
        return Err(ckpt_err(format!("node {name}: conv with both a bias and batch norm is unsupported")));
    }
    if bn {
        let p = r.node.bn_prefix();
        let gamma = read_f32(ckpt, &format!("{p}.weight"), &[cout])?;
        let beta = read_f32(ckpt, &format!("{p}.bias"), &[cout])?;
        let mean = read_f32(ckpt, &format!("{p}.running_mean"), &[cout])?;
        let var = read_f32(ckpt, &format!("{p}.running_var"), &[cout])?;
        let sf: Vec<f32> = (0..cout).map(|c| gamma[c] / (var[c] + BN_EPS).sqrt()).collect();
        let w_eff = wt.iter().enumerate().map(|(j, &v)| v * sf[j / inner]).collect();
        let b_eff = (0..cout).map(|c| beta[c] - mean[c] * sf[c]).collect();
        Ok((w_eff, b_eff))
    } else {
        let b = if has_bias { read_f32(ckpt, &params::bias_name(name), &[cout])?.to_vec() } else { vec![0.0; cout] };
        Ok((wt.to_vec(), b))
    }
}

/// `(w_eff, b_eff)` with the weight fake-quantized (as the forward uses them).
pub fn effective_params(gq: &GraphQuant, ckpt: &TensorFile, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mut w, b) = folded_params(gq, ckpt, i)?;
    if let Some(q) = &gq.weight[i] {
        let inner = w.len() / b.len();
        q.fake_quant(&mut w, inner);
    }
    Ok((w, b))
}

/// [`read_f32`], copied, with every value finite (the converter's parameters).
pub fn read_param(ckpt: &TensorFile, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let v = read_f32(ckpt, name, shape)?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(WqatError::invalid(format!("tensor {name} must hold {shape:?} finite values")));
    }
    Ok(v.to_vec())
}
