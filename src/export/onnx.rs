//! Translation of an [`Int8Model`] into an ONNX QDQ graph (opset [`OPSET`]).
//!
//! Every u8 activation tensor of the integer model is a `QuantizeLinear` output in the graph
//! (uint8, the model's scale and zero point); each consumer reads it through its own
//! `DequantizeLinear`, runs the float op, and quantizes its output again where the integer
//! model does:
//! * conv / linear (`Int`): `DQ(x) -> Conv | Gemm | MatMul + Add` with `DQ(int8 weight,
//!   per-axis scales s_w[c])` and `DQ(int32 bias, scales s_in * s_w[c])`, the activation in
//!   float (Relu; ReLU6 as `Clip(0, 6)`), then `QuantizeLinear(s_out, z_out)`;
//! * a code range narrower than `[0, 255]` (activations under 8 bits, ReLU6, ReLU with a
//!   zero point above 0) is a `Clip` on the uint8 codes between `QuantizeLinear` and the
//!   `DequantizeLinear`s (the integer model's clamp, exactly);
//! * max pool: `DQ -> MaxPool -> Q` (same scale: exact); average pools on codes run on the
//!   code offsets, `DQ(scale 1, z) -> AveragePool -> Round -> Q(scale 1, z)`, so a window
//!   sum that is an exact tie rounds half to even as the integer pool does (on real values
//!   the f32 sum would decide it; onnxruntime's fused QLinearAveragePool rounds ties away
//!   from zero, which the `Round` between pool and `Q` keeps it from fusing);
//! * residual add: `DQ(a) + DQ(b) -> Q(s_out)` (the integer model uses TFLite's fixed-point
//!   add: they differ only within about 2^-20 of a tie);
//! * transformer ops in float between the QDQ pairs: `Gather` (token embedding), CLS token
//!   (`Expand`/`Concat`) and positions (`Add`), `LayerNormalization`, attention (`MatMul`,
//!   scale, key padding mask by `Where`, `Softmax`, optional QDQ of the probabilities,
//!   `MatMul`), GELU in its erf form (`Div -> Erf -> Add -> Mul -> Mul`, the pattern
//!   onnxruntime fuses), token pool (`Gather` of token 0 or a masked mean); a linear whose
//!   output stays float (`IntFloat`) is the same QDQ GEMM without the output `Q`.
//! * layers kept fp32 use their effective (BN-folded, fake-quantized) f32 weights.
//!
//! Inputs: images arrive as raw pixels, float32 `[batch, C, H, W]` in `[0, max_value]`
//! (`pixels`), normalized by the first nodes (`Div max_value`, `Sub mean`, `Div std`: the
//! f32 operations of [`crate::data::Normalization::apply`]) and quantized (the
//! `QuantizeLinear` scale may sit a few ulps off the model's so that every integral pixel
//! value gets wqat's code, see [`input_q_scale`]); text models take `tokens`, int64
//! `[batch, max_len]` ids of wqat's byte encoding (CLS 256, UTF-8 bytes, PAD 257). The
//! output `logits` is float32 `[batch, classes]` (dequantized codes when the logits are
//! quantized). The metadata (`wqat.*` keys) repeats all of it as JSON.

use super::builder::{Attr, GraphBuilder};
use super::onnx_proto::{data_type, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::error::{Result, WqatError};
use crate::infer::{ActQuant, Domain, Int8Model, LayerKind, SeqLayer};
use crate::model::graph::{Act, Op, ResolvedNode, TokenPoolMode, INPUT};
use std::collections::HashMap;

/// The ONNX opset the graph imports: 17 is the first with `LayerNormalization`; per-axis
/// `QuantizeLinear` / `DequantizeLinear` date from 13. Sub-8-bit codes are uint8 with a
/// `Clip` rather than opset 21's uint4, which few runtimes support.
pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17.
pub const IR_VERSION: i64 = 8;
/// Name of the image input.
pub const PIXELS: &str = "pixels";
/// Name of the token-id input of text models.
pub const TOKENS: &str = "tokens";
/// Name of the output.
pub const LOGITS: &str = "logits";

/// A node's output in the graph: uint8 codes, float values or int64 token ids; `dims` are
/// the dimensions after the batch.
#[derive(Clone, Debug)]
enum Val {
    Codes { name: String, q: ActQuant, dims: Vec<i64> },
    Float { name: String, dims: Vec<i64> },
    Tokens { name: String, dims: Vec<i64> },
}

impl Val {
    fn dims(&self) -> &[i64] {
        match self {
            Val::Codes { dims, .. } | Val::Float { dims, .. } | Val::Tokens { dims, .. } => dims,
        }
    }
    fn name(&self) -> &str {
        match self {
            Val::Codes { name, .. } | Val::Float { name, .. } | Val::Tokens { name, .. } => name,
        }
    }
    fn with(&self, name: String, dims: Vec<i64>) -> Val {
        match self {
            Val::Codes { q, .. } => Val::Codes { name, q: *q, dims },
            Val::Float { .. } => Val::Float { name, dims },
            Val::Tokens { .. } => Val::Tokens { name, dims },
        }
    }
}

/// The key padding mask of a text model, built once from the token ids.
struct Mask {
    /// bool `[batch, 1, 1, T]`, true at padding.
    pad4: String,
    /// float `[batch, 1, 1, T]`, 0 at padding, else 1.
    keep4: String,
    /// float `[batch, T, 1]`.
    keep3: String,
    /// float `[batch, 1]`: tokens that are not padding.
    count: String,
}

struct Exporter<'a> {
    b: GraphBuilder,
    m: &'a Int8Model,
    /// (scale bits, zero) -> (scale, zero point) initializers.
    qparams: HashMap<(u32, i32), (String, String)>,
    consts: HashMap<String, String>,
    mask: Option<Mask>,
}

