//! CPU reference for `shaders/attention.wgsl`: the multi-head self-attention core, plain
//! loops in f64. Layouts as in [`crate::kernels::attention`].
//!
//! Fake-quant is applied to f32 values exactly as the kernels do (`reference::fake_quant`'s
//! scalar code, f32 arithmetic), so codes agree bit for bit: q, k, v are f32 inputs, and the
//! softmax output is fake-quantized from its f32 rounding (what the kernel saves in `probs`).
//! The f64 entry points ([`forward_f64`], [`backward_f64`]) serve finite differences in
//! fp32 mode (no quantizers), where no value is rounded to f32.

use crate::kernels::attention::AttentionConfig;
use crate::quant::{QStateLayout, QuantSpec};
use crate::reference::fake_quant::quantize_code;

/// One optional per-tensor quantizer: its state (`QStateLayout`, 1 channel) and spec.
pub type RefQuant<'a> = Option<(&'a [f32], QuantSpec)>;

/// Optional fake-quant of q, k, v and the softmax output (see `kernels::attention::AttentionQuant`).
#[derive(Clone, Copy, Default)]
pub struct RefAttentionQuant<'a> {
    pub q: RefQuant<'a>,
    pub k: RefQuant<'a>,
    pub v: RefQuant<'a>,
    pub probs: RefQuant<'a>,
}

/// An active fake-quant (state present with its fq flag on).
#[derive(Clone, Copy)]
struct Fq {
    s: f32,
    inv_s: f32,
    z: f32,
    qmin: f32,
    qmax: f32,
}

fn active(q: RefQuant) -> Option<Fq> {
    let (state, spec) = q?;
    let l = QStateLayout::new(1);
    assert_eq!(state.len(), l.len(), "attention reference: a per-tensor state has {} slots", l.len());
    if state[QStateLayout::FQ_ENABLED] == 0.0 {
        return None;
    }
    Some(Fq {
        s: state[l.scale()],
        inv_s: state[l.inv_scale()],
        z: state[l.zero_point()],
        qmin: spec.qmin() as f32,
        qmax: spec.qmax() as f32,
    })
}

/// `FQ(x)` of the f32 value of `x` (identity when inactive: `x` stays f64).
fn fq(f: Option<Fq>, x: f64) -> f64 {
    match f {
        Some(f) => ((quantize_code(x as f32, f.inv_s, f.z, f.qmin, f.qmax) - f.z) * f.s) as f64,
        None => x,
    }
}

/// The STE mask of `x`: 1 where the unclamped code lies in `[qmin, qmax]` (always when inactive).
fn ste(f: Option<Fq>, x: f64) -> f64 {
    match f {
        Some(f) => {
            let c = (x as f32 * f.inv_s).round_ties_even() + f.z;
            if c >= f.qmin && c <= f.qmax {
                1.0
            } else {
                0.0
            }
        }
        None => 1.0,
    }
}

struct Active {
    q: Option<Fq>,
    k: Option<Fq>,
    v: Option<Fq>,
    p: Option<Fq>,
}

fn actives(quant: &RefAttentionQuant) -> Active {
    Active { q: active(quant.q), k: active(quant.k), v: active(quant.v), p: active(quant.probs) }
}

/// Index helpers: qkv element (b, t, part 0/1/2 = q/k/v, h, d), out (b, t, h, d), probs (b, h, i, j).
struct Ix {
    t: usize,
    h: usize,
    dh: usize,
}

impl Ix {
    fn new(cfg: &AttentionConfig) -> Self {
        Ix { t: cfg.tokens, h: cfg.heads, dh: cfg.head_dim }
    }
    fn dm(&self) -> usize {
        self.h * self.dh
    }
    fn qkv(&self, b: usize, t: usize, part: usize, h: usize, d: usize) -> usize {
        (b * self.t + t) * 3 * self.dm() + part * self.dm() + h * self.dh + d
    }
    fn out(&self, b: usize, t: usize, h: usize, d: usize) -> usize {
        (b * self.t + t) * self.dm() + h * self.dh + d
    }
    fn p(&self, b: usize, h: usize, i: usize, j: usize) -> usize {
        ((b * self.h + h) * self.t + i) * self.t + j
    }
}

fn check(cfg: &AttentionConfig, qkv: usize, key_mask: Option<&[f32]>) {
    let [b, t, c] = cfg.qkv_shape();
    assert_eq!(qkv, b * t * c, "attention reference: qkv length");
    if let Some(m) = key_mask {
        assert_eq!(m.len(), b * t, "attention reference: key_mask length");
    }
}

