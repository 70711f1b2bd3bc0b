//! What a graph stores: its parameters (torchvision-style names, so PyTorch state_dicts
//! map by name) and its quantizers (where fake-quant sits, PyTorch prepare_qat style).
//! The engine, the checkpoint format, the importer and the int8 converter all read these
//! lists, so a name means the same thing everywhere.
//!
//! Quantizer placement:
//! * `input.output_quant`: the image (PyTorch's QuantStub), unless the first conv/linear
//!   is kept in fp32;
//! * `{node}.weight_quant`: weights of every conv/linear not kept in fp32 (per output
//!   channel by default);
//! * `{node}.output_quant`: the output of every conv/linear (after BN and activation) and
//!   of every add, except the final logits of an fp32 last layer;
//! * max pool, flatten, average pools reuse their input's quantizer (PyTorch's quantized
//!   pools keep the input's scale and zero point): see [`input_quantizer`].

use super::graph::{Graph, Op, ResolvedNode, INPUT};
use crate::error::Result;

/// Batch-norm epsilon (PyTorch's default).
pub const BN_EPS: f32 = 1e-5;
/// Batch-norm running-stat momentum (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// What a parameter is, which decides its optimizer treatment and import mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    Bias,
    BnGamma,
    BnBeta,
    BnRunningMean,
    BnRunningVar,
    /// LayerNorm scale and shift.
    LnWeight,
    LnBias,
    /// An embedding table, a CLS token or positional embeddings.
    Embedding,
    /// A learned quantizer scale (LSQ), `{quantizer}.scale` `[C]`.
    QuantScale,
    /// A learned quantizer zero point (LSQ+), `{quantizer}.zero_point` `[C]` (continuous;
    /// the quantizer state holds it rounded).
    QuantZeroPoint,
}

impl ParamKind {
    /// Updated by the optimizer (running statistics are buffers).
    pub fn trainable(self) -> bool {
        !matches!(self, ParamKind::BnRunningMean | ParamKind::BnRunningVar)
    }
    /// Weight decay applies to conv/linear weights only (not biases, BN or LayerNorm
    /// affine, embeddings, CLS tokens or positions: the usual transformer recipe; nor
    /// learned quantizer scales and zero points).
    pub fn decays(self) -> bool {
        matches!(self, ParamKind::Weight)
    }
    /// A learned quantizer parameter (LSQ scale, LSQ+ zero point): not a model tensor of
    /// `param_specs`, created with the quantizers.
    pub fn is_quantizer_param(self) -> bool {
        matches!(self, ParamKind::QuantScale | ParamKind::QuantZeroPoint)
    }
}

/// One stored tensor of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    /// Index of the node owning it.
    pub node: usize,
}

/// Where a quantizer sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantizerRole {
    /// Weights of node `.0` (channels = output channels).
    Weight(usize),
    /// Output of node `.0`, or of the image when `.0 == INPUT`.
    Output(usize),
    /// The softmax output (attention probabilities) of attention node `.0` when it
    /// quantizes its matmul inputs.
    Probs(usize),
}

/// One quantizer (its state is a `QStateLayout` buffer with `channels` channels).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizerSpec {
    pub name: String,
    pub role: QuantizerRole,
    pub channels: usize,
}

/// Name of the weight of a conv/linear node.
pub fn weight_name(node: &str) -> String {
    format!("{node}.weight")
}
/// Name of the bias of a conv/linear node.
pub fn bias_name(node: &str) -> String {
    format!("{node}.bias")
}
/// Name of the quantizer of a node's weights.
pub fn weight_quant_name(node: &str) -> String {
    format!("{node}.weight_quant")
}
/// Name of the quantizer of a node's output (`input` for the image).
pub fn output_quant_name(node: &str) -> String {
    format!("{node}.output_quant")
}

