//! CPU fake-quant reference of a whole graph in eval mode: the semantics the GPU training
//! engine implements and the int8 converter ([`crate::convert`]) is checked against.
//!
//! Per node, in order (activations NCHW f32, batch first):
//! * the image is fake-quantized with `input.output_quant` when present;
//! * conv: with BN, `sf = gamma / sqrt(running_var + BN_EPS)`, `w_eff = w * sf[c]`,
//!   `b_eff = beta - running_mean * sf` (all f32); without BN, `w_eff = w`,
//!   `b_eff = bias or 0` (bias and BN together is unsupported). `w_eff` is fake-quantized
//!   per output channel with `{node}.weight_quant`; `y = conv(x, w_eff) + b_eff`
//!   (accumulated in f64, rounded to f32 once), then ReLU / ReLU6, then `{node}.output_quant`;
//! * linear: the same on the flattened input, no BN;
//! * max pool, flatten: plain; average pools: the mean over the window, divided by
//!   `kh * kw` (padding counts as zeros, PyTorch's `count_include_pad`), then fake-quant
//!   with the quantizer the input carries ([`params::input_quantizer`]);
//! * add: `act(a + b)`, then its own output quantizer;
//! * sequences (`[batch, T, D]`): linear per token; embedding rows, patches, CLS token and
//!   positions, LayerNorm, attention (padding keys masked where the embedding has a
//!   padding id) and token pools in f32, then the node's output quantizer when the
//!   placement gives it one (`params::has_output_quant`: the BERT recipe).
//!
//! A quantizer whose `fq_on` flag is 0 passes values through.

use crate::error::{Result, WqatError};
use crate::model::checkpoint::{read_f32, GraphQuant, QState};
use crate::model::graph::{Act, Graph, Op, TokenPoolMode, INPUT};
use crate::model::params::{self, BN_EPS};
use crate::tensorfile::TensorFile;
use std::path::Path;

fn ckpt_err(msg: impl Into<String>) -> WqatError {
    WqatError::format(Path::new("checkpoint"), msg)
}

/// `(w_eff, b_eff)` of conv / linear / embedding node `i` as the simulation uses them: BN
/// folded per output channel in f32 (`s = gamma / sqrt(running_var + eps)`, `w * s`,
/// `beta - running_mean * s`), then the weight fake-quantized. Deliberately not the
/// converter's [`crate::model::checkpoint::effective_params`]: the converted model is checked
/// against this reference, so the two must not share folding code.
fn sim_params(gq: &GraphQuant, ckpt: &TensorFile, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let r = &gq.nodes[i];
    let name = &r.node.name;
    let (shape, has_bias, bn) = match &r.node.op {
        Op::Conv { out_channels, kernel, groups, bias, bn, .. } => {
            (vec![*out_channels, r.in_shapes[0][0] / groups, *kernel, *kernel], *bias, *bn)
        }
        Op::Linear { out_features, bias, .. } => (vec![*out_features, r.in_features()], *bias, false),
        Op::Embedding { vocab, dim, .. } => (vec![*vocab, *dim], false, false),
        _ => return Err(WqatError::invalid(format!("node {name} has no weights"))),
    };
    let cout = shape[0];
    let mut w = read_f32(ckpt, &params::weight_name(name), &shape)?.to_vec();
    let inner = w.len() / cout;
    let mut b = vec![0f32; cout];
    if bn && has_bias {
        return Err(ckpt_err(format!("node {name}: conv with both a bias and batch norm is unsupported")));
    }
    if bn {
        let p = r.node.bn_prefix();
        let gamma = read_f32(ckpt, &format!("{p}.weight"), &[cout])?;
        let beta = read_f32(ckpt, &format!("{p}.bias"), &[cout])?;
        let mean = read_f32(ckpt, &format!("{p}.running_mean"), &[cout])?;
        let var = read_f32(ckpt, &format!("{p}.running_var"), &[cout])?;
        for c in 0..cout {
            let s = gamma[c] / (var[c] + BN_EPS).sqrt();
            w[c * inner..(c + 1) * inner].iter_mut().for_each(|v| *v *= s);
            b[c] = beta[c] - mean[c] * s;
        }
    } else if has_bias {
        b.copy_from_slice(read_f32(ckpt, &params::bias_name(name), &[cout])?);
    }
    if let Some(q) = &gq.weight[i] {
        q.fake_quant(&mut w, inner);
    }
    Ok((w, b))
}

