//! CPU references for `shaders/sequence.wgsl` (token embedding, patchify, CLS token +
//! positions, token pooling, key padding mask). Plain loops over row-major slices with
//! explicit dims; a sequence activation is `[B, T, D]`, features fastest.
//!
//! The copies, permutations and sums are generic over [`Scalar`] (f32 or f64): in f32 they
//! add the same terms in the same order as the kernels (from 0.0, in (b,t) or b order), so
//! GPU and reference agree bit for bit; in f64 they serve the finite-difference checks.
//! Mean pooling divides, so it is f64 only and compared with a tolerance.

use crate::kernels::sequence::{PatchConfig, TokenPool};
use std::ops::Add;

/// f32 or f64: what the generic references need (copies and sums from `Default` = 0.0).
pub trait Scalar: Copy + Default + Add<Output = Self> + PartialEq + std::fmt::Debug {}
impl Scalar for f32 {}
impl Scalar for f64 {}

/// The table row of a token id: `Some(id)` when it is an integer in `[0, vocab)`, else
/// `None` (the kernels embed such an id as zeros and give it no gradient).
pub fn token_row(id: f32, vocab: usize) -> Option<usize> {
    (id >= 0.0 && id.fract() == 0.0 && (id as f64) < vocab as f64).then_some(id as usize)
}

/// `out[n, :] = table[ids[n], :]` for every position n (ids `[B*T]`, table `[V, D]`), zeros
/// for an invalid id. Returns `[B*T, D]`.
pub fn embedding_forward<F: Scalar>(ids: &[f32], table: &[F], d: usize) -> Vec<F> {
    let vocab = table.len() / d;
    let mut out = vec![F::default(); ids.len() * d];
    for (n, &id) in ids.iter().enumerate() {
        if let Some(r) = token_row(id, vocab) {
            out[n * d..(n + 1) * d].copy_from_slice(&table[r * d..(r + 1) * d]);
        }
    }
    out
}

/// `dtable[v, :] = sum over positions n with ids[n] == v of dout[n, :]`, summed in position
/// ((b,t)) order from 0.0. Returns `[V, D]`.
pub fn embedding_backward<F: Scalar>(ids: &[f32], dout: &[F], vocab: usize, d: usize) -> Vec<F> {
    let mut dtable = vec![F::default(); vocab * d];
    for (n, &id) in ids.iter().enumerate() {
        if let Some(r) = token_row(id, vocab) {
            for k in 0..d {
                dtable[r * d + k] = dtable[r * d + k] + dout[n * d + k];
            }
        }
    }
    dtable
}

/// Index into x `[B, C, H, W]` of `out[b, t, f]` (the permutation of patchify).
fn patch_source(cfg: &PatchConfig, b: usize, t: usize, f: usize) -> usize {
    let p = cfg.patch;
    let gw = cfg.width / p;
    let (c, ky, kx) = (f / (p * p), (f / p) % p, f % p);
    let (y, x) = ((t / gw) * p + ky, (t % gw) * p + kx);
    ((b * cfg.channels + c) * cfg.height + y) * cfg.width + x
}

/// x `[B, C, H, W]` -> `[B, T, C*P*P]`, token `t = py*(W/P) + px`, feature
/// `c*P*P + ky*P + kx`. `cfg` must be valid (`PatchConfig::validate`).
pub fn patchify_forward<F: Scalar>(cfg: &PatchConfig, x: &[F]) -> Vec<F> {
    let (t_n, f_n) = (cfg.tokens(), cfg.features());
    let mut out = Vec::with_capacity(cfg.batch * t_n * f_n);
    for b in 0..cfg.batch {
        for t in 0..t_n {
            for f in 0..f_n {
                out.push(x[patch_source(cfg, b, t, f)]);
            }
        }
    }
    out
}

/// The inverse permutation: dout `[B, T, C*P*P]` -> dx `[B, C, H, W]`.
pub fn patchify_backward<F: Scalar>(cfg: &PatchConfig, dout: &[F]) -> Vec<F> {
    let (t_n, f_n) = (cfg.tokens(), cfg.features());
    let mut dx = vec![F::default(); cfg.batch * cfg.channels * cfg.height * cfg.width];
    for b in 0..cfg.batch {
        for t in 0..t_n {
            for f in 0..f_n {
                dx[patch_source(cfg, b, t, f)] = dout[(b * t_n + t) * f_n + f];
            }
        }
    }
    dx
}

