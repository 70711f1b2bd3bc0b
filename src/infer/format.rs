//! The int8 model file: safetensors with `format = "wqat-int8"`, `version = "2"` when some
//! layer has packed sub-8-bit weights, else `"1"` (version 1 files load unchanged; their
//! 2..=4-bit weights are packed in memory on load).
//!
//! Metadata (strings): `graph` (Graph JSON), `qconfig` (the [`QConfig`] JSON: defaults and
//! per-layer overrides, which give each `act_quant` its bit width), `normalization` (Normalization JSON), `class_names` (JSON list).
//!
//! Tensors (names prefixed by the graph node name `{n}`):
//! * `input.act_quant`, `{n}.act_quant`: f32 `[4]` = `[scale, inv_scale, zero_point, bits]`,
//!   present when the image / a conv, linear or add output is stored as u8 codes (pools and
//!   flatten keep their input's representation);
//! * integer conv / linear: `{n}.weight_q` i8 (the weight's shape), `{n}.weight_scale` f32
//!   `[cout]`, `{n}.bias_q` i32 `[cout]`, `{n}.requant` i32 `[cout, 2]` = `(M0, shift)`;
//! * weights of 2..=4 bits (version 2): `{n}.weight_packed` u8 `[bytes]` instead of
//!   `weight_q`: the codes in the weight's row-major order, four 2-bit fields per byte for
//!   2-bit weights, two 4-bit fields (nibbles) per byte for 3- and 4-bit weights, lowest bits
//!   first, two's complement, unused fields of the last byte zero (see
//!   [`super::weights`]); the bit width is the layer's weight bits in `qconfig`, and
//!   `bytes` must equal `ceil(numel / codes_per_byte)`;
//! * f32 conv / linear: `{n}.weight` f32, `{n}.bias` f32 `[cout]` (effective weights);
//! * integer add: `{n}.add` i32 `[11]` = `a_zero, b_zero, out_zero, a_M0, a_shift, b_M0,
//!   b_shift, out_M0, out_shift, act_min, act_max`;
//! * integer linear with an f32 epilogue (transformers): `weight_q`, `weight_scale`,
//!   `bias_q` as above and no `requant`;
//! * transformer ops in f32: embedding `{n}.weight` `[vocab, dim]`; CLS token and positions
//!   `{n}.cls_token` `[D]`, `{n}.pos_embed` `[T', D]`; LayerNorm `{n}.weight`, `{n}.bias`
//!   `[D]`; their `{n}.act_quant` when a quantized linear reads them.
//!
//! Loading checks every field (shapes, ranges, consistency with the graph) and returns
//! [`WqatError::Format`] for anything else; unknown tensors are rejected.

use super::model::{activation, avg_requant};
use super::{ActQuant, Domain, FloatLayer, Int8Model, IntFloatLayer, IntLayer, Layer, LayerKind, SeqLayer};
use crate::data::Normalization;
use crate::error::{Result, WqatError};
use crate::infer::requant::activation_range;
use crate::infer::weights::{field_bits, packed_len};
use crate::infer::{AddConfig, PackedWeights, Requant};
use crate::model::graph::{Graph, Op, INPUT};
use crate::model::params::{bias_name, cls_token_name, pos_embed_name, weight_name};
use crate::qconfig::QConfig;
use crate::tensorfile::{write_atomic, HostData, HostTensor, TensorFile};
use std::collections::BTreeSet;
use std::path::Path;

/// The `format` metadata value.
pub const FORMAT: &str = "wqat-int8";
/// The `version` metadata value of files with packed weights (this build reads 1 and 2).
pub const VERSION: &str = "2";
/// The `version` written when no layer has packed weights (readable by version-1 builds).
pub const VERSION_UNPACKED: &str = "1";

fn act_tensor(q: &ActQuant) -> HostTensor {
    HostTensor::f32(&[4], vec![q.scale, q.inv_scale, q.zero as f32, q.bits as f32])
}