/// The bias node `i` adds in the simulation: with its input and weights quantized, the
/// integer model's `round(b_eff / (s_x s_w[c]))` on the grid (`reference::bias_quant`, the
/// same f32 arithmetic as the GPU engine); else `b_eff` itself.
pub fn simulated_bias(gq: &GraphQuant, i: usize, b_eff: Vec<f32>) -> Vec<f32> {
    let (Some(x), Some(w)) = (gq.input_quant(i), gq.weight[i].as_ref().filter(|q| q.enabled)) else {
        return b_eff;
    };
    b_eff
        .iter()
        .enumerate()
        .map(|(c, &b)| {
            let wc = c % w.channels();
            crate::reference::bias_quant::quantize_one(b, x.scale[0], x.inv_scale[0], w.scale[wc], w.inv_scale[wc])
        })
        .collect()
}

/// Applies a fused activation in place.
pub fn apply_act(x: &mut [f32], act: Act) {
    match act {
        Act::None => {}
        Act::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        Act::Relu6 => x.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        Act::Gelu => x.iter_mut().for_each(|v| *v = crate::reference::gelu::gelu(*v)),
    }
}

/// Plain f32 NCHW conv (f64 accumulation, one rounding) of `batch` samples of shape
/// `in_shape`: w `[cout, cin/g, k, k]`, b `[cout]`, output shape `out_shape`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_f32(
    x: &[f32],
    batch: usize,
    in_shape: [usize; 3],
    w: &[f32],
    b: &[f32],
    out_shape: [usize; 3],
    geom: [usize; 4],
    groups: usize,
) -> Vec<f32> {
    let [cin, h, wd] = in_shape;
    let [cout, oh, ow] = out_shape;
    let [k, stride, pad, dil] = geom;
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let mut out = vec![0f32; batch * cout * oh * ow];
    let mut acc = vec![0f64; oh * ow];
    for n in 0..batch {
        for co in 0..cout {
            let g = co / cout_g;
            acc.iter_mut().for_each(|a| *a = b[co] as f64);
            for ci in 0..cin_g {
                let plane = &x[(n * cin + g * cin_g + ci) * h * wd..][..h * wd];
                for ky in 0..k {
                    for kx in 0..k {
                        let wv = w[((co * cin_g + ci) * k + ky) * k + kx] as f64;
                        for oy in 0..oh {
                            let iy = (oy * stride + ky * dil) as isize - pad as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            let row = &plane[iy as usize * wd..][..wd];
                            for ox in 0..ow {
                                let ix = (ox * stride + kx * dil) as isize - pad as isize;
                                if ix >= 0 && ix < wd as isize {
                                    acc[oy * ow + ox] += wv * row[ix as usize] as f64;
                                }
                            }
                        }
                    }
                }
            }
            let dst = &mut out[(n * cout + co) * oh * ow..][..oh * ow];
            dst.iter_mut().zip(&acc).for_each(|(d, a)| *d = *a as f32);
        }
    }
    out
}

/// Plain f32 linear (f64 accumulation): x `[batch, k]`, w `[n, k]`, b `[n]`.
pub fn linear_f32(x: &[f32], batch: usize, k: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let n = b.len();
    let mut out = vec![0f32; batch * n];
    for i in 0..batch {
        let row = &x[i * k..(i + 1) * k];
        for c in 0..n {
            let wr = &w[c * k..(c + 1) * k];
            let s: f64 = row.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() + b[c] as f64;
            out[i * n + c] = s as f32;
        }
    }
    out
}

