//! Conversion of a QAT checkpoint into a true integer model, its file format, and the
//! executors that run it (CPU scalar / SIMD, GPU).
//!
//! Arithmetic (gemmlowp / TFLite, see [`crate::int8`]):
//! * the image is normalized with the model's [`Normalization`] and quantized with
//!   `input.output_quant`: `q = clamp(round_ties_even(x * inv_s) + z, 0, qmax)` (the same
//!   expression as fake-quant, so input codes equal the simulation's bit for bit);
//! * conv / linear: BN folded in f32 exactly as [`crate::reference::graph::folded_params`];
//!   int8 weights `clamp(round_ties_even(w_eff * inv_s_w[c]), -qmax_w, qmax_w)` (the codes the
//!   simulation uses); int32 bias `round_ties_even(b_eff / (s_in * s_w[c]))` in f64;
//!   `acc = sum (x - z_in) * w + bias`; output `z_out + R(acc, M0[c], shift[c])` with
//!   `M = s_in * s_w[c] / s_out` and `R` = round half to even of the exact product `acc * M0 *
//!   2^(shift - 31)`, rounded ONCE ([`crate::infer::requant`]), clamped to the activation range
//!   (ReLU / ReLU6 are clamps);
//! * max pool on codes; average pools: `z + R(sum(q - z), M(s_in / (s_out * kh * kw)))`
//!   ([`AvgRequant`], divisor `kh * kw`: padding counts as zeros like the fp32 engine);
//! * add: TFLite's quantized add ([`AddConfig`]);
//! * a node that is not fully quantized (kept fp32, or a quantizer with its flag off) runs
//!   in f32 on dequantized inputs with the (fake-quantized) effective weights, and its
//!   output is quantized with its output quantizer when it has one.
//!
//! # Simulation and integer model agree by construction
//!
//! The fake-quant simulation (the GPU engine and [`crate::reference::graph`]) performs the
//! integer model's rounding points: input and weight codes are the same expressions; the
//! bias is added on the `s_in * s_w[c]` grid (`shaders/bias_quant.wgsl`: explicit biases, and
//! the folded conv-BN bias in eval mode); each output is rounded once, half to even, at the
//! output scale, which is what `R` computes exactly in integers. TFLite's
//! `MultiplyByQuantizedMultiplier` rounds twice (`acc * M0 / 2^31` to an integer, then the
//! shift): with the small accumulators of 4-bit layers that moved up to 5 % of the codes by
//! one against the simulation, so the integer model rounds once instead (64-bit product on
//! every backend). What remains (measured by [`layer_report`]'s `local_*` fields, a few codes
//! per million for conv / linear, about 0.1 % for an 8x8 global average pool):
//! * values within f32 error of a tie: the simulation sums in f32 and scales by `inv_s_out`,
//!   the integer model is exact (and `M0` carries 31 bits);
//! * average pools with a power-of-two window: their sums land exactly on ties often, where
//!   the simulation's f32 mean may fall on either side;
//! * **ReLU6**: the integer upper clamp is `z_out + round_ties_even(6 / s_out)` (f64 from
//!   the f32 scale); the simulation clamps at 6.0 and rounds `6 * inv_s` in f32 (equal
//!   except when `6 / s_out` is within f32 error of a half);
//! * **add**: TFLite's quantized add (`AddConfig`): both inputs `(q - z) << 20`, each
//!   scaled by `s / (2 max(s_a, s_b))` with MBQM, summed, then scaled by `2 max(s_a, s_b) /
//!   (2^20 s_out)` with MBQM; the simulation rounds `(a + b) * inv_s_out` in f32. Differences
//!   appear only within about `2^-20` relative of a tie.

pub mod synthetic;

use crate::data::Normalization;
use crate::error::{Result, WqatError};
use crate::infer::{quantize_bias, Activation, AddConfig, AvgRequant, Requant};
use crate::model::graph::{Act, Graph, Op, ResolvedNode, INPUT};
use crate::qconfig::QConfig;
use crate::reference::fake_quant::quantize_code;
use crate::reference::graph::{effective_params, QState};
use crate::tensorfile::TensorFile;

/// How an activation tensor is quantized: u8 codes `q` of value `(q - zero) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    pub scale: f32,
    /// The stored `1 / scale` the quantizer multiplies by.
    pub inv_scale: f32,
    pub zero: i32,
    /// 2..=8; codes lie in `[0, 2^bits - 1]`.
    pub bits: u32,
}