fn weight_shape(model_nodes: &[crate::model::ResolvedNode], i: usize) -> Vec<usize> {
    let r = &model_nodes[i];
    let [c, _, _] = r.in_shapes[0];
    match &r.node.op {
        Op::Conv { out_channels, kernel, groups, .. } => vec![*out_channels, c / groups, *kernel, *kernel],
        _ => vec![r.out_channels(), r.in_features()],
    }
}

/// `{n}.weight_q` (i8, the weight's shape) or `{n}.weight_packed` (u8), `{n}.weight_scale` and `{n}.bias_q` of an
/// integer conv / linear.
fn insert_int_weights(
    tf: &mut TensorFile,
    n: &str,
    shape: Vec<usize>,
    w: &PackedWeights,
    scale: &[f32],
    bias: &[i32],
    pack: bool,
) {
    let cout = scale.len();
    if pack && w.is_packed() {
        let len = w.data().len();
        tf.insert(format!("{n}.weight_packed"), HostTensor { shape: vec![len], data: HostData::U8(w.data().to_vec()) });
    } else {
        tf.insert(format!("{n}.weight_q"), HostTensor { shape, data: HostData::I8(w.codes().into_owned()) });
    }
    tf.insert(format!("{n}.weight_scale"), HostTensor::f32(&[cout], scale.to_vec()));
    tf.insert(format!("{n}.bias_q"), HostTensor { shape: vec![cout], data: HostData::I32(bias.to_vec()) });
}

impl Int8Model {
    /// The model as named tensors plus metadata.
    pub fn to_tensor_file(&self) -> Result<TensorFile> {
        self.tensor_file(true)
    }

    /// The model with every weight stored one code per byte (`weight_q`, version 1: what
    /// builds without packed weights read, and the baseline of [`Int8Model::file_sizes`]).
    pub fn to_tensor_file_int8(&self) -> Result<TensorFile> {
        self.tensor_file(false)
    }

    /// File sizes in bytes: `(as saved, with one weight code per byte)`.
    pub fn file_sizes(&self) -> Result<(usize, usize)> {
        Ok((self.to_tensor_file()?.to_bytes()?.len(), self.to_tensor_file_int8()?.to_bytes()?.len()))
    }