/// Max (`avg == false`) or average pool over NCHW planes; the average divides by
/// `kh * kw` (padding counts as zeros).
#[allow(clippy::too_many_arguments)]
pub fn pool_f32(
    x: &[f32],
    planes: usize,
    hw: [usize; 2],
    kernel: usize,
    stride: usize,
    pad: usize,
    out_hw: [usize; 2],
    avg: bool,
) -> Vec<f32> {
    let [h, w] = hw;
    let [oh, ow] = out_hw;
    let mut out = vec![0f32; planes * oh * ow];
    for p in 0..planes {
        let plane = &x[p * h * w..][..h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut sum, mut found) = (0f32, 0f64, false);
                for ky in 0..kernel {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    for kx in 0..kernel {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix < 0 || ix >= w as isize {
                            continue;
                        }
                        let v = plane[iy as usize * w + ix as usize];
                        sum += v as f64;
                        if !found || v > best {
                            best = v;
                            found = true;
                        }
                    }
                }
                out[(p * oh + oy) * ow + ox] = if avg { (sum / (kernel * kernel) as f64) as f32 } else { best };
            }
        }
    }
    out
}

/// An average pool of fake-quantized values `x` (per-tensor quantizer `q`) as the integer
/// model computes it: the exact mean of the code offsets `round(x / s) = q - z`, rounded half
/// to even, times the scale (see `AvgRequant`). `pool` averages a plane set of values.
pub fn pool_codes(q: &QState, x: &[f32], pool: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
    let (s, inv_s) = (q.scale[0], q.inv_scale[0]);
    let codes: Vec<f32> = x.iter().map(|&v| (v * inv_s).round_ties_even()).collect();
    let mut y: Vec<f32> = pool(&codes).into_iter().map(|m| m.round_ties_even() * s).collect();
    q.fake_quant(&mut y, 1);
    y
}

/// Global average pool over planes of `hw` values (f64 sum, one rounding).
pub fn global_avg_f32(x: &[f32], planes: usize, hw: usize) -> Vec<f32> {
    (0..planes).map(|p| (x[p * hw..][..hw].iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32).collect()
}

/// Token ids from the input values (integral, below `vocab`), or a shape error naming the
/// first bad one.
fn token_ids(x: &[f32], vocab: usize) -> Result<Vec<usize>> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            if v >= 0.0 && v.fract() == 0.0 && (v as usize) < vocab {
                Ok(v as usize)
            } else {
                Err(WqatError::shape(format!("token {i} is {v}, not an id below the vocabulary size {vocab}")))
            }
        })
        .collect()
}