/// x `[B, T, D]` -> `[B, T', D]`: with cls `out[b,0,:] = cls + pos[0,:]` and
/// `out[b,t+1,:] = x[b,t,:] + pos[t+1,:]`; without, `out[b,t,:] = x[b,t,:] + pos[t,:]`.
/// cls `[D]`, pos `[T', D]`.
pub fn cls_pos_forward<F: Scalar>(x: &[F], cls: Option<&[F]>, pos: &[F], batch: usize, d: usize) -> Vec<F> {
    let t_n = x.len() / (batch * d);
    let off = cls.is_some() as usize;
    let tp = t_n + off;
    let mut out = Vec::with_capacity(batch * tp * d);
    for b in 0..batch {
        for tt in 0..tp {
            for k in 0..d {
                let v = match cls {
                    Some(c) if tt == 0 => c[k],
                    _ => x[(b * t_n + tt - off) * d + k],
                };
                out.push(v + pos[tt * d + k]);
            }
        }
    }
    out
}

/// Backward of [`cls_pos_forward`] from dout `[B, T', D]`: `(dx [B, T, D], dcls [D] when
/// has_cls, dpos [T', D])`, `dpos[t',:] = sum_b dout[b,t',:]` in b order from 0.0 and
/// `dcls = dpos[0,:]`.
pub fn cls_pos_backward<F: Scalar>(
    dout: &[F],
    has_cls: bool,
    batch: usize,
    d: usize,
) -> (Vec<F>, Option<Vec<F>>, Vec<F>) {
    let tp = dout.len() / (batch * d);
    let off = has_cls as usize;
    let mut dx = Vec::with_capacity(batch * (tp - off) * d);
    let mut dpos = vec![F::default(); tp * d];
    for b in 0..batch {
        for tt in 0..tp {
            for k in 0..d {
                let g = dout[(b * tp + tt) * d + k];
                dpos[tt * d + k] = dpos[tt * d + k] + g;
                if tt >= off {
                    dx.push(g);
                }
            }
        }
    }
    let dcls = has_cls.then(|| dpos[..d].to_vec());
    (dx, dcls, dpos)
}

/// Whether token `t` of sample `b` takes part in a mean pool (key mask 0.0, or no mask).
fn pooled(key_mask: Option<&[f32]>, tokens: usize, b: usize, t: usize) -> bool {
    key_mask.is_none_or(|m| m[b * tokens + t] == 0.0)
}

/// Tokens of sample `b` that take part in a mean pool.
fn pool_count(key_mask: Option<&[f32]>, tokens: usize, b: usize) -> usize {
    (0..tokens).filter(|&t| pooled(key_mask, tokens, b, t)).count()
}

/// x `[B, T, D]` -> `[B, D]`: token 0 (`Cls`, mask ignored) or the mean over the tokens
/// whose key mask is 0.0 (`Mean`; all tokens without a mask; 0 when every token is masked).
pub fn token_pool_forward(
    mode: TokenPool,
    x: &[f64],
    key_mask: Option<&[f32]>,
    batch: usize,
    tokens: usize,
    d: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; batch * d];
    for b in 0..batch {
        for k in 0..d {
            let at = |t: usize| x[(b * tokens + t) * d + k];
            out[b * d + k] = match mode {
                TokenPool::Cls => at(0),
                TokenPool::Mean => {
                    let cnt = pool_count(key_mask, tokens, b);
                    let sum: f64 = (0..tokens).filter(|&t| pooled(key_mask, tokens, b, t)).map(at).sum();
                    if cnt == 0 {
                        0.0
                    } else {
                        sum / cnt as f64
                    }
                }
            };
        }
    }
    out
}

/// Backward of [`token_pool_forward`]: dout `[B, D]` -> dx `[B, T, D]`, zeros where the
/// forward did not read.
pub fn token_pool_backward(
    mode: TokenPool,
    key_mask: Option<&[f32]>,
    dout: &[f64],
    batch: usize,
    tokens: usize,
    d: usize,
) -> Vec<f64> {
    let mut dx = vec![0.0; batch * tokens * d];
    for b in 0..batch {
        let cnt = pool_count(key_mask, tokens, b);
        for t in 0..tokens {
            let take = match mode {
                TokenPool::Cls => t == 0,
                TokenPool::Mean => pooled(key_mask, tokens, b, t),
            };
            if !take {
                continue;
            }
            for k in 0..d {
                let g = dout[b * d + k];
                dx[(b * tokens + t) * d + k] = match mode {
                    TokenPool::Cls => g,
                    TokenPool::Mean => g / cnt as f64,
                };
            }
        }
    }
    dx
}

/// `mask[n] = 1.0` where `ids[n] == pad_id`, else 0.0.
pub fn key_mask_from_ids(ids: &[f32], pad_id: u32) -> Vec<f32> {
    ids.iter().map(|&id| if id == pad_id as f32 { 1.0 } else { 0.0 }).collect()
}