fn dims_i64(d: &[usize]) -> Vec<i64> {
    d.iter().map(|&v| v as i64).collect()
}

/// Per-sample dims of a wqat shape: sequences `[T, D]`, vectors `[F]`, images `[C, H, W]`.
fn node_dims(shape: [usize; 3], seq: bool) -> Vec<i64> {
    if seq {
        dims_i64(&shape[..2])
    } else if shape[1] == 1 && shape[2] == 1 {
        vec![shape[0] as i64]
    } else {
        dims_i64(&shape)
    }
}

fn act_lower_bound(act: Act, zero: i32) -> i32 {
    match act {
        Act::Relu | Act::Relu6 => zero,
        Act::None | Act::Gelu => 0,
    }
}

impl<'a> Exporter<'a> {
    fn qp(&mut self, scale: f32, zero: i32) -> (String, String) {
        if let Some(p) = self.qparams.get(&(scale.to_bits(), zero)) {
            return p.clone();
        }
        let s = self.b.init_f32("qscale", &[], &[scale]);
        let z = self.b.init_u8("qzero", &[], &[zero as u8]);
        self.qparams.insert((scale.to_bits(), zero), (s.clone(), z.clone()));
        (s, z)
    }

    /// A shared scalar or small constant (by a key that names its value).
    fn const_f32(&mut self, key: &str, dims: &[i64], v: &[f32]) -> String {
        if let Some(n) = self.consts.get(key) {
            return n.clone();
        }
        let n = self.b.init_f32(key, dims, v);
        self.consts.insert(key.to_string(), n.clone());
        n
    }
    fn const_i64(&mut self, key: &str, v: &[i64]) -> String {
        if let Some(n) = self.consts.get(key) {
            return n.clone();
        }
        let n = self.b.init_i64(key, &[v.len() as i64], v);
        self.consts.insert(key.to_string(), n.clone());
        n
    }
    fn scalar_i64(&mut self, key: &str, v: i64) -> String {
        if let Some(n) = self.consts.get(key) {
            return n.clone();
        }
        let n = self.b.init_i64(key, &[], &[v]);
        self.consts.insert(key.to_string(), n.clone());
        n
    }
    fn const_u8(&mut self, v: u8) -> String {
        let key = format!("u8_{v}");
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let n = self.b.init_u8(&key, &[], &[v]);
        self.consts.insert(key, n.clone());
        n
    }

    /// The float value of `v` (a `DequantizeLinear` per use when it is codes).
    fn float(&mut self, v: &Val) -> Result<String> {
        match v {
            Val::Float { name, .. } => Ok(name.clone()),
            Val::Codes { name, q, .. } => {
                let (s, z) = self.qp(q.scale, q.zero);
                Ok(self.b.node("DequantizeLinear", &format!("{name}.dq"), &[name, &s, &z], vec![]))
            }
            Val::Tokens { name, .. } => {
                Err(WqatError::invalid(format!("onnx export: token ids {name} used as values")))
            }
        }
    }

    /// The float value of `v` for a layer kept fp32: codes are dequantized as `(Cast(q) - z)
    /// * s` (the same f32 values as `DequantizeLinear`), because onnxruntime's
    /// WeightBiasQuantization would quantize the f32 weights of a conv / GEMM that sits
    /// between a `DequantizeLinear` and a `QuantizeLinear`.
    fn float_unfused(&mut self, v: &Val) -> Result<String> {
        match v {
            Val::Codes { name, q, .. } => {
                let c = self.b.node(
                    "Cast",
                    &format!("{name}.f32"),
                    &[name],
                    vec![("to", Attr::Int(data_type::FLOAT as i64))],
                );
                let z = self.const_f32(&format!("f32_{}", q.zero), &[], &[q.zero as f32]);
                let s = self.const_f32(&format!("f32_bits_{:08x}", q.scale.to_bits()), &[], &[q.scale]);
                let d = self.b.node("Sub", &format!("{name}.offsets"), &[&c, &z], vec![]);
                Ok(self.b.node("Mul", &format!("{name}.values"), &[&d, &s], vec![]))
            }
            _ => self.float(v),
        }
    }

    /// The input of conv / linear node `i` as float ([`Exporter::float_unfused`] for fp32 layers).
    fn layer_input(&mut self, i: usize, v: &Val) -> Result<String> {
        if matches!(self.m.layers[i].kind, LayerKind::Float(_)) {
            self.float_unfused(v)
        } else {
            self.float(v)
        }
    }

    /// `QuantizeLinear(x, s, z)` with the codes clamped to `[lo, hi]` (a uint8 `Clip` when
    /// that is narrower than what the quantizer and the preceding float activation give).
    fn quantize(&mut self, x: &str, q: ActQuant, range: (i32, i32), implied_lo: i32, out: &str) -> String {
        self.quantize_scaled(x, q, q.scale, range, implied_lo, out)
    }

