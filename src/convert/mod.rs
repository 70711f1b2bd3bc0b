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
//!   `acc = sum (x - z_in) * w + bias`; output `z_out + MBQM(acc, M0[c], shift[c])` with
//!   `M = s_in * s_w[c] / s_out`, clamped to the activation range (ReLU / ReLU6 are clamps);
//! * max pool on codes; average pools: `z + MBQM(sum(q - z), M(s_in / (s_out * kh * kw)))`
//!   ([`AvgRequant`], divisor `kh * kw`: padding counts as zeros like the fp32 engine);
//! * add: TFLite's quantized add ([`AddConfig`]);
//! * a node that is not fully quantized (kept fp32, or a quantizer with its flag off) runs
//!   in f32 on dequantized inputs with the (fake-quantized) effective weights, and its
//!   output is quantized with its output quantizer when it has one.
//!
//! # Where the integer model and the fake-quant simulation differ
//!
//! Input codes, weight codes, max pool and the ReLU clamps are identical. Elsewhere the two
//! round differently, each difference at most one code locally (measured by
//! [`layer_report`]'s `local_*` fields on random calibrated networks: 0.01-0.1% of conv /
//! linear codes, about 2% of global-average-pool codes, no add codes). Deep networks pass
//! these one-code differences on and amplify them. To match bit for bit, the simulation
//! (the engine's eval graph) would compute:
//! * **bias**: `b_q = round_ties_even(b_eff / (s_in * s_w[c]))` in f64 (saturated to i32),
//!   i.e. add `b_q * s_in * s_w[c]` instead of `b_eff` (the simulation's error is at most
//!   `0.5 * s_in * s_w[c]`, i.e. `0.5 * M` output steps);
//! * **conv / linear requantization**: the simulation computes the f32 sum `y` (f32
//!   rounding of the sum and of `y * inv_s_out`) and rounds half to even; the integer model
//!   sums exactly in i32 and computes `z_out + MBQM(acc, M0, shift)` with `M = s_in *
//!   s_w[c] / s_out` in f64 quantized to a 31-bit `M0` (relative error <= 2^-31) and
//!   TFLite's double rounding: `SaturatingRoundingDoublingHighMul` rounds `acc * M0 / 2^31`
//!   half up (half away from zero for negatives), then `RoundingDivideByPOT` rounds half
//!   away from zero again. So exact ties go away from zero instead of to even, a first
//!   rounding that lands on a half can move the result by one, and f32 error moves
//!   near-ties either way. Exact emulation needs the integer accumulator: `acc = sum (q_x -
//!   z_x) * q_w + b_q` with the codes `q = round(x_fq * inv_s) + z` recovered from the
//!   fake-quantized values (exact), then the same MBQM;
//! * **ReLU6**: the integer upper clamp is `z_out + round_ties_even(6 / s_out)` (f64 from
//!   the f32 scale); the simulation clamps at 6.0 and rounds `6 * inv_s` in f32 (equal
//!   except when `6 / s_out` is within f32 error of a half);
//! * **average pools**: the simulation rounds `mean(x) * inv_s` half to even; the integer
//!   model computes `z + MBQM(sum(q - z), M(1 / (kh * kw)))`: the same double rounding, so
//!   besides exact ties (one window sum in `kh * kw` when that is even) a sum just below a
//!   tie can round up (for `kh * kw = 64`: sums `= 31 mod 64` give `k + 1` for `k + 31/64`).
//!   To match: recover the codes, sum `q - z` in integers and apply the same MBQM with
//!   `(M0, shift) = quantize_multiplier(1 / (kh * kw))` (padding: divisor `kh * kw`, padded
//!   taps contribute `q = z`);
//! * **add**: TFLite's quantized add (`AddConfig`): both inputs `(q - z) << 20`, each
//!   scaled by `s / (2 max(s_a, s_b))` with MBQM, summed, then scaled by `2 max(s_a, s_b) /
//!   (2^20 s_out)` with MBQM; the simulation rounds `(a + b) * inv_s_out` in f32. Differences
//!   appear only within about `2^-20` relative of a tie.

pub mod cpu;
pub mod eval;
pub mod format;
pub mod gpu;
pub mod kernels;
pub mod synthetic;

