//! Per-output-channel weight ranges of a checkpoint against its weight quantizers: the
//! weights the simulation quantizes (conv weights with BN folded in, as
//! [`folded_params`] computes them for evaluation), their min/max per channel, and the
//! representable range `[qmin s_c, qmax s_c]` of each channel's scale.

use crate::error::{Result, WqatError};
use crate::model::checkpoint::{folded_params, GraphQuant};
use crate::model::Graph;
use crate::tensorfile::TensorFile;
use std::path::Path;

/// One weighted layer.
#[derive(Debug, Clone)]
pub struct WeightRanges {
    pub layer: String,
    pub bits: u32,
    /// Whether the quantizer has one scale per output channel.
    pub per_channel: bool,
    /// Per output channel: extremes of the weights and the representable range.
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    pub lo: Vec<f32>,
    pub hi: Vec<f32>,
    /// Weights beyond the range by more than half a step (the clamp changes them).
    pub clipped: u64,
    pub values: u64,
}

/// The graph a checkpoint was trained with (its `graph` metadata).
pub fn checkpoint_graph(path: &Path, f: &TensorFile) -> Result<Graph> {
    let text = f.metadata.get("graph").ok_or_else(|| WqatError::format(path, "checkpoint has no graph"))?;
    let g: Graph = serde_json::from_str(text).map_err(|e| WqatError::format(path, format!("graph metadata: {e}")))?;
    g.resolve().map_err(|e| WqatError::format(path, e.to_string()))?;
    Ok(g)
}

/// Every layer with an enabled weight quantizer, in node order.
pub fn weight_ranges(path: &Path, f: &TensorFile) -> Result<Vec<WeightRanges>> {
    let graph = checkpoint_graph(path, f)?;
    let gq = GraphQuant::new(&graph, f).map_err(|e| WqatError::format(path, e.to_string()))?;
    let mut out = Vec::new();
    for (i, r) in gq.nodes.iter().enumerate() {
        let Some(q) = gq.weight[i].as_ref().filter(|q| q.enabled) else { continue };
        let (w, b) = folded_params(&gq, f, i).map_err(|e| WqatError::format(path, e.to_string()))?;
        let channels = b.len().max(1);
        let inner = w.len() / channels;
        let (qmin, qmax) = (q.spec.qmin() as f32, q.spec.qmax() as f32);
        let mut wr = WeightRanges {
            layer: r.node.name.clone(),
            bits: q.spec.bits,
            per_channel: q.channels() > 1,
            min: Vec::with_capacity(channels),
            max: Vec::with_capacity(channels),
            lo: Vec::with_capacity(channels),
            hi: Vec::with_capacity(channels),
            clipped: 0,
            values: w.len() as u64,
        };
        for (c, row) in w.chunks(inner.max(1)).enumerate() {
            let s = q.scale[c % q.channels()];
            let (lo, hi) = (qmin * s, qmax * s);
            let (mn, mx) = row.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            wr.clipped += row.iter().filter(|&&v| v < lo - 0.5 * s || v > hi + 0.5 * s).count() as u64;
            wr.min.push(mn);
            wr.max.push(mx);
            wr.lo.push(lo);
            wr.hi.push(hi);
        }
        out.push(wr);
    }
    Ok(out)
}
