//! GPU executor of an [`Int8Model`]: `int8_gemm.wgsl` for conv / linear (the packed
//! `dot4I8Packed` path or the unpack fallback, by `ctx.use_dot4`; linear layers on sequences
//! per token, `m = batch * tokens`) and `int8_ops.wgsl` for input quantization, pools, adds,
//! dequantization and patchify on codes; layers kept in f32 run the training engine's fp32
//! conv / gemm / pool / activation kernels. Transformers: an [`IntFloatLayer`](super::IntFloatLayer) is the int8
//! GEMM with an f32 epilogue (`F32_OUT`: `f32(acc) * (s_in * s_w[c])`, the CPU's bits), then
//! GELU and the output quantization in one `int8_ops` pass (or `gelu.wgsl` into f32);
//! embedding, CLS + positions, LayerNorm, attention, token pool and f32 residual adds run the
//! training kernels (`kernels::{sequence, layernorm, attention, activation}`) on f32 buffers,
//! with dequantize / quantize passes where a node's input or output is codes; text models
//! build their key padding mask from the token ids on the GPU. Buffers are allocated once for
//! `max_batch` samples; the forward of each batch size is recorded once as a fixed list of
//! dispatches and replayed (one submit per forward, no allocation after the first call of a
//! size).

pub mod gemm;
pub mod ops;

use super::cpu::{argmax_rows, Int8Output, NodeValue};
use crate::error::{Result, WqatError};
use crate::gpu::{DType, Dispatch, GpuContext, GpuTensor};
use crate::infer::gpu::gemm::{int8_conv2d, int8_linear, int8_linear_f32, unpack_u8, Int8Weights};
use crate::infer::{Conv2dConfig, LinearConfig, PoolConfig};
use crate::infer::{Domain, Int8Model, LayerKind, SeqLayer};
use crate::kernels::activation::{add_forward, relu_forward, Relu};
use crate::kernels::attention::{attention_forward, AttentionConfig, AttentionQuant};
use crate::kernels::conv::{conv2d_forward, Conv2dForwardArgs, Conv2dGeom, QuantOperand};
use crate::kernels::gelu::gelu_forward;
use crate::kernels::gemm::{gemm, GemmConfig, GemmExtras};
use crate::kernels::layernorm::layernorm_forward;
use crate::kernels::pool::{avgpool_forward, global_avgpool_forward, maxpool_forward, PoolSpec};
use crate::kernels::sequence::{
    check_token_ids, cls_pos_forward, embedding_forward, key_mask_from_ids, patchify_forward, token_pool_forward,
    PatchConfig, TokenPool,
};
use crate::model::graph::{Act, Op, TokenPoolMode, INPUT};
use ops as k;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Buffers of one node: its output, and scratch for f32 layers.
#[derive(Debug, Clone)]
struct NodeBufs {
    /// Output: packed codes (`I8x4`) or f32, by the node's domain; flatten aliases its input.
    out: GpuTensor,
    /// F32 copies of inputs that arrive as codes (layers computing in f32).
    deq: Vec<Option<GpuTensor>>,
    /// F32 result before the activation / quantization: f32 conv, linear and add; the
    /// dequantized accumulators of an integer layer with an f32 epilogue (unless they are
    /// its output); a transformer op whose output is quantized.
    raw: Option<GpuTensor>,
    /// Post-activation f32 result when it is quantized afterwards (ReLU / ReLU6).
    act: Option<GpuTensor>,
    /// Max-pool argmax scratch (f32 max pool).
    argmax: Option<GpuTensor>,
    /// Effective weights and bias (f32 conv / linear).
    float_weights: Option<(GpuTensor, GpuTensor)>,
    /// Tensors of a transformer op: embedding `[table]`, CLS + positions `[pos, cls]`
    /// (`cls` when present), LayerNorm `[gamma, beta]`.
    seq: Vec<GpuTensor>,
    /// Attention probabilities `[B, H, T, T]` or LayerNorm row statistics `[B * T, 2]`.
    scratch: Option<GpuTensor>,
}

