//! Compiles a model into the fixed dispatch lists of a training step, a calibration pass
//! and an evaluation pass for one batch size. Everything a step touches (activations,
//! gradients, scratch, uniform parameters, bind groups) is created here once; a step then
//! only uploads the batch, queues the learning rate and replays the list in one submit.
//!
//! Forward of a quantized model ("pending fake-quant"): a conv/linear/add output is stored
//! raw and fake-quantized by whoever reads it; convolutions and GEMMs fuse that fake-quant
//! into their operand loads (and the STE mask into their backward), max pool and flatten
//! commute with it (fake-quant is monotone), and adds, average pools and the loss
//! materialize it with a separate fake-quant pass. Conv+BN blocks fold BN into the weight
//! before its fake-quant (PyTorch's ConvBn2d): `sf = gamma/sqrt(running_var+eps)`,
//! `y_conv = conv(x, FQ(w*sf))`, `y = BN(y_conv/sf)`.
//!
//! Backward runs the nodes in reverse. A tensor read by several nodes gets its gradient
//! written by the first backward contribution and accumulated by the others (in place
//! where the kernel can, else through a scratch buffer).

mod backward;
mod quantizers;
mod sequence_ops;

use super::config::ObserverKind;
use super::state::ModelState;
use crate::error::{Result, WqatError};
use crate::gpu::{DType, Dispatch, GpuContext, GpuTensor, Plan};
use crate::kernels::activation::{self, Relu};
use crate::kernels::batchnorm;
use crate::kernels::bias_quant::{self, BnTerms};
use crate::kernels::conv::{self, Conv2dForwardArgs, Conv2dGeom, QuantOperand};
use crate::kernels::gemm::{self, GemmConfig, GemmExtras};
use crate::kernels::histogram::HistogramObserver;
use crate::kernels::{bn_fold, fake_quant, gelu, loss, optim, pool};
use crate::model::params::{self, QuantizerRole, BN_EPS, BN_MOMENTUM};
use crate::model::{Act, Op, INPUT};
use crate::quant::QuantSpec;

/// When a dispatch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Always,
    /// BN with batch statistics (training, BN not frozen).
    BnTrain,
    /// BN with running statistics (evaluation, or frozen BN in training).
    BnEval,
    /// A QAT observer update.
    Observe,
    /// A calibration (PTQ) observer update.
    Calibrate,
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct CompileOptions {
    pub batch: usize,
    /// Fake-quant fused into the kernels (QAT, PTQ); false builds the plain fp32 kernels.
    pub quant: bool,
    /// Build the backward pass and the optimizer.
    pub train: bool,
}

/// Optimizer settings baked into the step.
#[derive(Debug, Clone, Copy)]
pub struct StepOptions {
    pub optimizer: super::config::Optimizer,
    pub momentum: f32,
    pub weight_decay: f32,
    pub clip_grad_norm: Option<f32>,
    /// Skip (rather than apply) updates while the non-finite flag is set.
    pub skip_nonfinite: bool,
    /// Learning-rate multiplier of learned quantizer parameters (LSQ scales, LSQ+ zero
    /// points), `--lsq-lr-mult`.
    pub lsq_lr_mult: f32,
}

/// A quantizer as seen by a kernel.
#[derive(Clone)]
struct Q {
    state: GpuTensor,
    spec: QuantSpec,
    /// The observer of an activation quantizer (weights always track their current range).
    observer: ObserverKind,
    /// Learned scale (and zero point) gradients of an LSQ / LSQ+ quantizer.
    lsq: Option<LsqQ>,
}

/// The first stage of a min/max observer written by the kernel that produced the observed
/// tensor: `(min, max)` per index of `axis` (weights 0, activations 1), at `2k, 2k + 1`.
struct Partials {
    t: GpuTensor,
    axis: usize,
}

/// Where a learned quantizer's gradients go.
#[derive(Clone)]
struct LsqQ {
    /// The quantizer's name (gradient contributions after the first accumulate).
    name: String,
    dscale: GpuTensor,
    /// LSQ+ on an affine quantizer.
    dzero: Option<GpuTensor>,
}

