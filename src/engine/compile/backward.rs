//! The backward half of compilation: gradients of every node in reverse order (written by
//! the first contribution, accumulated by the others) and the optimizer step.

use super::{pool_spec, relu_kind, view, Builder, StepOptions, Tag};
use crate::engine::config::Optimizer;
use crate::error::Result;
use crate::gpu::{Dispatch, GpuTensor};
use crate::kernels::activation::{self, Relu};
use crate::kernels::batchnorm::{self, BnBackward, BnFoldGrad};
use crate::kernels::conv::{self, Conv2dBackwardDataArgs, Conv2dBackwardWeightArgs, Conv2dGeom, QuantOperand, SteMask};
use crate::kernels::gemm::{self, GemmConfig, GemmExtras};
use crate::kernels::{bn_fold, fake_quant, gelu, loss, lsq, optim, pool};
use crate::model::params::{self, BN_EPS};
use crate::model::{Act, Op, INPUT};

impl Builder<'_> {
    /// Gradient target for tensor `t`: `(buffer, accumulate)`. Returns `None` for the image.
    pub(super) fn grad_target(&mut self, t: usize) -> Option<(GpuTensor, bool)> {
        if t == INPUT {
            return None;
        }
        let g = self.grads[t].clone().expect("gradients allocated");
        let acc = self.written[t];
        self.written[t] = true;
        Some((g, acc))
    }

    /// Emits "write `src` into the gradient of `t`" for kernels that cannot accumulate:
    /// `produce(dst)` writes a full gradient into `dst`.
    pub(super) fn emit_grad(&mut self, t: usize, produce: impl FnOnce(&GpuTensor) -> Result<Dispatch>) -> Result<()> {
        let Some((g, acc)) = self.grad_target(t) else { return Ok(()) };
        if acc {
            let tmp = self.zeros(&g.shape)?;
            let d = produce(&tmp)?;
            self.bwd(Tag::Always, d);
            self.bwd(Tag::Always, activation::accumulate(self.ctx, &tmp, &g)?);
        } else {
            let d = produce(&g)?;
            self.bwd(Tag::Always, d);
        }
        Ok(())
    }

    /// Gradient wrt a tensor given the gradient `d` wrt its materialized fake-quant.
    /// A learned (LSQ) quantizer also gets its scale gradient here (the image's too).
    pub(super) fn grad_through_fq(&mut self, t: usize, d: &GpuTensor) -> Result<()> {
        let ctx = self.ctx;
        let raw = self.raw(t).clone();
        let d = view(d, &raw.shape);
        if let Some(q) = self.carried(t) {
            self.lsq_grad(&q, &raw, &d, false)?;
        }
        if t == INPUT {
            return Ok(());
        }
        match self.carried(t) {
            Some(q) => self
                .emit_grad(t, |dst| fake_quant::ste_backward(ctx, &raw, &q.state, &d, &view(dst, &raw.shape), &q.spec)),
            None => self.emit_grad(t, |dst| gemm::copy_f32(ctx, &d, &view(dst, &raw.shape))),
        }
    }

    /// Gradient wrt input tensor `t` of a node whose backward `produce` writes the gradient
    /// wrt the value it read (`materialized(t)`): straight into `t`'s gradient when `t`
    /// carries no quantizer and nothing was written yet, else through a scratch buffer and
    /// the STE (or an accumulate).
    pub(super) fn input_grad(
        &mut self,
        t: usize,
        produce: impl FnOnce(&GpuTensor) -> Result<Vec<Dispatch>>,
    ) -> Result<()> {
        if t == INPUT {
            return Ok(());
        }
        let shape = self.raw(t).shape.clone();
        if self.carried(t).is_none() && !self.written[t] {
            let (g, _) = self.grad_target(t).expect("not the input");
            for d in produce(&view(&g, &shape))? {
                self.bwd(Tag::Always, d);
            }
            return Ok(());
        }
        let tmp = self.zeros(&shape)?;
        for d in produce(&tmp)? {
            self.bwd(Tag::Always, d);
        }
        self.grad_through_fq(t, &tmp)
    }

    pub(super) fn backward_node(&mut self, i: usize) -> Result<()> {
        let ctx = self.ctx;
        let r = self.m.nodes[i].clone();
        let name = r.node.name.clone();
        let out = self.outputs[i].clone();
        let dout = self.grads[i].clone().expect("gradients allocated");
        if !self.written[i] {
            // Nothing reads this node's output: its gradient is zero.
            self.bwd(Tag::Always, activation::fill(ctx, &dout, 0.0)?);
            self.written[i] = true;
        }
        let nb = self.saved[i].clone();
        match r.node.op {
            Op::Conv { bias, bn, act, .. } => {
                let cfg = self.conv_cfg(i);
                let x = view(self.raw(r.inputs[0]), &cfg.x_shape());
                let xq = self.carried(r.inputs[0]);
                let wq = self.weight_q(i);
                let w = self.param(&params::weight_name(&name))?;
                let dw = self.grad_of(&params::weight_name(&name))?;
                let fold = bn && self.opts.quant;
                // dy_conv: the gradient wrt the conv output.
                let (dy_conv, fold_tsum) = if bn {
                    let p = r.node.bn_prefix();
                    let gamma = self.param(&format!("{p}.weight"))?;
                    let dgamma = self.grad_of(&format!("{p}.weight"))?;
                    let dbeta = self.grad_of(&format!("{p}.bias"))?;
                    let (dbn_out, y_relu) = match act {
                        Act::Relu6 => {
                            let pre = nb.pre_act.clone().expect("saved");
                            let d = self.zeros(&out.shape)?;
                            self.bwd(Tag::Always, activation::relu_backward(ctx, &pre, &dout, &d, Relu::Relu6)?);
                            (d, None)
                        }
                        Act::Relu => (dout.clone(), Some(out.clone())),
                        Act::None | Act::Gelu => (dout.clone(), None),
                    };
                    // One pass per channel: dgamma, dbeta and the gradient wrt the conv output
                    // (divided by sf when folded), plus the fold's activation sum.
                    let y_conv = nb.y_conv.clone().expect("saved");
                    let saved = nb.bn_saved.clone().expect("saved");
                    let d_conv = self.zeros(&out.shape)?;
                    let t = BnBackward {
                        x: &y_conv,
                        saved: &saved,
                        gamma: &gamma,
                        dy: &dbn_out,
                        y_relu: y_relu.as_ref(),
                        dgamma: &dgamma,
                        dbeta: &dbeta,
                        dx: &d_conv,
                    };
                    let sf = nb.sf.clone();
                    let tsum = if fold { Some(self.zeros(&[cfg.c_out])?) } else { None };
                    let fg = match (&sf, &tsum) {
                        (Some(sf), Some(tsum)) => Some(BnFoldGrad { sf, tsum }),
                        _ => None,
                    };
                    // The kernel flags a non-finite dbeta (and the final dgamma when not folded).
                    let guard = self.metrics.clone();
                    self.bwd(Tag::BnTrain, batchnorm::bn_backward(ctx, &t, true, fg, guard.as_ref())?);
                    self.bwd(Tag::BnEval, batchnorm::bn_backward(ctx, &t, false, fg, guard.as_ref())?);
                    self.guarded.insert(format!("{p}.bias"));
                    if !fold {
                        self.guarded.insert(format!("{p}.weight"));
                    }
                    (d_conv, tsum)
                } else {
                    match act {
                        Act::None | Act::Gelu => (dout.clone(), None),
                        Act::Relu | Act::Relu6 => {
                            let pre_or_out = nb.pre_act.clone().unwrap_or_else(|| out.clone());
                            let k = relu_kind(act).expect("activation");
                            let d = self.zeros(&out.shape)?;
                            self.bwd(Tag::Always, activation::relu_backward(ctx, &pre_or_out, &dout, &d, k)?);
                            (d, None)
                        }
                    }
                };
                let dy_conv = view(&dy_conv, &cfg.y_shape());
                let w_used = nb.w_fold.clone().unwrap_or_else(|| w.clone());
                // Data gradient (the conv kernel accumulates in place). A learned input
                // quantizer needs the gradient wrt its fake-quantized values unmasked: into a
                // scratch, then the STE and the LSQ reduction (the image's scale too).
                if let Some(q) = xq.as_ref().filter(|q| q.lsq.is_some()) {
                    let tmp = self.zeros(&cfg.x_shape())?;
                    let args = Conv2dBackwardDataArgs {
                        dy: &dy_conv,
                        w: &w_used,
                        w_quant: wq.as_ref().map(|q| QuantOperand { state: &q.state, spec: q.spec }),
                        x_mask: None,
                        accumulate: false,
                        dx: &tmp,
                    };
                    let _ = q;
                    self.bwd(Tag::Always, conv::conv2d_backward_data(ctx, &cfg, &args)?);
                    self.grad_through_fq(r.inputs[0], &tmp)?;
                } else if let Some((g, acc)) = self.grad_target(r.inputs[0]) {
                    let g = view(&g, &cfg.x_shape());
                    let args = Conv2dBackwardDataArgs {
                        dy: &dy_conv,
                        w: &w_used,
                        w_quant: wq.as_ref().map(|q| QuantOperand { state: &q.state, spec: q.spec }),
                        x_mask: xq.as_ref().map(|q| SteMask { values: &x, state: &q.state, spec: q.spec }),
                        accumulate: acc,
                        dx: &g,
                    };
                    self.bwd(Tag::Always, conv::conv2d_backward_data(ctx, &cfg, &args)?);
                }
                let dw_target = if fold { self.zeros(&w.shape)? } else { dw.clone() };
                // A learned weight quantizer: the unmasked gradient wrt FQ(w) first, then the
                // STE mask and the LSQ reduction.
                let wq_lsq = wq.clone().filter(|q| q.lsq.is_some());
                let dwq = if wq_lsq.is_some() { self.zeros(&w.shape)? } else { dw_target.clone() };
                let args = Conv2dBackwardWeightArgs {
                    x: &x,
                    x_quant: xq.as_ref().map(|q| QuantOperand { state: &q.state, spec: q.spec }),
                    dy: &dy_conv,
                    w_mask: match &wq_lsq {
                        Some(_) => None,
                        None => wq.as_ref().map(|q| SteMask { values: &w_used, state: &q.state, spec: q.spec }),
                    },
                    dw: &dwq,
                };
                let wg = conv::conv2d_backward_weight(ctx, &cfg, &args)?;
                self.keep.push(wg.partials.clone());
                for d in wg.dispatches() {
                    self.bwd(Tag::Always, d.clone());
                }
                if let Some(q) = &wq_lsq {
                    self.lsq_grad(q, &w_used, &dwq, true)?;
                    self.bwd(Tag::Always, fake_quant::ste_backward(ctx, &w_used, &q.state, &dwq, &dw_target, &q.spec)?);
                }
                if bias && !bn {
                    let db = self.grad_of(&params::bias_name(&name))?;
                    self.bwd(Tag::Always, conv::conv2d_bias_grad(ctx, &cfg, &dy_conv, &db)?);
                }
                if fold {
                    let p = r.node.bn_prefix();
                    let rv = nb.rv_used.clone().expect("saved");
                    let dgamma = self.grad_of(&format!("{p}.weight"))?;
                    let sf = nb.sf.clone().expect("saved");
                    let tsum = fold_tsum.clone().expect("bn backward ran");
                    let guard = self.metrics.clone();
                    let d = bn_fold::fold_backward(
                        ctx,
                        &w,
                        &dw_target,
                        &sf,
                        &dw,
                        &tsum,
                        &rv,
                        &dgamma,
                        BN_EPS,
                        guard.as_ref(),
                    )?;
                    self.bwd(Tag::Always, d);
                    self.guarded.insert(format!("{p}.weight"));
                }
            }
            Op::Linear { out_features, bias, act } => {
                let inp = r.in_features();
                let rows = self.b * r.rows_per_sample();
                let x = view(self.raw(r.inputs[0]), &[rows, inp]);
                let xq = self.carried(r.inputs[0]);
                let wq = self.weight_q(i);
                let wt = self.param(&params::weight_name(&name))?;
                let dw = self.grad_of(&params::weight_name(&name))?;
                let dz = match (act, relu_kind(act)) {
                    (Act::Gelu, _) => {
                        let pre = self.saved[i].pre_act.clone().expect("saved");
                        let d = self.zeros(&out.shape)?;
                        self.bwd(Tag::Always, gelu::gelu_backward(ctx, &pre, &dout, &d)?);
                        d
                    }
                    (_, None) => dout.clone(),
                    (_, Some(k)) => {
                        let src = self.saved[i].pre_act.clone().unwrap_or_else(|| out.clone());
                        let d = self.zeros(&out.shape)?;
                        self.bwd(Tag::Always, activation::relu_backward(ctx, &src, &dout, &d, k)?);
                        d
                    }
                };
                let dz = view(&dz, &[rows, out_features]);
                let (xs, ws) = (xq.as_ref().map(|q| q.spec), wq.as_ref().map(|q| q.spec));
                // Learned quantizers take the unmasked gradient (scratch, then STE + LSQ).
                let wq_lsq = wq.clone().filter(|q| q.lsq.is_some());
                let xq_lsq = xq.clone().filter(|q| q.lsq.is_some());
                let wmask = if wq_lsq.is_some() { None } else { wq.as_ref() };
                let cfg_w = GemmConfig::linear_backward_weight(rows, inp, out_features, xs, wmask.map(|q| q.spec));
                let dwq = if wq_lsq.is_some() { self.zeros(&wt.shape)? } else { dw.clone() };
                let ex = GemmExtras {
                    qb: xq.as_ref().map(|q| &q.state),
                    mask_src: wmask.map(|_| &wt),
                    mask_state: wmask.map(|q| &q.state),
                    ..Default::default()
                };
                self.bwd(Tag::Always, gemm::gemm(ctx, &cfg_w, &dz, &x, &dwq, &ex)?);
                if let Some(q) = &wq_lsq {
                    self.lsq_grad(q, &wt, &dwq, true)?;
                    self.bwd(Tag::Always, fake_quant::ste_backward(ctx, &wt, &q.state, &dwq, &dw, &q.spec)?);
                }
                if bias {
                    let db = self.grad_of(&params::bias_name(&name))?;
                    let cfg = Conv2dGeom::new(rows, inp, 1, 1, out_features, 1);
                    let dz4 = view(&dz, &cfg.y_shape());
                    self.bwd(Tag::Always, conv::conv2d_bias_grad(ctx, &cfg, &dz4, &db)?);
                }
                if xq_lsq.is_some() {
                    let tmp = self.zeros(&[rows, inp])?;
                    let cfg_x = GemmConfig::linear_backward_input(rows, inp, out_features, None, ws);
                    let ex = GemmExtras { qb: wq.as_ref().map(|q| &q.state), ..Default::default() };
                    self.bwd(Tag::Always, gemm::gemm(ctx, &cfg_x, &dz, &wt, &tmp, &ex)?);
                    self.grad_through_fq(r.inputs[0], &tmp)?;
                } else if let Some((g, acc)) = self.grad_target(r.inputs[0]) {
                    let g = view(&g, &[rows, inp]);
                    let mut cfg_x = GemmConfig::linear_backward_input(rows, inp, out_features, xs, ws);
                    cfg_x.accumulate = acc;
                    let ex = GemmExtras {
                        qb: wq.as_ref().map(|q| &q.state),
                        mask_src: xq.as_ref().map(|_| &x),
                        mask_state: xq.as_ref().map(|q| &q.state),
                        ..Default::default()
                    };
                    self.bwd(Tag::Always, gemm::gemm(ctx, &cfg_x, &dz, &wt, &g, &ex)?);
                }
            }
            Op::MaxPool { kernel, stride, padding } => {
                let spec = pool_spec(kernel, stride, padding);
                let argmax = nb.pre_act.clone().expect("saved");
                let t = r.inputs[0];
                if t != INPUT {
                    let shape = self.raw(t).shape.clone();
                    self.emit_grad(t, |dst| pool::maxpool_backward(ctx, &dout, &argmax, &view(dst, &shape), &spec))?;
                }
            }
            Op::AvgPool { kernel, stride, padding } => {
                let spec = pool_spec(kernel, stride, padding);
                let t = r.inputs[0];
                if t != INPUT {
                    let shape = self.raw(t).shape.clone();
                    let d = self.zeros(&shape)?;
                    self.bwd(Tag::Always, pool::avgpool_backward(ctx, &dout, &d, &spec)?);
                    self.grad_through_fq(t, &d)?;
                }
            }
            Op::GlobalAvgPool => {
                let t = r.inputs[0];
                if t != INPUT {
                    let shape = self.raw(t).shape.clone();
                    let d = self.zeros(&shape)?;
                    self.bwd(Tag::Always, pool::global_avgpool_backward(ctx, &dout, &d)?);
                    self.grad_through_fq(t, &d)?;
                }
            }
            Op::Flatten => {
                let t = r.inputs[0];
                if t != INPUT {
                    let shape = self.raw(t).shape.clone();
                    let d = view(&dout, &shape);
                    self.emit_grad(t, |dst| gemm::copy_f32(ctx, &d, &view(dst, &shape)))?;
                }
            }
            Op::Embedding { .. }
            | Op::Patchify { .. }
            | Op::ClsPos { .. }
            | Op::LayerNorm { .. }
            | Op::Attention { .. }
            | Op::TokenPool { .. } => self.backward_sequence(i, &dout, &nb)?,
            Op::Add { act } => {
                // ReLU fused into the add (no saved sum): its output masks alike.
                let ds = match relu_kind(act) {
                    None => dout.clone(),
                    Some(k) => {
                        let sum = nb.pre_act.clone().unwrap_or_else(|| out.clone());
                        let d = self.zeros(&out.shape)?;
                        self.bwd(Tag::Always, activation::relu_backward(ctx, &sum, &dout, &d, k)?);
                        d
                    }
                };
                for k in 0..2 {
                    self.grad_through_fq(r.inputs[k], &ds)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn optimizer(
        &mut self,
        step: &StepOptions,
        hyper: &GpuTensor,
        metrics: &GpuTensor,
    ) -> Result<Vec<Dispatch>> {
        let ctx = self.ctx;
        let mut out = Vec::new();
        let trainable: Vec<_> = self.m.params.iter().filter(|p| p.spec.kind.trainable()).collect();
        let norm = match step.clip_grad_norm {
            Some(max) => {
                let norm = optim::new_norm(ctx, trainable.len())?;
                for (slot, p) in trainable.iter().enumerate() {
                    out.extend(optim::grad_sum_squares(ctx, p.grad.as_ref().expect("trainable"), &norm, slot)?);
                }
                out.push(optim::clip_finalize(ctx, &norm, max)?);
                Some(norm)
            }
            None => None,
        };
        for p in &trainable {
            // BN gradients are checked by the kernels that write them.
            if !self.guarded.contains(&p.spec.name) {
                out.push(loss::nonfinite_check(ctx, p.grad.as_ref().expect("trainable"), metrics)?);
            }
        }
        // Learned quantizer parameters step with their own learning rate (lr * multiplier,
        // derived on the GPU from the hyper buffer) and no weight decay.
        let lsq_hyper = if trainable.iter().any(|p| p.spec.kind.is_quantizer_param()) {
            let h = optim::new_hyper(ctx)?;
            out.push(lsq::lsq_hyper(ctx, hyper, &h, step.lsq_lr_mult)?);
            Some(h)
        } else {
            None
        };
        for p in &trainable {
            let weight_decay = if p.spec.kind.decays() { step.weight_decay } else { 0.0 };
            let hyper = match &lsq_hyper {
                Some(h) if p.spec.kind.is_quantizer_param() => h,
                _ => hyper,
            };
            let inputs = optim::StepInputs { hyper, metrics, clip: norm.as_ref(), skip_nonfinite: step.skip_nonfinite };
            if step.optimizer == Optimizer::AdamW {
                let cfg = optim::AdamWConfig { weight_decay, ..Default::default() };
                out.extend(optim::adamw_step(
                    ctx,
                    &p.value,
                    p.grad.as_ref().expect("trainable"),
                    p.momentum.as_ref().expect("trainable"),
                    p.second_moment.as_ref().expect("trainable"),
                    &cfg,
                    &inputs,
                )?);
                continue;
            }
            let cfg = optim::SgdConfig { momentum: step.momentum, weight_decay, nesterov: false };
            out.push(optim::sgd_step(
                ctx,
                &p.value,
                p.grad.as_ref().expect("trainable"),
                p.momentum.as_ref().expect("trainable"),
                &cfg,
                &inputs,
            )?);
        }
        if let Some(n) = norm {
            self.keep.push(n);
        }
        if self.opts.quant {
            out.extend(self.lsq_sync_dispatches()?);
        }
        if let Some(h) = lsq_hyper {
            self.keep.push(h);
        }
        Ok(out)
    }
}