/// An [`Int8Model`] uploaded to the GPU for batches of up to `max_batch` samples.
///
/// Integer layers run `int8_gemm.wgsl` / `int8_ops.wgsl` and match the CPU executors bit
/// for bit, given the same input codes; so do the f32 pre-activations of integer layers with
/// an f32 epilogue ([`Int8GpuModel::read_pre_activation`]). Layers kept in f32 (fp32 nodes,
/// disabled quantizers, and a transformer's LayerNorm, attention, GELU and mean pool) run
/// the training engine's fp32 kernels; their sums are ordered differently from the CPU's
/// (and GELU's erf is an f32 fit, not libm), so codes after such a layer can differ from the
/// CPU executor's by one step in rare cases. Embedding, CLS + positions, CLS pool, patchify
/// and f32 residual adds are exact.
pub struct Int8GpuModel {
    ctx: Arc<GpuContext>,
    model: Int8Model,
    max_batch: usize,
    input_f32: GpuTensor,
    input_codes: Option<GpuTensor>,
    /// Key padding mask `[batch, T]` of text models (token ids equal to the embedding's
    /// padding id), computed on the GPU from the ids.
    key_mask: Option<GpuTensor>,
    nodes: Vec<NodeBufs>,
    weights: Vec<Option<Int8Weights>>,
    /// Recorded forwards by batch size.
    plans: Mutex<HashMap<usize, Vec<Dispatch>>>,
    /// Mappable copy of the logits.
    staging: wgpu::Buffer,
}

impl std::fmt::Debug for Int8GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8GpuModel")
            .field("model", &self.model.graph.name)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

/// The same buffer seen as a tensor of another shape (at most the buffer's size).
fn view(t: &GpuTensor, shape: &[usize]) -> GpuTensor {
    GpuTensor { buffer: t.buffer.clone(), shape: shape.to_vec(), dtype: t.dtype }
}

fn dtype_of(d: Domain) -> DType {
    match d {
        Domain::Codes(_) => DType::I8x4,
        Domain::Float => DType::F32,
    }
}

fn missing(what: &str) -> WqatError {
    WqatError::invalid(format!("int8 GPU model: missing {what}"))
}

