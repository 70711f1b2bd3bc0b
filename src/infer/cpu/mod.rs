//! CPU executor of an [`Int8Model`]: integer ops from [`kernels`] (scalar or SIMD),
//! the batch split into contiguous chunks over `std::thread::scope` threads (each image is
//! computed by one thread, so results do not depend on the thread count).

mod fast;
pub mod kernels;

use fast::CpuPacks;

use crate::error::{Result, WqatError};
use crate::infer::cpu::kernels::{self as int8, CpuBackend};
use crate::infer::{AvgRequant, Conv2dConfig, LinearConfig, PoolConfig};
use crate::infer::{Domain, Int8Model, LayerKind, SeqLayer};
use crate::model::graph::{Op, TokenPoolMode, INPUT};
use crate::quant::{QStateLayout, QuantSpec};
use crate::reference::graph::{apply_act, conv2d_f32, global_avg_f32, linear_f32, pool_f32};

/// A node's output: u8 codes or f32 values, `[batch, C, H, W]` flat.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Codes(Vec<u8>),
    Float(Vec<f32>),
}

impl NodeValue {
    fn to_f32(&self, dom: Domain) -> Vec<f32> {
        match (self, dom) {
            (NodeValue::Codes(c), Domain::Codes(q)) => c.iter().map(|&v| q.dequantize(v)).collect(),
            (NodeValue::Float(f), _) => f.clone(),
            (NodeValue::Codes(c), Domain::Float) => c.iter().map(|&v| v as f32).collect(),
        }
    }
    fn codes(&self) -> Result<&[u8]> {
        match self {
            NodeValue::Codes(c) => Ok(c),
            NodeValue::Float(_) => Err(WqatError::invalid("int8 model: integer layer fed with f32 values")),
        }
    }
    fn from_f32(v: Vec<f32>, dom: Domain) -> NodeValue {
        match dom {
            Domain::Codes(q) => NodeValue::Codes(v.iter().map(|&x| q.quantize(x)).collect()),
            Domain::Float => NodeValue::Float(v),
        }
    }
    fn len(&self) -> usize {
        match self {
            NodeValue::Codes(c) => c.len(),
            NodeValue::Float(f) => f.len(),
        }
    }
    fn append(&mut self, other: NodeValue) {
        match (self, other) {
            (NodeValue::Codes(a), NodeValue::Codes(b)) => a.extend(b),
            (NodeValue::Float(a), NodeValue::Float(b)) => a.extend(b),
            _ => {}
        }
    }
}

/// What a forward returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Output {
    /// `[batch, classes]` dequantized logits.
    pub logits: Vec<f32>,
    /// Argmax per image (the first maximum on ties).
    pub predictions: Vec<usize>,
    /// Every node's output when asked for (`forward_traced` of the CPU and GPU executors).
    pub activations: Option<Vec<NodeValue>>,
}

/// Argmax per row (first maximum).
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes.max(1))
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }))
        .collect()
}

/// Average pool of codes with divisor `kh * kw` (padding counts as zero-valued):
/// `out = z + round(sum_inbounds(q - z) / (kh * kw))` ([`AvgRequant`]), clamped.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool_codes(
    x: &[u8],
    planes: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    out_hw: [usize; 2],
    rq: &AvgRequant,
) -> Result<Vec<u8>> {
    rq.validate()?;
    let [h, w] = hw;
    let [oh, ow] = out_hw;
    if x.len() != planes * h * w {
        return Err(WqatError::shape(format!("avg pool input of {} codes for {planes}x{h}x{w}", x.len())));
    }
    let m = rq.divisor(kernel[0] * kernel[1])?;
    let mut out = vec![0u8; planes * oh * ow];
    for p in 0..planes {
        let plane = &x[p * h * w..][..h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut sum, mut count) = (0i32, 0i32);
                for ky in 0..kernel[0] {
                    let iy = (oy * stride[0] + ky) as isize - pad[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kernel[1] {
                        let ix = (ox * stride[1] + kx) as isize - pad[1] as isize;
                        if ix >= 0 && ix < w as isize {
                            sum += plane[iy as usize * w + ix as usize] as i32;
                            count += 1;
                        }
                    }
                }
                out[(p * oh + oy) * ow + ox] = rq.apply(sum, count, m);
            }
        }
    }
    Ok(out)
}