/// The compiled passes of one model at one batch size.
pub struct Compiled {
    pub batch: usize,
    pub quant: bool,
    /// Image input `[B, C, H, W]` (normalized f32), written per batch.
    pub images: GpuTensor,
    /// Labels `[B]` (u32), written per batch.
    pub labels: GpuTensor,
    /// Logits `[B, classes]` as the loss sees them (fake-quantized when quantized).
    pub logits: GpuTensor,
    /// Predictions `[B]` (u32) of the evaluation pass.
    pub preds: GpuTensor,
    /// Training metrics (loss sum, correct, samples, flags), accumulated across steps.
    pub metrics: GpuTensor,
    /// Learning rate and step count of the optimizer.
    pub hyper: GpuTensor,
    /// Raw output of every node (index = node).
    pub outputs: Vec<GpuTensor>,
    forward: Vec<(Tag, Dispatch)>,
    loss: Vec<Dispatch>,
    backward: Vec<(Tag, Dispatch)>,
    optim: Vec<Dispatch>,
    eval_tail: Vec<Dispatch>,
    /// Learned quantizer parameters <- their calibrated states (end of PTQ).
    lsq_init: Vec<Dispatch>,
    histograms: Vec<(String, HistogramObserver)>,
    _keep: Vec<GpuTensor>,
}

fn view(t: &GpuTensor, shape: &[usize]) -> GpuTensor {
    GpuTensor { buffer: t.buffer.clone(), shape: shape.to_vec(), dtype: t.dtype }
}

fn relu_kind(act: Act) -> Option<Relu> {
    match act {
        Act::None | Act::Gelu => None,
        Act::Relu => Some(Relu::Relu),
        Act::Relu6 => Some(Relu::Relu6),
    }
}

impl Compiled {
    /// Builds every pass for `opts.batch` images per step.
    pub fn new(
        ctx: &GpuContext,
        m: &ModelState,
        opts: &CompileOptions,
        step: Option<&StepOptions>,
    ) -> Result<Compiled> {
        Builder::new(ctx, m, opts)?.build(step)
    }

    /// The training step: forward (observers when `observe`; running BN statistics when
    /// `bn_frozen`), loss, backward, optimizer.
    pub fn train_plan(&self, observe: bool, bn_frozen: bool) -> Plan {
        let keep = |t: Tag| match t {
            Tag::Always => true,
            Tag::BnTrain => !bn_frozen,
            Tag::BnEval => bn_frozen,
            Tag::Observe => observe,
            Tag::Calibrate => false,
        };
        let mut plan = Plan::new();
        for (t, d) in &self.forward {
            if keep(*t) {
                plan.push(d.clone());
            }
        }
        plan.dispatches.extend(self.loss.iter().cloned());
        for (t, d) in &self.backward {
            if keep(*t) {
                plan.push(d.clone());
            }
        }
        plan.dispatches.extend(self.optim.iter().cloned());
        plan
    }

    /// Forward with running BN statistics and the calibration observers (PTQ).
    pub fn calibrate_plan(&self) -> Plan {
        self.forward_plan(&[Tag::Always, Tag::BnEval, Tag::Calibrate])
    }

    /// Forward with running BN statistics, then predictions into `preds`.
    pub fn eval_plan(&self) -> Plan {
        let mut p = self.forward_plan(&[Tag::Always, Tag::BnEval]);
        p.dispatches.extend(self.eval_tail.iter().cloned());
        p
    }

    fn forward_plan(&self, tags: &[Tag]) -> Plan {
        let mut plan = Plan::new();
        for (t, d) in &self.forward {
            if tags.contains(t) {
                plan.push(d.clone());
            }
        }
        plan
    }

    /// Sets every learned quantizer's parameters (LSQ scale, LSQ+ zero point) from its
    /// state: run once after calibration, before QAT.
    pub fn lsq_init_plan(&self) -> Plan {
        let mut plan = Plan::new();
        plan.dispatches.extend(self.lsq_init.iter().cloned());
        plan
    }

    /// Histogram observer states by checkpoint name (`{quantizer}.histogram`).
    pub fn histograms(&self) -> Vec<(String, &GpuTensor)> {
        self.histograms.iter().map(|(n, h)| (format!("{n}.histogram"), h.state())).collect()
    }
}