impl ActQuant {
    /// Largest code.
    pub fn qmax(&self) -> i32 {
        (1 << self.bits) - 1
    }
    /// The code of a real value (fake-quant's expression).
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        quantize_code(x, self.inv_scale, self.zero as f32, 0.0, self.qmax() as f32) as u8
    }
    /// The real value of a code.
    #[inline]
    pub fn dequantize(&self, q: u8) -> f32 {
        (q as f32 - self.zero as f32) * self.scale
    }
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = (2..=8).contains(&self.bits)
            && self.scale.is_finite()
            && self.scale > 0.0
            && self.inv_scale.is_finite()
            && self.inv_scale > 0.0
            && (0..=self.qmax()).contains(&self.zero);
        if !ok {
            return Err(WqatError::invalid(format!("activation quantization out of range: {self:?}")));
        }
        Ok(())
    }
    fn from_state(q: &QState) -> Result<ActQuant> {
        let bits = q.spec.bits;
        let a = ActQuant { scale: q.scale[0], inv_scale: q.inv_scale[0], zero: q.zero_point[0] as i32, bits };
        a.validate()?;
        Ok(a)
    }
}

/// The representation of a node's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Domain {
    /// u8 codes with this quantization.
    Codes(ActQuant),
    /// f32 values.
    Float,
}

impl Domain {
    /// The quantization, if codes.
    pub fn quant(&self) -> Option<ActQuant> {
        match self {
            Domain::Codes(q) => Some(*q),
            Domain::Float => None,
        }
    }
}

/// An integer conv / linear layer.
#[derive(Debug, Clone, PartialEq)]
pub struct IntLayer {
    /// Int8 weights, `[cout, cin/g, k, k]` or `[out, in]` row-major.
    pub weight: Vec<i8>,
    /// Per-output-channel weight scales.
    pub weight_scale: Vec<f32>,
    /// Int32 bias in units of `s_in * s_w[c]`.
    pub bias: Vec<i32>,
    /// Fixed-point requantization (activation folded into its clamp).
    pub requant: Requant,
}

/// A conv / linear layer kept in f32 (effective weights: BN folded, weight fake-quant applied).
#[derive(Debug, Clone, PartialEq)]
pub struct FloatLayer {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// An integer linear layer whose output leaves the integer domain (a transformer's QKV,
/// attention and MLP projections, patch embedding, the GELU MLP input): int32 accumulators
/// as in [`IntLayer`], dequantized `acc * s_in * s_w[c]` in f32, the activation (GELU) in
/// f32, then the output quantizer when the node has one ([`Layer::out`]). The simulation
/// computes the same sum in f32 (`FQ(x) FQ(w) + b_q`), so the two agree to f32 rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct IntFloatLayer {
    /// Int8 weights `[out, in]`.
    pub weight: Vec<i8>,
    /// Per-output-channel weight scales.
    pub weight_scale: Vec<f32>,
    /// Int32 bias in units of `s_in * s_w[c]`.
    pub bias: Vec<i32>,
}

/// A transformer op kept in f32 (the BERT recipe), with its tensors; shapes and settings
/// (eps, heads, pool mode) are the graph node's.
#[derive(Debug, Clone, PartialEq)]
pub enum SeqLayer {
    /// Rows of a `[vocab, dim]` table by token id.
    Embedding { table: Vec<f32> },
    /// Optional CLS token `[D]` prepended, positions `[T', D]` added.
    ClsPos { cls: Option<Vec<f32>>, pos: Vec<f32> },
    /// Per-token LayerNorm with scale and shift `[D]`.
    LayerNorm { gamma: Vec<f32>, beta: Vec<f32> },
    /// Multi-head self-attention core (padding keys masked); `probs` fake-quantizes the
    /// softmax output when the attention quantizes its matmul inputs.
    Attention { probs: Option<ActQuant> },
    /// CLS token or mean over the tokens that are not padding.
    TokenPool,
}

