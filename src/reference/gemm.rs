//! CPU reference for `shaders/gemm.wgsl`: plain loops, f64 accumulation, the semantics of
//! [`crate::kernels::gemm::GemmConfig`].

use crate::kernels::gemm::GemmConfig;
use crate::quant::{QStateLayout, QuantSpec};
use crate::reference::fake_quant::quantize_code;

/// Host copies of the optional inputs of a GEMM (see [`crate::kernels::gemm::GemmExtras`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmInputs<'a> {
    pub bias: Option<&'a [f32]>,
    pub qa: Option<&'a [f32]>,
    pub qb: Option<&'a [f32]>,
    pub mask_src: Option<&'a [f32]>,
    pub mask_state: Option<&'a [f32]>,
}

/// Channels of a quantizer over a tensor with `rows` rows (per row or per tensor).
fn channels(spec: &QuantSpec, rows: usize) -> usize {
    if spec.channel_axis.is_some() {
        rows
    } else {
        1
    }
}

/// Fake-quantizes a `[rows, cols]` storage per row (or per tensor) with `state`, as the
/// kernel does on load; identity when the state's fq flag is 0.
pub fn fake_quant_rows(x: &[f32], rows: usize, cols: usize, spec: &QuantSpec, state: &[f32]) -> Vec<f32> {
    let ch = channels(spec, rows);
    let l = QStateLayout::new(ch);
    if state[QStateLayout::FQ_ENABLED] == 0.0 {
        return x.to_vec();
    }
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
    let mut out = x.to_vec();
    for r in 0..rows {
        let c = if ch == 1 { 0 } else { r };
        let (s, inv, z) = (state[l.scale() + c], state[l.inv_scale() + c], state[l.zero_point() + c]);
        for v in &mut out[r * cols..(r + 1) * cols] {
            *v = (quantize_code(*v, inv, z, qmin, qmax) - z) * s;
        }
    }
    out
}

/// STE mask of a `[m, n]` source: 1 where the unclamped code lies in `[qmin, qmax]`
/// (channel = row), all ones when the fq flag is 0.
pub fn ste_mask(src: &[f32], m: usize, n: usize, spec: &QuantSpec, state: &[f32]) -> Vec<f32> {
    let ch = channels(spec, m);
    let l = QStateLayout::new(ch);
    if state[QStateLayout::FQ_ENABLED] == 0.0 {
        return vec![1.0; m * n];
    }
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        let c = if ch == 1 { 0 } else { i };
        let (inv, z) = (state[l.inv_scale() + c], state[l.zero_point() + c]);
        for j in 0..n {
            let r = (src[i * n + j] * inv).round_ties_even() + z;
            out[i * n + j] = if r >= qmin && r <= qmax { 1.0 } else { 0.0 };
        }
    }
    out
}

/// The (fake-quantized) operands in logical layout: `A'` as `[m, k]` and `B'` as `[k, n]`.
pub fn operands(cfg: &GemmConfig, a: &[f32], b: &[f32], inp: &GemmInputs) -> (Vec<f32>, Vec<f32>) {
    let (m, n, k) = (cfg.m, cfg.n, cfg.k);
    let (ar, ac) = if cfg.trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if cfg.trans_b { (n, k) } else { (k, n) };
    let a = match &cfg.fq_a {
        Some(s) => fake_quant_rows(a, ar, ac, s, inp.qa.expect("qa")),
        None => a.to_vec(),
    };
    let b = match &cfg.fq_b {
        Some(s) => fake_quant_rows(b, br, bc, s, inp.qb.expect("qb")),
        None => b.to_vec(),
    };
    let al = if cfg.trans_a { transpose(&a, ar, ac) } else { a };
    let bl = if cfg.trans_b { transpose(&b, br, bc) } else { b };
    (al, bl)
}

/// `[rows, cols]` to `[cols, rows]`.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

/// The GEMM of `cfg`: returns the new C (`c` is the old C, read when accumulating).
pub fn gemm(cfg: &GemmConfig, a: &[f32], b: &[f32], c: &[f32], inp: &GemmInputs) -> Vec<f32> {
    let (m, n, k) = (cfg.m, cfg.n, cfg.k);
    let (al, bl) = operands(cfg, a, b, inp);
    let mask = cfg.mask.map(|s| ste_mask(inp.mask_src.expect("mask_src"), m, n, &s, inp.mask_state.expect("state")));
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for kk in 0..k {
                acc += al[i * k + kk] as f64 * bl[kk * n + j] as f64;
            }
            let mut v = acc as f32;
            if cfg.bias {
                v += inp.bias.expect("bias")[j];
            }
            if cfg.relu {
                v = v.max(0.0);
            }
            if let Some(mk) = &mask {
                v *= mk[i * n + j];
            }
            if cfg.accumulate {
                v += c[i * n + j];
            }
            out[i * n + j] = v;
        }
    }
    out
}

/// The tolerance yardstick of each output: `sum_k |A'_ik B'_kj| + |bias_j| + |C_ij|` (the
/// old C when accumulating).
pub fn abs_scale(cfg: &GemmConfig, a: &[f32], b: &[f32], c: &[f32], inp: &GemmInputs) -> Vec<f32> {
    let (m, n, k) = (cfg.m, cfg.n, cfg.k);
    let (al, bl) = operands(cfg, a, b, inp);
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for kk in 0..k {
                s += (al[i * k + kk] as f64 * bl[kk * n + j] as f64).abs();
            }
            if cfg.bias {
                s += inp.bias.expect("bias")[j].abs() as f64;
            }
            if cfg.accumulate {
                s += c[i * n + j].abs() as f64;
            }
            out[i * n + j] = s as f32;
        }
    }
    out
}