/// The CPU executor of an [`Int8Model`]: borrows the model and keeps the cache of the fast
/// path (weights packed for the pair kernels, scratch buffers), built on the first forward
/// that needs it. Reuse one executor across batches; the model itself holds no backend state.
#[derive(Debug)]
pub struct Int8CpuModel<'m> {
    model: &'m Int8Model,
    packs: CpuPacks,
}

impl<'m> Int8CpuModel<'m> {
    /// An executor of `model` (nothing is packed until the first forward).
    pub fn new(model: &'m Int8Model) -> Int8CpuModel<'m> {
        Int8CpuModel { model, packs: CpuPacks::default() }
    }

    /// The model it runs.
    pub fn model(&self) -> &'m Int8Model {
        self.model
    }

    /// Runs `batch` normalized images (`[batch, C, H, W]` f32, see
    /// [`Int8Model::normalization`]) through the integer model on the CPU.
    pub fn forward(&self, images: &[f32], batch: usize, backend: CpuBackend) -> Result<Int8Output> {
        self.forward_with(images, batch, backend, false)
    }

    /// [`Int8CpuModel::forward`] that also returns every node's output.
    pub fn forward_traced(&self, images: &[f32], batch: usize, backend: CpuBackend) -> Result<Int8Output> {
        self.forward_with(images, batch, backend, true)
    }

    fn forward_with(&self, images: &[f32], batch: usize, backend: CpuBackend, keep: bool) -> Result<Int8Output> {
        let sample: usize = self.model.graph.input.iter().product();
        if batch == 0 || images.len() != batch * sample {
            return Err(WqatError::shape(format!(
                "{} input values for {batch} images of shape {:?}",
                images.len(),
                self.model.graph.input
            )));
        }
        let cpus = int8::simd::cpu_count();
        let threads = cpus.min(batch).max(1);
        // Equal chunks of at most 8 images handed out dynamically: on a busy machine a thread
        // that is descheduled leaves its chunks to the others. Each image is computed by one
        // chunk and chunks are merged in order, so results do not depend on the threads.
        let nchunks = if threads == 1 { 1 } else { batch.div_ceil(8).max(threads) };
        let chunk = batch.div_ceil(nchunks);
        let ranges: Vec<(usize, usize)> =
            (0..nchunks).map(|t| (t * chunk, ((t + 1) * chunk).min(batch))).filter(|(a, b)| a < b).collect();
        let results: Vec<Result<Vec<NodeValue>>> = if ranges.len() == 1 {
            vec![self.run_chunk(images, batch, backend, keep)]
        } else {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let slots: Vec<std::sync::Mutex<Option<Result<Vec<NodeValue>>>>> =
                ranges.iter().map(|_| std::sync::Mutex::new(None)).collect();
            let work = || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(lo, hi)) = ranges.get(i) else { break };
                let x = &images[lo * sample..hi * sample];
                let r = int8::simd::single_threaded(|| self.run_chunk(x, hi - lo, backend, keep));
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
            };
            std::thread::scope(|s| {
                let hs: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
                work();
                hs.into_iter().for_each(|h| {
                    let _ = h.join();
                });
            });
            slots
                .into_iter()
                .map(|m| {
                    m.into_inner()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| Err(WqatError::invalid("int8 worker thread panicked")))
                })
                .collect()
        };
        let mut merged: Option<Vec<NodeValue>> = None;
        for r in results {
            let vals = r?;
            match &mut merged {
                None => merged = Some(vals),
                Some(m) => m.iter_mut().zip(vals).for_each(|(a, b)| a.append(b)),
            }
        }
        let vals = merged.unwrap_or_default();
        let last = self.model.layers.len() - 1;
        let logits = vals[vals.len() - 1].to_f32(self.model.layers[last].out);
        let predictions = argmax_rows(&logits, self.model.num_classes());
        Ok(Int8Output { logits, predictions, activations: keep.then_some(vals) })
    }

    /// Runs the whole network on `batch` images; returns the node outputs (all of them when
    /// `keep`, else only the last one).
    fn run_chunk(&self, images: &[f32], batch: usize, backend: CpuBackend, keep: bool) -> Result<Vec<NodeValue>> {
        if let Some(k) = backend.kernel().filter(|&k| self.fast_path(Some(k))) {
            return self.run_fast(images, batch, k, keep, 1);
        }
        let input = NodeValue::from_f32(images.to_vec(), self.model.input);
        let key_mask = self.model.key_mask(images);
        let n = self.model.layers.len();
        // Last consumer of every node, to free outputs early when not keeping them.
        let mut last_use = vec![0usize; n];
        for (i, r) in self.model.nodes.iter().enumerate() {
            for &j in &r.inputs {
                if j != INPUT {
                    last_use[j] = i;
                }
            }
        }
        let mut vals: Vec<Option<NodeValue>> = vec![None; n];
        for (i, r) in self.model.nodes.iter().enumerate() {
            let get = |j: usize| -> Result<&NodeValue> {
                if j == INPUT {
                    Ok(&input)
                } else {
                    vals[j].as_ref().ok_or_else(|| WqatError::invalid("int8 model: input freed early"))
                }
            };
            let x = get(r.inputs[0])?;
            let b = match r.inputs.get(1) {
                Some(&j) => Some(get(j)?),
                None => None,
            };
            let y = self.model.run_node(i, x, b, batch, backend, key_mask.as_deref())?;
            vals[i] = Some(y);
            if !keep {
                for &j in &r.inputs {
                    if j != INPUT && last_use[j] == i && j + 1 != n {
                        vals[j] = None;
                    }
                }
            }
        }
        Ok(vals.into_iter().map(|v| v.unwrap_or(NodeValue::Codes(Vec::new()))).collect())
    }
}