    /// [`Exporter::quantize`] with `q_scale` as the `QuantizeLinear` scale (the input's, see
    /// [`input_q_scale`]); the `DequantizeLinear`s keep `q.scale`.
    fn quantize_scaled(
        &mut self,
        x: &str,
        q: ActQuant,
        q_scale: f32,
        range: (i32, i32),
        implied_lo: i32,
        out: &str,
    ) -> String {
        let (s, z) = self.qp(q_scale, q.zero);
        let codes = self.b.node("QuantizeLinear", &format!("{out}.q"), &[x, &s, &z], vec![]);
        let (lo, hi) = range;
        if lo > implied_lo || hi < 255 {
            let (l, h) = (self.const_u8(lo as u8), self.const_u8(hi as u8));
            return self.b.node("Clip", &format!("{out}.codes"), &[&codes, &l, &h], vec![]);
        }
        codes
    }

    /// The output of a node computed in float (`y`): quantized when the layer's output is codes.
    fn finish_float(&mut self, y: String, dims: Vec<i64>, out: Domain, lower: i32, base: &str) -> Val {
        match out {
            Domain::Codes(q) => {
                let name = self.quantize(&y, q, (0, q.qmax()), lower, base);
                Val::Codes { name, q, dims }
            }
            Domain::Float => Val::Float { name: y, dims },
        }
    }

    /// `v` with per-sample dims `dims` (a `Reshape` when they differ).
    fn reshape(&mut self, v: &Val, dims: &[i64]) -> Val {
        if v.dims() == dims {
            return v.clone();
        }
        let mut shape = vec![-1i64];
        shape.extend_from_slice(dims);
        let key = format!("shape{shape:?}").replace([' ', '[', ']', ','], "_");
        let s = self.const_i64(&key, &shape);
        let name = self.b.node("Reshape", &format!("{}.reshape", v.name()), &[v.name(), &s], vec![]);
        v.with(name, dims.to_vec())
    }

    fn activation(&mut self, y: String, act: Act, base: &str) -> String {
        match act {
            Act::None => y,
            Act::Relu => self.b.node("Relu", &format!("{base}.relu"), &[&y], vec![]),
            Act::Relu6 => {
                let (lo, hi) = (self.const_f32("f32_0", &[], &[0.0]), self.const_f32("f32_6", &[], &[6.0]));
                self.b.node("Clip", &format!("{base}.relu6"), &[&y, &lo, &hi], vec![])
            }
            Act::Gelu => {
                // x * 0.5 * (1 + erf(x / sqrt 2)) in the node order onnxruntime fuses into Gelu.
                let r2 = self.const_f32("f32_sqrt2", &[], &[std::f32::consts::SQRT_2]);
                let one = self.const_f32("f32_1", &[], &[1.0]);
                let half = self.const_f32("f32_0.5", &[], &[0.5]);
                let d = self.b.node("Div", &format!("{base}.gelu_div"), &[&y, &r2], vec![]);
                let e = self.b.node("Erf", &format!("{base}.gelu_erf"), &[&d], vec![]);
                let a = self.b.node("Add", &format!("{base}.gelu_add"), &[&e, &one], vec![]);
                let m = self.b.node("Mul", &format!("{base}.gelu_mul"), &[&y, &a], vec![]);
                self.b.node("Mul", &format!("{base}.gelu"), &[&m, &half], vec![])
            }
        }
    }

    /// `DequantizeLinear` of int8 weights with per-axis scales (zero points 0).
    fn weight_dq(&mut self, base: &str, w: &[i8], dims: &[i64], scales: &[f32], axis: i64) -> String {
        let wq = self.b.init_i8(&format!("{base}.weight_q"), dims, w);
        let s = self.b.init_f32(&format!("{base}.weight_scale"), &[scales.len() as i64], scales);
        let z = self.b.init_i8(&format!("{base}.weight_zero"), &[scales.len() as i64], &vec![0; scales.len()]);
        self.b.node("DequantizeLinear", &format!("{base}.weight"), &[&wq, &s, &z], vec![("axis", Attr::Int(axis))])
    }

    /// `DequantizeLinear` of the int32 bias with scales `s_in * s_w[c]` (the f32 product the
    /// integer model's f32 epilogue uses).
    fn bias_dq(&mut self, base: &str, bias: &[i32], s_in: f32, sw: &[f32]) -> String {
        let n = bias.len() as i64;
        let bq = self.b.init_i32(&format!("{base}.bias_q"), &[n], bias);
        let scales: Vec<f32> = sw.iter().map(|&w| s_in * w).collect();
        let s = self.b.init_f32(&format!("{base}.bias_scale"), &[n], &scales);
        let z = self.b.init_i32(&format!("{base}.bias_zero"), &[n], &vec![0; bias.len()]);
        self.b.node("DequantizeLinear", &format!("{base}.bias"), &[&bq, &s, &z], vec![("axis", Attr::Int(0))])
    }