struct Builder<'a> {
    ctx: &'a GpuContext,
    m: &'a ModelState,
    opts: CompileOptions,
    b: usize,
    /// Raw output per node.
    outputs: Vec<GpuTensor>,
    /// Gradient buffer per node output.
    grads: Vec<Option<GpuTensor>>,
    /// Materialized fake-quant per tensor (index nodes.len() = image).
    fq: Vec<Option<GpuTensor>>,
    /// Whether a tensor's gradient has been written in backward.
    written: Vec<bool>,
    images: GpuTensor,
    forward: Vec<(Tag, Dispatch)>,
    backward: Vec<(Tag, Dispatch)>,
    keep: Vec<GpuTensor>,
    histograms: Vec<(String, HistogramObserver)>,
    /// Per node, what backward needs (filled by forward).
    saved: Vec<NodeBuffers>,
    /// Key padding mask `[B, T]` (1 = padding) of a token-id input with a padding id.
    key_mask: Option<GpuTensor>,
    /// Learned quantizers whose gradients have been written in backward.
    lsq_written: std::collections::HashSet<String>,
    /// The training metrics buffer, once the backward is being built.
    metrics: Option<GpuTensor>,
    /// Parameters whose gradient kernel flags non-finite values itself (no nonfinite_check).
    guarded: std::collections::HashSet<String>,
}

#[derive(Default, Clone)]
struct NodeBuffers {
    /// Conv+BN: folded weight, scale factors, conv output, BN input, BN saved stats.
    w_fold: Option<GpuTensor>,
    sf: Option<GpuTensor>,
    /// The running variance the fold used: the BN forward updates `running_var` before the
    /// backward reads `d sf / d gamma = 1 / sqrt(running_var + eps)`, so it is copied first.
    rv_used: Option<GpuTensor>,
    /// The conv output (the BN input is `y_conv / sf` when folded, `y_conv` itself in fp32).
    y_conv: Option<GpuTensor>,
    bn_saved: Option<GpuTensor>,
    /// `(min, max)` partials of the folded weight, written by the fold (weight observer).
    w_partials: Option<GpuTensor>,
    /// `(min, max)` partials of the node output, written by its BN kernel (per channel,
    /// `partials_axis` 1) or its add (per chunk, `partials_axis` usize::MAX): output observer.
    out_partials: Option<GpuTensor>,
    partials_axis: usize,
    /// Pre-activation (ReLU6, GELU, or an add's sum), when the activation is not fused.
    pre_act: Option<GpuTensor>,
    /// LayerNorm: the input it normalized (materialized fake-quant or raw) and its per-row
    /// (mean, rstd); attention: the input qkv and the softmax probabilities.
    seq_input: Option<GpuTensor>,
    seq_saved: Option<GpuTensor>,
}

