//! Evaluation, single-image preprocessing and the per-layer simulation-vs-integer report.

use super::cpu::NodeValue;
use super::{Int8CpuModel, Int8GpuModel};
use crate::data::Split;
use crate::error::{Result, WqatError};
use crate::gpu::GpuContext;
use crate::infer::CpuBackend;
use crate::infer::{Domain, Int8Model};
use crate::model::graph::{Graph, Op, INPUT};
use crate::reference::graph::fake_quant_forward_all;
use crate::tensorfile::TensorFile;
use std::path::Path;
use std::sync::Arc;

/// Where an integer model runs.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The GPU executor ([`Int8GpuModel`]) on this device.
    Gpu(Arc<GpuContext>),
    /// CPU, best SIMD kernel, multithreaded.
    Cpu,
    /// CPU scalar reference kernels (multithreaded over the batch).
    CpuScalar,
}

/// Accuracy and per-image predictions of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Fraction of images whose prediction equals the label.
    pub accuracy: f64,
    pub correct: usize,
    pub total: usize,
    pub predictions: Vec<usize>,
}

/// Runs every image of `split` (normalized, as data loaders produce them) through the model
/// in batches of `batch` and compares predictions with the labels.
pub fn evaluate(model: &Int8Model, backend: &Backend, split: &Split, batch: usize) -> Result<EvalResult> {
    let sample: usize = model.input_shape().iter().product();
    if split.image_len() != sample {
        return Err(WqatError::shape(format!(
            "data images have {} values, the model takes {:?}",
            split.image_len(),
            model.input_shape()
        )));
    }
    let batch = batch.max(1);
    let gpu = match backend {
        Backend::Gpu(ctx) => Some(Int8GpuModel::new(ctx, model, batch.min(split.len().max(1)))?),
        _ => None,
    };
    let cpu = Int8CpuModel::new(model);
    let mut predictions = Vec::with_capacity(split.len());
    let images = split.images();
    let mut start = 0;
    while start < split.len() {
        let n = batch.min(split.len() - start);
        let x = &images[start * sample..(start + n) * sample];
        let out = match (backend, &gpu) {
            (Backend::Gpu(_), Some(g)) => g.forward(x, n)?,
            (Backend::CpuScalar, _) => cpu.forward(x, n, CpuBackend::Scalar)?,
            _ => cpu.forward(x, n, CpuBackend::Simd)?,
        };
        predictions.extend(out.predictions);
        start += n;
    }
    let correct = predictions.iter().zip(split.labels()).filter(|(p, l)| **p == **l as usize).count();
    let total = split.len();
    Ok(EvalResult {
        accuracy: if total == 0 { 0.0 } else { correct as f64 / total as f64 },
        correct,
        total,
        predictions,
    })
}

/// Reads a PNG or JPEG file, resizes it to the model's input height and width (bilinear),
/// converts it to the model's channel count (1: luma, 3: RGB) and normalizes it with the
/// model's normalization, reading 8-bit pixels as fractions of 255 (`x = (p / 255 - mean)
/// / std`). Returns one `[C, H, W]` image.
pub fn preprocess_image_file(path: &Path, model: &Int8Model) -> Result<Vec<f32>> {
    let [c, h, w] = model.input_shape();
    let img = image::ImageReader::open(path)
        .map_err(|e| WqatError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| WqatError::io(path, e))?
        .decode()
        .map_err(|e| WqatError::format(path, format!("cannot decode image: {e}")))?;
    let img = img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle);
    let planes: Vec<Vec<u8>> = match c {
        1 => vec![img.to_luma8().into_raw()],
        3 => {
            let rgb = img.to_rgb8().into_raw();
            (0..3).map(|ch| rgb.iter().skip(ch).step_by(3).copied().collect()).collect()
        }
        _ => return Err(WqatError::invalid(format!("image files can feed 1- or 3-channel models, not {c}"))),
    };
    let norm = model.normalization();
    norm.validate()?;
    let mut out = Vec::with_capacity(c * h * w);
    for (ch, plane) in planes.iter().enumerate() {
        out.extend(plane.iter().map(|&p| (p as f32 / 255.0 - norm.mean[ch]) / norm.std[ch]));
    }
    Ok(out)
}