    /// The weights of a conv / linear as graph tensors: `(weight, bias)` float tensors, either
    /// dequantized int8 / int32 or plain f32. `transpose` stores a linear weight `[in, out]`.
    fn layer_weights(&mut self, i: usize, base: &str, wdims: &[i64], transpose: bool) -> Result<(String, String)> {
        let r = &self.m.nodes()[i];
        let cout = wdims[0] as usize;
        let inner = wdims[1..].iter().product::<i64>() as usize;
        let t = |w: &[i8]| -> Vec<i8> { (0..w.len()).map(|j| w[(j % cout) * inner + j / cout]).collect() };
        let tf = |w: &[f32]| -> Vec<f32> { (0..w.len()).map(|j| w[(j % cout) * inner + j / cout]).collect() };
        let (stored_dims, axis) = if transpose { (vec![inner as i64, cout as i64], 1) } else { (wdims.to_vec(), 0) };
        let s_in = || -> Result<f32> {
            self.m
                .domain_of(r.inputs[0])
                .quant()
                .map(|q| q.scale)
                .ok_or_else(|| WqatError::invalid(format!("node {}: integer layer fed with f32", r.node.name)))
        };
        match &self.m.layers[i].kind {
            LayerKind::Int(crate::infer::IntLayer { weight, weight_scale, bias, .. })
            | LayerKind::IntFloat(crate::infer::IntFloatLayer { weight, weight_scale, bias }) => {
                let s = s_in()?;
                // ONNX gets int8 initializers (one code per byte) at every weight bit width.
                let codes = weight.codes();
                let w = if transpose { t(&codes) } else { codes.into_owned() };
                Ok((
                    self.weight_dq(base, &w, &stored_dims, weight_scale, axis),
                    self.bias_dq(base, bias, s, weight_scale),
                ))
            }
            LayerKind::Float(l) => {
                let w = if transpose { tf(&l.weight) } else { l.weight.clone() };
                let wn = self.b.init_f32(&format!("{base}.weight"), &stored_dims, &w);
                let bn = self.b.init_f32(&format!("{base}.bias"), &[l.bias.len() as i64], &l.bias);
                Ok((wn, bn))
            }
            _ => Err(WqatError::invalid(format!("node {}: not a conv / linear layer", r.node.name))),
        }
    }