impl Int8GpuModel {
    /// Uploads `model` (packed weights, per-node activation buffers for `max_batch`
    /// samples).
    pub fn new(ctx: &Arc<GpuContext>, model: &Int8Model, max_batch: usize) -> Result<Int8GpuModel> {
        if max_batch == 0 {
            return Err(WqatError::invalid("max_batch must be at least 1"));
        }
        let sample: usize = model.graph.input.iter().product();
        let input_f32 = GpuTensor::zeros(ctx, &[max_batch * sample], DType::F32)?;
        let input_codes = match model.input {
            Domain::Codes(_) => Some(GpuTensor::zeros(ctx, &[max_batch * sample], DType::I8x4)?),
            Domain::Float => None,
        };
        let key_mask = match model.nodes.first().map(|r| &r.node.op) {
            Some(Op::Embedding { padding_idx: Some(_), .. }) => {
                Some(GpuTensor::zeros(ctx, &[max_batch * sample], DType::F32)?)
            }
            _ => None,
        };
        let mut nodes: Vec<NodeBufs> = Vec::with_capacity(model.layers.len());
        let mut weights = Vec::with_capacity(model.layers.len());
        for (r, l) in model.nodes.iter().zip(&model.layers) {
            let per_sample: usize = r.out_shape.iter().product();
            let n_out = per_sample * max_batch;
            let f32_buf = |n: usize| GpuTensor::zeros(ctx, &[n], DType::F32);
            let out = match l.kind {
                LayerKind::Flatten => {
                    let j = r.inputs[0];
                    let src = if j == INPUT { input_codes.as_ref().unwrap_or(&input_f32) } else { &nodes[j].out };
                    view(src, &[n_out])
                }
                _ => GpuTensor::zeros(ctx, &[n_out], dtype_of(l.out))?,
            };
            let float_in = matches!(
                l.kind,
                LayerKind::Float(_) | LayerKind::Add(None) | LayerKind::AvgPool(None) | LayerKind::Seq(_)
            );
            let mut deq = Vec::new();
            if float_in {
                for (t, &j) in r.inputs.iter().enumerate() {
                    let n_in = r.in_shapes[t].iter().product::<usize>() * max_batch;
                    deq.push(match model.domain_of(j) {
                        Domain::Codes(_) => Some(f32_buf(n_in)?),
                        Domain::Float => None,
                    });
                }
            }
            let act_op = node_act(&r.node.op);
            let has_raw = match l.kind {
                LayerKind::Float(_) | LayerKind::Add(None) => true,
                LayerKind::IntFloat(_) => !(act_op == Act::None && l.out == Domain::Float),
                LayerKind::Seq(_) => l.out != Domain::Float,
                _ => false,
            };
            let raw = if has_raw { Some(f32_buf(n_out)?) } else { None };
            let needs_act = has_raw && l.out != Domain::Float && matches!(act_op, Act::Relu | Act::Relu6);
            let act = if needs_act { Some(f32_buf(n_out)?) } else { None };
            let argmax = match (&l.kind, l.out) {
                (LayerKind::MaxPool, Domain::Float) => Some(GpuTensor::zeros(ctx, &[n_out], DType::U32)?),
                _ => None,
            };
            let float_weights = match &l.kind {
                LayerKind::Float(fl) => {
                    let cout = r.out_channels();
                    Some((
                        GpuTensor::from_f32(ctx, &[fl.weight.len()], &fl.weight)?,
                        GpuTensor::from_f32(ctx, &[cout], &fl.bias)?,
                    ))
                }
                _ => None,
            };
            let t_in = r.in_shapes[0][0];
            let (seq, scratch) = match (&l.kind, &r.node.op) {
                (LayerKind::Seq(SeqLayer::Embedding { table }), Op::Embedding { vocab, dim, .. }) => {
                    (vec![GpuTensor::from_f32(ctx, &[*vocab, *dim], table)?], None)
                }
                (LayerKind::Seq(SeqLayer::ClsPos { cls, pos }), _) => {
                    let [tp, d, _] = r.out_shape;
                    let mut v = vec![GpuTensor::from_f32(ctx, &[tp, d], pos)?];
                    if let Some(c) = cls {
                        v.push(GpuTensor::from_f32(ctx, &[d], c)?);
                    }
                    (v, None)
                }
                (LayerKind::Seq(SeqLayer::LayerNorm { gamma, beta }), _) => {
                    let d = gamma.len();
                    let rows = n_out / d.max(1);
                    let v = vec![GpuTensor::from_f32(ctx, &[d], gamma)?, GpuTensor::from_f32(ctx, &[d], beta)?];
                    (v, Some(f32_buf(2 * rows)?))
                }
                (LayerKind::Seq(SeqLayer::Attention { probs }), Op::Attention { heads, .. }) => {
                    // The softmax-output quantizer as a one-channel state buffer.
                    let state = probs
                        .map(|q| {
                            let raw = crate::quant::QStateLayout::exact(q.scale, q.inv_scale, q.zero as f32);
                            GpuTensor::from_f32(ctx, &[raw.len()], &raw)
                        })
                        .transpose()?;
                    (state.into_iter().collect(), Some(f32_buf(max_batch * heads * t_in * t_in)?))
                }
                _ => (Vec::new(), None),
            };
            nodes.push(NodeBufs { out, deq, raw, act, argmax, float_weights, seq, scratch });
            weights.push(match &l.kind {
                LayerKind::Int(il) => {
                    let cout = r.out_channels();
                    let k = il.weight.len() / cout;
                    let kernel = match r.node.op {
                        Op::Conv { kernel, .. } => [k / (kernel * kernel), kernel, kernel],
                        _ => [1, 1, k],
                    };
                    Some(Int8Weights::new_packed(ctx, &il.weight, cout, kernel, &il.bias, &il.requant)?)
                }
                LayerKind::IntFloat(fl) => {
                    let qi = model.domain_of(r.inputs[0]).quant().ok_or_else(|| {
                        WqatError::invalid(format!("node {}: integer layer fed with f32 values", r.node.name))
                    })?;
                    let cout = r.out_channels();
                    // The scale of `dequantize_acc`: s_in * s_w[c], rounded to f32 once.
                    let scale: Vec<f32> = fl.weight_scale.iter().map(|&w| qi.scale * w).collect();
                    let k = fl.weight.len() / cout.max(1);
                    Some(Int8Weights::new_dequant_packed(ctx, &fl.weight, cout, k, &fl.bias, &scale)?)
                }
                _ => None,
            });
        }
        let classes = model.num_classes();
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("int8 logits readback"),
            size: 4 * (max_batch * classes) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Int8GpuModel {
            ctx: ctx.clone(),
            model: model.clone(),
            max_batch,
            input_f32,
            input_codes,
            key_mask,
            nodes,
            weights,
            plans: Mutex::new(HashMap::new()),
            staging,
        })
    }

    /// Bytes of the integer layers' weight buffers on the GPU (sub-8-bit weights packed, see
    /// [`Int8Weights`]).
    pub fn weight_bytes(&self) -> usize {
        self.weights.iter().flatten().map(Int8Weights::weight_bytes).sum()
    }

    /// The largest batch a forward takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The model this executor runs.
    pub fn model(&self) -> &Int8Model {
        &self.model
    }

    /// The tensor holding node `j`'s output (`INPUT`: the image, codes when quantized).
    fn value(&self, j: usize) -> &GpuTensor {
        if j == INPUT {
            self.input_codes.as_ref().unwrap_or(&self.input_f32)
        } else {
            &self.nodes[j].out
        }
    }

    /// Records the forward of `batch` samples.
    fn record(&self, batch: usize) -> Result<Vec<Dispatch>> {
        let ctx = &*self.ctx;
        let m = &self.model;
        let sample: usize = m.graph.input.iter().product();
        let mut ds = Vec::new();
        if let (Domain::Codes(q), Some(codes)) = (m.input, &self.input_codes) {
            let n = batch * sample;
            ds.push(k::quantize_f32(ctx, &q, &view(&self.input_f32, &[n]), &view(codes, &[n]))?);
        }
        if let (Some(mask), Some(Op::Embedding { padding_idx: Some(pad), .. })) =
            (&self.key_mask, m.nodes.first().map(|r| &r.node.op))
        {
            let shape = [batch, sample];
            ds.push(key_mask_from_ids(ctx, &view(&self.input_f32, &shape), *pad as u32, &view(mask, &shape))?);
        }
        // The key padding mask as `[batch, t]` (attention, mean pool), if the model has one.
        let key_mask = |t: usize, name: &str| -> Result<Option<GpuTensor>> {
            match &self.key_mask {
                Some(_) if t != sample => Err(WqatError::shape(format!(
                    "node {name}: {t} tokens, but the key padding mask covers the {sample} input tokens"
                ))),
                Some(mk) => Ok(Some(view(mk, &[batch, t]))),
                None => Ok(None),
            }
        };
        for (i, (r, l)) in m.nodes.iter().zip(&m.layers).enumerate() {
            let nb = &self.nodes[i];
            let [c, h, w] = r.in_shapes[0];
            let [co, oh, ow] = r.out_shape;
            let n_in = batch * c * h * w;
            let n_out = batch * co * oh * ow;
            let x = view(self.value(r.inputs[0]), &[n_in]);
            let out = view(&nb.out, &[n_out]);
            let zero_in = m.domain_of(r.inputs[0]).quant().map(|q| q.zero).unwrap_or(0);
            // f32 inputs of an f32 layer: dequantized copies of code inputs.
            let mut f32_in = |t: usize, shape: &[usize]| -> Result<GpuTensor> {
                let j = r.inputs[t];
                let n: usize = shape.iter().product();
                match (m.domain_of(j), nb.deq.get(t).and_then(|d| d.as_ref())) {
                    (Domain::Codes(q), Some(d)) => {
                        ds.push(k::dequantize_u8(ctx, &q, &view(self.value(j), &[n]), &view(d, &[n]))?);
                        Ok(view(d, shape))
                    }
                    _ => Ok(view(self.value(j), shape)),
                }
            };
            let weights = || self.weights[i].as_ref().ok_or_else(|| missing("weights"));
            match (&l.kind, &r.node.op) {
                (LayerKind::Int(_), Op::Conv { kernel, stride, padding, dilation, groups, .. }) => {
                    let cfg = Conv2dConfig {
                        batch,
                        c_in: c,
                        h,
                        w,
                        c_out: co,
                        kernel: [*kernel; 2],
                        stride: [*stride; 2],
                        padding: [*padding; 2],
                        dilation: [*dilation; 2],
                        groups: *groups,
                        x_zero: zero_in,
                    };
                    ds.push(int8_conv2d(ctx, &cfg, &x, weights()?, &out)?);
                }
                (LayerKind::Int(_), Op::Linear { out_features, .. }) => {
                    // Per token on sequences: one row per (sample, token).
                    let cfg = LinearConfig {
                        m: batch * r.rows_per_sample(),
                        k: r.in_features(),
                        n: *out_features,
                        x_zero: zero_in,
                    };
                    ds.push(int8_linear(ctx, &cfg, &x, weights()?, &out)?);
                }
                (LayerKind::IntFloat(_), Op::Linear { out_features, .. }) => {
                    let cfg = LinearConfig {
                        m: batch * r.rows_per_sample(),
                        k: r.in_features(),
                        n: *out_features,
                        x_zero: zero_in,
                    };
                    let dst = view(nb.raw.as_ref().unwrap_or(&nb.out), &[n_out]);
                    ds.push(int8_linear_f32(ctx, &cfg, &x, weights()?, &dst)?);
                    if nb.raw.is_some() {
                        self.epilogue(&mut ds, i, batch)?;
                    }
                }
                (LayerKind::Float(_), op) => {
                    let (wt, bias) = nb.float_weights.as_ref().ok_or_else(|| missing("weights"))?;
                    let raw = nb.raw.as_ref().ok_or_else(|| missing("scratch"))?;
                    match op {
                        Op::Conv { kernel, stride, padding, dilation, groups, .. } => {
                            let xin = f32_in(0, &[batch, c, h, w])?;
                            let cfg = Conv2dGeom::new(batch, c, h, w, co, *kernel)
                                .with_stride(*stride)
                                .with_padding(*padding)
                                .with_dilation(*dilation)
                                .with_groups(*groups);
                            let args = Conv2dForwardArgs {
                                x: &xin,
                                w: &view(wt, &[co, c / groups, *kernel, *kernel]),
                                bias: Some(bias),
                                x_quant: None,
                                w_quant: None,
                                relu: false,
                                y: &view(raw, &[batch, co, oh, ow]),
                            };
                            ds.push(conv2d_forward(ctx, &cfg, &args)?);
                        }
                        _ => {
                            let (rows, kf, nf) = (batch * r.rows_per_sample(), r.in_features(), r.out_channels());
                            let xin = f32_in(0, &[rows, kf])?;
                            let cfg = GemmConfig::linear_forward(rows, kf, nf, None, None);
                            let extra = GemmExtras { bias: Some(bias), ..Default::default() };
                            ds.push(gemm(ctx, &cfg, &xin, &view(wt, &[nf, kf]), &view(raw, &[n_out]), &extra)?);
                        }
                    }
                    self.epilogue(&mut ds, i, batch)?;
                }
                (LayerKind::Patchify, Op::Patchify { patch }) => {
                    let pc = PatchConfig { batch, channels: c, height: h, width: w, patch: *patch };
                    match l.out {
                        Domain::Codes(_) => ds.push(k::patchify_u8(ctx, &pc, &x, &out)?),
                        Domain::Float => {
                            ds.push(patchify_forward(ctx, &pc, &view(&x, &pc.x_shape()), &view(&out, &pc.out_shape()))?)
                        }
                    }
                }
                (LayerKind::Seq(sl), op) => {
                    // The f32 result: straight into the output, or into `raw` to be quantized.
                    let dst = view(nb.raw.as_ref().unwrap_or(&nb.out), &[n_out]);
                    let name = &r.node.name;
                    let [t, d, _] = r.in_shapes[0];
                    match (sl, op) {
                        (SeqLayer::Embedding { .. }, Op::Embedding { dim, .. }) => {
                            if r.inputs[0] != INPUT || m.input != Domain::Float {
                                return Err(WqatError::invalid(format!(
                                    "node {name}: an embedding must read the model's token ids"
                                )));
                            }
                            let table = nb.seq.first().ok_or_else(|| missing("embedding table"))?;
                            let ids = view(&x, &[batch, sample]);
                            ds.push(embedding_forward(ctx, &ids, table, &view(&dst, &[batch, sample, *dim]))?);
                        }
                        (SeqLayer::ClsPos { .. }, Op::ClsPos { .. }) => {
                            let xin = f32_in(0, &[batch, t, d])?;
                            let pos = nb.seq.first().ok_or_else(|| missing("positions"))?;
                            ds.push(cls_pos_forward(ctx, &xin, nb.seq.get(1), pos, &view(&dst, &[batch, co, d]))?);
                        }
                        (SeqLayer::LayerNorm { .. }, Op::LayerNorm { eps }) => {
                            let xin = f32_in(0, &[n_in])?;
                            let (gamma, beta) = nb.seq.first().zip(nb.seq.get(1)).ok_or_else(|| missing("gamma"))?;
                            let stats = nb.scratch.as_ref().ok_or_else(|| missing("statistics"))?;
                            let rows = n_in / gamma.len().max(1);
                            ds.push(layernorm_forward(ctx, &xin, gamma, beta, &dst, &view(stats, &[2 * rows]), *eps)?);
                        }
                        (SeqLayer::Attention { probs: pq }, Op::Attention { heads, .. }) => {
                            let cfg = AttentionConfig::new(batch, t, *heads, d / 3 / heads.max(&1));
                            let qkv = f32_in(0, &cfg.qkv_shape())?;
                            let probs = nb.scratch.as_ref().ok_or_else(|| missing("probabilities"))?;
                            let mask = key_mask(t, name)?;
                            ds.extend(attention_forward(
                                ctx,
                                &cfg,
                                &qkv,
                                mask.as_ref(),
                                &AttentionQuant {
                                    probs: pq.zip(nb.seq.first()).map(|(q, s)| QuantOperand {
                                        state: s,
                                        spec: crate::quant::QuantSpec::activation(q.bits),
                                    }),
                                    ..Default::default()
                                },
                                &view(probs, &cfg.probs_shape()),
                                &view(&dst, &cfg.out_shape()),
                            )?);
                        }
                        (SeqLayer::TokenPool, Op::TokenPool { mode }) => {
                            let xin = f32_in(0, &[batch, t, d])?;
                            let (mode, mask) = match mode {
                                TokenPoolMode::Cls => (TokenPool::Cls, None),
                                TokenPoolMode::Mean => (TokenPool::Mean, key_mask(t, name)?),
                            };
                            ds.push(token_pool_forward(ctx, mode, &xin, mask.as_ref(), &view(&dst, &[batch, d]))?);
                        }
                        _ => {
                            return Err(WqatError::invalid(format!(
                                "int8 model: node {name} does not match its converted layer"
                            )))
                        }
                    }
                    if nb.raw.is_some() {
                        self.epilogue(&mut ds, i, batch)?;
                    }
                }
                (LayerKind::MaxPool, Op::MaxPool { kernel, stride, padding }) => {
                    let s = if *stride == 0 { *kernel } else { *stride };
                    match l.out {
                        Domain::Codes(_) => {
                            let cfg = PoolConfig {
                                batch,
                                channels: c,
                                h,
                                w,
                                kernel: [*kernel; 2],
                                stride: [s; 2],
                                padding: [*padding; 2],
                            };
                            ds.push(k::maxpool_u8(ctx, &cfg, &x, &out)?);
                        }
                        Domain::Float => {
                            let am = nb.argmax.as_ref().ok_or_else(|| missing("scratch"))?;
                            let spec =
                                PoolSpec { kernel: (*kernel, *kernel), stride: (s, s), padding: (*padding, *padding) };
                            ds.push(maxpool_forward(
                                ctx,
                                &view(&x, &[batch, c, h, w]),
                                &view(&out, &[batch, c, oh, ow]),
                                &view(am, &[batch, c, oh, ow]),
                                &spec,
                            )?);
                        }
                    }
                }
                (LayerKind::AvgPool(Some(rq)), op) => {
                    let cfg = match op {
                        Op::AvgPool { kernel, stride, padding } => PoolConfig {
                            batch,
                            channels: c,
                            h,
                            w,
                            kernel: [*kernel; 2],
                            stride: [if *stride == 0 { *kernel } else { *stride }; 2],
                            padding: [*padding; 2],
                        },
                        _ => PoolConfig::global(batch, c, h, w),
                    };
                    ds.push(k::avgpool_u8(ctx, &cfg, rq, &x, &out)?);
                }
                (LayerKind::AvgPool(None), op) => {
                    let xin = view(&x, &[batch, c, h, w]);
                    match op {
                        Op::AvgPool { kernel, stride, padding } => {
                            let s = if *stride == 0 { *kernel } else { *stride };
                            let spec =
                                PoolSpec { kernel: (*kernel, *kernel), stride: (s, s), padding: (*padding, *padding) };
                            ds.push(avgpool_forward(ctx, &xin, &view(&out, &[batch, c, oh, ow]), &spec)?);
                        }
                        _ => ds.push(global_avgpool_forward(ctx, &xin, &view(&out, &[batch, c]))?),
                    }
                }
                (LayerKind::Add(Some(cfg)), Op::Add { .. }) => {
                    let b = view(self.value(r.inputs[1]), &[n_in]);
                    ds.push(k::add_u8(ctx, cfg, &x, &b, &out)?);
                }
                (LayerKind::Add(None), Op::Add { .. }) => {
                    let a = f32_in(0, &[n_in])?;
                    let b = f32_in(1, &[n_in])?;
                    let raw = nb.raw.as_ref().ok_or_else(|| missing("scratch"))?;
                    ds.push(add_forward(ctx, &a, &b, &view(raw, &[n_in]))?);
                    self.epilogue(&mut ds, i, batch)?;
                }
                (LayerKind::Flatten, _) => {}
                _ => return Err(WqatError::invalid(format!("node {}: no GPU kernel for this layer", r.node.name))),
            }
        }
        Ok(ds)
    }

    /// After a layer wrote its f32 result into `raw`: the activation (ReLU, ReLU6, GELU), then
    /// quantization into the output codes (GELU fused into it), or the activation straight
    /// into the f32 output.
    fn epilogue(&self, ds: &mut Vec<Dispatch>, i: usize, batch: usize) -> Result<()> {
        let ctx = &*self.ctx;
        let (r, l, nb) = (&self.model.nodes[i], &self.model.layers[i], &self.nodes[i]);
        let n = batch * r.out_shape.iter().product::<usize>();
        let raw = view(nb.raw.as_ref().ok_or_else(|| missing("scratch"))?, &[n]);
        let out = view(&nb.out, &[n]);
        let act = node_act(&r.node.op);
        let kind = if act == Act::Relu6 { Relu::Relu6 } else { Relu::Relu };
        match (l.out, act) {
            (Domain::Codes(q), Act::None) => ds.push(k::quantize_f32(ctx, &q, &raw, &out)?),
            (Domain::Codes(q), Act::Gelu) => ds.push(k::gelu_quantize_f32(ctx, &q, &raw, &out)?),
            (Domain::Codes(q), Act::Relu | Act::Relu6) => {
                let a = view(nb.act.as_ref().ok_or_else(|| missing("scratch"))?, &[n]);
                ds.push(relu_forward(ctx, &raw, &a, kind)?);
                ds.push(k::quantize_f32(ctx, &q, &a, &out)?);
            }
            (Domain::Float, Act::None) => ds.push(crate::kernels::gemm::copy_f32(ctx, &raw, &out)?),
            (Domain::Float, Act::Gelu) => ds.push(gelu_forward(ctx, &raw, &out)?),
            (Domain::Float, Act::Relu | Act::Relu6) => ds.push(relu_forward(ctx, &raw, &out, kind)?),
        }
        Ok(())
    }

    /// Uploads the samples and runs the recorded forward (returns with the work submitted).
    fn run(&self, images: &[f32], batch: usize) -> Result<std::sync::MutexGuard<'_, HashMap<usize, Vec<Dispatch>>>> {
        let sample: usize = self.model.graph.input.iter().product();
        if batch == 0 || batch > self.max_batch || images.len() != batch * sample {
            return Err(WqatError::shape(format!(
                "{} input values for {batch} samples of shape {:?} (max batch {})",
                images.len(),
                self.model.graph.input,
                self.max_batch
            )));
        }
        // Token ids are checked here, as the CPU executor does (the kernel embeds bad ids as zeros).
        if let Some(Op::Embedding { vocab, .. }) = self.model.nodes.first().map(|r| &r.node.op) {
            check_token_ids(images, *vocab)?;
        }
        let mut plans = self.plans.lock().map_err(|_| WqatError::invalid("int8 GPU model lock poisoned"))?;
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(batch) {
            e.insert(self.record(batch)?);
        }
        self.input_f32.write(&self.ctx, images)?;
        let refs: Vec<&Dispatch> = plans[&batch].iter().collect();
        self.ctx.submit(&refs)?;
        Ok(plans)
    }

    fn finish(&self, last: &NodeValue, batch: usize, activations: Option<Vec<NodeValue>>) -> Result<Int8Output> {
        let classes = self.model.num_classes();
        let n = batch * classes;
        let logits: Vec<f32> = match (last, self.model.layers[self.model.layers.len() - 1].out) {
            (NodeValue::Codes(c), Domain::Codes(q)) => c[..n].iter().map(|&c| q.dequantize(c)).collect(),
            (NodeValue::Float(f), Domain::Float) => f[..n].to_vec(),
            _ => return Err(WqatError::invalid("int8 GPU model: logits in an unexpected representation")),
        };
        let predictions = argmax_rows(&logits, classes);
        Ok(Int8Output { logits, predictions, activations })
    }

    /// Runs `batch` normalized images (`[batch, C, H, W]` f32; token ids of a text model)
    /// and returns dequantized logits and predictions (one submit, one readback of the
    /// logits).
    pub fn forward(&self, images: &[f32], batch: usize) -> Result<Int8Output> {
        let _plans = self.run(images, batch)?;
        let n = batch * self.model.num_classes();
        let last_dom = self.model.layers[self.model.layers.len() - 1].out;
        let bytes = dtype_of(last_dom).bytes_for(n);
        let last = &self.nodes[self.nodes.len() - 1].out;
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&last.buffer, 0, &self.staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let slice = self.staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait()?;
        let gpu_err = |m: String| WqatError::Gpu { context: "int8 readback".into(), message: m };
        rx.recv().map_err(|e| gpu_err(e.to_string()))?.map_err(|e| gpu_err(e.to_string()))?;
        let words: Vec<u32> = {
            let v = slice.get_mapped_range().map_err(|e| gpu_err(format!("{e:?}")))?;
            bytemuck::cast_slice::<u8, u32>(&v).to_vec()
        };
        self.staging.unmap();
        let value = match last_dom {
            Domain::Codes(_) => NodeValue::Codes(unpack_u8(&words, n)),
            Domain::Float => NodeValue::Float(words.iter().map(|&w| f32::from_bits(w)).collect()),
        };
        self.finish(&value, batch, None)
    }

    /// Per-dispatch GPU times of the recorded forward of `batch` images (labels and
    /// timings in plan order; GPU timestamps where the adapter has them, else wall clock).
    pub fn profile(&self, batch: usize, runs: usize) -> Result<Vec<(String, crate::bench::timing::Timing)>> {
        let sample: usize = self.model.graph.input.iter().product();
        let plans = self.run(&vec![0.0; batch * sample], batch)?;
        self.ctx.wait()?;
        let mut out = Vec::new();
        for d in &plans[&batch] {
            let t = crate::bench::timing::time_dispatches(&self.ctx, &[d], 1, runs, 0.005)?;
            out.push((format!("{} {:?}", d.label, d.workgroups), t));
        }
        Ok(out)
    }

    /// [`Int8GpuModel::forward`] that also reads back every node's output.
    pub fn forward_traced(&self, images: &[f32], batch: usize) -> Result<Int8Output> {
        let _plans = self.run(images, batch)?;
        let mut acts = Vec::with_capacity(self.nodes.len());
        for ((r, l), nb) in self.model.nodes.iter().zip(&self.model.layers).zip(&self.nodes) {
            let n = batch * r.out_shape.iter().product::<usize>();
            acts.push(match l.out {
                Domain::Codes(_) => {
                    NodeValue::Codes(crate::infer::gpu::gemm::read_u8(&self.ctx, &view(&nb.out, &[n]))?)
                }
                Domain::Float => {
                    let f = view(&nb.out, &[n]).read_f32(&self.ctx)?;
                    NodeValue::Float(f)
                }
            });
        }
        let last = acts.last().cloned().unwrap_or(NodeValue::Codes(Vec::new()));
        self.finish(&last, batch, Some(acts))
    }

    /// The f32 pre-activation `f32(acc) * (s_in * s_w[c])` of node `i` from the last forward
    /// of `batch` samples, when node `i` is an integer layer with an f32 epilogue
    /// ([`LayerKind::IntFloat`]); `None` for other layers. Bit for bit
    /// [`crate::infer::cpu::dequantize_acc`] of the same input codes.
    pub fn read_pre_activation(&self, i: usize, batch: usize) -> Result<Option<Vec<f32>>> {
        let (r, l, nb) = match (self.model.nodes.get(i), self.model.layers.get(i), self.nodes.get(i)) {
            (Some(r), Some(l), Some(nb)) => (r, l, nb),
            _ => return Err(WqatError::invalid(format!("node index {i} out of range"))),
        };
        if !matches!(l.kind, LayerKind::IntFloat(_)) {
            return Ok(None);
        }
        if batch == 0 || batch > self.max_batch {
            return Err(WqatError::shape(format!("batch {batch} outside 1..={}", self.max_batch)));
        }
        let n = batch * r.out_shape.iter().product::<usize>();
        Ok(Some(view(nb.raw.as_ref().unwrap_or(&nb.out), &[n]).read_f32(&self.ctx)?))
    }
}

fn node_act(op: &Op) -> Act {
    match op {
        Op::Conv { act, .. } | Op::Linear { act, .. } | Op::Add { act } => *act,
        _ => Act::None,
    }
}
