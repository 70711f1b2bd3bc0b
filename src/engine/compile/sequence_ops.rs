//! The transformer ops of the compiled graph (embedding, patches, CLS token and positions,
//! LayerNorm, attention, token pools): their forward and backward dispatches, kept beside
//! each other. Sequence activations are `[B, T, D]`; see ARCHITECTURE.md, "Transformers".

use super::{view, Builder, NodeBuffers, Tag};
use crate::engine::state::ModelState;
use crate::error::Result;
use crate::gpu::{DType, GpuContext, GpuTensor};
use crate::kernels::attention::{self, AttentionConfig, AttentionQuant};
use crate::kernels::conv::QuantOperand;
use crate::kernels::sequence::{self, PatchConfig, TokenPool};
use crate::kernels::{fake_quant, layernorm};
use crate::model::params;
use crate::model::{Op, TokenPoolMode, INPUT};

fn token_pool(mode: TokenPoolMode) -> TokenPool {
    match mode {
        TokenPoolMode::Cls => TokenPool::Cls,
        TokenPoolMode::Mean => TokenPool::Mean,
    }
}

/// The key padding mask `[B, T]` (1 = padding) a model needs when its embedding has a
/// padding id: every attention and mean pool reads it.
pub(super) fn key_mask_buffer(ctx: &GpuContext, m: &ModelState, b: usize) -> Result<Option<GpuTensor>> {
    match m.nodes.first().map(|r| &r.node.op) {
        Some(Op::Embedding { padding_idx: Some(_), .. }) => {
            Ok(Some(GpuTensor::zeros(ctx, &[b, m.graph.input[2]], DType::F32)?))
        }
        _ => Ok(None),
    }
}