pub use cpu::{Int8Output, NodeValue};
pub use eval::{evaluate, layer_report, preprocess_image_file, Backend, EvalResult, LayerDiff};
pub use gpu::Int8GpuModel;

use crate::data::Normalization;
use crate::error::{Result, WqatError};
use crate::int8::{quantize_bias, Activation, AddConfig, AvgRequant, Requant};
use crate::model::graph::{Act, Graph, Op, ResolvedNode, INPUT};
use crate::reference::fake_quant::quantize_code;
use crate::reference::graph::{effective_params, QConfig, QState};
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
    fn from_state(q: &QState, bits: u32) -> Result<ActQuant> {
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

/// What a node runs as.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
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
    /// The image's representation (codes unless the first layer is kept fp32).
    pub input: Domain,
    /// One per graph node, in order.
    pub layers: Vec<Layer>,
    pub(crate) nodes: Vec<ResolvedNode>,
    /// Weights packed for the CPU SIMD kernels (built on the first CPU forward).
    pub(crate) cpu_packs: cpu::CpuPacks,
}

impl PartialEq for Int8Model {
    fn eq(&self, o: &Self) -> bool {
        (&self.graph, &self.qconfig, &self.normalization, &self.class_names, &self.input, &self.layers)
            == (&o.graph, &o.qconfig, &o.normalization, &o.class_names, &o.input, &o.layers)
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
    }
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
    let qc = gq.qconfig;
    if qc.activation.signed {
        return Err(WqatError::invalid("int8 conversion needs unsigned activation quantization"));
    }
    if !(qc.weight.signed && qc.weight.symmetric) {
        return Err(WqatError::invalid("int8 conversion needs signed symmetric weight quantization"));
    }
    let bits = qc.activation.bits;
    let (wmin, wmax) = (qc.weight.qmin() as f32, qc.weight.qmax() as f32);
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
    let input = match &gq.input {
        Some(q) if q.enabled => Domain::Codes(ActQuant::from_state(q, bits)?),
        _ => Domain::Float,
    };
    let out_quant = |i: usize| -> Result<Domain> {
        match &gq.output[i] {
            Some(q) if q.enabled => Ok(Domain::Codes(ActQuant::from_state(q, bits)?)),
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
                match (in_dom, wq, out) {
                    (Domain::Codes(qi), Some(wq), Domain::Codes(qo)) => {
                        let (w_eff, b_eff) = crate::reference::graph::folded_params(&gq, ckpt, i)?;
                        let cout = b_eff.len();
                        let inner = w_eff.len() / cout;
                        if inner as i64 * crate::int8::ops::MAX_PRODUCT > i32::MAX as i64 {
                            return Err(WqatError::invalid(format!(
                                "node {}: reduction length {inner} could overflow the int32 accumulator",
                                r.node.name
                            )));
                        }
                        let sw: Vec<f32> = (0..cout).map(|c| wq.scale[c % wq.channels()]).collect();
                        let isw: Vec<f32> = (0..cout).map(|c| wq.inv_scale[c % wq.channels()]).collect();
                        let weight = w_eff
                            .iter()
                            .enumerate()
                            .map(|(j, &v)| quantize_code(v, isw[j / inner], 0.0, wmin, wmax) as i8)
                            .collect();
                        let bias = quantize_bias(&b_eff, qi.scale, &sw)?;
                        let requant = Requant::from_scales(qi.scale, &sw, qo.scale, qo.zero, bits, activation(*act))?;
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
            Op::AvgPool { .. } | Op::GlobalAvgPool => match in_dom {
                Domain::Codes(q) => Layer { kind: LayerKind::AvgPool(Some(avg_requant(&q))), out: in_dom },
                Domain::Float => Layer { kind: LayerKind::AvgPool(None), out: Domain::Float },
            },
            Op::Add { act } => {
                let out = out_quant(i)?;
                match (in_dom, dom(r.inputs[1]), out) {
                    (Domain::Codes(a), Domain::Codes(b), Domain::Codes(o)) => {
                        let cfg =
                            AddConfig::new(a.scale, a.zero, b.scale, b.zero, o.scale, o.zero, bits, activation(*act))?;
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
        input,
        layers,
        nodes: gq.nodes,
        cpu_packs: Default::default(),
    })
}