/// What a node runs as.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// Integer linear with an f32 epilogue (see [`IntFloatLayer`]).
    IntFloat(IntFloatLayer),
    /// Non-overlapping patches (a permutation, on codes or floats).
    Patchify,
    /// A transformer op in f32 (see [`SeqLayer`]).
    Seq(SeqLayer),
    /// Integer conv or linear (the op is the graph node's).
    Int(IntLayer),
    /// F32 conv or linear.
    Float(FloatLayer),
    /// Max pool (on codes or floats, by the input's domain).
    MaxPool,
    /// Average pool or global average pool; `Some` on codes.
    AvgPool(Option<AvgRequant>),
    /// Residual add; `Some` on codes.
    Add(Option<AddConfig>),
    /// Reshape (no data movement).
    Flatten,
}

/// One converted node.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub kind: LayerKind,
    /// The representation of its output.
    pub out: Domain,
}

/// A converted integer model: the graph, per-node integer (or f32) layers, the input
/// quantization, the data normalization and the class names.
#[derive(Debug, Clone)]
pub struct Int8Model {
    pub graph: Graph,
    pub qconfig: QConfig,
    pub normalization: Normalization,
    pub class_names: Vec<String>,
    /// How text becomes token ids (byte-level models trained on a text folder).
    pub text: Option<crate::data::TextEncoding>,
    /// The image's representation (codes unless the first layer is kept fp32).
    pub input: Domain,
    /// One per graph node, in order.
    pub layers: Vec<Layer>,
    pub(crate) nodes: Vec<ResolvedNode>,
    /// Weights packed for the CPU SIMD kernels (built on the first CPU forward).
    pub(crate) cpu_packs: crate::infer::cpu::CpuPacks,
}

impl PartialEq for Int8Model {
    fn eq(&self, o: &Self) -> bool {
        (&self.graph, &self.qconfig, &self.normalization, &self.class_names, &self.text, &self.input, &self.layers)
            == (&o.graph, &o.qconfig, &o.normalization, &o.class_names, &o.text, &o.input, &o.layers)
    }
}

impl Int8Model {
    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        self.graph.num_classes
    }
    /// Input shape `(C, H, W)`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.graph.input
    }
    /// How raw pixels are normalized before [`Int8Model::forward_cpu`].
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }
    /// Class names (may be empty when the checkpoint had none).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }
    /// The resolved graph nodes (shapes, inputs).
    pub fn nodes(&self) -> &[ResolvedNode] {
        &self.nodes
    }
    /// The representation of node `j`'s output (`INPUT`: the image).
    pub fn domain_of(&self, j: usize) -> Domain {
        if j == INPUT {
            self.input
        } else {
            self.layers[j].out
        }
    }
}

pub(crate) fn activation(act: Act) -> Activation {
    match act {
        Act::None => Activation::None,
        Act::Relu => Activation::Relu,
        Act::Relu6 => Activation::Relu6,
        // Rejected by `transformer_unsupported` before any layer is converted.
        Act::Gelu => Activation::None,
    }
}

/// A text encoding must produce exactly the model's input: `[1, 1, max_len]` token ids.
pub(crate) fn check_text_encoding(t: Option<&crate::data::TextEncoding>, graph: &Graph) -> Result<()> {
    if let Some(t) = t {
        t.validate()?;
        if graph.input != [1, 1, t.max_len] {
            return Err(WqatError::invalid(format!(
                "text encoding of {} tokens does not fit the model input {:?}",
                t.max_len, graph.input
            )));
        }
    }
    Ok(())
}

/// Int8 weight codes of `w_eff` (`[cout, inner]` flat) and the per-output-channel scales:
/// `clamp(round_ties_even(w * inv_s_w[c]), qmin, qmax)`, the codes the simulation uses.
fn int8_weights(w_eff: &[f32], cout: usize, wq: &QState) -> (Vec<i8>, Vec<f32>) {
    let inner = w_eff.len() / cout.max(1);
    let (wmin, wmax) = (wq.spec.qmin() as f32, wq.spec.qmax() as f32);
    let sw: Vec<f32> = (0..cout).map(|c| wq.scale[c % wq.channels()]).collect();
    let isw: Vec<f32> = (0..cout).map(|c| wq.inv_scale[c % wq.channels()]).collect();
    let weight =
        w_eff.iter().enumerate().map(|(j, &v)| quantize_code(v, isw[j / inner], 0.0, wmin, wmax) as i8).collect();
    (weight, sw)
}

