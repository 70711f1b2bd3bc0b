//! Synthetic QAT checkpoints for tests and benchmarks: random weights and BN statistics,
//! quantizers calibrated (min/max, [`QuantSpec::qparams`]) on a CPU fp32 forward of random
//! images, optionally with extreme values mixed in. The contents follow the checkpoint
//! layout described in [`crate::reference::graph`].

use crate::data::Normalization;
use crate::error::Result;
use crate::model::checkpoint::{folded_params, GraphQuant};
use crate::model::graph::{Graph, INPUT};
use crate::model::params::{self, ParamKind, QuantizerRole};
use crate::qconfig::QConfig;
use crate::quant::QStateLayout;
use crate::reference::graph::fake_quant_forward_all;
use crate::tensorfile::{HostTensor, TensorFile};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` random normalized input values, roughly normal in about [-3.6, 3.6]; with `wide`, one
/// value in 50 is tripled so it lands beyond the calibration range (quantizers clamp).
pub fn random_images(rng: &mut ChaCha8Rng, n: usize, wide: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 0.9;
            if wide && rng.random_range(0..50) == 0 {
                v * 3.0
            } else {
                v
            }
        })
        .collect()
}

/// Random inputs for `samples` samples of `graph`: token ids when its first node embeds
/// tokens (random ids, then padding from a random length on when it has a padding id),
/// else [`random_images`].
pub fn random_inputs(graph: &Graph, rng: &mut ChaCha8Rng, samples: usize, wide: bool) -> Vec<f32> {
    let len: usize = graph.input.iter().product();
    match graph.nodes.first().map(|n| &n.op) {
        Some(crate::model::Op::Embedding { vocab, padding_idx, .. }) => {
            let mut out = Vec::with_capacity(samples * len);
            for _ in 0..samples {
                let used = rng.random_range(1..=len);
                for k in 0..len {
                    let mut id = rng.random_range(0..*vocab);
                    match *padding_idx {
                        Some(p) if k >= used => id = p,
                        // Not padding before the padded tail.
                        Some(p) if id == p && *vocab > 1 => id = (id + 1) % vocab,
                        _ => {}
                    }
                    out.push(id as f32);
                }
            }
            out
        }
        _ => random_images(rng, samples * len, wide),
    }
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// A random checkpoint of `graph` with 8-bit per-channel weights and 8-bit activations.
/// With `extreme`, every layer gets an all-zero weight channel (degenerate scale), a weight
/// outlier, a BN gamma of 8 and a running variance of 1e-4 (a gain of about 100): good for
/// arithmetic coverage, but it makes a deep random network chaotic.
pub fn synthetic_checkpoint(graph: &Graph, seed: u64, extreme: bool) -> Result<TensorFile> {
    synthetic_checkpoint_bits(graph, seed, extreme, 8, 8)
}

/// [`synthetic_checkpoint`] with `weight_bits`-wide weights and `act_bits`-wide activations.
pub fn synthetic_checkpoint_bits(
    graph: &Graph,
    seed: u64,
    extreme: bool,
    weight_bits: u32,
    act_bits: u32,
) -> Result<TensorFile> {
    synthetic_checkpoint_qconfig(graph, seed, extreme, &QConfig::new(weight_bits, act_bits)?)
}

/// [`synthetic_checkpoint`] quantized as `qconfig` says, per-layer overrides included
/// (per-tensor weights where the layer's weight spec has no channel axis).
pub fn synthetic_checkpoint_qconfig(graph: &Graph, seed: u64, extreme: bool, qconfig: &QConfig) -> Result<TensorFile> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    qconfig.validate()?;
    qconfig.check_layers(graph)?;
    let nodes = graph.resolve()?;
    let mut ck = TensorFile::new();
    let json = |v: serde_json::Value| v.to_string();
    ck.metadata.insert("format".into(), "wqat-checkpoint".into());
    ck.metadata.insert("version".into(), "1".into());
    ck.metadata.insert("graph".into(), json(serde_json::to_value(graph).unwrap_or_default()));
    ck.metadata.insert("qconfig".into(), json(serde_json::to_value(qconfig).unwrap_or_default()));
    let c = graph.input[0];
    let norm = Normalization { max_value: 255.0, mean: vec![0.25; c], std: vec![0.5; c] };
    ck.metadata.insert("normalization".into(), json(serde_json::to_value(&norm).unwrap_or_default()));
    let names: Vec<String> = (0..graph.num_classes).map(|i| format!("class{i}")).collect();
    ck.metadata.insert("class_names".into(), json(serde_json::to_value(&names).unwrap_or_default()));
    for p in params::param_specs(graph)? {
        let n: usize = p.shape.iter().product();
        let fan_in = if p.shape.len() > 1 { n / p.shape[0] } else { 1 };
        let a = (3.0 / fan_in as f32).sqrt() * 1.2;
        let mut v: Vec<f32> = match p.kind {
            ParamKind::Weight => uniform(&mut rng, n, -a, a),
            ParamKind::Bias => uniform(&mut rng, n, -0.2, 0.2),
            ParamKind::BnGamma => uniform(&mut rng, n, 0.5, 1.5),
            ParamKind::BnBeta => uniform(&mut rng, n, -0.3, 0.3),
            ParamKind::BnRunningMean => uniform(&mut rng, n, -0.3, 0.3),
            ParamKind::BnRunningVar => uniform(&mut rng, n, 0.5, 2.0),
            ParamKind::LnWeight => uniform(&mut rng, n, 0.5, 1.5),
            ParamKind::LnBias => uniform(&mut rng, n, -0.3, 0.3),
            ParamKind::Embedding => uniform(&mut rng, n, -0.5, 0.5),
            ParamKind::QuantScale => vec![1.0; n],
            ParamKind::QuantZeroPoint => vec![0.0; n],
        };
        match p.kind {
            _ if !extreme => {}
            ParamKind::Weight if p.shape[0] > 3 => {
                let inner = n / p.shape[0];
                v[..inner].iter_mut().for_each(|x| *x = 0.0);
                v[inner] = a * 20.0;
            }
            ParamKind::BnGamma if n > 3 => v[1] = 8.0,
            ParamKind::BnRunningVar if n > 3 => v[2] = 1e-4,
            _ => {}
        }
        ck.insert(p.name.clone(), HostTensor::f32(&p.shape, v));
        // An optional extra a training checkpoint carries (readers ignore it).
        if p.kind == ParamKind::Weight {
            ck.insert(format!("{}.momentum", p.name), HostTensor::f32(&p.shape, vec![0.0; n]));
        }
    }
    // Quantizers off: the fp32 forward, for calibration.
    let specs = qconfig.quantizer_specs(graph)?;
    for q in &specs {
        let l = QStateLayout::new(q.channels);
        let mut s = l.build(&vec![1.0; q.channels], &vec![0.0; q.channels]);
        s[QStateLayout::FQ_ENABLED] = 0.0;
        ck.insert(q.name.clone(), HostTensor::f32(&[l.len()], s));
    }
    let calib_n = 8;
    let x = random_inputs(graph, &mut rng, calib_n, false);
    let fp = fake_quant_forward_all(graph, &ck, &x, calib_n)?;
    let gq = GraphQuant::new(graph, &ck)?;
    let range = |v: &[f32]| v.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    for q in &specs {
        let l = QStateLayout::new(q.channels);
        let spec = qconfig.spec(&nodes, q.role);
        let (scales, zeros): (Vec<f32>, Vec<f32>) = match q.role {
            QuantizerRole::Weight(i) => {
                let (w, _) = folded_params(&gq, &ck, i)?;
                let inner = w.len() / q.channels;
                (0..q.channels)
                    .map(|c| {
                        let (lo, hi) = range(&w[c * inner..(c + 1) * inner]);
                        let (s, _, z) = spec.qparams(lo, hi);
                        (s, z)
                    })
                    .unzip()
            }
            // Softmax outputs lie in [0, 1].
            QuantizerRole::Probs(_) => {
                let (s, _, z) = spec.qparams(0.0, 1.0);
                (vec![s], vec![z])
            }
            QuantizerRole::Output(i) => {
                let v = if i == INPUT { &fp.input } else { &fp.nodes[i] };
                let (lo, hi) = range(v);
                let (s, _, z) = spec.qparams(lo, hi);
                (vec![s], vec![z])
            }
        };
        ck.insert(q.name.clone(), HostTensor::f32(&[l.len()], l.build(&scales, &zeros)));
    }
    Ok(ck)
}
