//! Host wrappers for `shaders/sequence.wgsl`: the small sequence ops of a vision transformer
//! and a text encoder (token embedding, patchify, CLS token + learned positions, token
//! pooling, key padding mask), each forward with its backward.
//!
//! All tensors are f32, row-major; a sequence activation is `[B, T, D]` (features fastest).
//! Token ids travel as f32 holding integers (the engine's input buffer is f32); the host
//! validates them ([`check_token_ids`]) and the kernels still never read out of bounds: an
//! id that is not an integer in `[0, V)` embeds as zeros and gets no gradient. Every
//! reduction (embedding, CLS and position gradients) sums in a fixed order with no atomics,
//! the order of `reference::sequence`, so GPU and reference agree bit for bit.

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};

/// Largest vocabulary (and pad id): every integer below 2^24 is exact in f32.
pub const MAX_VOCAB: usize = 1 << 24;

super::kernel_params! {
    #[derive(Default)]
    pub(crate) struct Params for ["sequence"] {
        n: u32,
        batch: u32,
        tokens: u32,
        dim: u32,
        vocab: u32,
        channels: u32,
        height: u32,
        width: u32,
        psize: u32,
        out_tokens: u32,
        _pad0: u32,
        pad_id: f32,
    }
}

/// Non-overlapping `P x P` patches of an NCHW image batch (see [`patchify_forward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchConfig {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
}

impl PatchConfig {
    /// Patches per image, `(H/P) * (W/P)`.
    pub fn tokens(&self) -> usize {
        (self.height / self.patch.max(1)) * (self.width / self.patch.max(1))
    }
    /// Features per patch, `C * P * P`.
    pub fn features(&self) -> usize {
        self.channels * self.patch * self.patch
    }
    /// The image batch shape `[B, C, H, W]`.
    pub fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.height, self.width]
    }
    /// The token shape `[B, T, C*P*P]`.
    pub fn out_shape(&self) -> [usize; 3] {
        [self.batch, self.tokens(), self.features()]
    }
    /// Every size positive, H and W multiples of P.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.batch == 0 || c.channels == 0 || c.height == 0 || c.width == 0 || c.patch == 0 {
            return Err(WqatError::shape(format!("patchify: every size must be positive: {c:?}")));
        }
        if !c.height.is_multiple_of(c.patch) || !c.width.is_multiple_of(c.patch) {
            return Err(WqatError::shape(format!(
                "patchify: height {} and width {} must be multiples of the patch size {}",
                c.height, c.width, c.patch
            )));
        }
        fits_u32(c.batch * c.channels * c.height * c.width, "patchify")
    }
}

/// How [`token_pool_forward`] turns `[B, T, D]` into `[B, D]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPool {
    /// Token 0 (the CLS token); the key mask is ignored.
    Cls,
    /// The mean of the tokens whose key mask is 0.0 (all tokens without a mask).
    Mean,
}

fn fits_u32(n: usize, what: &str) -> Result<()> {
    if n > u32::MAX as usize / 2 {
        return Err(WqatError::Limit(format!("{what}: {n} elements do not fit 32-bit indices")));
    }
    Ok(())
}

fn f32_tensor(t: &GpuTensor, what: &str) -> Result<()> {
    if t.dtype != DType::F32 {
        return Err(WqatError::shape(format!("{what}: expected an f32 tensor, got {:?}", t.dtype)));
    }
    if t.is_empty() {
        return Err(WqatError::shape(format!("{what}: empty tensor {:?}", t.shape)));
    }
    fits_u32(t.len(), what)
}

/// `t` as `[a, b]` (f32, non-empty).
fn dims2(t: &GpuTensor, what: &str) -> Result<(usize, usize)> {
    f32_tensor(t, what)?;
    match t.shape[..] {
        [a, b] => Ok((a, b)),
        _ => Err(WqatError::shape(format!("{what}: expected 2 dimensions, got {:?}", t.shape))),
    }
}

/// `t` as `[a, b, c]` (f32, non-empty).
fn dims3(t: &GpuTensor, what: &str) -> Result<(usize, usize, usize)> {
    f32_tensor(t, what)?;
    match t.shape[..] {
        [a, b, c] => Ok((a, b, c)),
        _ => Err(WqatError::shape(format!("{what}: expected 3 dimensions, got {:?}", t.shape))),
    }
}