/// An f32 tensor of the checkpoint with the expected shape, finite.
fn read_param(ckpt: &TensorFile, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = ckpt.tensors.get(name).ok_or_else(|| WqatError::invalid(format!("checkpoint has no tensor {name}")))?;
    if t.shape != shape {
        return Err(WqatError::invalid(format!("tensor {name} has shape {:?}, expected {shape:?}", t.shape)));
    }
    let v = t.as_f32(name)?;
    if v.len() != shape.iter().product::<usize>() || v.iter().any(|x| !x.is_finite()) {
        return Err(WqatError::invalid(format!("tensor {name} must hold {shape:?} finite values")));
    }
    Ok(v.to_vec())
}

/// `AvgRequant` of an average pool keeping its input's quantization.
pub(crate) fn avg_requant(q: &ActQuant) -> AvgRequant {
    AvgRequant { in_zero: q.zero, out_zero: q.zero, scale_ratio: 1.0, act_min: 0, act_max: q.qmax() }
}

fn meta_json<T: serde::de::DeserializeOwned>(ckpt: &TensorFile, key: &str) -> Result<Option<T>> {
    match ckpt.metadata.get(key) {
        None => Ok(None),
        Some(s) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| WqatError::format(std::path::Path::new("checkpoint"), format!("metadata `{key}`: {e}"))),
    }
}