impl Int8Model {
    /// The key padding mask `[batch, T]` (1 = padding) of token-id inputs when the model
    /// embeds them with a padding id; `None` for images.
    pub fn key_mask(&self, inputs: &[f32]) -> Option<Vec<f32>> {
        match self.nodes.first().map(|r| &r.node.op) {
            Some(Op::Embedding { padding_idx: Some(pad), .. }) => {
                Some(inputs.iter().map(|&v| if v == *pad as f32 { 1.0 } else { 0.0 }).collect())
            }
            _ => None,
        }
    }

    /// Runs node `i` on its input value(s) (`b`: the second input of an add); `key_mask`
    /// is [`Int8Model::key_mask`] of the batch's inputs (read by attention and mean pools).
    pub fn run_node(
        &self,
        i: usize,
        x: &NodeValue,
        b: Option<&NodeValue>,
        batch: usize,
        backend: CpuBackend,
        key_mask: Option<&[f32]>,
    ) -> Result<NodeValue> {
        let (r, layer) = self
            .nodes
            .get(i)
            .zip(self.layers.get(i))
            .ok_or_else(|| WqatError::invalid(format!("node index {i} out of range")))?;
        for (t, v) in [Some(x), b].into_iter().enumerate() {
            let (Some(v), Some(&j)) = (v, r.inputs.get(t)) else {
                if t < r.inputs.len() {
                    return Err(WqatError::invalid(format!("node {} takes {} inputs", r.node.name, r.inputs.len())));
                }
                continue;
            };
            let want = batch * r.in_shapes[t].iter().product::<usize>();
            let codes = matches!(v, NodeValue::Codes(_));
            if v.len() != want || codes != self.domain_of(j).quant().is_some() {
                return Err(WqatError::shape(format!(
                    "node {}: input {t} has {} values ({}), expected {want} ({})",
                    r.node.name,
                    v.len(),
                    if codes { "codes" } else { "f32" },
                    if self.domain_of(j).quant().is_some() { "codes" } else { "f32" }
                )));
            }
        }
        let in_dom = self.domain_of(r.inputs[0]);
        let [c, h, w] = r.in_shapes[0];
        let [co, oh, ow] = r.out_shape;
        let y = match (&layer.kind, &r.node.op) {
            (LayerKind::Int(l), Op::Conv { kernel, stride, padding, dilation, groups, .. }) => {
                let zq = in_dom.quant().map(|q| q.zero).unwrap_or(0);
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
                    x_zero: zq,
                };
                let mut out = vec![0u8; batch * co * oh * ow];
                int8::conv2d_packed(backend, &cfg, x.codes()?, &l.weight, &l.bias, &l.requant, &mut out)?;
                NodeValue::Codes(out)
            }
            (LayerKind::Int(l), Op::Linear { out_features, .. }) => {
                let zq = in_dom.quant().map(|q| q.zero).unwrap_or(0);
                let m = batch * r.rows_per_sample();
                let cfg = LinearConfig { m, k: r.in_features(), n: *out_features, x_zero: zq };
                let mut out = vec![0u8; m * out_features];
                int8::linear_packed(backend, &cfg, x.codes()?, &l.weight, &l.bias, &l.requant, &mut out)?;
                NodeValue::Codes(out)
            }
            (LayerKind::IntFloat(l), Op::Linear { out_features, act, .. }) => {
                let qi = in_dom.quant().ok_or_else(|| WqatError::invalid("int8 model: integer layer fed with f32"))?;
                let (m, n) = (batch * r.rows_per_sample(), *out_features);
                let cfg = LinearConfig { m, k: r.in_features(), n, x_zero: qi.zero };
                let mut acc = vec![0i32; m * n];
                int8::linear_acc_packed(backend, &cfg, x.codes()?, &l.weight, &l.bias, &mut acc)?;
                let mut y = dequantize_acc(&acc, qi.scale, &l.weight_scale);
                apply_act(&mut y, *act);
                NodeValue::from_f32(y, layer.out)
            }
            (LayerKind::Patchify, Op::Patchify { patch }) => match x {
                NodeValue::Codes(xc) => {
                    NodeValue::Codes(crate::reference::graph::patchify(xc, batch, r.in_shapes[0], *patch))
                }
                NodeValue::Float(xf) => {
                    NodeValue::Float(crate::reference::graph::patchify(xf, batch, r.in_shapes[0], *patch))
                }
            },
            (LayerKind::Seq(sl), op) => {
                let xf = x.to_f32(in_dom);
                let y = run_seq(sl, op, r, &xf, batch, key_mask)?;
                NodeValue::from_f32(y, layer.out)
            }
            (LayerKind::Float(l), op) => {
                let xf = x.to_f32(in_dom);
                let mut y = match op {
                    Op::Conv { kernel, stride, padding, dilation, groups, act: _, .. } => conv2d_f32(
                        &xf,
                        batch,
                        r.in_shapes[0],
                        &l.weight,
                        &l.bias,
                        r.out_shape,
                        [*kernel, *stride, *padding, *dilation],
                        *groups,
                    ),
                    _ => linear_f32(&xf, batch * r.rows_per_sample(), r.in_features(), &l.weight, &l.bias),
                };
                if let Op::Conv { act, .. } | Op::Linear { act, .. } = op {
                    apply_act(&mut y, *act);
                }
                NodeValue::from_f32(y, layer.out)
            }
            (LayerKind::MaxPool, Op::MaxPool { kernel, stride, padding }) => {
                let s = if *stride == 0 { *kernel } else { *stride };
                match x {
                    NodeValue::Codes(xc) => {
                        let cfg = PoolConfig {
                            batch,
                            channels: c,
                            h,
                            w,
                            kernel: [*kernel; 2],
                            stride: [s; 2],
                            padding: [*padding; 2],
                        };
                        let mut out = vec![0u8; batch * c * oh * ow];
                        int8::max_pool(backend, &cfg, xc, &mut out)?;
                        NodeValue::Codes(out)
                    }
                    NodeValue::Float(xf) => {
                        NodeValue::Float(pool_f32(xf, batch * c, [h, w], *kernel, s, *padding, [oh, ow], false))
                    }
                }
            }
            (LayerKind::AvgPool(rq), op) => {
                let (k, s, p) = match op {
                    Op::AvgPool { kernel, stride, padding } => {
                        ([*kernel; 2], if *stride == 0 { *kernel } else { *stride }, *padding)
                    }
                    _ => ([h, w], 1, 0),
                };
                match (x, rq) {
                    (NodeValue::Codes(xc), Some(rq)) => {
                        NodeValue::Codes(avg_pool_codes(xc, batch * c, [h, w], k, [s; 2], [p; 2], [oh, ow], rq)?)
                    }
                    _ => {
                        let xf = x.to_f32(in_dom);
                        NodeValue::Float(if matches!(op, Op::GlobalAvgPool) {
                            global_avg_f32(&xf, batch * c, h * w)
                        } else {
                            pool_f32(&xf, batch * c, [h, w], k[0], s, p, [oh, ow], true)
                        })
                    }
                }
            }
            (LayerKind::Add(cfg), Op::Add { act }) => {
                let b = b.ok_or_else(|| WqatError::invalid("add without a second input"))?;
                match cfg {
                    Some(cfg) => {
                        let mut out = vec![0u8; x.len()];
                        int8::add(backend, cfg, x.codes()?, b.codes()?, &mut out)?;
                        NodeValue::Codes(out)
                    }
                    None => {
                        let bf = b.to_f32(self.domain_of(r.inputs[1]));
                        let mut y: Vec<f32> = x.to_f32(in_dom).iter().zip(&bf).map(|(a, b)| a + b).collect();
                        apply_act(&mut y, *act);
                        NodeValue::from_f32(y, layer.out)
                    }
                }
            }
            (LayerKind::Flatten, _) => x.clone(),
            _ => {
                return Err(WqatError::invalid(format!(
                    "int8 model: node {} does not match its converted layer",
                    r.node.name
                )))
            }
        };
        Ok(y)
    }
}