/// Checks that `t` is `want`, allowing extra leading 1s (PyTorch keeps CLS tokens and
/// positions as `[1, 1, D]` and `[1, T', D]`).
fn expect_trailing(t: &GpuTensor, want: &[usize], what: &str) -> Result<()> {
    f32_tensor(t, what)?;
    let s = &t.shape;
    let ok = s.len() >= want.len()
        && s[s.len() - want.len()..] == *want
        && s[..s.len() - want.len()].iter().all(|&d| d == 1);
    if !ok {
        return Err(WqatError::shape(format!("{what}: expected shape {want:?}, got {s:?}")));
    }
    Ok(())
}

fn expect_shape(t: &GpuTensor, want: &[usize], what: &str) -> Result<()> {
    f32_tensor(t, what)?;
    if t.shape != want {
        return Err(WqatError::shape(format!("{what}: expected shape {want:?}, got {:?}", t.shape)));
    }
    Ok(())
}

fn launch(
    ctx: &GpuContext,
    entry: &'static str,
    p: Params,
    bufs: &[&GpuTensor],
    workgroups: [u32; 3],
    pool: Option<(TokenPool, bool)>,
) -> Result<Dispatch> {
    let mut key = PipelineKey::new("sequence", entry);
    if let Some((mode, masked)) = pool {
        key = key.with("MEAN", (mode == TokenPool::Mean) as u32 as f64).with("MASKED", masked as u32 as f64);
    }
    let storage: Vec<&wgpu::Buffer> = bufs.iter().map(|t| &t.buffer).collect();
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &storage, workgroups)
}

/// Host-side check of token ids before they are uploaded: every id an integer in
/// `[0, vocab)`. Returns the first bad one in the error.
pub fn check_token_ids(ids: &[f32], vocab: usize) -> Result<()> {
    if let Some((i, &id)) =
        ids.iter().enumerate().find(|(_, &id)| crate::reference::sequence::token_row(id, vocab).is_none())
    {
        return Err(WqatError::invalid(format!("token id {id} at position {i} is not an integer in [0, {vocab})")));
    }
    Ok(())
}

fn embedding_dims(ids: &GpuTensor, table: &GpuTensor, seq: &GpuTensor, what: &str) -> Result<Params> {
    let (b, t) = dims2(ids, &format!("{what} ids"))?;
    let (v, d) = dims2(table, &format!("{what} table"))?;
    if v > MAX_VOCAB {
        return Err(WqatError::Limit(format!("{what}: vocabulary {v} over {MAX_VOCAB} (ids are f32)")));
    }
    expect_shape(seq, &[b, t, d], &format!("{what} [B, T, D] activation"))?;
    Ok(Params { batch: b as u32, tokens: t as u32, dim: d as u32, vocab: v as u32, ..Params::default() })
}

/// `out[b,t,:] = table[ids[b,t], :]`. ids `[B, T]` (f32 integers), table `[V, D]`,
/// out `[B, T, D]`. An id that is not an integer in `[0, V)` writes zeros.
pub fn embedding_forward(ctx: &GpuContext, ids: &GpuTensor, table: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    let mut p = embedding_dims(ids, table, out, "embedding_forward")?;
    p.n = out.len() as u32;
    launch(ctx, "embedding_forward", p, &[ids, table, out], grid_1d(out.len(), 256), None)
}

/// `dtable` (overwritten) `[V, D]`: `dtable[v,:] = sum over (b,t) with ids[b,t] == v of
/// dout[b,t,:]`, summed in (b,t) order from 0.0: deterministic, no atomics, bit-equal to
/// `reference::sequence::embedding_backward`. One workgroup per row v finds the row's
/// positions (an ordered compaction, 1024 ids per chunk) and sums them per feature.
pub fn embedding_backward(ctx: &GpuContext, ids: &GpuTensor, dout: &GpuTensor, dtable: &GpuTensor) -> Result<Dispatch> {
    let p = embedding_dims(ids, dtable, dout, "embedding_backward")?;
    let groups = grid_1d(p.vocab as usize * 64, 64);
    launch(ctx, "embedding_backward", p, &[ids, dout, dtable], groups, None)
}