    fn tensor_file(&self, pack: bool) -> Result<TensorFile> {
        let mut tf = TensorFile::new();
        let json = |v: &dyn erased::Json| v.json();
        tf.metadata.insert("format".into(), FORMAT.into());
        // Version 1 readers cannot read packed weights; files without any stay version 1.
        let packed = pack
            && self.layers.iter().any(|l| match &l.kind {
                LayerKind::Int(il) => il.weight.is_packed(),
                LayerKind::IntFloat(il) => il.weight.is_packed(),
                _ => false,
            });
        tf.metadata.insert("version".into(), if packed { VERSION } else { VERSION_UNPACKED }.into());
        tf.metadata.insert("graph".into(), json(&self.graph)?);
        tf.metadata.insert("qconfig".into(), json(&self.qconfig)?);
        tf.metadata.insert("normalization".into(), json(&self.normalization)?);
        tf.metadata.insert("class_names".into(), json(&self.class_names)?);
        if let Some(t) = &self.text {
            tf.metadata.insert("text_encoding".into(), json(t)?);
        }
        if let Domain::Codes(q) = self.input {
            tf.insert("input.act_quant", act_tensor(&q));
        }
        for (i, (r, l)) in self.nodes.iter().zip(&self.layers).enumerate() {
            let n = &r.node.name;
            // Pools, flatten and patches carry their input's representation.
            let has_own_quant = !matches!(
                r.node.op,
                Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool | Op::Flatten | Op::Patchify { .. }
            );
            if let (true, Domain::Codes(q)) = (has_own_quant, l.out) {
                tf.insert(format!("{n}.act_quant"), act_tensor(&q));
            }
            let cout = r.out_channels();
            let int_weights = match &l.kind {
                LayerKind::Int(il) => Some((&il.weight, &il.weight_scale, &il.bias)),
                LayerKind::IntFloat(il) => Some((&il.weight, &il.weight_scale, &il.bias)),
                _ => None,
            };
            if let Some((w, scale, bias)) = int_weights {
                insert_int_weights(&mut tf, n, weight_shape(&self.nodes, i), w, scale, bias, pack);
            }
            match &l.kind {
                LayerKind::Int(il) => {
                    let rq: Vec<i32> =
                        il.requant.multiplier.iter().zip(&il.requant.shift).flat_map(|(&m, &s)| [m, s]).collect();
                    tf.insert(format!("{n}.requant"), HostTensor { shape: vec![cout, 2], data: HostData::I32(rq) });
                }
                LayerKind::Seq(SeqLayer::Embedding { table }) => {
                    let [_, d, _] = r.out_shape;
                    tf.insert(weight_name(n), HostTensor::f32(&[table.len() / d.max(1), d], table.clone()));
                }
                LayerKind::Seq(SeqLayer::ClsPos { cls, pos }) => {
                    let [t, d, _] = r.out_shape;
                    if let Some(c) = cls {
                        tf.insert(cls_token_name(n), HostTensor::f32(&[d], c.clone()));
                    }
                    tf.insert(pos_embed_name(n), HostTensor::f32(&[t, d], pos.clone()));
                }
                LayerKind::Seq(SeqLayer::Attention { probs: Some(q) }) => {
                    tf.insert(format!("{n}.probs_quant"), act_tensor(q));
                }
                LayerKind::Seq(SeqLayer::LayerNorm { gamma, beta }) => {
                    tf.insert(weight_name(n), HostTensor::f32(&[gamma.len()], gamma.clone()));
                    tf.insert(bias_name(n), HostTensor::f32(&[beta.len()], beta.clone()));
                }
                LayerKind::Float(fl) => {
                    tf.insert(format!("{n}.weight"), HostTensor::f32(&weight_shape(&self.nodes, i), fl.weight.clone()));
                    tf.insert(format!("{n}.bias"), HostTensor::f32(&[cout], fl.bias.clone()));
                }
                LayerKind::Add(Some(c)) => {
                    let v = vec![
                        c.a_zero,
                        c.b_zero,
                        c.out_zero,
                        c.a_mult.0,
                        c.a_mult.1,
                        c.b_mult.0,
                        c.b_mult.1,
                        c.out_mult.0,
                        c.out_mult.1,
                        c.act_min,
                        c.act_max,
                    ];
                    tf.insert(format!("{n}.add"), HostTensor { shape: vec![11], data: HostData::I32(v) });
                }
                _ => {}
            }
        }
        Ok(tf)
    }

