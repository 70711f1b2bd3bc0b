//! Host wrappers for `shaders/attention.wgsl`: the multi-head self-attention core between
//! the QKV projection and the output projection (both ordinary Linear GEMMs).
//!
//! * [`attention_forward`]: one dispatch, one invocation per query row `(b, h, i)` (workgroups
//!   of rows of one `(b, h)`): `S = FQ(q) FQ(k)^T / sqrt(dh)`, masked keys excluded, a
//!   max-subtracted softmax saved as `probs`, then `out = FQ(P) FQ(v)`.
//! * [`attention_backward`]: one dispatch, one workgroup per `(b, h)` (three phases with
//!   workgroup barriers, `dqkv` its own scratch): `dqkv` (overwritten) with the STE masks of
//!   every fake-quantized operand; deterministic (fixed-order sums, no atomics).
//!
//! One pipeline per entry point serves every shape on CPU adapters (the workgroup size is
//! fixed there; heads past 16 dims stream their tail from memory instead of registers).
//!
//! Layouts (f32, row-major): `qkv [B, T, 3D]` (per token q, k, v of D values each, head `h`
//! owning columns `h*dh..(h+1)*dh` of each: PyTorch's in_proj chunk order), `out [B, T, D]`,
//! `probs [B, H, T, T]`, `key_mask [B, T]` (nonzero = that key is padding and ignored).
//! A query row whose keys are all masked gets probs 0 and out 0 (and zero gradients).

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
pub use crate::kernels::conv::QuantOperand;
use crate::quant::QStateLayout;

/// Geometry of one attention core: `D = heads * head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionConfig {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionConfig {
    pub fn new(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Self {
        AttentionConfig { batch, tokens, heads, head_dim }
    }
    /// Model width `D = heads * head_dim`.
    pub fn d_model(&self) -> usize {
        self.heads * self.head_dim
    }
    /// `[B, T, 3D]`.
    pub fn qkv_shape(&self) -> [usize; 3] {
        [self.batch, self.tokens, 3 * self.d_model()]
    }
    /// `[B, T, D]` (out and dout).
    pub fn out_shape(&self) -> [usize; 3] {
        [self.batch, self.tokens, self.d_model()]
    }
    /// `[B, H, T, T]`.
    pub fn probs_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.tokens, self.tokens]
    }
    /// `[B, T]`.
    pub fn mask_shape(&self) -> [usize; 2] {
        [self.batch, self.tokens]
    }
    /// The score scale `1 / sqrt(head_dim)` as the kernels use it (f32).
    pub fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }
    /// Floating-point operations of the forward pass (2 per multiply-add of QK^T and PV).
    pub fn flops(&self) -> f64 {
        4.0 * (self.batch * self.heads) as f64 * (self.tokens * self.tokens * self.head_dim) as f64
    }
    /// Every size positive and every tensor within 32-bit indexing.
    pub fn validate(&self) -> Result<()> {
        if [self.batch, self.tokens, self.heads, self.head_dim].contains(&0) {
            return Err(WqatError::shape(format!("attention: zero size in {self:?}")));
        }
        let qkv = self.qkv_shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let probs = self.probs_shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let fits = |n: Option<usize>| n.is_some_and(|n| n <= i32::MAX as usize);
        if !fits(qkv) || !fits(probs) {
            return Err(WqatError::Limit(format!("attention: tensors of {self:?} exceed 32-bit indexing")));
        }
        Ok(())
    }
}

/// Optional fake-quant of the attention matmul inputs (Brevitas-style): q, k, v and the
/// softmax output, each a per-tensor quantizer state (`QStateLayout`, 1 channel). A state
/// whose fq flag (word 0) is 0 is the identity (and its STE mask 1).
#[derive(Clone, Copy, Default)]
pub struct AttentionQuant<'a> {
    pub q: Option<QuantOperand<'a>>,
    pub k: Option<QuantOperand<'a>>,
    pub v: Option<QuantOperand<'a>>,
    pub probs: Option<QuantOperand<'a>>,
}

super::kernel_params! {
    #[derive(Default)]
    pub(crate) struct Params for ["attention"] {
        batch: u32,
        tokens: u32,
        heads: u32,
        head_dim: u32,
        dmodel: u32,
        flags: u32,
        _pad0: u32,
        _pad1: u32,
        scale: f32,
        _pad2: f32,
        _pad3: f32,
        _pad4: f32,
        q_qmin: f32,
        q_qmax: f32,
        k_qmin: f32,
        k_qmax: f32,
        v_qmin: f32,
        v_qmax: f32,
        p_qmin: f32,
        p_qmax: f32,
    }
}

/// Bits of `Params::flags`.
const HAS_MASK: u32 = 1;
const FQ_Q: u32 = 2;
const FQ_K: u32 = 4;
const FQ_V: u32 = 8;
const FQ_P: u32 = 16;