fn patch_params(cfg: &PatchConfig, n: usize) -> Params {
    Params {
        n: n as u32,
        batch: cfg.batch as u32,
        channels: cfg.channels as u32,
        height: cfg.height as u32,
        width: cfg.width as u32,
        psize: cfg.patch as u32,
        out_tokens: cfg.tokens() as u32,
        ..Params::default()
    }
}

/// Non-overlapping PxP patches: x `[B, C, H, W]` -> out `[B, T, C*P*P]`, `T = (H/P)*(W/P)`,
/// token `t = py*(W/P) + px`, feature `c*P*P + ky*P + kx` (the flatten order of a PyTorch
/// conv weight `[D, C, P, P]`, so a patch-embedding Linear equals `Conv2d(kernel=stride=P)`).
/// H and W must be multiples of P.
pub fn patchify_forward(ctx: &GpuContext, cfg: &PatchConfig, x: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    cfg.validate()?;
    expect_shape(x, &cfg.x_shape(), "patchify_forward x")?;
    expect_shape(out, &cfg.out_shape(), "patchify_forward out")?;
    let n = out.len();
    launch(ctx, "patchify_forward", patch_params(cfg, n), &[x, out], grid_1d(n, 256), None)
}

/// The inverse permutation of [`patchify_forward`]: dout `[B, T, C*P*P]` -> dx `[B, C, H, W]`
/// (overwritten).
pub fn patchify_backward(ctx: &GpuContext, cfg: &PatchConfig, dout: &GpuTensor, dx: &GpuTensor) -> Result<Dispatch> {
    cfg.validate()?;
    expect_shape(dout, &cfg.out_shape(), "patchify_backward dout")?;
    expect_shape(dx, &cfg.x_shape(), "patchify_backward dx")?;
    let n = dx.len();
    launch(ctx, "patchify_backward", patch_params(cfg, n), &[dout, dx], grid_1d(n, 256), None)
}

/// Learned CLS token and positions: x `[B, T, D]` -> out `[B, T', D]`, `T' = T + 1` with a
/// CLS token, else `T`. With cls: `out[b,0,:] = cls + pos[0,:]`, `out[b,t+1,:] = x[b,t,:] +
/// pos[t+1,:]`; without: `out[b,t,:] = x[b,t,:] + pos[t,:]`. cls `[D]`, pos `[T', D]` (extra
/// leading 1s allowed: `[1, 1, D]`, `[1, T', D]`).
pub fn cls_pos_forward(
    ctx: &GpuContext,
    x: &GpuTensor,
    cls: Option<&GpuTensor>,
    pos: &GpuTensor,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let (b, t, d) = dims3(x, "cls_pos_forward x")?;
    let tp = t + cls.is_some() as usize;
    expect_trailing(pos, &[tp, d], "cls_pos_forward pos")?;
    expect_shape(out, &[b, tp, d], "cls_pos_forward out")?;
    let n = out.len();
    let p = Params {
        n: n as u32,
        batch: b as u32,
        tokens: t as u32,
        dim: d as u32,
        out_tokens: tp as u32,
        ..Default::default()
    };
    match cls {
        Some(c) => {
            expect_trailing(c, &[d], "cls_pos_forward cls")?;
            launch(ctx, "cls_pos_forward", p, &[x, c, pos, out], grid_1d(n, 256), None)
        }
        None => launch(ctx, "pos_forward", p, &[x, pos, out], grid_1d(n, 256), None),
    }
}