impl Builder<'_> {
    /// Records the key mask computed from the token ids, first in the forward.
    pub(super) fn record_key_mask(&mut self) -> Result<()> {
        let ctx = self.ctx;
        if let (Some(mask), Some(Op::Embedding { padding_idx: Some(pad), .. })) =
            (self.key_mask.clone(), self.m.nodes.first().map(|r| &r.node.op))
        {
            let ids = view(&self.images, &mask.shape);
            self.fwd(Tag::Always, sequence::key_mask_from_ids(ctx, &ids, *pad as u32, &mask)?);
            self.keep.push(mask);
        }
        Ok(())
    }

    pub(super) fn patch_cfg(&self, i: usize, patch: usize) -> PatchConfig {
        let [channels, height, width] = self.m.nodes[i].in_shapes[0];
        PatchConfig { batch: self.b, channels, height, width, patch }
    }

    pub(super) fn attention_cfg(&self, i: usize, heads: usize) -> AttentionConfig {
        let [tokens, d, _] = self.m.nodes[i].out_shape;
        AttentionConfig { batch: self.b, tokens, heads, head_dim: d / heads }
    }

    /// Forward dispatches of transformer node `i`.
    pub(super) fn forward_sequence(&mut self, i: usize) -> Result<()> {
        let ctx = self.ctx;
        let r = self.m.nodes[i].clone();
        let name = r.node.name.clone();
        let out = self.outputs[i].clone();
        match r.node.op {
            Op::Embedding { .. } => {
                let ids = view(&self.images, &[self.b, r.in_shapes[0][2]]);
                let table = self.param(&params::weight_name(&name))?;
                // A quantized table (`int`): observed and fake-quantized into a copy per step.
                let used = match self.weight_q(i) {
                    Some(q) => {
                        self.observe(&params::weight_quant_name(&name), &q, &table, true)?;
                        let fq = self.zeros(&table.shape)?;
                        self.fwd(Tag::Always, fake_quant::fake_quant_forward(ctx, &table, &q.state, &fq, &q.spec)?);
                        fq
                    }
                    None => table,
                };
                self.fwd(Tag::Always, sequence::embedding_forward(ctx, &ids, &used, &out)?);
            }
            Op::Patchify { patch } => {
                let cfg = self.patch_cfg(i, patch);
                let x = self.raw(r.inputs[0]).clone();
                let x = view(&x, &[self.b, cfg.channels, cfg.height, cfg.width]);
                self.fwd(Tag::Always, sequence::patchify_forward(ctx, &cfg, &x, &out)?);
            }
            Op::ClsPos { cls } => {
                let x = self.materialized(r.inputs[0])?;
                let cls_t = if cls { Some(self.param(&params::cls_token_name(&name))?) } else { None };
                let pos = self.param(&params::pos_embed_name(&name))?;
                self.fwd(Tag::Always, sequence::cls_pos_forward(ctx, &x, cls_t.as_ref(), &pos, &out)?);
            }
            Op::LayerNorm { eps } => {
                let x = self.materialized(r.inputs[0])?;
                let gamma = self.param(&params::weight_name(&name))?;
                let beta = self.param(&params::bias_name(&name))?;
                let [t, _, _] = r.out_shape;
                let stats = self.zeros(&[self.b * t, 2])?;
                self.fwd(Tag::Always, layernorm::layernorm_forward(ctx, &x, &gamma, &beta, &out, &stats, eps)?);
                self.saved[i].seq_input = Some(x);
                self.saved[i].seq_saved = Some(stats);
            }
            Op::Attention { heads, .. } => {
                let cfg = self.attention_cfg(i, heads);
                // q, k, v carry the QKV linear's output quantizer when the matmul inputs are
                // quantized (materialized here); the softmax output is fake-quantized in the
                // kernel with its own quantizer, whose observer reads the stored (raw) probs.
                let qkv = self.materialized(r.inputs[0])?;
                let probs = self.zeros(&[self.b, heads, cfg.tokens, cfg.tokens])?;
                let mask = self.key_mask.clone();
                let pq = self.probs_q(i);
                let quant = AttentionQuant {
                    probs: pq.as_ref().map(|q| QuantOperand { state: &q.state, spec: q.spec }),
                    ..Default::default()
                };
                let ds = attention::attention_forward(ctx, &cfg, &qkv, mask.as_ref(), &quant, &probs, &out)?;
                for d in ds {
                    self.fwd(Tag::Always, d);
                }
                if let Some(q) = &pq {
                    self.observe(&params::probs_quant_name(&name), q, &probs, false)?;
                }
                self.saved[i].seq_input = Some(qkv);
                self.saved[i].seq_saved = Some(probs);
            }
            Op::TokenPool { mode } => {
                let x = self.materialized(r.inputs[0])?;
                let mask = if mode == TokenPoolMode::Mean { self.key_mask.clone() } else { None };
                self.fwd(Tag::Always, sequence::token_pool_forward(ctx, token_pool(mode), &x, mask.as_ref(), &out)?);
            }
            _ => unreachable!("forward_sequence of a non-sequence op"),
        }
        Ok(())
    }

    /// Backward dispatches of transformer node `i`, given the gradient of its output.
    pub(super) fn backward_sequence(&mut self, i: usize, dout: &GpuTensor, nb: &NodeBuffers) -> Result<()> {
        let ctx = self.ctx;
        let r = self.m.nodes[i].clone();
        let name = r.node.name.clone();
        let dout = dout.clone();
        match r.node.op {
            Op::Embedding { .. } => {
                let ids = view(&self.images, &[self.b, r.in_shapes[0][2]]);
                let dtable = self.grad_of(&params::weight_name(&name))?;
                match self.weight_q(i) {
                    // Straight-through: the gradient wrt the fake-quantized table, masked.
                    Some(q) => {
                        let table = self.param(&params::weight_name(&name))?;
                        let d = self.zeros(&dtable.shape)?;
                        self.bwd(Tag::Always, sequence::embedding_backward(ctx, &ids, &dout, &d)?);
                        self.bwd(Tag::Always, fake_quant::ste_backward(ctx, &table, &q.state, &d, &dtable, &q.spec)?);
                    }
                    None => self.bwd(Tag::Always, sequence::embedding_backward(ctx, &ids, &dout, &dtable)?),
                }
            }
            Op::Patchify { patch } => {
                let cfg = self.patch_cfg(i, patch);
                let t = r.inputs[0];
                if t != INPUT {
                    let shape = [self.b, cfg.channels, cfg.height, cfg.width];
                    self.emit_grad(t, |dst| sequence::patchify_backward(ctx, &cfg, &dout, &view(dst, &shape)))?;
                }
            }
            Op::ClsPos { cls } => {
                let dcls = if cls { Some(self.grad_of(&params::cls_token_name(&name))?) } else { None };
                let dpos = self.grad_of(&params::pos_embed_name(&name))?;
                self.input_grad(r.inputs[0], |dx| sequence::cls_pos_backward(ctx, &dout, dx, dcls.as_ref(), &dpos))?;
            }
            Op::LayerNorm { .. } => {
                let x = nb.seq_input.clone().expect("saved");
                let stats = nb.seq_saved.clone().expect("saved");
                let gamma = self.param(&params::weight_name(&name))?;
                let dgamma = self.grad_of(&params::weight_name(&name))?;
                let dbeta = self.grad_of(&params::bias_name(&name))?;
                self.input_grad(r.inputs[0], |dx| {
                    layernorm::layernorm_backward(ctx, &x, &gamma, &stats, &dout, dx, &dgamma, &dbeta)
                })?;
            }
            Op::Attention { heads, .. } => {
                let cfg = self.attention_cfg(i, heads);
                let qkv = nb.seq_input.clone().expect("saved");
                let probs = nb.seq_saved.clone().expect("saved");
                let mask = self.key_mask.clone();
                let pq = self.probs_q(i);
                let quant = AttentionQuant {
                    probs: pq.as_ref().map(|q| QuantOperand { state: &q.state, spec: q.spec }),
                    ..Default::default()
                };
                self.input_grad(r.inputs[0], |dqkv| {
                    attention::attention_backward(ctx, &cfg, &qkv, mask.as_ref(), &quant, &probs, &dout, dqkv)
                })?;
            }
            Op::TokenPool { mode } => {
                let mask = if mode == TokenPoolMode::Mean { self.key_mask.clone() } else { None };
                self.input_grad(r.inputs[0], |dx| {
                    Ok(vec![sequence::token_pool_backward(ctx, token_pool(mode), mask.as_ref(), &dout, dx)?])
                })?;
            }
            _ => unreachable!("backward_sequence of a non-sequence op"),
        }
        Ok(())
    }
}