/// Simulation-vs-integer difference of one node's output, in units of its quantization step.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerDiff {
    pub node: String,
    /// `max |fq / s + z - q|` over the batch.
    pub max_abs_lsb: f64,
    /// Mean of the same.
    pub mean_abs_lsb: f64,
    /// Number of outputs whose integer code differs from the simulated code.
    pub mismatched: usize,
    pub total: usize,
    /// `max |fq / s + z - q|` when the integer node is fed the simulation's own input codes
    /// (the node's local error, without what earlier layers passed on).
    pub local_max_abs_lsb: f64,
    /// Codes that differ in that local comparison.
    pub local_mismatched: usize,
}

/// For every node with its own output quantizer (and every average pool, which
/// re-quantizes with its input's quantizer), compares the fake-quant reference's
/// activations (divided by the scale, plus the zero point) with the integer model's codes
/// (CPU SIMD executor) on `batch` normalized images; and the same when the integer node is
/// fed the simulation's own input codes (its local error).
pub fn layer_report(
    graph: &Graph,
    ckpt: &TensorFile,
    model: &Int8Model,
    images: &[f32],
    batch: usize,
) -> Result<Vec<LayerDiff>> {
    if graph.nodes.len() != model.nodes().len()
        || graph.nodes.iter().zip(model.nodes()).any(|(a, b)| a.name != b.node.name || a.op != b.node.op)
    {
        return Err(WqatError::invalid("layer_report: the graph is not the one the model was converted from"));
    }
    let sim = fake_quant_forward_all(graph, ckpt, images, batch)?;
    let int = Int8CpuModel::new(model).forward_traced(images, batch, CpuBackend::Simd)?;
    let acts = int.activations.unwrap_or_default();
    let key_mask = model.key_mask(&sim.input);
    let mut out = Vec::new();
    for (i, (r, l)) in model.nodes().iter().zip(&model.layers).enumerate() {
        let own = !matches!(r.node.op, Op::MaxPool { .. } | Op::Flatten | Op::Patchify { .. });
        let (true, Domain::Codes(q), Some(NodeValue::Codes(codes))) = (own, l.out, acts.get(i)) else { continue };
        let fq = &sim.nodes[i];
        if fq.len() != codes.len() {
            return Err(WqatError::shape(format!(
                "node {}: simulation and integer outputs differ in size",
                r.node.name
            )));
        }
        let diff = |codes: &[u8]| {
            let (mut max, mut sum, mut mism) = (0f64, 0f64, 0usize);
            for (&f, &c) in fq.iter().zip(codes) {
                let d = (f as f64 / q.scale as f64 + q.zero as f64 - c as f64).abs();
                max = max.max(d);
                sum += d;
                mism += usize::from(d >= 0.5);
            }
            (max, sum, mism)
        };
        let (max, sum, mism) = diff(codes);
        // The simulation's inputs of this node as the integer model represents them.
        let sim_input = |j: usize| -> NodeValue {
            let v = if j == INPUT { &sim.input } else { &sim.nodes[j] };
            match model.domain_of(j) {
                Domain::Codes(qj) => NodeValue::Codes(
                    v.iter()
                        .map(|&f| ((f as f64 / qj.scale as f64).round() + qj.zero as f64).clamp(0.0, 255.0) as u8)
                        .collect(),
                ),
                Domain::Float => NodeValue::Float(v.clone()),
            }
        };
        let xs: Vec<NodeValue> = r.inputs.iter().map(|&j| sim_input(j)).collect();
        let local = model.run_node(i, &xs[0], xs.get(1), batch, CpuBackend::Simd, key_mask.as_deref())?;
        let (lmax, _, lmism) = match &local {
            NodeValue::Codes(c) => diff(c),
            NodeValue::Float(_) => (0.0, 0.0, 0),
        };
        out.push(LayerDiff {
            node: r.node.name.clone(),
            max_abs_lsb: max,
            mean_abs_lsb: sum / codes.len().max(1) as f64,
            mismatched: mism,
            total: codes.len(),
            local_max_abs_lsb: lmax,
            local_mismatched: lmism,
        });
    }
    Ok(out)
}
