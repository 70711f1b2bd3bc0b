//! The converted integer model: per-node integer (or f32) layers over the graph, the input
//! quantization, the data normalization and the class names. Built by
//! [`crate::convert::convert`], stored by [`super::format`], run by [`super::cpu`] and
//! [`super::gpu`].

use super::{Activation, AddConfig, AvgRequant, PackedWeights, Requant};
use crate::data::Normalization;
use crate::error::{Result, WqatError};
use crate::model::graph::{Act, Graph, ResolvedNode, INPUT};
use crate::qconfig::QConfig;
use crate::reference::fake_quant::quantize_code;

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
    /// Weight codes, `[cout, cin/g, k, k]` or `[out, in]` row-major (packed below 5 bits).
    pub weight: PackedWeights,
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
    /// Weight codes `[out, in]` (packed below 5 bits).
    pub weight: PackedWeights,
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
    /// How raw pixels are normalized before a forward ([`super::Int8CpuModel::forward`]).
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
    /// Weight storage: `(bytes as stored, bytes with one code per byte)` over the integer
    /// layers' weight codes, and the f32 bytes of everything else (f32 layers' weights and
    /// biases, transformer tables, int32 biases and requantization).
    pub fn weight_bytes(&self) -> (usize, usize, usize) {
        let (mut packed, mut int8, mut other) = (0, 0, 0);
        for l in &self.layers {
            match &l.kind {
                LayerKind::Int(il) => {
                    packed += il.weight.data().len();
                    int8 += il.weight.len();
                    other += 4 * (il.weight_scale.len() + il.bias.len() + 2 * il.requant.multiplier.len());
                }
                LayerKind::IntFloat(il) => {
                    packed += il.weight.data().len();
                    int8 += il.weight.len();
                    other += 4 * (il.weight_scale.len() + il.bias.len());
                }
                LayerKind::Float(fl) => other += 4 * (fl.weight.len() + fl.bias.len()),
                LayerKind::Seq(SeqLayer::Embedding { table }) => other += 4 * table.len(),
                LayerKind::Seq(SeqLayer::ClsPos { cls, pos }) => {
                    other += 4 * (pos.len() + cls.as_ref().map_or(0, |c| c.len()))
                }
                LayerKind::Seq(SeqLayer::LayerNorm { gamma, beta }) => other += 4 * (gamma.len() + beta.len()),
                _ => {}
            }
        }
        (packed, int8, other)
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

/// `AvgRequant` of an average pool keeping its input's quantization.
pub(crate) fn avg_requant(q: &ActQuant) -> AvgRequant {
    AvgRequant { in_zero: q.zero, out_zero: q.zero, scale_ratio: 1.0, act_min: 0, act_max: q.qmax() }
}