    fn key_mask(&mut self, tokens: &str, pad: usize) -> &Mask {
        if self.mask.is_none() {
            let p = self.scalar_i64("pad_id", pad as i64);
            let padb = self.b.node("Equal", "key_padding", &[tokens, &p], vec![]);
            let ax12 = self.const_i64("axes_1_2", &[1, 2]);
            let ax2 = self.const_i64("axes_2", &[2]);
            let ax1 = self.const_i64("axes_1", &[1]);
            let pad4 = self.b.node("Unsqueeze", "key_padding4", &[&padb, &ax12], vec![]);
            let notp = self.b.node("Not", "key_keep_bool", &[&padb], vec![]);
            let keep = self.b.node("Cast", "key_keep", &[&notp], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
            let keep4 = self.b.node("Unsqueeze", "key_keep4", &[&keep, &ax12], vec![]);
            let keep3 = self.b.node("Unsqueeze", "key_keep3", &[&keep, &ax2], vec![]);
            let count = self.b.node("ReduceSum", "key_count", &[&keep, &ax1], vec![("keepdims", Attr::Int(1))]);
            self.mask = Some(Mask { pad4, keep4, keep3, count });
        }
        self.mask.as_ref().expect("mask just built")
    }

    /// The token-id tensor and the padding id, when the model masks padding keys.
    fn padding(&self, input: &Val) -> Option<(String, usize)> {
        match (&self.m.nodes()[0].node.op, input) {
            (Op::Embedding { padding_idx: Some(p), .. }, Val::Tokens { name, .. }) => Some((name.clone(), *p)),
            _ => None,
        }
    }

    fn node(&mut self, i: usize, vals: &[Val], input: &Val) -> Result<Val> {
        let m = self.m;
        let r: &ResolvedNode = &m.nodes()[i];
        let layer = &m.layers[i];
        let base = r.node.name.clone();
        let get = |j: usize| -> Val {
            if j == INPUT {
                input.clone()
            } else {
                vals[j].clone()
            }
        };
        let x = get(r.inputs[0]);
        let out_dims = node_dims(r.out_shape, r.out_seq);
        let bad = || WqatError::invalid(format!("onnx export: node {} does not match its converted layer", base));
        let v = match (&layer.kind, &r.node.op) {
            (
                LayerKind::Int(_) | LayerKind::IntFloat(_) | LayerKind::Float(_),
                Op::Conv { kernel, stride, padding, dilation, groups, act, .. },
            ) => {
                let [c, h, w] = r.in_shapes[0];
                let x = self.reshape(&x, &dims_i64(&[c, h, w]));
                let xf = self.layer_input(i, &x)?;
                let co = r.out_shape[0];
                let wdims = [co as i64, (c / groups) as i64, *kernel as i64, *kernel as i64];
                let (wn, bn) = self.layer_weights(i, &base, &wdims, false)?;
                let (k, s, p, d) = (*kernel as i64, *stride as i64, *padding as i64, *dilation as i64);
                let y = self.b.node(
                    "Conv",
                    &format!("{base}.conv"),
                    &[&xf, &wn, &bn],
                    vec![
                        ("kernel_shape", Attr::Ints(vec![k, k])),
                        ("strides", Attr::Ints(vec![s, s])),
                        ("pads", Attr::Ints(vec![p, p, p, p])),
                        ("dilations", Attr::Ints(vec![d, d])),
                        ("group", Attr::Int(*groups as i64)),
                    ],
                );
                let y = self.activation(y, *act, &base);
                self.layer_output(i, y, out_dims, *act, &base)?
            }
            (
                LayerKind::Int(_) | LayerKind::IntFloat(_) | LayerKind::Float(_),
                Op::Linear { out_features, act, .. },
            ) => {
                let nout = *out_features as i64;
                let kin = r.in_features() as i64;
                let y = if r.in_seq[0] {
                    let t = r.in_shapes[0][0] as i64;
                    let x = self.reshape(&x, &[t, kin]);
                    let xf = self.layer_input(i, &x)?;
                    let (wn, bn) = self.layer_weights(i, &base, &[nout, kin], true)?;
                    let mm = self.b.node("MatMul", &format!("{base}.matmul"), &[&xf, &wn], vec![]);
                    self.b.node("Add", &format!("{base}.linear"), &[&mm, &bn], vec![])
                } else {
                    let x = self.reshape(&x, &[kin]);
                    let xf = self.layer_input(i, &x)?;
                    let (wn, bn) = self.layer_weights(i, &base, &[nout, kin], false)?;
                    self.b.node("Gemm", &format!("{base}.gemm"), &[&xf, &wn, &bn], vec![("transB", Attr::Int(1))])
                };
                let y = self.activation(y, *act, &base);
                self.layer_output(i, y, out_dims, *act, &base)?
            }
            (LayerKind::MaxPool, Op::MaxPool { kernel, stride, padding }) => {
                let s = if *stride == 0 { *kernel } else { *stride } as i64;
                let (k, p) = (*kernel as i64, *padding as i64);
                let x = self.reshape(&x, &dims_i64(&r.in_shapes[0]));
                let xf = self.float(&x)?;
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(vec![k, k])),
                    ("strides", Attr::Ints(vec![s, s])),
                    ("pads", Attr::Ints(vec![p, p, p, p])),
                ];
                let y = self.b.node("MaxPool", &format!("{base}.maxpool"), &[&xf], attrs);
                // Max of dequantized codes, requantized with the same scale: the same codes.
                self.finish_float(y, out_dims, layer.out, 0, &base)
            }
            (LayerKind::AvgPool(rq), op @ (Op::AvgPool { .. } | Op::GlobalAvgPool)) => {
                let x = self.reshape(&x, &dims_i64(&r.in_shapes[0]));
                // On codes: the pool of the code offsets (scale 1), rounded half to even.
                let (xin, unit) = match (&x, rq) {
                    (Val::Codes { name, q, .. }, Some(_)) => {
                        let (s1, z) = self.qp(1.0, q.zero);
                        let off = self.b.node("DequantizeLinear", &format!("{name}.offsets"), &[name, &s1, &z], vec![]);
                        (off, Some(*q))
                    }
                    _ => (self.float(&x)?, None),
                };
                let y = match op {
                    Op::AvgPool { kernel, stride, padding } => {
                        let s = if *stride == 0 { *kernel } else { *stride } as i64;
                        let (k, p) = (*kernel as i64, *padding as i64);
                        let attrs = vec![
                            ("kernel_shape", Attr::Ints(vec![k, k])),
                            ("strides", Attr::Ints(vec![s, s])),
                            ("pads", Attr::Ints(vec![p, p, p, p])),
                            ("count_include_pad", Attr::Int(1)),
                        ];
                        self.b.node("AveragePool", &format!("{base}.avgpool"), &[&xin], attrs)
                    }
                    _ => self.b.node("GlobalAveragePool", &format!("{base}.gap"), &[&xin], vec![]),
                };
                let pooled_dims = dims_i64(&r.out_shape);
                match unit {
                    Some(q) => {
                        // `Round` (half to even) before the exact scale-1 `Q`: it also keeps
                        // onnxruntime from fusing DQ -> pool -> Q into QLinearAveragePool,
                        // which rounds ties away from zero.
                        let (s1, z) = self.qp(1.0, q.zero);
                        let y = self.b.node("Round", &format!("{base}.round"), &[&y], vec![]);
                        let name = self.b.node("QuantizeLinear", &format!("{base}.q"), &[&y, &s1, &z], vec![]);
                        Val::Codes { name, q, dims: pooled_dims }
                    }
                    None => self.finish_float(y, pooled_dims, layer.out, 0, &base),
                }
            }
            (LayerKind::Add(cfg), Op::Add { act }) => {
                let bv = get(r.inputs[1]);
                let bv = self.reshape(&bv, x.dims());
                let (af, bf) = (self.float(&x)?, self.float(&bv)?);
                let y = self.b.node("Add", &format!("{base}.add"), &[&af, &bf], vec![]);
                let y = self.activation(y, *act, &base);
                let dims = x.dims().to_vec();
                match (cfg, layer.out) {
                    (Some(cfg), Domain::Codes(q)) => {
                        let lower = act_lower_bound(*act, q.zero);
                        let name = self.quantize(&y, q, (cfg.act_min, cfg.act_max), lower, &base);
                        Val::Codes { name, q, dims }
                    }
                    _ => self.finish_float(y, dims, layer.out, act_lower_bound(*act, 0), &base),
                }
            }
            (LayerKind::Flatten, Op::Flatten) => {
                let n = self.b.node("Flatten", &format!("{base}.flatten"), &[x.name()], vec![("axis", Attr::Int(1))]);
                x.with(n, out_dims)
            }
            (LayerKind::Patchify, Op::Patchify { patch }) => {
                let [c, h, w] = r.in_shapes[0];
                let p = *patch;
                let x = self.reshape(&x, &dims_i64(&[c, h, w]));
                let split = self.const_i64(
                    &format!("shape_patch_{c}_{h}_{w}_{p}"),
                    &[-1, c as i64, (h / p) as i64, p as i64, (w / p) as i64, p as i64],
                );
                let a = self.b.node("Reshape", &format!("{base}.split"), &[x.name(), &split], vec![]);
                let t = self.b.node(
                    "Transpose",
                    &format!("{base}.perm"),
                    &[&a],
                    vec![("perm", Attr::Ints(vec![0, 2, 4, 1, 3, 5]))],
                );
                let (tk, f) = ((h / p * (w / p)) as i64, (c * p * p) as i64);
                let seq = self.const_i64(&format!("shape_seq_{tk}_{f}"), &[-1, tk, f]);
                let y = self.b.node("Reshape", &format!("{base}.patches"), &[&t, &seq], vec![]);
                x.with(y, out_dims)
            }
            (LayerKind::Seq(sl), op) => self.seq(i, sl, op, &x, input, out_dims)?,
            _ => return Err(bad()),
        };
        Ok(v)
    }

    /// The output of a conv / linear computed in float as `y` (activation applied).
    fn layer_output(&mut self, i: usize, y: String, dims: Vec<i64>, act: Act, base: &str) -> Result<Val> {
        let layer = &self.m.layers[i];
        Ok(match (&layer.kind, layer.out) {
            (LayerKind::Int(l), Domain::Codes(q)) => {
                let name =
                    self.quantize(&y, q, (l.requant.act_min, l.requant.act_max), act_lower_bound(act, q.zero), base);
                Val::Codes { name, q, dims }
            }
            (_, out) => {
                let lower = match out {
                    Domain::Codes(q) => act_lower_bound(act, q.zero),
                    Domain::Float => 0,
                };
                self.finish_float(y, dims, out, lower, base)
            }
        })
    }

    fn seq(&mut self, i: usize, sl: &SeqLayer, op: &Op, x: &Val, input: &Val, out_dims: Vec<i64>) -> Result<Val> {
        let m = self.m;
        let r = &m.nodes()[i];
        let out = m.layers[i].out;
        let base = r.node.name.clone();
        let y = match (sl, op) {
            (SeqLayer::Embedding { table }, Op::Embedding { vocab, dim, .. }) => {
                let Val::Tokens { name, .. } = x else {
                    return Err(WqatError::invalid(format!("onnx export: embedding {base} must read the token ids")));
                };
                let t = self.b.init_f32(&format!("{base}.weight"), &[*vocab as i64, *dim as i64], table);
                self.b.node("Gather", &format!("{base}.gather"), &[&t, name], vec![("axis", Attr::Int(0))])
            }
            (SeqLayer::ClsPos { cls, pos }, Op::ClsPos { .. }) => {
                let [t, d, _] = r.in_shapes[0];
                let x = self.reshape(x, &[t as i64, d as i64]);
                let xf = self.float(&x)?;
                let tp = r.out_shape[0] as i64;
                let xc = match cls {
                    Some(c) => {
                        let cn = self.b.init_f32(&format!("{base}.cls_token"), &[1, 1, d as i64], c);
                        let n = self.b.node(
                            "Shape",
                            &format!("{base}.batch"),
                            &[&xf],
                            vec![("start", Attr::Int(0)), ("end", Attr::Int(1))],
                        );
                        let rest = self.const_i64(&format!("dims_1_{d}"), &[1, d as i64]);
                        let shape = self.b.node(
                            "Concat",
                            &format!("{base}.cls_shape"),
                            &[&n, &rest],
                            vec![("axis", Attr::Int(0))],
                        );
                        let e = self.b.node("Expand", &format!("{base}.cls"), &[&cn, &shape], vec![]);
                        self.b.node("Concat", &format!("{base}.with_cls"), &[&e, &xf], vec![("axis", Attr::Int(1))])
                    }
                    None => xf,
                };
                let pn = self.b.init_f32(&format!("{base}.pos_embed"), &[tp, d as i64], pos);
                self.b.node("Add", &format!("{base}.pos"), &[&xc, &pn], vec![])
            }
            (SeqLayer::LayerNorm { gamma, beta }, Op::LayerNorm { eps }) => {
                let d = gamma.len() as i64;
                let x = self.reshape(x, &[r.in_shapes[0][0] as i64, d]);
                let xf = self.float(&x)?;
                let g = self.b.init_f32(&format!("{base}.weight"), &[d], gamma);
                let bb = self.b.init_f32(&format!("{base}.bias"), &[d], beta);
                self.b.node(
                    "LayerNormalization",
                    &format!("{base}.ln"),
                    &[&xf, &g, &bb],
                    vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(*eps))],
                )
            }
            (SeqLayer::Attention { probs }, Op::Attention { heads, .. }) => {
                let [t, d3, _] = r.in_shapes[0];
                let (hh, dm) = (*heads, d3 / 3);
                let dh = dm / hh;
                let x = self.reshape(x, &[t as i64, d3 as i64]);
                let xf = self.float(&x)?;
                let s5 = self.const_i64(&format!("shape_qkv_{t}_{hh}_{dh}"), &[-1, t as i64, 3, hh as i64, dh as i64]);
                let q5 = self.b.node("Reshape", &format!("{base}.qkv5"), &[&xf, &s5], vec![]);
                let p5 = self.b.node(
                    "Transpose",
                    &format!("{base}.qkv_heads"),
                    &[&q5],
                    vec![("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))],
                );
                let mut parts = Vec::new();
                for (k, nm) in ["q", "k", "v"].iter().enumerate() {
                    let idx = self.scalar_i64(&format!("index_{k}"), k as i64);
                    parts.push(self.b.node(
                        "Gather",
                        &format!("{base}.{nm}"),
                        &[&p5, &idx],
                        vec![("axis", Attr::Int(0))],
                    ));
                }
                let kt = self.b.node(
                    "Transpose",
                    &format!("{base}.kT"),
                    &[&parts[1]],
                    vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
                );
                let sc = self.b.node("MatMul", &format!("{base}.qk"), &[&parts[0], &kt], vec![]);
                let scale = (1.0 / (dh as f64).sqrt()) as f32;
                let sn = self.b.init_f32(&format!("{base}.scale"), &[], &[scale]);
                let mut scores = self.b.node("Mul", &format!("{base}.scores"), &[&sc, &sn], vec![]);
                let pad = self.padding(input);
                let mut keep4 = None;
                if let Some((tok, p)) = pad {
                    let mk = self.key_mask(&tok, p);
                    let (pad4, k4) = (mk.pad4.clone(), mk.keep4.clone());
                    let neg = self.const_f32("f32_lowest", &[], &[f32::MIN]);
                    scores = self.b.node("Where", &format!("{base}.masked"), &[&pad4, &neg, &scores], vec![]);
                    keep4 = Some(k4);
                }
                let mut pr =
                    self.b.node("Softmax", &format!("{base}.probs"), &[&scores], vec![("axis", Attr::Int(-1))]);
                if let Some(k4) = keep4 {
                    // Zero rows whose every key is padding, as the integer model does.
                    pr = self.b.node("Mul", &format!("{base}.probs_masked"), &[&pr, &k4], vec![]);
                }
                if let Some(q) = probs {
                    let codes = self.quantize(&pr, *q, (0, q.qmax()), 0, &format!("{base}.probs"));
                    pr = self.float(&Val::Codes { name: codes, q: *q, dims: vec![] })?;
                }
                let o = self.b.node("MatMul", &format!("{base}.pv"), &[&pr, &parts[2]], vec![]);
                let ot = self.b.node(
                    "Transpose",
                    &format!("{base}.heads_back"),
                    &[&o],
                    vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
                );
                let s3 = self.const_i64(&format!("shape_seq_{t}_{dm}"), &[-1, t as i64, dm as i64]);
                self.b.node("Reshape", &format!("{base}.attn"), &[&ot, &s3], vec![])
            }
            (SeqLayer::TokenPool, Op::TokenPool { mode }) => {
                let [t, d, _] = r.in_shapes[0];
                let x = self.reshape(x, &[t as i64, d as i64]);
                let xf = self.float(&x)?;
                let pad = self.padding(input);
                match (mode, pad) {
                    (TokenPoolMode::Cls, _) => {
                        let idx = self.scalar_i64("index_0", 0);
                        self.b.node("Gather", &format!("{base}.cls"), &[&xf, &idx], vec![("axis", Attr::Int(1))])
                    }
                    (TokenPoolMode::Mean, None) => self.b.node(
                        "ReduceMean",
                        &format!("{base}.mean"),
                        &[&xf],
                        vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))],
                    ),
                    (TokenPoolMode::Mean, Some((tok, p))) => {
                        let mk = self.key_mask(&tok, p);
                        let (k3, cnt) = (mk.keep3.clone(), mk.count.clone());
                        let one = self.const_f32("f32_1", &[], &[1.0]);
                        let ax1 = self.const_i64("axes_1", &[1]);
                        let xm = self.b.node("Mul", &format!("{base}.kept"), &[&xf, &k3], vec![]);
                        let s = self.b.node(
                            "ReduceSum",
                            &format!("{base}.sum"),
                            &[&xm, &ax1],
                            vec![("keepdims", Attr::Int(0))],
                        );
                        let c = self.b.node("Max", &format!("{base}.count"), &[&cnt, &one], vec![]);
                        self.b.node("Div", &format!("{base}.mean"), &[&s, &c], vec![])
                    }
                }
            }
            _ => {
                return Err(WqatError::invalid(format!("onnx export: node {base} does not match its converted layer")))
            }
        };
        Ok(self.finish_float(y, out_dims, out, 0, &base))
    }
}