/// Every parameter and buffer of the graph, in node order: conv/linear `weight`, `bias`,
/// then the fused BN's `weight` (gamma), `bias` (beta), `running_mean`, `running_var`.
pub fn param_specs(graph: &Graph) -> Result<Vec<ParamSpec>> {
    let nodes = graph.resolve()?;
    let mut out = Vec::new();
    for (i, r) in nodes.iter().enumerate() {
        let name = &r.node.name;
        let [c_in, _, _] = r.in_shapes[0];
        match &r.node.op {
            Op::Conv { out_channels, kernel, groups, bias, bn, .. } => {
                let shape = vec![*out_channels, c_in / groups, *kernel, *kernel];
                out.push(ParamSpec { name: weight_name(name), shape, kind: ParamKind::Weight, node: i });
                if *bias {
                    out.push(ParamSpec {
                        name: bias_name(name),
                        shape: vec![*out_channels],
                        kind: ParamKind::Bias,
                        node: i,
                    });
                }
                if *bn {
                    let p = r.node.bn_prefix();
                    for (suffix, kind) in [
                        ("weight", ParamKind::BnGamma),
                        ("bias", ParamKind::BnBeta),
                        ("running_mean", ParamKind::BnRunningMean),
                        ("running_var", ParamKind::BnRunningVar),
                    ] {
                        out.push(ParamSpec {
                            name: format!("{p}.{suffix}"),
                            shape: vec![*out_channels],
                            kind,
                            node: i,
                        });
                    }
                }
            }
            Op::Linear { out_features, bias, .. } => {
                let shape = vec![*out_features, r.in_features()];
                out.push(ParamSpec { name: weight_name(name), shape, kind: ParamKind::Weight, node: i });
                if *bias {
                    out.push(ParamSpec {
                        name: bias_name(name),
                        shape: vec![*out_features],
                        kind: ParamKind::Bias,
                        node: i,
                    });
                }
            }
            Op::Embedding { vocab, dim, .. } => {
                out.push(ParamSpec {
                    name: weight_name(name),
                    shape: vec![*vocab, *dim],
                    kind: ParamKind::Embedding,
                    node: i,
                });
            }
            Op::ClsPos { cls } => {
                let [t, d, _] = r.out_shape;
                if *cls {
                    out.push(ParamSpec {
                        name: cls_token_name(name),
                        shape: vec![d],
                        kind: ParamKind::Embedding,
                        node: i,
                    });
                }
                out.push(ParamSpec {
                    name: pos_embed_name(name),
                    shape: vec![t, d],
                    kind: ParamKind::Embedding,
                    node: i,
                });
            }
            Op::LayerNorm { .. } => {
                let d = r.out_shape[1];
                out.push(ParamSpec { name: weight_name(name), shape: vec![d], kind: ParamKind::LnWeight, node: i });
                out.push(ParamSpec { name: bias_name(name), shape: vec![d], kind: ParamKind::LnBias, node: i });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Name of the CLS token of a `cls_pos` node.
pub fn cls_token_name(node: &str) -> String {
    format!("{node}.cls_token")
}
/// Name of the positional embedding of a `cls_pos` node.
pub fn pos_embed_name(node: &str) -> String {
    format!("{node}.pos_embed")
}

/// True for conv and linear nodes (the ones with weights).
pub fn has_weights(op: &Op) -> bool {
    matches!(op, Op::Conv { .. } | Op::Linear { .. })
}

/// True for nodes whose weights are fake-quantized: conv and linear unless kept in fp32,
/// embedding tables only when asked (`quantize_weight`).
pub fn has_weight_quant(r: &ResolvedNode) -> bool {
    match r.node.op {
        Op::Embedding { quantize_weight, .. } => quantize_weight,
        _ => has_weights(&r.node.op) && !r.node.fp32,
    }
}

/// Whether the image gets a quantizer: the first conv/linear is not kept in fp32, and the
/// input is an image (token ids read by an embedding are never quantized).
pub fn input_is_quantized(nodes: &[ResolvedNode]) -> bool {
    if nodes.first().is_some_and(|r| matches!(r.node.op, Op::Embedding { .. })) {
        return false;
    }
    nodes.iter().find(|r| has_weights(&r.node.op)).map(|r| !r.node.fp32).unwrap_or(false)
}

/// Whether node `i` belongs to the transformer part of a graph: it makes or reads a
/// sequence, or is one of the sequence ops.
pub fn is_sequence_node(r: &ResolvedNode) -> bool {
    r.out_seq
        || r.in_seq.iter().any(|&s| s)
        || matches!(
            r.node.op,
            Op::Embedding { .. }
                | Op::Patchify { .. }
                | Op::ClsPos { .. }
                | Op::LayerNorm { .. }
                | Op::Attention { .. }
                | Op::TokenPool { .. }
        )
}

/// Whether node `i` has its own output quantizer.
///
/// Conv nets (PyTorch's prepare_qat placement): the output of every conv, linear and add.
/// Transformers (the BERT recipe: every Linear's input and weight quantized, LayerNorm,
/// softmax, GELU, embeddings and residual sums in fp32): a sequence node's output is
/// quantized exactly when a quantized conv/linear reads it, so a Linear's input quantizer
/// is its producer's (LayerNorm, attention, GELU Linear, token pool); residual streams stay
/// fp32. The last node (the logits) keeps its quantizer either way unless it is fp32.
pub fn has_output_quant(nodes: &[ResolvedNode], i: usize) -> bool {
    let r = &nodes[i];
    let last = i + 1 == nodes.len();
    if is_sequence_node(r) && !matches!(r.node.op, Op::Patchify { .. }) {
        if last {
            return !r.node.fp32;
        }
        // A quantized linear, or an attention that quantizes its matmul inputs, reads it.
        return nodes.iter().skip(i + 1).any(|c| {
            c.inputs.first() == Some(&i)
                && ((has_weights(&c.node.op) && !c.node.fp32)
                    || matches!(c.node.op, Op::Attention { quantize_matmul: true, .. }))
        });
    }
    match r.node.op {
        Op::Conv { .. } | Op::Linear { .. } | Op::Add { .. } => !(r.node.fp32 && last),
        _ => false,
    }
}

/// The quantizer node `i`'s (first) input carries, following max pool, flatten and
/// average pools back to the node that owns one. `None`: that input is fp32.
pub fn input_quantizer(nodes: &[ResolvedNode], i: usize, input: usize) -> Option<QuantizerRole> {
    let mut j = nodes[i].inputs[input];
    loop {
        if j == INPUT {
            return input_is_quantized(nodes).then_some(QuantizerRole::Output(INPUT));
        }
        if has_output_quant(nodes, j) {
            return Some(QuantizerRole::Output(j));
        }
        match nodes[j].node.op {
            Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool | Op::Flatten | Op::Patchify { .. } => {
                j = nodes[j].inputs[0]
            }
            _ => return None,
        }
    }
}

/// Every quantizer of the graph: the image's first, then per node its weight quantizer and
/// its output quantizer. `weight_per_channel(node_name)` picks per-output-channel weight
/// scales for a layer (else one scale per tensor).
pub fn quantizer_specs(graph: &Graph, weight_per_channel: impl Fn(&str) -> bool) -> Result<Vec<QuantizerSpec>> {
    let nodes = graph.resolve()?;
    let mut out = Vec::new();
    if input_is_quantized(&nodes) {
        out.push(QuantizerSpec { name: output_quant_name("input"), role: QuantizerRole::Output(INPUT), channels: 1 });
    }
    for (i, r) in nodes.iter().enumerate() {
        if has_weight_quant(r) {
            let channels = if weight_per_channel(&r.node.name) { r.out_channels() } else { 1 };
            out.push(QuantizerSpec { name: weight_quant_name(&r.node.name), role: QuantizerRole::Weight(i), channels });
        }
        if has_output_quant(&nodes, i) {
            out.push(QuantizerSpec {
                name: output_quant_name(&r.node.name),
                role: QuantizerRole::Output(i),
                channels: 1,
            });
        }
        if matches!(r.node.op, Op::Attention { quantize_matmul: true, .. }) {
            out.push(QuantizerSpec {
                name: probs_quant_name(&r.node.name),
                role: QuantizerRole::Probs(i),
                channels: 1,
            });
        }
    }
    Ok(out)
}

/// Name of the quantizer of an attention node's softmax output.
pub fn probs_quant_name(node: &str) -> String {
    format!("{node}.probs_quant")
}

/// Name of the quantizer in `role`.
pub fn quantizer_name(nodes: &[ResolvedNode], role: QuantizerRole) -> String {
    match role {
        QuantizerRole::Weight(i) => weight_quant_name(&nodes[i].node.name),
        QuantizerRole::Output(INPUT) => output_quant_name("input"),
        QuantizerRole::Output(i) => output_quant_name(&nodes[i].node.name),
        QuantizerRole::Probs(i) => probs_quant_name(&nodes[i].node.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;

    #[test]
    fn mnist_cnn_params_and_quantizers() {
        let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
        let p = param_specs(&g).unwrap();
        let names: Vec<&str> = p.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv1.weight",
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var",
                "conv2.weight",
                "bn2.weight",
                "bn2.bias",
                "bn2.running_mean",
                "bn2.running_var",
                "fc1.weight",
                "fc1.bias",
                "fc2.weight",
                "fc2.bias"
            ]
        );
        assert_eq!(p[10].shape, vec![128, 1568]);
        let q = quantizer_specs(&g, |_| true).unwrap();
        let qn: Vec<&str> = q.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            qn,
            [
                "input.output_quant",
                "conv1.weight_quant",
                "conv1.output_quant",
                "conv2.weight_quant",
                "conv2.output_quant",
                "fc1.weight_quant",
                "fc1.output_quant",
                "fc2.weight_quant",
                "fc2.output_quant"
            ]
        );
        let nodes = g.resolve().unwrap();
        // conv2 reads pool1, which carries conv1's output quantizer.
        assert_eq!(input_quantizer(&nodes, 2, 0), Some(QuantizerRole::Output(0)));
        assert_eq!(input_quantizer(&nodes, 0, 0), Some(QuantizerRole::Output(INPUT)));
    }

    #[test]
    fn fp32_first_and_last() {
        let mut g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
        g.nodes[0].fp32 = true;
        let last = g.nodes.len() - 1;
        g.nodes[last].fp32 = true;
        let q = quantizer_specs(&g, |_| true).unwrap();
        let qn: Vec<&str> = q.iter().map(|s| s.name.as_str()).collect();
        assert!(!qn.contains(&"input.output_quant"));
        assert!(!qn.contains(&"conv1.weight_quant"));
        assert!(qn.contains(&"conv1.output_quant"));
        assert!(!qn.contains(&"fc2.weight_quant"));
        assert!(!qn.contains(&"fc2.output_quant"));
        let nodes = g.resolve().unwrap();
        assert_eq!(input_quantizer(&nodes, 0, 0), None);
    }

    #[test]
    fn resnet_shortcut_reads_block_output() {
        let g = zoo::build("resnet20", [3, 32, 32], 10).unwrap();
        let nodes = g.resolve().unwrap();
        let add = nodes.iter().position(|r| r.node.name == "layer1.0.add").unwrap();
        let conv2 = nodes.iter().position(|r| r.node.name == "layer1.0.conv2").unwrap();
        assert_eq!(input_quantizer(&nodes, add, 0), Some(QuantizerRole::Output(conv2)));
        let p = param_specs(&g).unwrap();
        assert!(p.iter().any(|s| s.name == "layer2.0.downsample.1.running_var"));
        assert_eq!(p.iter().filter(|s| s.kind == ParamKind::Weight).count(), 22);
    }
}