impl<'a> Builder<'a> {
    fn new(ctx: &'a GpuContext, m: &'a ModelState, opts: &CompileOptions) -> Result<Builder<'a>> {
        if opts.batch == 0 {
            return Err(WqatError::invalid("batch size must be positive"));
        }
        let b = opts.batch;
        let [c, h, w] = m.graph.input;
        let images = GpuTensor::zeros(ctx, &[b, c, h, w], DType::F32)?;
        let mut outputs: Vec<GpuTensor> = Vec::new();
        for r in &m.nodes {
            let [c, h, w] = r.out_shape;
            if r.out_seq {
                outputs.push(GpuTensor::zeros(ctx, &[b, c, h], DType::F32)?);
                continue;
            }
            let shape = match r.node.op {
                Op::Flatten => {
                    // A view of its input: no copy forward.
                    let j = r.inputs[0];
                    let src = if j == INPUT { &images } else { &outputs[j] };
                    outputs.push(view(src, &[b, c]));
                    continue;
                }
                Op::Linear { .. } | Op::GlobalAvgPool | Op::TokenPool { .. } => vec![b, c],
                _ => vec![b, c, h, w],
            };
            outputs.push(GpuTensor::zeros(ctx, &shape, DType::F32)?);
        }
        let n = m.nodes.len();
        let key_mask = sequence_ops::key_mask_buffer(ctx, m, b)?;
        Ok(Builder {
            ctx,
            m,
            opts: *opts,
            b,
            outputs,
            grads: vec![None; n],
            fq: vec![None; n + 1],
            written: vec![false; n],
            images,
            forward: Vec::new(),
            backward: Vec::new(),
            keep: Vec::new(),
            histograms: Vec::new(),
            saved: vec![NodeBuffers::default(); n],
            key_mask,
            lsq_written: Default::default(),
            metrics: None,
            guarded: Default::default(),
        })
    }

    /// Raw tensor `t` (`INPUT` = image).
    fn raw(&self, t: usize) -> &GpuTensor {
        if t == INPUT {
            &self.images
        } else {
            &self.outputs[t]
        }
    }

    fn param(&self, name: &str) -> Result<GpuTensor> {
        Ok(self.m.param(name)?.value.clone())
    }
    fn grad_of(&self, name: &str) -> Result<GpuTensor> {
        self.m.param(name)?.grad.clone().ok_or_else(|| WqatError::invalid(format!("{name} has no gradient")))
    }

    fn zeros(&mut self, shape: &[usize]) -> Result<GpuTensor> {
        let t = GpuTensor::zeros(self.ctx, shape, DType::F32)?;
        self.keep.push(t.clone());
        Ok(t)
    }

    fn fwd(&mut self, tag: Tag, d: Dispatch) {
        self.forward.push((tag, d));
    }
    fn bwd(&mut self, tag: Tag, d: Dispatch) {
        self.backward.push((tag, d));
    }

    fn build(mut self, step: Option<&StepOptions>) -> Result<Compiled> {
        let ctx = self.ctx;
        let nodes = self.m.nodes.clone();
        self.record_key_mask()?;
        if self.opts.quant && params::input_is_quantized(&nodes) {
            let q = self.carried(INPUT).expect("input quantizer exists");
            let img = self.images.clone();
            self.observe("input.output_quant", &q, &img, false)?;
        }
        for i in 0..nodes.len() {
            self.forward_node(i)?;
            if self.opts.quant && params::has_output_quant(&nodes, i) {
                if let Some(q) = self.q(QuantizerRole::Output(i)) {
                    let name = params::output_quant_name(&nodes[i].node.name);
                    let out = self.outputs[i].clone();
                    let axis = self.saved[i].partials_axis;
                    let part = self.saved[i].out_partials.clone().map(|t| Partials { t, axis });
                    self.observe_from(&name, &q, &out, false, part.as_ref())?;
                }
            }
        }
        let last = nodes.len() - 1;
        let classes = self.m.graph.num_classes;
        let logits_raw = view(&self.outputs[last], &[self.b, classes]);
        let logits = view(&self.materialized(last)?, &[self.b, classes]);
        let labels = GpuTensor::zeros(ctx, &[self.b], DType::U32)?;
        let preds = GpuTensor::zeros(ctx, &[self.b], DType::U32)?;
        let metrics = loss::new_metrics(ctx)?;
        let hyper = optim::new_hyper(ctx)?;
        let eval_tail = vec![loss::argmax(ctx, &logits, &preds)?];
        let mut loss_d = Vec::new();
        let mut optim_d = Vec::new();
        if self.opts.train {
            let step = step.ok_or_else(|| WqatError::invalid("training build needs optimizer options"))?;
            self.metrics = Some(metrics.clone());
            for i in 0..nodes.len() {
                self.grads[i] = Some(self.zeros(&self.outputs[i].shape.clone())?);
            }
            // Flatten shares its input's buffer forward, but keeps its own gradient.
            let dlast = view(self.grads[last].as_ref().expect("set"), &[self.b, classes]);
            match self.carried(last) {
                Some(q) => {
                    let dfq = self.zeros(&[self.b, classes])?;
                    loss_d = loss::softmax_cross_entropy(ctx, &logits, &labels, &dfq, &metrics, 1.0)?;
                    self.lsq_grad(&q, &logits_raw, &dfq, false)?;
                    self.bwd(Tag::Always, fake_quant::ste_backward(ctx, &logits_raw, &q.state, &dfq, &dlast, &q.spec)?);
                }
                None => loss_d = loss::softmax_cross_entropy(ctx, &logits, &labels, &dlast, &metrics, 1.0)?,
            }
            self.written[last] = true;
            for i in (0..nodes.len()).rev() {
                self.backward_node(i)?;
            }
            optim_d = self.optimizer(step, &hyper, &metrics)?;
        }
        let lsq_init = if self.opts.quant { self.lsq_init_dispatches()? } else { Vec::new() };
        let quant = self.opts.quant;
        let Builder { b, outputs, forward, backward, keep, histograms, images, .. } = self;
        Ok(Compiled {
            batch: b,
            quant,
            images,
            labels,
            logits,
            preds,
            metrics,
            hyper,
            outputs,
            forward,
            loss: loss_d,
            backward,
            optim: optim_d,
            eval_tail,
            lsq_init,
            histograms,
            _keep: keep,
        })
    }

    fn conv_cfg(&self, i: usize) -> Conv2dGeom {
        let r = &self.m.nodes[i];
        let [c_in, h, w] = r.in_shapes[0];
        match r.node.op {
            Op::Conv { out_channels, kernel, stride, padding, dilation, groups, .. } => {
                Conv2dGeom::new(self.b, c_in, h, w, out_channels, kernel)
                    .with_stride(stride)
                    .with_padding(padding)
                    .with_dilation(dilation)
                    .with_groups(groups)
            }
            _ => unreachable!("conv_cfg of a non-conv node"),
        }
    }

    fn forward_node(&mut self, i: usize) -> Result<()> {
        let ctx = self.ctx;
        let r = self.m.nodes[i].clone();
        let name = r.node.name.clone();
        let out = self.outputs[i].clone();
        match r.node.op {
            Op::Conv { bias, bn, act, .. } => {
                let cfg = self.conv_cfg(i);
                let x = view(self.raw(r.inputs[0]), &cfg.x_shape());
                let xq = self.carried(r.inputs[0]);
                let wq = self.weight_q(i);
                let w = self.param(&params::weight_name(&name))?;
                let relu_fused = act == Act::Relu;
                // Conv+BN folds BN into the weight only where the weight is fake-quantized.
                let fold = bn && self.opts.quant;
                let mut nb = NodeBuffers::default();
                let (w_used, y_conv) = if bn {
                    if bias {
                        return Err(WqatError::invalid(format!(
                            "layer {name}: a conv with both a bias and a fused batch norm is not supported"
                        )));
                    }
                    if !fold {
                        // fp32: no weight fake-quant, so plain conv then BN (the fold would cancel).
                        (w.clone(), self.zeros(&out.shape)?)
                    } else {
                        let p = r.node.bn_prefix();
                        let gamma = self.param(&format!("{p}.weight"))?;
                        let rv = self.param(&format!("{p}.running_var"))?;
                        let c = cfg.c_out;
                        let sf = self.zeros(&[c])?;
                        let w_fold = self.zeros(&w.shape)?;
                        // The fold also copies the running variance it used (for the
                        // backward) and writes the weight observer's first stage.
                        let rv_used = if self.opts.train { Some(self.zeros(&[c])?) } else { None };
                        let w_part = self.zeros(&[2 * c])?;
                        let d = bn_fold::fold_forward_obs(
                            ctx,
                            &w,
                            &gamma,
                            &rv,
                            &sf,
                            &w_fold,
                            rv_used.as_ref(),
                            &w_part,
                            BN_EPS,
                        )?;
                        self.fwd(Tag::Always, d);
                        nb.rv_used = rv_used;
                        nb.w_partials = Some(w_part);
                        let y_conv = self.zeros(&out.shape)?;
                        nb.sf = Some(sf);
                        nb.w_fold = Some(w_fold.clone());
                        (w_fold, y_conv)
                    }
                } else {
                    (w.clone(), out.clone())
                };
                if let Some(q) = &wq {
                    let part = nb.w_partials.clone().map(|t| Partials { t, axis: 0 });
                    self.observe_from(&params::weight_quant_name(&name), q, &w_used, true, part.as_ref())?;
                }
                let bias_t = if bias && !bn { Some(self.param(&params::bias_name(&name))?) } else { None };
                let bias_t = self.quantized_bias(bias_t, &xq, &wq)?;
                // Without BN the conv writes the block output; ReLU fuses there, ReLU6 runs after.
                let (conv_out, pre) = if !bn && act == Act::Relu6 {
                    let pre = self.zeros(&out.shape)?;
                    (pre.clone(), Some(pre))
                } else {
                    (y_conv.clone(), None)
                };
                let args = Conv2dForwardArgs {
                    x: &x,
                    w: &w_used,
                    bias: bias_t.as_ref(),
                    x_quant: xq.as_ref().map(|q| QuantOperand { state: &q.state, spec: q.spec }),
                    w_quant: wq.as_ref().map(|q| QuantOperand { state: &q.state, spec: q.spec }),
                    relu: !bn && relu_fused,
                    y: &conv_out,
                };
                self.fwd(Tag::Always, conv::conv2d_forward(ctx, &cfg, &args)?);
                if let Some(pre) = &pre {
                    self.fwd(Tag::Always, activation::relu_forward(ctx, pre, &out, Relu::Relu6)?);
                    nb.pre_act = Some(pre.clone());
                }
                if bn {
                    let p = r.node.bn_prefix();
                    let gamma = self.param(&format!("{p}.weight"))?;
                    let beta = self.param(&format!("{p}.bias"))?;
                    let rm = self.param(&format!("{p}.running_mean"))?;
                    let rv = self.param(&format!("{p}.running_var"))?;
                    // BN on y_conv / sf (the fold's channel division fused into the BN
                    // kernels), statistics, apply (+ReLU) and the output observer's first
                    // stage in one pass per channel.
                    let sf = if fold { nb.sf.clone() } else { None };
                    let saved = self.zeros(&[2 * cfg.c_out])?;
                    let part = self.zeros(&[2 * cfg.c_out])?;
                    let bn_out = if act == Act::Relu6 { self.zeros(&out.shape)? } else { out.clone() };
                    // With running statistics the block adds the folded bias, which the
                    // simulation quantizes as the integer model does (batch statistics have
                    // no fixed bias: training mode keeps beta, as PyTorch's ConvBn2d does).
                    let beta_eval = match (&xq, &wq) {
                        (Some(x), Some(w)) if fold => {
                            let bq = self.zeros(&[cfg.c_out])?;
                            let terms = BnTerms { gamma: &gamma, running_mean: &rm, running_var: &rv, eps: BN_EPS };
                            let d = bias_quant::quantize_bias(ctx, &beta, Some(terms), &x.state, &w.state, &bq)?;
                            self.fwd(Tag::BnEval, d);
                            Some(bq)
                        }
                        _ => None,
                    };
                    let b_eval = beta_eval.as_ref().unwrap_or(&beta);
                    for (training, b) in [(true, &beta), (false, b_eval)] {
                        if training && !self.opts.train {
                            continue;
                        }
                        let args = batchnorm::BnForward {
                            x: &y_conv,
                            sf: sf.as_ref(),
                            saved: &saved,
                            running_mean: &rm,
                            running_var: &rv,
                            gamma: &gamma,
                            beta: b,
                            y: &bn_out,
                            partials: &part,
                        };
                        let d = batchnorm::bn_forward(ctx, &args, training, relu_fused, BN_EPS, BN_MOMENTUM)?;
                        self.fwd(if training { Tag::BnTrain } else { Tag::BnEval }, d);
                    }
                    if act != Act::Relu6 {
                        nb.partials_axis = 1;
                        nb.out_partials = Some(part);
                    }
                    if act == Act::Relu6 {
                        self.fwd(Tag::Always, activation::relu_forward(ctx, &bn_out, &out, Relu::Relu6)?);
                        nb.pre_act = Some(bn_out);
                    }
                    nb.y_conv = Some(y_conv);
                    nb.bn_saved = Some(saved);
                }
                self.saved[i] = nb;
            }
            Op::Linear { out_features, bias, act } => {
                // Per token on a sequence: one GEMM over batch * tokens rows.
                let inp = r.in_features();
                let rows = self.b * r.rows_per_sample();
                let x = view(self.raw(r.inputs[0]), &[rows, inp]);
                let xq = self.carried(r.inputs[0]);
                let wq = self.weight_q(i);
                let wt = self.param(&params::weight_name(&name))?;
                if let Some(q) = &wq {
                    self.observe(&params::weight_quant_name(&name), q, &wt, true)?;
                }
                let bias_t = if bias { Some(self.param(&params::bias_name(&name))?) } else { None };
                let bias_t = self.quantized_bias(bias_t, &xq, &wq)?;
                let mut cfg = GemmConfig::linear_forward(
                    rows,
                    inp,
                    out_features,
                    xq.as_ref().map(|q| q.spec),
                    wq.as_ref().map(|q| q.spec),
                );
                cfg.bias = bias;
                cfg.relu = act == Act::Relu;
                let separate_act = matches!(act, Act::Relu6 | Act::Gelu);
                let target = if separate_act { self.zeros(&out.shape)? } else { out.clone() };
                let extras = GemmExtras {
                    bias: bias_t.as_ref(),
                    qa: xq.as_ref().map(|q| &q.state),
                    qb: wq.as_ref().map(|q| &q.state),
                    ..Default::default()
                };
                let y = view(&target, &[rows, out_features]);
                self.fwd(Tag::Always, gemm::gemm(ctx, &cfg, &x, &wt, &y, &extras)?);
                match act {
                    Act::Relu6 => self.fwd(Tag::Always, activation::relu_forward(ctx, &target, &out, Relu::Relu6)?),
                    Act::Gelu => self.fwd(Tag::Always, gelu::gelu_forward(ctx, &target, &out)?),
                    _ => {}
                }
                if separate_act {
                    self.saved[i].pre_act = Some(target);
                }
            }
            Op::MaxPool { kernel, stride, padding } => {
                let spec = pool_spec(kernel, stride, padding);
                let x = self.raw(r.inputs[0]).clone();
                let argmax = GpuTensor::zeros(ctx, &out.shape, DType::U32)?;
                self.keep.push(argmax.clone());
                self.fwd(Tag::Always, pool::maxpool_forward(ctx, &x, &out, &argmax, &spec)?);
                self.saved[i].pre_act = Some(argmax);
            }
            // A quantized input is pooled on its codes, rounded as the integer model rounds.
            Op::AvgPool { kernel, stride, padding } => {
                let spec = pool_spec(kernel, stride, padding);
                let x = self.materialized(r.inputs[0])?;
                let d = match self.carried(r.inputs[0]) {
                    Some(q) => pool::avgpool_forward_q(ctx, &x, &out, &spec, &q.state)?,
                    None => pool::avgpool_forward(ctx, &x, &out, &spec)?,
                };
                self.fwd(Tag::Always, d);
            }
            Op::GlobalAvgPool => {
                let x = self.materialized(r.inputs[0])?;
                let d = match self.carried(r.inputs[0]) {
                    Some(q) => pool::global_avgpool_forward_q(ctx, &x, &out, &q.state)?,
                    None => pool::global_avgpool_forward(ctx, &x, &out)?,
                };
                self.fwd(Tag::Always, d);
            }
            Op::Flatten => {}
            Op::Embedding { .. }
            | Op::Patchify { .. }
            | Op::ClsPos { .. }
            | Op::LayerNorm { .. }
            | Op::Attention { .. }
            | Op::TokenPool { .. } => self.forward_sequence(i)?,
            Op::Add { act } if act != Act::Relu6 => {
                // Per-tensor input fake-quant, the add, the ReLU and the output observer's first
                // stage in one pass (a per-channel input quantizer is materialized first).
                let mut ins = Vec::new();
                for &t in &r.inputs[..2] {
                    match self.carried(t) {
                        Some(q) if q.spec.channel_axis.is_none() => ins.push((view(self.raw(t), &out.shape), Some(q))),
                        _ => ins.push((view(&self.materialized(t)?, &out.shape), None)),
                    }
                }
                let aq =
                    |k: usize| ins[k].1.as_ref().map(|q| activation::AddInputQuant { state: &q.state, spec: q.spec });
                let part = self.zeros(&[2 * activation::add_quant_chunks(ctx, out.len())])?;
                let relu = act == Act::Relu;
                let d = activation::add_quant(ctx, &ins[0].0, aq(0), &ins[1].0, aq(1), &out, relu, &part)?;
                self.fwd(Tag::Always, d);
                self.saved[i].out_partials = Some(part);
                self.saved[i].partials_axis = usize::MAX;
            }
            Op::Add { act } => {
                let a = self.materialized(r.inputs[0])?;
                let b = self.materialized(r.inputs[1])?;
                let a = view(&a, &out.shape);
                let b = view(&b, &out.shape);
                match relu_kind(act) {
                    None => self.fwd(Tag::Always, activation::add_forward(ctx, &a, &b, &out)?),
                    Some(k) => {
                        let sum = self.zeros(&out.shape)?;
                        self.fwd(Tag::Always, activation::add_forward(ctx, &a, &b, &sum)?);
                        self.fwd(Tag::Always, activation::relu_forward(ctx, &sum, &out, k)?);
                        self.saved[i].pre_act = Some(sum);
                    }
                }
            }
        }
        Ok(())
    }
}

fn pool_spec(kernel: usize, stride: usize, padding: usize) -> pool::PoolSpec {
    let s = if stride == 0 { kernel } else { stride };
    pool::PoolSpec { kernel: (kernel, kernel), stride: (s, s), padding: (padding, padding) }
}