fn is_masked(key_mask: Option<&[f32]>, tokens: usize, b: usize, j: usize) -> bool {
    key_mask.is_some_and(|m| m[b * tokens + j] != 0.0)
}

/// The softmax `P [B, H, T, T]` in f64: scores `FQ(q) . FQ(k) / sqrt(dh)`, masked keys -> 0,
/// max subtracted; a row with every key masked is all zeros.
pub fn probs_f64(cfg: &AttentionConfig, qkv: &[f64], key_mask: Option<&[f32]>, quant: &RefAttentionQuant) -> Vec<f64> {
    check(cfg, qkv.len(), key_mask);
    let a = actives(quant);
    let ix = Ix::new(cfg);
    let scale = 1.0 / (cfg.head_dim as f64).sqrt();
    let mut p = vec![0.0; cfg.probs_shape().iter().product()];
    for b in 0..cfg.batch {
        for h in 0..cfg.heads {
            for i in 0..cfg.tokens {
                let mut s = vec![f64::NEG_INFINITY; cfg.tokens];
                for (j, sj) in s.iter_mut().enumerate() {
                    if is_masked(key_mask, cfg.tokens, b, j) {
                        continue;
                    }
                    let mut acc = 0.0;
                    for d in 0..cfg.head_dim {
                        acc += fq(a.q, qkv[ix.qkv(b, i, 0, h, d)]) * fq(a.k, qkv[ix.qkv(b, j, 1, h, d)]);
                    }
                    *sj = acc * scale;
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for j in 0..cfg.tokens {
                    p[ix.p(b, h, i, j)] = e[j] / sum;
                }
            }
        }
    }
    p
}

/// `out [B, T, D]` = `FQ(P) @ FQ(v)` per head over the unmasked keys, and the sum of the
/// absolute terms of every element (the yardstick for `testing::assert_close_scaled`).
pub fn output_f64(
    cfg: &AttentionConfig,
    qkv: &[f64],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
    probs: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    check(cfg, qkv.len(), key_mask);
    assert_eq!(probs.len(), cfg.probs_shape().iter().product::<usize>(), "attention reference: probs length");
    let a = actives(quant);
    let ix = Ix::new(cfg);
    let n: usize = cfg.out_shape().iter().product();
    let (mut out, mut abs) = (vec![0.0; n], vec![0.0; n]);
    for b in 0..cfg.batch {
        for h in 0..cfg.heads {
            for i in 0..cfg.tokens {
                for j in 0..cfg.tokens {
                    if is_masked(key_mask, cfg.tokens, b, j) {
                        continue;
                    }
                    let ph = fq(a.p, probs[ix.p(b, h, i, j)]);
                    for d in 0..cfg.head_dim {
                        let term = ph * fq(a.v, qkv[ix.qkv(b, j, 2, h, d)]);
                        out[ix.out(b, i, h, d)] += term;
                        abs[ix.out(b, i, h, d)] += term.abs();
                    }
                }
            }
        }
    }
    (out, abs)
}

/// f64 forward: `(probs, out)`. With a probs quantizer, `FQ` sees the f32 rounding of P.
pub fn forward_f64(
    cfg: &AttentionConfig,
    qkv: &[f64],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
) -> (Vec<f64>, Vec<f64>) {
    let p = probs_f64(cfg, qkv, key_mask, quant);
    let (out, _) = output_f64(cfg, qkv, key_mask, quant, &p);
    (p, out)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The forward: `(probs, out)` as f32. `out` is computed from the f32 probs (what the kernel
/// saves and fake-quantizes).
pub fn forward(
    cfg: &AttentionConfig,
    qkv: &[f32],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
) -> (Vec<f32>, Vec<f32>) {
    let x = f64s(qkv);
    let p = f32s(&probs_f64(cfg, &x, key_mask, quant));
    let (out, _) = output_f64(cfg, &x, key_mask, quant, &f64s(&p));
    (p, f32s(&out))
}

/// `out` from given f32 `probs` (e.g. the kernel's), with the sum of absolute terms.
pub fn output(
    cfg: &AttentionConfig,
    qkv: &[f32],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
    probs: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let (out, abs) = output_f64(cfg, &f64s(qkv), key_mask, quant, &f64s(probs));
    (f32s(&out), f32s(&abs))
}

/// f64 backward: `dqkv [B, T, 3D]` from `dout [B, T, D]` and the saved `probs`, with STE masks:
/// `dP = (dO . FQ(v)) * STE_p(P)`, `dS = P (dP - sum_j P dP)`, `dq = STE_q * scale * dS FQ(k)`,
/// `dk = STE_k * scale * dS^T FQ(q)`, `dv = STE_v * FQ(P)^T dO`. With `abs` every product and
/// difference takes absolute values instead (the error yardstick of each element).
fn backward_core(
    cfg: &AttentionConfig,
    qkv: &[f64],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
    probs: &[f64],
    dout: &[f64],
    abs: bool,
) -> Vec<f64> {
    check(cfg, qkv.len(), key_mask);
    assert_eq!(probs.len(), cfg.probs_shape().iter().product::<usize>(), "attention reference: probs length");
    assert_eq!(dout.len(), cfg.out_shape().iter().product::<usize>(), "attention reference: dout length");
    let a = actives(quant);
    let ix = Ix::new(cfg);
    let t = cfg.tokens;
    let scale = 1.0 / (cfg.head_dim as f64).sqrt();
    let f = |x: f64| if abs { x.abs() } else { x };
    let mut dqkv = vec![0.0; qkv.len()];
    for b in 0..cfg.batch {
        for h in 0..cfg.heads {
            // dS [T, T] of this (b, h).
            let mut ds = vec![0.0; t * t];
            for i in 0..t {
                let mut dp = vec![0.0; t];
                let mut r = 0.0;
                for j in 0..t {
                    if is_masked(key_mask, t, b, j) {
                        continue;
                    }
                    let pij = probs[ix.p(b, h, i, j)];
                    let mut acc = 0.0;
                    for d in 0..cfg.head_dim {
                        acc += f(dout[ix.out(b, i, h, d)] * fq(a.v, qkv[ix.qkv(b, j, 2, h, d)]));
                    }
                    dp[j] = acc * ste(a.p, pij);
                    r += pij * dp[j];
                }
                for j in 0..t {
                    if is_masked(key_mask, t, b, j) {
                        continue;
                    }
                    let pij = probs[ix.p(b, h, i, j)];
                    ds[i * t + j] = if abs { pij * (dp[j] + r) } else { pij * (dp[j] - r) };
                }
            }
            for i in 0..t {
                for j in 0..t {
                    if is_masked(key_mask, t, b, j) {
                        continue;
                    }
                    let (dsij, pij) = (ds[i * t + j], probs[ix.p(b, h, i, j)]);
                    let ph = fq(a.p, pij);
                    for d in 0..cfg.head_dim {
                        let (qi, kj, vj) = (ix.qkv(b, i, 0, h, d), ix.qkv(b, j, 1, h, d), ix.qkv(b, j, 2, h, d));
                        dqkv[qi] += f(dsij * fq(a.k, qkv[kj]));
                        dqkv[kj] += f(dsij * fq(a.q, qkv[qi]));
                        dqkv[vj] += f(ph * dout[ix.out(b, i, h, d)]);
                    }
                }
            }
        }
    }
    for b in 0..cfg.batch {
        for tk in 0..t {
            for h in 0..cfg.heads {
                for d in 0..cfg.head_dim {
                    let (qi, ki, vi) = (ix.qkv(b, tk, 0, h, d), ix.qkv(b, tk, 1, h, d), ix.qkv(b, tk, 2, h, d));
                    dqkv[qi] *= scale * ste(a.q, qkv[qi]);
                    dqkv[ki] *= scale * ste(a.k, qkv[ki]);
                    dqkv[vi] *= ste(a.v, qkv[vi]);
                }
            }
        }
    }
    dqkv
}

/// f64 backward (see [`backward`]).
pub fn backward_f64(
    cfg: &AttentionConfig,
    qkv: &[f64],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
    probs: &[f64],
    dout: &[f64],
) -> Vec<f64> {
    backward_core(cfg, qkv, key_mask, quant, probs, dout, false)
}

/// The backward: `dqkv` from `dout` and the saved f32 `probs`.
pub fn backward(
    cfg: &AttentionConfig,
    qkv: &[f32],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
    probs: &[f32],
    dout: &[f32],
) -> Vec<f32> {
    f32s(&backward_f64(cfg, &f64s(qkv), key_mask, quant, &f64s(probs), &f64s(dout)))
}

/// The yardstick of [`backward`]: every element's sum of absolute terms (products and
/// differences taken in absolute value), for `testing::assert_close_scaled`.
pub fn backward_abs(
    cfg: &AttentionConfig,
    qkv: &[f32],
    key_mask: Option<&[f32]>,
    quant: &RefAttentionQuant,
    probs: &[f32],
    dout: &[f32],
) -> Vec<f32> {
    f32s(&backward_core(cfg, &f64s(qkv), key_mask, quant, &f64s(probs), &f64s(dout), true))
}