/// The ONNX model of `m` (see the module docs for the graph's form).
pub fn to_onnx(m: &Int8Model) -> Result<ModelProto> {
    Ok(to_onnx_traced(m)?.0)
}

/// [`to_onnx`] and, per node of `m`, the graph tensor that holds its output (uint8 codes
/// where the integer model has codes, else float), for per-layer comparisons.
pub fn to_onnx_traced(m: &Int8Model) -> Result<(ModelProto, Vec<String>)> {
    let mut e = Exporter { b: GraphBuilder::default(), m, qparams: HashMap::new(), consts: HashMap::new(), mask: None };
    // Reserve the interface names.
    for n in [PIXELS, TOKENS, LOGITS] {
        e.b.fresh(n);
    }
    let [c, h, w] = m.input_shape();
    let text = matches!(m.nodes().first().map(|r| &r.node.op), Some(Op::Embedding { .. }));
    let input = if text {
        let t = (c * h * w) as i64;
        e.b.input(
            TOKENS,
            data_type::INT64,
            &[t],
            "token ids [batch, max_len]: CLS (256), the UTF-8 bytes (0..255), PAD (257) to max_len",
        );
        Val::Tokens { name: TOKENS.to_string(), dims: vec![t] }
    } else {
        let norm = m.normalization();
        norm.validate()?;
        e.b.input(
            PIXELS,
            data_type::FLOAT,
            &dims_i64(&[c, h, w]),
            &format!("raw pixels NCHW in [0, {}], normalized by the graph", norm.max_value),
        );
        let mx = e.b.init_f32("input.max_value", &[], &[norm.max_value]);
        let mean = e.b.init_f32("input.mean", &[1, c as i64, 1, 1], &norm.mean);
        let std = e.b.init_f32("input.std", &[1, c as i64, 1, 1], &norm.std);
        let a = e.b.node("Div", "input.scaled", &[PIXELS, &mx], vec![]);
        let s = e.b.node("Sub", "input.centered", &[&a, &mean], vec![]);
        let x = e.b.node("Div", "input.normalized", &[&s, &std], vec![]);
        match m.input {
            Domain::Codes(q) => {
                let qs = input_q_scale(norm, q);
                let name = e.quantize_scaled(&x, q, qs, (0, q.qmax()), 0, "input");
                Val::Codes { name, q, dims: dims_i64(&[c, h, w]) }
            }
            Domain::Float => Val::Float { name: x, dims: dims_i64(&[c, h, w]) },
        }
    };
    let mut vals: Vec<Val> = Vec::with_capacity(m.layers.len());
    for i in 0..m.layers.len() {
        let v = e.node(i, &vals, &input)?;
        vals.push(v);
    }
    let last = vals.last().cloned().ok_or_else(|| WqatError::invalid("onnx export: empty model"))?;
    let classes = m.num_classes() as i64;
    let last = e.reshape(&last, &[classes]);
    let lf = e.float(&last)?;
    e.b.node_outputs("Identity", &[LOGITS.to_string()], &[&lf], vec![]);
    let out_doc = match &last {
        Val::Codes { q, .. } => format!("logits [batch, classes]: dequantized codes, step {}", q.scale),
        _ => "logits [batch, classes] (float)".to_string(),
    };
    e.b.output(LOGITS, data_type::FLOAT, &[classes], &out_doc);
    let graph = e.b.finish(&m.graph.name, "exported by wqat from its integer model (QDQ form)");
    let meta = super::metadata::metadata(m, &last_quant(&last))?;
    let names = vals.iter().map(|v| v.name().to_string()).collect();
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("wqat".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        domain: None,
        model_version: Some(1),
        doc_string: Some(format!(
            "{}: wqat integer model as an ONNX QDQ graph (opset {OPSET}); see the wqat.* metadata",
            m.graph.name
        )),
        graph: Some(graph),
        metadata_props: meta
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) })
            .collect(),
    };
    Ok((model, names))
}