/// `[batch, C, H, W]` -> `[batch, (H/P)(W/P), C*P*P]`, features in a conv weight's
/// (c, ky, kx) order; generic so the integer model permutes codes the same way.
pub fn patchify<T: Copy>(x: &[T], batch: usize, [c, h, w]: [usize; 3], p: usize) -> Vec<T> {
    let (ph, pw) = (h / p, w / p);
    let mut out = Vec::with_capacity(x.len());
    for n in 0..batch {
        for py in 0..ph {
            for px in 0..pw {
                for ch in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            out.push(x[((n * c + ch) * h + py * p + ky) * w + px * p + kx]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Token pool of the reference graph (the CPU integer executor uses it too):
/// `[batch, t, d]` -> `[batch, d]`: token 0, or the f64 mean of the non-padding tokens.
pub fn token_pool_f32(
    x: &[f32],
    batch: usize,
    t: usize,
    d: usize,
    mode: TokenPoolMode,
    pad: Option<&[bool]>,
) -> Vec<f32> {
    let mut out = vec![0f32; batch * d];
    for n in 0..batch {
        for f in 0..d {
            out[n * d + f] = match mode {
                TokenPoolMode::Cls => x[n * t * d + f],
                TokenPoolMode::Mean => {
                    let keep: Vec<usize> = (0..t).filter(|&k| !pad.is_some_and(|p| p[n * t + k])).collect();
                    if keep.is_empty() {
                        0.0
                    } else {
                        (keep.iter().map(|&k| x[(n * t + k) * d + f] as f64).sum::<f64>() / keep.len() as f64) as f32
                    }
                }
            };
        }
    }
    out
}

/// Every intermediate of [`fake_quant_forward`]: the (fake-quantized) image and each
/// node's output, `[batch, C, H, W]` flat.
#[derive(Debug, Clone)]
pub struct GraphOutputs {
    pub input: Vec<f32>,
    pub nodes: Vec<Vec<f32>>,
}

/// The fake-quant forward of `batch` normalized images (`[batch, C, H, W]`), keeping every
/// node's output (for per-layer reports).
pub fn fake_quant_forward_all(graph: &Graph, ckpt: &TensorFile, images: &[f32], batch: usize) -> Result<GraphOutputs> {
    let gq = GraphQuant::new(graph, ckpt)?;
    let sample: usize = graph.input.iter().product();
    if batch == 0 || images.len() != batch * sample {
        return Err(WqatError::shape(format!(
            "{} input values for {batch} images of shape {:?}",
            images.len(),
            graph.input
        )));
    }
    let mut input = images.to_vec();
    if let Some(q) = &gq.input {
        q.fake_quant(&mut input, 1);
    }
    let mut outs: Vec<Vec<f32>> = Vec::with_capacity(gq.nodes.len());
    // Padding tokens ([batch, T], true = padding) of a token-id input with a padding id.
    let mut key_mask: Option<Vec<bool>> = None;
    for (i, r) in gq.nodes.iter().enumerate() {
        let src = |j: usize| if j == INPUT { &input } else { &outs[j] };
        let x = src(r.inputs[0]);
        let in_shape = r.in_shapes[0];
        let [c, h, w] = in_shape;
        let [_, oh, ow] = r.out_shape;
        let mut y = match &r.node.op {
            Op::Conv { kernel, stride, padding, dilation, groups, act, .. } => {
                let (we, be) = sim_params(&gq, ckpt, i)?;
                let be = simulated_bias(&gq, i, be);
                let mut y = conv2d_f32(
                    x,
                    batch,
                    in_shape,
                    &we,
                    &be,
                    r.out_shape,
                    [*kernel, *stride, *padding, *dilation],
                    *groups,
                );
                apply_act(&mut y, *act);
                y
            }
            Op::Linear { act, .. } => {
                let (we, be) = sim_params(&gq, ckpt, i)?;
                let be = simulated_bias(&gq, i, be);
                let mut y = linear_f32(x, batch * r.rows_per_sample(), r.in_features(), &we, &be);
                apply_act(&mut y, *act);
                y
            }
            Op::Embedding { vocab, dim, padding_idx, .. } => {
                let (table, _) = sim_params(&gq, ckpt, i)?;
                let ids = token_ids(x, *vocab)?;
                if let Some(pad) = padding_idx {
                    key_mask = Some(ids.iter().map(|&t| t == *pad).collect());
                }
                ids.iter().flat_map(|&t| table[t * dim..(t + 1) * dim].iter().copied()).collect()
            }
            Op::Patchify { patch } => patchify(x, batch, in_shape, *patch),
            Op::ClsPos { cls } => {
                let [t_out, d, _] = r.out_shape;
                let pos = read_f32(ckpt, &params::pos_embed_name(&r.node.name), &[t_out, d])?;
                let cls_t =
                    if *cls { Some(read_f32(ckpt, &params::cls_token_name(&r.node.name), &[d])?) } else { None };
                crate::reference::sequence::cls_pos_forward(x, cls_t, pos, batch, d)
            }
            Op::LayerNorm { eps } => {
                let d = h;
                let gamma = read_f32(ckpt, &params::weight_name(&r.node.name), &[d])?;
                let beta = read_f32(ckpt, &params::bias_name(&r.node.name), &[d])?;
                crate::reference::layernorm::forward(x, gamma, beta, *eps).0
            }
            Op::Attention { heads, .. } => {
                let cfg = crate::kernels::attention::AttentionConfig {
                    batch,
                    tokens: c,
                    heads: *heads,
                    head_dim: h / 3 / heads,
                };
                let mask: Option<Vec<f32>> =
                    key_mask.as_ref().map(|m| m.iter().map(|&p| if p { 1.0 } else { 0.0 }).collect());
                let raw = gq.probs[i].as_ref().filter(|q| q.enabled).map(|q| q.to_raw());
                let quant = crate::reference::attention::RefAttentionQuant {
                    probs: raw.as_deref().zip(gq.probs[i].as_ref().map(|q| q.spec)),
                    ..Default::default()
                };
                crate::reference::attention::forward(&cfg, x, mask.as_deref(), &quant).1
            }
            Op::TokenPool { mode } => token_pool_f32(x, batch, c, h, *mode, key_mask.as_deref()),
            Op::MaxPool { kernel, stride, padding } => {
                let s = if *stride == 0 { *kernel } else { *stride };
                pool_f32(x, batch * c, [h, w], *kernel, s, *padding, [oh, ow], false)
            }
            // A quantized input is pooled on its codes, rounded as the integer model rounds.
            Op::AvgPool { kernel, stride, padding } => {
                let s = if *stride == 0 { *kernel } else { *stride };
                let pool = |v: &[f32]| pool_f32(v, batch * c, [h, w], *kernel, s, *padding, [oh, ow], true);
                match gq.input_quant(i) {
                    Some(q) => pool_codes(q, x, pool),
                    None => pool(x),
                }
            }
            Op::GlobalAvgPool => {
                let pool = |v: &[f32]| global_avg_f32(v, batch * c, h * w);
                match gq.input_quant(i) {
                    Some(q) => pool_codes(q, x, pool),
                    None => pool(x),
                }
            }
            Op::Add { act } => {
                let b = src(r.inputs[1]);
                let mut y: Vec<f32> = x.iter().zip(b.iter()).map(|(a, b)| a + b).collect();
                apply_act(&mut y, *act);
                y
            }
            Op::Flatten => x.clone(),
        };
        match &r.node.op {
            // A quantized input was pooled on its codes (`pool_codes` quantizes the result).
            Op::AvgPool { .. } | Op::GlobalAvgPool => {}
            _ => {
                if let Some(q) = &gq.output[i] {
                    q.fake_quant(&mut y, 1);
                }
            }
        }
        outs.push(y);
    }
    Ok(GraphOutputs { input, nodes: outs })
}

/// Logits `[batch, classes]` of the fake-quant forward of `batch` normalized images.
pub fn fake_quant_forward(graph: &Graph, ckpt: &TensorFile, images: &[f32], batch: usize) -> Result<Vec<f32>> {
    let mut all = fake_quant_forward_all(graph, ckpt, images, batch)?;
    Ok(all.nodes.pop().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Node;
    use crate::quant::{QStateLayout, QuantSpec};
    use crate::tensorfile::HostTensor;

    fn qconfig() -> String {
        serde_json::json!({"weight": QuantSpec::weight(8), "activation": QuantSpec::activation(8)}).to_string()
    }

    /// One conv with BN and ReLU on a 1x1x2 image, worked by hand.
    #[test]
    fn conv_bn_relu_fake_quant_by_hand() {
        let g = Graph {
            name: "t".into(),
            input: [1, 1, 2],
            num_classes: 2,
            nodes: vec![
                Node::new(
                    "c",
                    Op::Conv {
                        out_channels: 1,
                        kernel: 1,
                        stride: 1,
                        padding: 0,
                        dilation: 1,
                        groups: 1,
                        bias: false,
                        bn: true,
                        act: Act::Relu,
                    },
                ),
                Node::new("f", Op::Flatten),
            ],
        };
        let mut ck = TensorFile::new();
        ck.metadata.insert("qconfig".into(), qconfig());
        ck.insert("c.weight", HostTensor::f32(&[1, 1, 1, 1], vec![0.5]));
        ck.insert("c.bn.weight", HostTensor::f32(&[1], vec![2.0]));
        ck.insert("c.bn.bias", HostTensor::f32(&[1], vec![0.25]));
        ck.insert("c.bn.running_mean", HostTensor::f32(&[1], vec![1.0]));
        ck.insert("c.bn.running_var", HostTensor::f32(&[1], vec![1.0 - BN_EPS]));
        // sf = 2, w_eff = 1, b_eff = 0.25 - 2 = -1.75. Weight FQ: scale 1/127 keeps 1.0.
        let wl = QStateLayout::new(1);
        ck.insert("c.weight_quant", HostTensor::f32(&[wl.len()], wl.build(&[1.0 / 127.0], &[0.0])));
        // Input quantizer: scale 0.5, zero 4; output: scale 0.25, zero 0.
        ck.insert("input.output_quant", HostTensor::f32(&[wl.len()], wl.build(&[0.5], &[4.0])));
        ck.insert("c.output_quant", HostTensor::f32(&[wl.len()], wl.build(&[0.25], &[0.0])));
        // The bias goes on the s_x * s_w = 0.5 / 127 grid: -1.75 / (0.5 / 127) = -444.5, a
        // tie, to even -444: b_q = -444 * 0.5 / 127 = -1.748031.
        // x = [3.3, 1.0] -> FQ [3.5, 1.0] -> y = x + b_q = [1.751969, -0.748031] -> ReLU
        // -> output FQ at scale 0.25: [1.75, 0].
        let all = fake_quant_forward_all(&g, &ck, &[3.3, 1.0], 1).unwrap();
        assert_eq!(all.input, vec![3.5, 1.0]);
        assert_eq!(all.nodes[0], vec![1.75, 0.0]);
        let b_q = -444.0 * (0.5 * (1.0f32 / 127.0));
        // Output FQ with scale 0.3: 1.752 / 0.3 = 5.84 -> 6 -> 1.8.
        ck.insert("c.output_quant", HostTensor::f32(&[wl.len()], wl.build(&[0.3], &[0.0])));
        let y = fake_quant_forward(&g, &ck, &[3.3, 1.0], 1).unwrap();
        assert_eq!(y, vec![6.0 * 0.3, 0.0]);
        // Disabled quantizers pass through.
        let mut s = wl.build(&[0.25], &[0.0]);
        s[QStateLayout::FQ_ENABLED] = 0.0;
        ck.insert("c.output_quant", HostTensor::f32(&[wl.len()], s));
        let y = fake_quant_forward(&g, &ck, &[3.3, 1.0], 1).unwrap();
        assert!((y[0] - (3.5 + b_q)).abs() < 1e-6 && y[1] == 0.0, "{y:?}");
        // Bias and BN together are rejected; a missing tensor is an error.
        let mut g2 = g.clone();
        if let Op::Conv { bias, .. } = &mut g2.nodes[0].op {
            *bias = true;
        }
        ck.insert("c.bias", HostTensor::f32(&[1], vec![0.0]));
        assert!(fake_quant_forward(&g2, &ck, &[3.3, 1.0], 1).is_err());
        ck.tensors.remove("c.bn.running_var");
        assert!(fake_quant_forward(&g, &ck, &[3.3, 1.0], 1).is_err());
        assert!(fake_quant_forward(&g, &ck, &[3.3], 1).is_err());
    }
}