/// Converts a QAT checkpoint (see [`crate::reference::graph`] for its contents and
/// semantics) into an integer model. The checkpoint's `normalization` and `class_names`
/// metadata are kept (normalization defaults to identity, mean 0 std 1, when absent).
pub fn convert(graph: &Graph, ckpt: &TensorFile) -> Result<Int8Model> {
    let gq = crate::reference::graph::GraphQuant::new(graph, ckpt)?;
    let qc = gq.qconfig.clone();
    // Every quantizer (per-layer settings included) must fit the integer kernels.
    for q in gq.input.iter().chain(gq.output.iter().flatten()) {
        if q.spec.signed {
            return Err(WqatError::invalid("int8 conversion needs unsigned activation quantization"));
        }
    }
    for q in gq.weight.iter().flatten() {
        if !(q.spec.signed && q.spec.symmetric) {
            return Err(WqatError::invalid("int8 conversion needs signed symmetric weight quantization"));
        }
    }
    let channels = graph.input[0];
    let normalization: Normalization = meta_json(ckpt, "normalization")?.unwrap_or(Normalization {
        max_value: 1.0,
        mean: vec![0.0; channels],
        std: vec![1.0; channels],
    });
    normalization.validate()?;
    if normalization.channels() != channels {
        return Err(WqatError::invalid(format!(
            "normalization has {} channels, the model takes {channels}",
            normalization.channels()
        )));
    }
    let class_names: Vec<String> = meta_json(ckpt, "class_names")?.unwrap_or_default();
    let text: Option<crate::data::TextEncoding> = meta_json(ckpt, "text_encoding")?;
    check_text_encoding(text.as_ref(), graph)?;
    let input = match &gq.input {
        Some(q) if q.enabled => Domain::Codes(ActQuant::from_state(q)?),
        _ => Domain::Float,
    };
    let out_quant = |i: usize| -> Result<Domain> {
        match &gq.output[i] {
            Some(q) if q.enabled => Ok(Domain::Codes(ActQuant::from_state(q)?)),
            _ => Ok(Domain::Float),
        }
    };
    let mut layers: Vec<Layer> = Vec::with_capacity(gq.nodes.len());
    for (i, r) in gq.nodes.iter().enumerate() {
        let dom = |j: usize| if j == INPUT { input } else { layers[j].out };
        let in_dom = dom(r.inputs[0]);
        let layer = match &r.node.op {
            Op::Conv { act, .. } | Op::Linear { act, .. } => {
                let out = out_quant(i)?;
                let wq = gq.weight[i].as_ref().filter(|q| q.enabled);
                // Transformer linears whose output is not requantized (no output quantizer,
                // or GELU between the GEMM and it) keep their int8 GEMM and leave it in f32.
                let float_epilogue = matches!(r.node.op, Op::Linear { .. })
                    && (*act == Act::Gelu || (r.in_seq[0] && out == Domain::Float));
                match (in_dom, wq, out) {
                    (Domain::Codes(qi), Some(wq), _) if float_epilogue => {
                        let (w_eff, b_eff) = crate::reference::graph::folded_params(&gq, ckpt, i)?;
                        let (weight, sw) = int8_weights(&w_eff, b_eff.len(), wq);
                        let bias = quantize_bias(&b_eff, qi.scale, &sw)?;
                        Layer { kind: LayerKind::IntFloat(IntFloatLayer { weight, weight_scale: sw, bias }), out }
                    }
                    (Domain::Codes(qi), Some(wq), Domain::Codes(qo)) => {
                        let (w_eff, b_eff) = crate::reference::graph::folded_params(&gq, ckpt, i)?;
                        let cout = b_eff.len();
                        let inner = w_eff.len() / cout;
                        if inner as i64 * crate::infer::ops::MAX_PRODUCT > i32::MAX as i64 {
                            return Err(WqatError::invalid(format!(
                                "node {}: reduction length {inner} could overflow the int32 accumulator",
                                r.node.name
                            )));
                        }
                        let (weight, sw) = int8_weights(&w_eff, cout, wq);
                        let bias = quantize_bias(&b_eff, qi.scale, &sw)?;
                        let requant =
                            Requant::from_scales(qi.scale, &sw, qo.scale, qo.zero, qo.bits, activation(*act))?;
                        Layer { kind: LayerKind::Int(IntLayer { weight, weight_scale: sw, bias, requant }), out }
                    }
                    _ => {
                        let (weight, bias) = effective_params(&gq, ckpt, i)?;
                        Layer { kind: LayerKind::Float(FloatLayer { weight, bias }), out }
                    }
                }
            }
            Op::MaxPool { .. } => Layer { kind: LayerKind::MaxPool, out: in_dom },
            Op::Flatten => Layer { kind: LayerKind::Flatten, out: in_dom },
            Op::Patchify { .. } => Layer { kind: LayerKind::Patchify, out: in_dom },
            Op::Embedding { .. } => {
                // The table the simulation reads: fake-quantized when the embedding is.
                let (table, _) = effective_params(&gq, ckpt, i)?;
                Layer { kind: LayerKind::Seq(SeqLayer::Embedding { table }), out: out_quant(i)? }
            }
            Op::ClsPos { cls } => {
                let [t, d, _] = r.out_shape;
                let pos = read_param(ckpt, &crate::model::params::pos_embed_name(&r.node.name), &[t, d])?;
                let cls = if *cls {
                    Some(read_param(ckpt, &crate::model::params::cls_token_name(&r.node.name), &[d])?)
                } else {
                    None
                };
                Layer { kind: LayerKind::Seq(SeqLayer::ClsPos { cls, pos }), out: out_quant(i)? }
            }
            Op::LayerNorm { .. } => {
                let d = r.out_shape[1];
                let gamma = read_param(ckpt, &crate::model::params::weight_name(&r.node.name), &[d])?;
                let beta = read_param(ckpt, &crate::model::params::bias_name(&r.node.name), &[d])?;
                Layer { kind: LayerKind::Seq(SeqLayer::LayerNorm { gamma, beta }), out: out_quant(i)? }
            }
            Op::Attention { .. } => {
                let probs = gq.probs[i].as_ref().filter(|q| q.enabled).map(ActQuant::from_state).transpose()?;
                Layer { kind: LayerKind::Seq(SeqLayer::Attention { probs }), out: out_quant(i)? }
            }
            Op::TokenPool { .. } => Layer { kind: LayerKind::Seq(SeqLayer::TokenPool), out: out_quant(i)? },
            Op::AvgPool { .. } | Op::GlobalAvgPool => match in_dom {
                Domain::Codes(q) => Layer { kind: LayerKind::AvgPool(Some(avg_requant(&q))), out: in_dom },
                Domain::Float => Layer { kind: LayerKind::AvgPool(None), out: Domain::Float },
            },
            Op::Add { act } => {
                let out = out_quant(i)?;
                match (in_dom, dom(r.inputs[1]), out) {
                    (Domain::Codes(a), Domain::Codes(b), Domain::Codes(o)) => {
                        let cfg = AddConfig::new(
                            a.scale,
                            a.zero,
                            b.scale,
                            b.zero,
                            o.scale,
                            o.zero,
                            o.bits,
                            activation(*act),
                        )?;
                        Layer { kind: LayerKind::Add(Some(cfg)), out }
                    }
                    _ => Layer { kind: LayerKind::Add(None), out },
                }
            }
        };
        layers.push(layer);
    }
    Ok(Int8Model {
        graph: graph.clone(),
        qconfig: qc,
        normalization,
        class_names,
        text,
        input,
        layers,
        nodes: gq.nodes,
        cpu_packs: Default::default(),
    })
}