    /// Writes the model atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_tensor_file()?.to_bytes()?)
    }

    /// Reads and validates a model file; any malformed content is a [`WqatError::Format`].
    pub fn load(path: &Path) -> Result<Int8Model> {
        let bytes = std::fs::read(path).map_err(|e| WqatError::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses and validates model bytes (`path` names the source in errors).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Int8Model> {
        let tf = TensorFile::from_bytes(path, bytes)?;
        Self::from_tensor_file(path, &tf).map_err(|e| match e {
            WqatError::Format { .. } => e,
            other => WqatError::format(path, other.to_string()),
        })
    }

    /// Validates and builds a model from named tensors.
    pub fn from_tensor_file(path: &Path, tf: &TensorFile) -> Result<Int8Model> {
        let bad = |m: String| WqatError::format(path, m);
        let meta = |k: &str| tf.metadata.get(k).ok_or_else(|| bad(format!("missing metadata `{k}`")));
        if meta("format")? != FORMAT {
            return Err(bad(format!("not a wqat int8 model (format {:?}, expected {FORMAT:?})", meta("format")?)));
        }
        if ![VERSION, VERSION_UNPACKED].contains(&meta("version")?.as_str()) {
            return Err(bad(format!(
                "int8 model version {:?} is not supported (this build reads {VERSION_UNPACKED} and {VERSION})",
                meta("version")?
            )));
        }
        fn parse<T: serde::de::DeserializeOwned>(path: &Path, k: &str, s: &str) -> Result<T> {
            serde_json::from_str(s).map_err(|e| WqatError::format(path, format!("metadata `{k}`: {e}")))
        }
        let graph: Graph = parse(path, "graph", meta("graph")?)?;
        check_graph_bounds(&graph).map_err(bad)?;
        let nodes = graph.resolve()?;
        let qconfig = QConfig::from_metadata(tf, path)?;
        if qconfig.activation.signed || !(qconfig.weight.signed && qconfig.weight.symmetric) {
            return Err(bad("qconfig must have unsigned activations and signed symmetric weights".into()));
        }
        let normalization: Normalization = parse(path, "normalization", meta("normalization")?)?;
        normalization.validate()?;
        if normalization.channels() != graph.input[0] {
            return Err(bad(format!(
                "normalization has {} channels, model input {}",
                normalization.channels(),
                graph.input[0]
            )));
        }
        let class_names: Vec<String> = parse(path, "class_names", meta("class_names")?)?;
        if !class_names.is_empty() && class_names.len() != graph.num_classes {
            return Err(bad(format!("{} class names for {} classes", class_names.len(), graph.num_classes)));
        }
        let text: Option<crate::data::TextEncoding> =
            tf.metadata.get("text_encoding").map(|t| parse(path, "text_encoding", t)).transpose()?;
        super::model::check_text_encoding(text.as_ref(), &graph).map_err(|e| bad(e.to_string()))?;
        let mut used = BTreeSet::new();
        let mut get = |name: String, shape: &[usize]| -> Result<Option<&HostData>> {
            match tf.tensors.get(&name) {
                None => Ok(None),
                Some(t) => {
                    let len = match &t.data {
                        HostData::F32(v) => v.len(),
                        HostData::I32(v) => v.len(),
                        HostData::I8(v) => v.len(),
                        HostData::U8(v) => v.len(),
                    };
                    if t.shape != shape || len != shape.iter().product::<usize>() {
                        return Err(bad(format!("tensor {name} has shape {:?}, expected {shape:?}", t.shape)));
                    }
                    used.insert(name);
                    Ok(Some(&t.data))
                }
            }
        };
        // A finite f32 tensor of the given shape, or a format error naming it.
        macro_rules! f32_tensor {
            ($name:expr, $shape:expr) => {{
                let name: String = $name;
                match get(name.clone(), $shape)? {
                    Some(HostData::F32(v)) if v.iter().all(|x| x.is_finite()) => v.clone(),
                    _ => return Err(bad(format!("{name} missing, not f32 or not finite"))),
                }
            }};
        }
        // `layer`: whose activation settings (bit width) the quantizer follows.
        let act = |name: &str, layer: &str, d: Option<&HostData>| -> Result<Domain> {
            let bits = qconfig.activation_spec(layer).bits;
            match d {
                None => Ok(Domain::Float),
                Some(HostData::F32(v)) => {
                    let (z, b) = (v[2], v[3]);
                    if z.fract() != 0.0 || !(0.0..=255.0).contains(&z) || b != bits as f32 {
                        return Err(bad(format!(
                            "{name}: zero point {z} / bits {b} invalid (qconfig bits {bits} for {layer})"
                        )));
                    }
                    let q = ActQuant { scale: v[0], inv_scale: v[1], zero: z as i32, bits };
                    q.validate().map_err(|e| bad(format!("{name}: {e}")))?;
                    Ok(Domain::Codes(q))
                }
                Some(_) => Err(bad(format!("{name} must be f32"))),
            }
        };
        let input = act("input.act_quant", "input", get("input.act_quant".into(), &[4])?)?;
        let mut layers: Vec<Layer> = Vec::with_capacity(nodes.len());
        for (i, r) in nodes.iter().enumerate() {
            let n = r.node.name.clone();
            let dom = |j: usize| if j == INPUT { input } else { layers[j].out };
            let in_dom = dom(r.inputs[0]);
            let cout = r.out_channels();
            let layer = match &r.node.op {
                Op::Conv { act: a, .. } | Op::Linear { act: a, .. } => {
                    let out = act(&format!("{n}.act_quant"), &n, get(format!("{n}.act_quant"), &[4])?)?;
                    let wshape = weight_shape(&nodes, i);
                    let float_epilogue =
                        matches!(r.node.op, Op::Linear { .. }) && !tf.tensors.contains_key(&format!("{n}.requant"));
                    // Weight codes: `weight_packed` (u8, several codes per byte) for 2..=4-bit
                    // weights (version 2), else `weight_q` (i8, one per byte; version 1 files
                    // hold every bit width this way and are packed on load).
                    let ws = qconfig.weight_spec(&n);
                    let (wmin, wmax) = (ws.qmin(), ws.qmax());
                    let numel: usize = wshape.iter().product();
                    let weight = if tf.tensors.contains_key(&format!("{n}.weight_packed")) {
                        if field_bits(ws.bits) == 8 {
                            return Err(bad(format!(
                                "{n}.weight_packed for {}-bit weights (packing is for 2..=4)",
                                ws.bits
                            )));
                        }
                        let Some(HostData::U8(d)) = get(format!("{n}.weight_packed"), &[packed_len(ws.bits, numel)])?
                        else {
                            return Err(bad(format!("{n}.weight_packed must be u8")));
                        };
                        Some(
                            PackedWeights::from_packed(ws.bits, numel, d.clone(), wmin, wmax)
                                .map_err(|e| bad(format!("{n}.weight_packed: {e}")))?,
                        )
                    } else if let Some(d) = get(format!("{n}.weight_q"), &wshape)? {
                        let HostData::I8(w) = d else { return Err(bad(format!("{n}.weight_q must be i8"))) };
                        if w.iter().any(|&v| !(wmin..=wmax).contains(&(v as i32))) {
                            return Err(bad(format!("{n}.weight_q has codes outside [{wmin}, {wmax}]")));
                        }
                        Some(PackedWeights::pack(w, ws.bits).map_err(|e| bad(format!("{n}.weight_q: {e}")))?)
                    } else {
                        None
                    };
                    let (float_weight, weight) = if float_epilogue { (weight, None) } else { (None, weight) };
                    if let Some(weight) = float_weight {
                        let Domain::Codes(_) = in_dom else {
                            return Err(bad(format!("{n}: an integer layer needs a quantized input")));
                        };
                        let Some(HostData::F32(sw)) = get(format!("{n}.weight_scale"), &[cout])? else {
                            return Err(bad(format!("{n}.weight_scale missing or not f32")));
                        };
                        if sw.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                            return Err(bad(format!("{n}.weight_scale must be finite and > 0")));
                        }
                        let sw = sw.clone();
                        let Some(HostData::I32(bias)) = get(format!("{n}.bias_q"), &[cout])? else {
                            return Err(bad(format!("{n}.bias_q missing or not i32")));
                        };
                        Layer {
                            kind: LayerKind::IntFloat(IntFloatLayer { weight, weight_scale: sw, bias: bias.clone() }),
                            out,
                        }
                    } else if let Some(weight) = weight {
                        let (Domain::Codes(qi), Domain::Codes(qo)) = (in_dom, out) else {
                            return Err(bad(format!("{n}: an integer layer needs quantized input and output")));
                        };
                        let Some(HostData::F32(sw)) = get(format!("{n}.weight_scale"), &[cout])? else {
                            return Err(bad(format!("{n}.weight_scale missing or not f32")));
                        };
                        if sw.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                            return Err(bad(format!("{n}.weight_scale must be finite and > 0")));
                        }
                        let Some(HostData::I32(bias)) = get(format!("{n}.bias_q"), &[cout])? else {
                            return Err(bad(format!("{n}.bias_q missing or not i32")));
                        };
                        let Some(HostData::I32(rqv)) = get(format!("{n}.requant"), &[cout, 2])? else {
                            return Err(bad(format!("{n}.requant missing or not i32")));
                        };
                        let (act_min, act_max) = activation_range(activation(*a), qo.bits, qo.scale, qo.zero)?;
                        let requant = Requant {
                            multiplier: rqv.iter().step_by(2).copied().collect(),
                            shift: rqv.iter().skip(1).step_by(2).copied().collect(),
                            out_zero: qo.zero,
                            act_min,
                            act_max,
                        };
                        check_multipliers(&requant.multiplier).map_err(|m| bad(format!("{n}.requant: {m}")))?;
                        requant.validate(cout).map_err(|e| bad(format!("{n}.requant: {e}")))?;
                        let _ = qi;
                        let il = IntLayer { weight, weight_scale: sw.clone(), bias: bias.clone(), requant };
                        Layer { kind: LayerKind::Int(il), out }
                    } else {
                        let Some(HostData::F32(w)) = get(format!("{n}.weight"), &wshape)? else {
                            return Err(bad(format!("{n}: missing f32 weight or int8 weight_q")));
                        };
                        let Some(HostData::F32(b)) = get(format!("{n}.bias"), &[cout])? else {
                            return Err(bad(format!("{n}.bias missing or not f32")));
                        };
                        if w.iter().chain(b.iter()).any(|v| !v.is_finite()) {
                            return Err(bad(format!("{n}: non-finite f32 weights")));
                        }
                        Layer { kind: LayerKind::Float(FloatLayer { weight: w.clone(), bias: b.clone() }), out }
                    }
                }
                Op::MaxPool { .. } => Layer { kind: LayerKind::MaxPool, out: in_dom },
                Op::Flatten => Layer { kind: LayerKind::Flatten, out: in_dom },
                Op::Patchify { .. } => Layer { kind: LayerKind::Patchify, out: in_dom },
                Op::Embedding { vocab, dim, .. } => {
                    let table = f32_tensor!(weight_name(&n), &[*vocab, *dim]);
                    Layer {
                        kind: LayerKind::Seq(SeqLayer::Embedding { table }),
                        out: act(&format!("{n}.act_quant"), &n, get(format!("{n}.act_quant"), &[4])?)?,
                    }
                }
                Op::ClsPos { cls } => {
                    let [t, d, _] = r.out_shape;
                    let cls = if *cls { Some(f32_tensor!(cls_token_name(&n), &[d])) } else { None };
                    let pos = f32_tensor!(pos_embed_name(&n), &[t, d]);
                    Layer {
                        kind: LayerKind::Seq(SeqLayer::ClsPos { cls, pos }),
                        out: act(&format!("{n}.act_quant"), &n, get(format!("{n}.act_quant"), &[4])?)?,
                    }
                }
                Op::LayerNorm { .. } => {
                    let d = r.out_shape[1];
                    let gamma = f32_tensor!(weight_name(&n), &[d]);
                    let beta = f32_tensor!(bias_name(&n), &[d]);
                    Layer {
                        kind: LayerKind::Seq(SeqLayer::LayerNorm { gamma, beta }),
                        out: act(&format!("{n}.act_quant"), &n, get(format!("{n}.act_quant"), &[4])?)?,
                    }
                }
                Op::Attention { quantize_matmul, .. } => {
                    let probs = match act(&format!("{n}.probs_quant"), &n, get(format!("{n}.probs_quant"), &[4])?)? {
                        Domain::Codes(q) => Some(q),
                        Domain::Float if *quantize_matmul => {
                            return Err(bad(format!(
                                "{n}.probs_quant missing (the attention quantizes its matmul inputs)"
                            )))
                        }
                        Domain::Float => None,
                    };
                    Layer {
                        kind: LayerKind::Seq(SeqLayer::Attention { probs }),
                        out: act(&format!("{n}.act_quant"), &n, get(format!("{n}.act_quant"), &[4])?)?,
                    }
                }
                Op::TokenPool { .. } => Layer {
                    kind: LayerKind::Seq(SeqLayer::TokenPool),
                    out: act(&format!("{n}.act_quant"), &n, get(format!("{n}.act_quant"), &[4])?)?,
                },
                Op::AvgPool { .. } | Op::GlobalAvgPool => {
                    Layer { kind: LayerKind::AvgPool(in_dom.quant().map(|q| avg_requant(&q))), out: in_dom }
                }
                Op::Add { act: a } => {
                    let out = act(&format!("{n}.act_quant"), &n, get(format!("{n}.act_quant"), &[4])?)?;
                    match get(format!("{n}.add"), &[11])? {
                        None => Layer { kind: LayerKind::Add(None), out },
                        Some(HostData::I32(v)) => {
                            let (Domain::Codes(qa), Domain::Codes(qb), Domain::Codes(qo)) =
                                (in_dom, dom(r.inputs[1]), out)
                            else {
                                return Err(bad(format!("{n}: an integer add needs quantized inputs and output")));
                            };
                            let (act_min, act_max) = activation_range(activation(*a), qo.bits, qo.scale, qo.zero)?;
                            let cfg = AddConfig {
                                a_zero: v[0],
                                b_zero: v[1],
                                out_zero: v[2],
                                a_mult: (v[3], v[4]),
                                b_mult: (v[5], v[6]),
                                out_mult: (v[7], v[8]),
                                act_min: v[9],
                                act_max: v[10],
                            };
                            let ok = (cfg.a_zero, cfg.b_zero, cfg.out_zero) == (qa.zero, qb.zero, qo.zero)
                                && (cfg.act_min, cfg.act_max) == (act_min, act_max)
                                && [cfg.a_mult, cfg.b_mult, cfg.out_mult]
                                    .iter()
                                    .all(|&(m, s)| check_multipliers(&[m]).is_ok() && (-31..=30).contains(&s));
                            if !ok {
                                return Err(bad(format!("{n}.add: zero points, multipliers or clamp out of range")));
                            }
                            Layer { kind: LayerKind::Add(Some(cfg)), out }
                        }
                        Some(_) => return Err(bad(format!("{n}.add must be i32"))),
                    }
                }
            };
            layers.push(layer);
        }
        if let Some(extra) = tf.tensors.keys().find(|k| !used.contains(*k)) {
            return Err(bad(format!("unexpected tensor {extra}")));
        }
        Ok(Int8Model { graph, qconfig, normalization, class_names, text, input, layers, nodes })
    }
}