/// Backward of [`cls_pos_forward`]: dx `[B, T, D]` (overwritten) `= dout[:, off.., :]`,
/// `dpos = sum_b dout[b,:,:]` and `dcls = sum_b dout[b,0,:]` (both overwritten, summed in b
/// order from 0.0; `dcls` equals `dpos[0,:]` bit for bit). The CLS token is present when
/// `dcls` is given. One dispatch.
pub fn cls_pos_backward(
    ctx: &GpuContext,
    dout: &GpuTensor,
    dx: &GpuTensor,
    dcls: Option<&GpuTensor>,
    dpos: &GpuTensor,
) -> Result<Vec<Dispatch>> {
    let (b, tp, d) = dims3(dout, "cls_pos_backward dout")?;
    let off = dcls.is_some() as usize;
    if tp <= off {
        return Err(WqatError::shape(format!(
            "cls_pos_backward: dout {:?} has no token besides the CLS token",
            dout.shape
        )));
    }
    let t = tp - off;
    expect_shape(dx, &[b, t, d], "cls_pos_backward dx")?;
    expect_trailing(dpos, &[tp, d], "cls_pos_backward dpos")?;
    let n = tp * d;
    let p = Params {
        n: n as u32,
        batch: b as u32,
        tokens: t as u32,
        dim: d as u32,
        out_tokens: tp as u32,
        ..Default::default()
    };
    let dispatch = match dcls {
        Some(c) => {
            expect_trailing(c, &[d], "cls_pos_backward dcls")?;
            launch(ctx, "cls_pos_backward", p, &[dout, dx, dpos, c], grid_1d(n, 256), None)?
        }
        None => launch(ctx, "pos_backward", p, &[dout, dx, dpos], grid_1d(n, 256), None)?,
    };
    Ok(vec![dispatch])
}

fn pool_dims(
    x_shape: (usize, usize, usize),
    key_mask: Option<&GpuTensor>,
    pooled: &GpuTensor,
    what: &str,
) -> Result<Params> {
    let (b, t, d) = x_shape;
    expect_shape(pooled, &[b, d], &format!("{what} [B, D]"))?;
    if let Some(m) = key_mask {
        expect_shape(m, &[b, t], &format!("{what} key_mask"))?;
    }
    Ok(Params { n: (b * d) as u32, batch: b as u32, tokens: t as u32, dim: d as u32, ..Default::default() })
}

/// x `[B, T, D]` -> out `[B, D]`: `Cls` takes token 0 (the mask is ignored); `Mean` averages
/// the tokens whose key_mask is 0.0 (all tokens when key_mask is None; key_mask `[B, T]`,
/// 1.0 = padding). A sample with every token masked gives 0.
pub fn token_pool_forward(
    ctx: &GpuContext,
    mode: TokenPool,
    x: &GpuTensor,
    key_mask: Option<&GpuTensor>,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let xs = dims3(x, "token_pool_forward x")?;
    let p = pool_dims(xs, key_mask, out, "token_pool_forward")?;
    let masked = mode == TokenPool::Mean && key_mask.is_some();
    let m = key_mask.filter(|_| masked).unwrap_or(x);
    launch(ctx, "token_pool_forward", p, &[x, m, out], grid_1d(p.n as usize, 256), Some((mode, masked)))
}

/// Backward of [`token_pool_forward`]: dout `[B, D]` -> dx `[B, T, D]` (overwritten, zeros
/// where the forward did not read).
pub fn token_pool_backward(
    ctx: &GpuContext,
    mode: TokenPool,
    key_mask: Option<&GpuTensor>,
    dout: &GpuTensor,
    dx: &GpuTensor,
) -> Result<Dispatch> {
    let xs = dims3(dx, "token_pool_backward dx")?;
    let p = pool_dims(xs, key_mask, dout, "token_pool_backward")?;
    let masked = mode == TokenPool::Mean && key_mask.is_some();
    let m = key_mask.filter(|_| masked).unwrap_or(dout);
    launch(ctx, "token_pool_backward", p, &[dout, m, dx], grid_1d(p.n as usize, 256), Some((mode, masked)))
}

/// `mask[b,t] = 1.0` where `ids[b,t] == pad_id`, else 0.0 (ids `[B, T]` f32, mask `[B, T]`).
pub fn key_mask_from_ids(ctx: &GpuContext, ids: &GpuTensor, pad_id: u32, mask: &GpuTensor) -> Result<Dispatch> {
    let (b, t) = dims2(ids, "key_mask_from_ids ids")?;
    expect_shape(mask, &[b, t], "key_mask_from_ids mask")?;
    if pad_id as usize >= MAX_VOCAB {
        return Err(WqatError::invalid(format!("key_mask_from_ids: pad id {pad_id} over 2^24 (ids are f32)")));
    }
    let n = b * t;
    let p = Params { n: n as u32, batch: b as u32, tokens: t as u32, pad_id: pad_id as f32, ..Default::default() };
    launch(ctx, "key_mask_from_ids", p, &[ids, mask], grid_1d(n, 256), None)
}