/// Storage bindings of the backward kernel (the forward needs 8).
const BINDINGS: u32 = 9;

fn check_tensor(t: &GpuTensor, shape: &[usize], what: &str) -> Result<()> {
    if t.shape != shape || t.dtype != DType::F32 {
        return Err(WqatError::shape(format!(
            "attention: {what} is {:?} {:?}, expected f32 {shape:?}",
            t.dtype, t.shape
        )));
    }
    Ok(())
}

/// Validates one per-tensor quantizer operand; returns (qmin, qmax).
fn check_quant(q: &QuantOperand, what: &str) -> Result<(f32, f32)> {
    q.spec.validate()?;
    if q.spec.channel_axis.is_some() {
        return Err(WqatError::invalid(format!(
            "attention: the {what} quantizer must be per tensor, got channel axis {:?}",
            q.spec.channel_axis
        )));
    }
    let len = QStateLayout::new(1).len();
    if q.state.len() != len || q.state.dtype != DType::F32 {
        return Err(WqatError::shape(format!(
            "attention: {what} quantizer state is {:?} {:?}, a per-tensor state is f32 [{len}]",
            q.state.dtype, q.state.shape
        )));
    }
    Ok((q.spec.qmin() as f32, q.spec.qmax() as f32))
}

/// Shared validation: shapes, mask, quantizers, aliasing of the written tensors, the binding
/// limit. Returns the filled `Params` and the storage buffers 1..=6 (absent operands bound
/// to `qkv`, never read).
fn prepare<'a>(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    qkv: &'a GpuTensor,
    key_mask: Option<&'a GpuTensor>,
    quant: &AttentionQuant<'a>,
    written: &[(&GpuTensor, &str)],
) -> Result<(Params, Vec<&'a wgpu::Buffer>)> {
    cfg.validate()?;
    check_tensor(qkv, &cfg.qkv_shape(), "qkv")?;
    if let Some(m) = key_mask {
        check_tensor(m, &cfg.mask_shape(), "key_mask")?;
    }
    let max = ctx.limits.max_storage_buffers_per_shader_stage;
    if max < BINDINGS {
        return Err(WqatError::Limit(format!(
            "attention: needs {BINDINGS} storage buffers per shader stage, the adapter allows {max}"
        )));
    }
    let mut p = Params {
        batch: cfg.batch as u32,
        tokens: cfg.tokens as u32,
        heads: cfg.heads as u32,
        head_dim: cfg.head_dim as u32,
        dmodel: cfg.d_model() as u32,
        scale: cfg.scale(),
        flags: if key_mask.is_some() { HAS_MASK } else { 0 },
        ..Default::default()
    };
    let mut bufs = vec![&qkv.buffer, &key_mask.unwrap_or(qkv).buffer];
    let ops = [(quant.q, "q", FQ_Q), (quant.k, "k", FQ_K), (quant.v, "v", FQ_V), (quant.probs, "probs", FQ_P)];
    for (slot, (op, what, bit)) in ops.into_iter().enumerate() {
        let (lo, hi, state) = match op {
            Some(q) => {
                let (lo, hi) = check_quant(&q, what)?;
                p.flags |= bit;
                (lo, hi, q.state)
            }
            None => (0.0, 0.0, qkv),
        };
        match slot {
            0 => (p.q_qmin, p.q_qmax) = (lo, hi),
            1 => (p.k_qmin, p.k_qmax) = (lo, hi),
            2 => (p.v_qmin, p.v_qmax) = (lo, hi),
            _ => (p.p_qmin, p.p_qmax) = (lo, hi),
        }
        bufs.push(&state.buffer);
    }
    // A written tensor may not alias any other binding.
    for (i, (w, what)) in written.iter().enumerate() {
        let others = written.iter().enumerate().filter(|(k, _)| *k != i).map(|(_, (t, _))| &t.buffer);
        if bufs.iter().copied().chain(others).any(|b| *b == w.buffer) {
            return Err(WqatError::invalid(format!("attention: {what} aliases another operand")));
        }
    }
    Ok((p, bufs))
}

/// Records the attention forward: `probs` (written) the softmax of
/// `FQ_q(q_h) FQ_k(k_h)^T / sqrt(dh)` over the unmasked keys (max subtracted), `out`
/// (written) `FQ_p(probs) @ FQ_v(v_h)` per head. One dispatch.
/// Bindings: 1 qkv, 2 mask, 3-6 q/k/v/probs states, 7 probs, 8 out.
pub fn attention_forward(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    qkv: &GpuTensor,
    key_mask: Option<&GpuTensor>,
    quant: &AttentionQuant,
    probs: &GpuTensor,
    out: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    attention_forward_wg(ctx, cfg, qkv, key_mask, quant, probs, out, forward_wg(ctx, cfg.tokens))
}