fn check_multipliers(m: &[i32]) -> std::result::Result<(), String> {
    if m.iter().any(|&m| m != 0 && m < (1 << 30)) {
        return Err("multiplier outside {0} or [2^30, 2^31)".into());
    }
    Ok(())
}

/// Bounds every size in a graph read from a file so shape arithmetic cannot overflow.
fn check_graph_bounds(g: &Graph) -> std::result::Result<(), String> {
    let small =
        |v: usize, max: usize, what: &str| if v > max { Err(format!("{what} {v} is too large")) } else { Ok(()) };
    if g.input.contains(&0) || g.num_classes == 0 {
        return Err("input dimensions and class count must be positive".into());
    }
    small(g.input[0], 1 << 16, "input channels")?;
    small(g.input[1], 1 << 14, "input height")?;
    small(g.input[2], 1 << 14, "input width")?;
    small(g.num_classes, 1 << 20, "class count")?;
    small(g.nodes.len(), 1 << 16, "node count")?;
    for n in &g.nodes {
        match &n.op {
            Op::Conv { out_channels, kernel, stride, padding, dilation, groups, .. } => {
                small(*out_channels, 1 << 16, "channels")?;
                small(*kernel, 1 << 8, "kernel")?;
                for v in [stride, padding, dilation, groups] {
                    small(*v, 1 << 16, "conv parameter")?;
                }
            }
            Op::Linear { out_features, .. } => small(*out_features, 1 << 20, "features")?,
            Op::MaxPool { kernel, stride, padding } | Op::AvgPool { kernel, stride, padding } => {
                for v in [kernel, stride, padding] {
                    small(*v, 1 << 14, "pool parameter")?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

mod erased {
    use crate::error::{Result, WqatError};
    /// Serializes any serde value to a JSON string.
    pub trait Json {
        fn json(&self) -> Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Result<String> {
            serde_json::to_string(self).map_err(|e| WqatError::invalid(format!("json: {e}")))
        }
    }
}