/// `f32(acc) * f32(s_in * s_w[c])` per `[rows, channels]`: two correctly rounded f32
/// operations, so a GPU computing the same expression gets the same bits.
pub fn dequantize_acc(acc: &[i32], s_in: f32, s_w: &[f32]) -> Vec<f32> {
    let n = s_w.len().max(1);
    let scale: Vec<f32> = s_w.iter().map(|&w| s_in * w).collect();
    acc.iter().enumerate().map(|(j, &a)| a as f32 * scale[j % n]).collect()
}

/// A transformer op in f32 on `batch` samples (the CPU reference functions: the same
/// arithmetic as `reference::graph`).
fn run_seq(
    sl: &SeqLayer,
    op: &Op,
    r: &crate::model::ResolvedNode,
    x: &[f32],
    batch: usize,
    key_mask: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let [t, d, _] = r.in_shapes[0];
    let bad = || WqatError::invalid(format!("int8 model: node {} does not match its converted layer", r.node.name));
    Ok(match (sl, op) {
        (SeqLayer::Embedding { table }, Op::Embedding { vocab, dim, .. }) => {
            let mut out = Vec::with_capacity(x.len() * dim);
            for (i, &v) in x.iter().enumerate() {
                if !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < *vocab) {
                    return Err(WqatError::shape(format!("token {i} is {v}, not an id below {vocab}")));
                }
                out.extend_from_slice(&table[v as usize * dim..][..*dim]);
            }
            out
        }
        (SeqLayer::ClsPos { cls, pos }, Op::ClsPos { .. }) => {
            crate::reference::sequence::cls_pos_forward(x, cls.as_deref(), pos, batch, d)
        }
        (SeqLayer::LayerNorm { gamma, beta }, Op::LayerNorm { eps }) => {
            crate::reference::layernorm::forward(x, gamma, beta, *eps).0
        }
        (SeqLayer::Attention { probs }, Op::Attention { heads, .. }) => {
            let cfg =
                crate::kernels::attention::AttentionConfig { batch, tokens: t, heads: *heads, head_dim: d / 3 / heads };
            let raw = probs.map(|q| QStateLayout::exact(q.scale, q.inv_scale, q.zero as f32));
            let quant = crate::reference::attention::RefAttentionQuant {
                probs: raw.as_deref().zip(probs.map(|q| QuantSpec::activation(q.bits))),
                ..Default::default()
            };
            crate::reference::attention::forward(&cfg, x, key_mask, &quant).1
        }
        (SeqLayer::TokenPool, Op::TokenPool { mode }) => {
            let pad: Option<Vec<bool>> = match mode {
                TokenPoolMode::Mean => key_mask.map(|m| m.iter().map(|&v| v != 0.0).collect()),
                TokenPoolMode::Cls => None,
            };
            crate::reference::graph::token_pool_f32(x, batch, t, d, *mode, pad.as_deref())
        }
        _ => return Err(bad()),
    })
}
