//! Sampling a stage for the report, at the end of PTQ calibration and of QAT: the GPU
//! engine's evaluation pass over [`SAMPLE_IMAGES`] held-out images, once with fake-quant
//! off (the fp32 forward of the same weights) and once on. The compiled pass keeps every
//! node's raw output (`Compiled::outputs`: what its output quantizer observes, before
//! fake-quant); the node's fake-quant is applied on the host ([`QState::fake_quant`]) for
//! the SQNR. Costs two evaluation passes over the sample and one readback per node and batch.

use super::stats::{LayerAcc, QRange, StageStats, REPORT_DIR, SAMPLE_IMAGES};
use crate::data::Batcher;
use crate::engine::{Compiled, ModelState};
use crate::error::{Result, WqatError};
use crate::gpu::GpuContext;
use crate::model::checkpoint::{GraphQuant, QState};
use crate::model::{Graph, Op};
use crate::tensorfile::TensorFile;
use std::path::Path;

/// A short name of a node's op for tables.
pub fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::Conv { .. } => "conv",
        Op::Linear { .. } => "linear",
        Op::MaxPool { .. } => "max_pool",
        Op::AvgPool { .. } => "avg_pool",
        Op::GlobalAvgPool => "global_avg_pool",
        Op::Add { .. } => "add",
        Op::Flatten => "flatten",
        Op::Embedding { .. } => "embedding",
        Op::Patchify { .. } => "patchify",
        Op::ClsPos { .. } => "cls_pos",
        Op::LayerNorm { .. } => "layer_norm",
        Op::Attention { .. } => "attention",
        Op::TokenPool { .. } => "token_pool",
    }
}

/// Samples one stage with the model's current quantizer states (`ckpt` holds the same
/// states, as just saved), writes `out/report/{stage}.json` and leaves fake-quant on with
/// observers off (the state of an evaluation).
#[allow(clippy::too_many_arguments)]
pub fn record_stage(
    ctx: &GpuContext,
    c: &Compiled,
    state: &ModelState,
    graph: &Graph,
    ckpt: &TensorFile,
    batches: &Batcher,
    split: &str,
    stage: &str,
    out: &Path,
) -> Result<StageStats> {
    let gq = GraphQuant::new(graph, ckpt)?;
    let images = batches.num_images().min(SAMPLE_IMAGES);
    let per_image = c.images.len() / c.batch.max(1);
    // The quantizer each node's output carries in the fake-quant model: its own, or for
    // pools and patches the one of their input (max pool commutes with fake-quant; the
    // average pools re-quantize with it, as the CPU reference does).
    let applied: Vec<Option<&QState>> = (0..gq.nodes.len())
        .map(|i| match gq.nodes[i].node.op {
            Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool | Op::Patchify { .. } => gq.input_quant(i),
            _ => gq.output[i].as_ref().filter(|q| q.enabled),
        })
        .collect();
    let input_q = gq.input.as_ref().filter(|q| q.enabled);
    let mut input_acc = input_q.map(|q| LayerAcc::new("input", "input", Some(QRange::of(q)), images * per_image));
    let mut accs: Vec<Option<LayerAcc>> = gq
        .nodes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if matches!(r.node.op, Op::Flatten) {
                return None;
            }
            let own = gq.output[i].as_ref().filter(|q| q.enabled).map(QRange::of);
            let per = c.outputs[i].len() / c.batch.max(1);
            Some(LayerAcc::new(&r.node.name, op_kind(&r.node.op), own, images * per))
        })
        .collect();
    let plan = c.eval_plan();
    let mut padded = vec![0f32; c.images.len()];
    let mut seen = 0usize;
    for b in batches.epoch(0) {
        if seen >= images {
            break;
        }
        let n = b.size.min(images - seen);
        padded[..b.images.len()].copy_from_slice(&b.images);
        padded[b.images.len()..].fill(0.0);
        c.images.write(ctx, &padded)?;
        let mut runs: [Vec<Vec<f32>>; 2] = [Vec::new(), Vec::new()];
        for (fq, run) in runs.iter_mut().enumerate() {
            state.set_quant_flags(ctx, fq == 1, false, None)?;
            ctx.submit_plan(&plan)?;
            for (i, acc) in accs.iter().enumerate() {
                let mut v = Vec::new();
                if acc.is_some() {
                    v = c.outputs[i].read_f32(ctx)?;
                    v.truncate(n * (c.outputs[i].len() / c.batch.max(1)));
                }
                run.push(v);
            }
        }
        let [fp32, raw] = runs;
        if let (Some(acc), Some(q)) = (input_acc.as_mut(), input_q) {
            let x = &padded[..n * per_image];
            let mut xq = x.to_vec();
            q.fake_quant(&mut xq, 1);
            acc.add(x, x, &xq);
        }
        for (i, acc) in accs.iter_mut().enumerate() {
            let Some(acc) = acc else { continue };
            let mut quantized = raw[i].clone();
            if let Some(q) = applied[i] {
                q.fake_quant(&mut quantized, 1);
            }
            acc.add(&fp32[i], &raw[i], &quantized);
        }
        seen += n;
    }
    state.set_quant_flags(ctx, true, false, None)?;
    let layers = input_acc.into_iter().chain(accs.into_iter().flatten()).map(LayerAcc::finish).collect();
    let stats = StageStats { stage: stage.to_string(), split: split.to_string(), images: seen, layers };
    let text = serde_json::to_string(&stats).map_err(|e| WqatError::invalid(format!("report data: {e}")))?;
    crate::tensorfile::write_atomic(&out.join(REPORT_DIR).join(format!("{stage}.json")), text.as_bytes())?;
    Ok(stats)
}
