//! The converter: a QAT checkpoint becomes an integer model ([`crate::infer::Int8Model`]).
//!
//! Arithmetic (gemmlowp / TFLite, see [`crate::infer`]):
//! * the image is normalized with the model's [`Normalization`] and quantized with
//!   `input.output_quant`: `q = clamp(round_ties_even(x * inv_s) + z, 0, qmax)` (the same
//!   expression as fake-quant, so input codes equal the simulation's bit for bit);
//! * conv / linear: BN folded in f32 ([`crate::model::checkpoint::folded_params`], the
//!   arithmetic of the engine and, written separately, of [`crate::reference::graph`]);
//!   int8 weights `clamp(round_ties_even(w_eff * inv_s_w[c]), -qmax_w, qmax_w)` (the codes the
//!   simulation uses); int32 bias `round_ties_even(b_eff / (s_in * s_w[c]))` in f64;
//!   `acc = sum (x - z_in) * w + bias`; output `z_out + R(acc, M0[c], shift[c])` with
//!   `M = s_in * s_w[c] / s_out` and `R` = round half to even of the exact product `acc * M0 *
//!   2^(shift - 31)`, rounded ONCE ([`crate::infer::requant`]), clamped to the activation range
//!   (ReLU / ReLU6 are clamps);
//! * max pool on codes; average pools: `z + round(sum(q - z) / (kh * kw))`, the exact mean
//!   rounded half to even ([`AvgRequant`]; padding counts as zeros like the fp32 engine),
//!   which the simulation computes on the same codes;
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
use crate::infer::model::{activation, avg_requant, check_text_encoding};
use crate::infer::{
    quantize_bias, ActQuant, AddConfig, Domain, FloatLayer, Int8Model, IntFloatLayer, IntLayer, Layer, LayerKind,
    Requant, SeqLayer,
};
use crate::model::checkpoint::{effective_params, folded_params, read_param, GraphQuant, QState};
use crate::model::graph::{Act, Graph, Op, INPUT};
use crate::reference::fake_quant::quantize_code;
use crate::tensorfile::TensorFile;

/// The activation quantization of an (enabled, per-tensor) quantizer state.
fn act_quant(q: &QState) -> Result<ActQuant> {
    let bits = q.spec.bits;
    let a = ActQuant { scale: q.scale[0], inv_scale: q.inv_scale[0], zero: q.zero_point[0] as i32, bits };
    a.validate()?;
    Ok(a)
}

/// Int8 weight codes of `w_eff` (`[cout, inner]` flat) and the per-output-channel scales:
/// `clamp(round_ties_even(w * inv_s_w[c]), qmin, qmax)`, the codes the simulation uses,
/// packed at the quantizer's bit width (several codes per byte below 5 bits).
fn int8_weights(w_eff: &[f32], cout: usize, wq: &QState) -> Result<(crate::infer::PackedWeights, Vec<f32>)> {
    let inner = w_eff.len() / cout.max(1);
    let (wmin, wmax) = (wq.spec.qmin() as f32, wq.spec.qmax() as f32);
    let sw: Vec<f32> = (0..cout).map(|c| wq.scale[c % wq.channels()]).collect();
    let isw: Vec<f32> = (0..cout).map(|c| wq.inv_scale[c % wq.channels()]).collect();
    let weight: Vec<i8> =
        w_eff.iter().enumerate().map(|(j, &v)| quantize_code(v, isw[j / inner], 0.0, wmin, wmax) as i8).collect();
    Ok((crate::infer::PackedWeights::pack(&weight, wq.spec.bits)?, sw))
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
    let gq = GraphQuant::new(graph, ckpt)?;
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
        Some(q) if q.enabled => Domain::Codes(act_quant(q)?),
        _ => Domain::Float,
    };
    let out_quant = |i: usize| -> Result<Domain> {
        match &gq.output[i] {
            Some(q) if q.enabled => Ok(Domain::Codes(act_quant(q)?)),
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
                        let (w_eff, b_eff) = folded_params(&gq, ckpt, i)?;
                        let (weight, sw) = int8_weights(&w_eff, b_eff.len(), wq)?;
                        let bias = quantize_bias(&b_eff, qi.scale, &sw)?;
                        Layer { kind: LayerKind::IntFloat(IntFloatLayer { weight, weight_scale: sw, bias }), out }
                    }
                    (Domain::Codes(qi), Some(wq), Domain::Codes(qo)) => {
                        let (w_eff, b_eff) = folded_params(&gq, ckpt, i)?;
                        let cout = b_eff.len();
                        let inner = w_eff.len() / cout;
                        if inner as i64 * crate::infer::ops::MAX_PRODUCT > i32::MAX as i64 {
                            return Err(WqatError::invalid(format!(
                                "node {}: reduction length {inner} could overflow the int32 accumulator",
                                r.node.name
                            )));
                        }
                        let (weight, sw) = int8_weights(&w_eff, cout, wq)?;
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
                let probs = gq.probs[i].as_ref().filter(|q| q.enabled).map(act_quant).transpose()?;
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
    })
}