/// [`attention_forward`] with an explicit workgroup size: `wg` query rows of one `(b, h)` per
/// workgroup, a power of two in 8..=256 (the default is 8 on CPU adapters, else 32 or 64;
/// tests run the GPU sizes on lavapipe).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_wg(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    qkv: &GpuTensor,
    key_mask: Option<&GpuTensor>,
    quant: &AttentionQuant,
    probs: &GpuTensor,
    out: &GpuTensor,
    wg: usize,
) -> Result<Vec<Dispatch>> {
    cfg.validate()?;
    check_wg(ctx, wg)?;
    check_tensor(probs, &cfg.probs_shape(), "probs")?;
    check_tensor(out, &cfg.out_shape(), "out")?;
    let (p, mut bufs) = prepare(ctx, cfg, qkv, key_mask, quant, &[(probs, "probs"), (out, "out")])?;
    bufs.extend([&probs.buffer, &out.buffer]);
    let key = key("attention_forward", wg);
    let grid = grid_1d(cfg.batch * cfg.heads * cfg.tokens.div_ceil(wg), 1);
    Ok(vec![Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &bufs, grid)?])
}

/// Records the attention backward: `dqkv` (overwritten) from `dout`, the saved `probs` and
/// `qkv`, with the STE masks of the fake-quantized operands (scale and zero point get no
/// gradient). One dispatch, deterministic.
/// Bindings: 1 qkv, 2 mask, 3-6 q/k/v/probs states, 7 probs, 8 dout, 9 dqkv.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    qkv: &GpuTensor,
    key_mask: Option<&GpuTensor>,
    quant: &AttentionQuant,
    probs: &GpuTensor,
    dout: &GpuTensor,
    dqkv: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    attention_backward_wg(ctx, cfg, qkv, key_mask, quant, probs, dout, dqkv, backward_wg(ctx, cfg.tokens))
}

/// [`attention_backward`] with an explicit workgroup size: `wg` invocations per `(b, h)`, a
/// power of two in 8..=256 (the default is 8 on CPU adapters, else 32..=128 by tokens).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_wg(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    qkv: &GpuTensor,
    key_mask: Option<&GpuTensor>,
    quant: &AttentionQuant,
    probs: &GpuTensor,
    dout: &GpuTensor,
    dqkv: &GpuTensor,
    wg: usize,
) -> Result<Vec<Dispatch>> {
    cfg.validate()?;
    check_wg(ctx, wg)?;
    check_tensor(probs, &cfg.probs_shape(), "probs")?;
    check_tensor(dout, &cfg.out_shape(), "dout")?;
    check_tensor(dqkv, &cfg.qkv_shape(), "dqkv")?;
    let (p, mut bufs) = prepare(ctx, cfg, qkv, key_mask, quant, &[(dqkv, "dqkv")])?;
    if probs.buffer == dqkv.buffer || dout.buffer == dqkv.buffer {
        return Err(WqatError::invalid("attention: dqkv aliases another operand"));
    }
    bufs.extend([&probs.buffer, &dout.buffer, &dqkv.buffer]);
    let key = key("attention_backward", wg);
    let grid = grid_1d(cfg.batch * cfg.heads, 1);
    Ok(vec![Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &bufs, grid)?])
}

fn is_cpu(ctx: &GpuContext) -> bool {
    ctx.summary.device_type == "Cpu"
}

/// Query rows per forward workgroup (all of one (b, h)): one SIMD vector of 8 on CPU adapters
/// (lavapipe runs a workgroup as a loop over 8-wide vectors, so 8 wastes no lanes on short
/// sequences), else 32 or 64.
fn forward_wg(ctx: &GpuContext, tokens: usize) -> usize {
    if is_cpu(ctx) {
        8
    } else if tokens <= 32 {
        32
    } else {
        64
    }
}

/// Invocations of the backward workgroup (one per (b, h), looping over rows / columns): 8 on
/// CPU adapters, else the power of two in 32..=128 that best covers the tokens.
fn backward_wg(ctx: &GpuContext, tokens: usize) -> usize {
    if is_cpu(ctx) {
        8
    } else {
        tokens.next_power_of_two().clamp(32, 128)
    }
}

fn check_wg(ctx: &GpuContext, wg: usize) -> Result<()> {
    let max = ctx.limits.max_compute_invocations_per_workgroup.min(ctx.limits.max_compute_workgroup_size_x) as usize;
    if !wg.is_power_of_two() || !(8..=256).contains(&wg) || wg > max {
        return Err(WqatError::invalid(format!(
            "attention: workgroup size {wg} must be a power of two in 8..=256 (adapter max {max})"
        )));
    }
    Ok(())
}

/// The pipeline: `WG` invocations (every other size is a uniform).
fn key(entry: &'static str, wg: usize) -> PipelineKey {
    PipelineKey::new("attention", entry).with("WG", wg as f64)
}