/// The scale of the input's `QuantizeLinear`. ONNX quantizes `round(x / s)`; wqat (as its
/// fake-quant) `round(x * (1 / s))` with the stored `1 / s`, which differ for about one value
/// in 200,000 near a tie. Raw pixels are integers in `[0, max_value]`, so the exporter checks
/// every one per channel and, if one would get another code, takes the nearest f32 to `s`
/// (within 64 ulps) that gives every pixel wqat's code; the `DequantizeLinear`s keep `s`.
fn input_q_scale(norm: &crate::data::Normalization, q: ActQuant) -> f32 {
    let max = norm.max_value;
    if !(max.fract() == 0.0 && (1.0..=65535.0).contains(&max)) {
        return q.scale;
    }
    let z = q.zero as f32;
    let qmax = q.qmax() as f32;
    let fits = |s: f32| {
        (0..norm.channels()).all(|ch| {
            (0..=max as u32).all(|p| {
                let x = norm.apply(ch, p as f32);
                let ours = crate::reference::fake_quant::quantize_code(x, q.inv_scale, z, 0.0, qmax);
                ((x / s).round_ties_even() + z).clamp(0.0, qmax) == ours
            })
        })
    };
    let (mut up, mut down) = (q.scale, q.scale);
    if fits(q.scale) {
        return q.scale;
    }
    for _ in 0..64 {
        up = up.next_up();
        down = down.next_down();
        for s in [down, up] {
            if s > 0.0 && fits(s) {
                return s;
            }
        }
    }
    q.scale
}

fn last_quant(v: &Val) -> Option<ActQuant> {
    match v {
        Val::Codes { q, .. } => Some(*q),
        _ => None,
    }
}
