//! The model graph: a DAG of layers in topological order, built from config structs or a
//! JSON spec, with shape inference. Quantization placement and compilation to GPU
//! dispatches live elsewhere (`engine/`); this file only says what the network computes.

use crate::error::{Result, WqatError};
use serde::{Deserialize, Serialize};

/// Activation fused into a block's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    #[default]
    None,
    Relu,
    Relu6,
    /// GELU, erf form (PyTorch's `nn.GELU()` default); linear layers only.
    Gelu,
}

/// One layer. Conv and linear carry their optional batch norm and activation so that the
/// QAT blocks PyTorch fuses (conv-bn-relu, linear-relu) are one node here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// 2-D convolution (NCHW), optional BN folded during QAT, optional activation.
    Conv {
        out_channels: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one")]
        dilation: usize,
        #[serde(default = "one")]
        groups: usize,
        #[serde(default)]
        bias: bool,
        #[serde(default)]
        bn: bool,
        #[serde(default)]
        act: Act,
    },
    /// Fully connected layer on a flattened input.
    Linear {
        out_features: usize,
        #[serde(default = "yes")]
        bias: bool,
        #[serde(default)]
        act: Act,
    },
    MaxPool {
        kernel: usize,
        #[serde(default)]
        stride: usize,
        #[serde(default)]
        padding: usize,
    },
    AvgPool {
        kernel: usize,
        #[serde(default)]
        stride: usize,
        #[serde(default)]
        padding: usize,
    },
    GlobalAvgPool,
    /// Elementwise sum of two inputs (residual connection), optional activation.
    Add {
        #[serde(default)]
        act: Act,
    },
    /// Reshape [N, C, H, W] to [N, C*H*W]; a view, no data movement.
    Flatten,
    /// Token ids (the input holds them as integral values, shape [1, 1, L]) -> the sequence
    /// [L, dim] of their rows of a learned `[vocab, dim]` table. `padding_idx` names the id
    /// of padding: those tokens are masked as keys in every attention and in mean pools.
    /// The table stays fp32 (the BERT recipe) unless `quantize_weight` (per-layer `int`):
    /// then `{name}.weight_quant` fake-quantizes it (per row or per tensor, symmetric).
    Embedding {
        vocab: usize,
        dim: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_idx: Option<usize>,
        #[serde(default, skip_serializing_if = "is_false")]
        quantize_weight: bool,
    },
    /// Non-overlapping PxP patches of an image [C, H, W] -> the sequence
    /// [(H/P)(W/P), C*P*P] (features in a conv weight's (c, ky, kx) order); a Linear after
    /// it is the patch embedding. A permutation: it carries its input's quantizer.
    Patchify {
        patch: usize,
    },
    /// Learned positions added to a sequence [T, D] (`{name}.pos_embed` [T', D]), after a
    /// learned CLS token is prepended when `cls` (`{name}.cls_token` [D]; T' = T + 1).
    ClsPos {
        #[serde(default)]
        cls: bool,
    },
    /// Layer normalization over the features of each token (affine, `eps`).
    LayerNorm {
        #[serde(default = "ln_eps")]
        eps: f32,
    },
    /// Multi-head self-attention core: a QKV sequence [T, 3D] (a Linear's output: q, k, v
    /// of D features each, head h owning features h*D/heads..) -> [T, D]: softmax of the
    /// scaled q k^T per head (padding keys masked), times v. The output projection is the
    /// Linear after it. `quantize_matmul` fake-quantizes the matmul inputs as Brevitas does:
    /// q, k and v through the QKV linear's output quantizer (one per-tensor scale for the
    /// three) and the softmax output through `{name}.probs_quant`.
    Attention {
        heads: usize,
        #[serde(default, skip_serializing_if = "is_false")]
        quantize_matmul: bool,
    },
    /// A sequence [T, D] -> features [D, 1, 1]: the CLS token (the first) or the mean of
    /// the tokens that are not padding.
    TokenPool {
        mode: TokenPoolMode,
    },
}

/// Which token(s) a [`Op::TokenPool`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenPoolMode {
    Cls,
    Mean,
}

fn ln_eps() -> f32 {
    1e-5
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

/// A node: an op, its inputs (node names; `"input"` is the image), and a unique name that
/// also prefixes its parameter names in checkpoints (`conv1.weight`, `layer1.0.bn1.bias`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(flatten)]
    pub op: Op,
    /// Inputs by node name; empty means the previous node (or the image for the first).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Keep this node in fp32 (no fake-quant of its weights or output).
    #[serde(default)]
    pub fp32: bool,
    /// Name of the batch norm fused into a conv (`bn1` for `conv1`); defaults to `{name}.bn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_name: Option<String>,
    /// This layer's quantization settings in `--layer-qconfig` syntax without the pattern
    /// (`"w8,a8"`, `"w4,per-tensor,observer=histogram"`): a per-layer QConfig override the
    /// run applies before the command line's (see `crate::qconfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qconfig: Option<String>,
}

impl Node {
    /// A node reading the previous node's output.
    pub fn new(name: &str, op: Op) -> Node {
        Node { name: name.to_string(), op, inputs: Vec::new(), fp32: false, bn_name: None, qconfig: None }
    }
    /// Sets explicit inputs.
    pub fn from(mut self, inputs: &[&str]) -> Node {
        self.inputs = inputs.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Sets the layer's quantization settings (`--layer-qconfig` syntax without the pattern).
    pub fn qconfig(mut self, settings: &str) -> Node {
        self.qconfig = Some(settings.to_string());
        self
    }
    /// The node's settings as an override for exactly this layer (`None` when it has none).
    pub fn layer_qconfig(&self) -> Result<Option<crate::qconfig::LayerQConfig>> {
        self.qconfig.as_ref().map(|s| crate::qconfig::LayerQConfig::parse(&format!("{}={s}", self.name))).transpose()
    }
    /// Names the fused batch norm.
    pub fn bn(mut self, name: &str) -> Node {
        self.bn_name = Some(name.to_string());
        self
    }
    /// The parameter-name prefix of the fused batch norm.
    pub fn bn_prefix(&self) -> String {
        self.bn_name.clone().unwrap_or_else(|| format!("{}.bn", self.name))
    }
}

/// A whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    /// Input shape (C, H, W).
    pub input: [usize; 3],
    pub num_classes: usize,
    pub nodes: Vec<Node>,
}

/// Shape of a tensor per sample: (C, H, W); linear outputs are (F, 1, 1); sequences are
/// (T, D, 1) with the node's `out_seq` set (row-major [T][D], features fastest).
pub type Shape3 = [usize; 3];

/// A node with its inputs resolved to indices (`usize::MAX` is the image) and shapes.
#[derive(Debug, Clone)]
pub struct ResolvedNode {
    pub node: Node,
    pub inputs: Vec<usize>,
    pub in_shapes: Vec<Shape3>,
    pub out_shape: Shape3,
    /// Per input: whether it is a sequence (`[T, D, 1]`: T tokens of D features).
    pub in_seq: Vec<bool>,
    /// Whether the output is a sequence `[T, D, 1]`.
    pub out_seq: bool,
}

impl ResolvedNode {
    /// Features per row of the first input as a Linear reads it: D of a sequence (applied
    /// per token), else the flattened C*H*W.
    pub fn in_features(&self) -> usize {
        let [c, h, w] = self.in_shapes[0];
        if self.in_seq[0] {
            h
        } else {
            c * h * w
        }
    }
    /// Output channels of a conv / linear (features of a per-token linear), else the first
    /// output dimension.
    pub fn out_channels(&self) -> usize {
        match self.node.op {
            Op::Conv { out_channels, .. } => out_channels,
            Op::Linear { out_features, .. } => out_features,
            // An embedding table's rows.
            Op::Embedding { vocab, .. } => vocab,
            _ => self.out_shape[0],
        }
    }
    /// Rows per sample a Linear computes: the tokens of a sequence input, else 1.
    pub fn rows_per_sample(&self) -> usize {
        if self.in_seq[0] {
            self.in_shapes[0][0]
        } else {
            1
        }
    }
}

/// The image's index among node inputs.
pub const INPUT: usize = usize::MAX;

/// Output length of a window sweep; None when the window does not fit (or the arithmetic
/// overflows, for absurd sizes from a hand-written spec). `kernel` and `stride` are positive.
fn out_len(size: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
    let eff = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    size.checked_add(padding.checked_mul(2)?)?.checked_sub(eff).map(|v| v / stride + 1)
}

/// Largest element count of one sample's activation or of one weight tensor a spec may
/// declare (2^31: GPU indexing is 32-bit, and anything near it is a typo in a spec).
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 31;

/// The product of `dims`, or None when it overflows or exceeds [`MAX_TENSOR_ELEMENTS`].
pub fn checked_elements(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_TENSOR_ELEMENTS)
}

impl Graph {
    /// Resolves inputs and infers every shape; errors name the node.
    pub fn resolve(&self) -> Result<Vec<ResolvedNode>> {
        let mut out: Vec<ResolvedNode> = Vec::with_capacity(self.nodes.len());
        let mut names = std::collections::HashMap::new();
        if self.nodes.is_empty() {
            return Err(WqatError::invalid(format!("model {} has no layers", self.name)));
        }
        if self.input.contains(&0) || self.num_classes == 0 || checked_elements(&self.input).is_none() {
            return Err(WqatError::invalid(format!(
                "model {}: input shape {:?} and num_classes {} must be positive (at most {MAX_TENSOR_ELEMENTS} values)",
                self.name, self.input, self.num_classes
            )));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let err = |m: String| WqatError::invalid(format!("model {}, layer {}: {m}", self.name, node.name));
            if names.insert(node.name.clone(), i).is_some() {
                return Err(err("duplicate layer name".into()));
            }
            if node.name.contains(['*', '=']) || node.name == "input" {
                return Err(err(
                    "layer names cannot be `input` (the image) or contain `*` or `=` (they select layers in QConfig overrides)"
                        .into(),
                ));
            }
            if let Err(e) = node.layer_qconfig() {
                return Err(err(e.to_string()));
            }
            let inputs: Vec<usize> = if node.inputs.is_empty() {
                vec![if i == 0 { INPUT } else { i - 1 }]
            } else {
                node.inputs
                    .iter()
                    .map(|n| {
                        if n == "input" {
                            Ok(INPUT)
                        } else {
                            names
                                .get(n)
                                .copied()
                                .filter(|&j| j < i)
                                .ok_or_else(|| err(format!("unknown or later input {n:?}")))
                        }
                    })
                    .collect::<Result<_>>()?
            };
            let in_shapes: Vec<Shape3> =
                inputs.iter().map(|&j| if j == INPUT { self.input } else { out[j].out_shape }).collect();
            let in_seq: Vec<bool> = inputs.iter().map(|&j| j != INPUT && out[j].out_seq).collect();
            let [c, h, w] = in_shapes[0];
            let seq_in = in_seq[0];
            let need_seq = |what: &str| -> Result<()> {
                if seq_in {
                    Ok(())
                } else {
                    Err(err(format!("{what} needs a sequence input [tokens, features], got {:?}", in_shapes[0])))
                }
            };
            let no_seq = |what: &str| -> Result<()> {
                if seq_in {
                    Err(err(format!("{what} cannot take a sequence input")))
                } else {
                    Ok(())
                }
            };
            let want_inputs = if matches!(node.op, Op::Add { .. }) { 2 } else { 1 };
            if inputs.len() != want_inputs {
                return Err(err(format!("takes {want_inputs} input(s), got {}", inputs.len())));
            }
            let mut out_seq = false;
            let out_shape = match &node.op {
                Op::Conv { out_channels, kernel, stride, padding, dilation, groups, act, .. } => {
                    no_seq("conv")?;
                    if *act == Act::Gelu {
                        return Err(err("GELU is supported on linear layers only".into()));
                    }
                    if *groups == 0 || c % groups != 0 || out_channels % groups != 0 {
                        return Err(err(format!(
                            "groups {groups} must divide {c} input and {out_channels} output channels"
                        )));
                    }
                    if *kernel == 0 || *stride == 0 || *dilation == 0 || *out_channels == 0 {
                        return Err(err("kernel, stride, dilation and channels must be positive".into()));
                    }
                    let oh = out_len(h, *kernel, *stride, *padding, *dilation);
                    let ow = out_len(w, *kernel, *stride, *padding, *dilation);
                    if checked_elements(&[*out_channels, c / groups, *kernel, *kernel]).is_none() {
                        return Err(err(format!(
                            "weight [{out_channels}, {}, {kernel}, {kernel}] is too large",
                            c / groups
                        )));
                    }
                    match (oh, ow) {
                        (Some(oh), Some(ow)) => [*out_channels, oh, ow],
                        _ => return Err(err(format!("kernel {kernel} does not fit input {h}x{w}"))),
                    }
                }
                Op::Linear { out_features, .. } => {
                    if *out_features == 0 {
                        return Err(err("out_features must be positive".into()));
                    }
                    if seq_in {
                        // Per token: [T, D] -> [T, out].
                        if checked_elements(&[*out_features, h]).is_none() {
                            return Err(err(format!("weight [{out_features}, {h}] is too large")));
                        }
                        out_seq = true;
                        [c, *out_features, 1]
                    } else {
                        if checked_elements(&[*out_features, c, h, w]).is_none() {
                            return Err(err(format!("weight [{out_features}, {c}x{h}x{w}] is too large")));
                        }
                        [*out_features, 1, 1]
                    }
                }
                Op::MaxPool { kernel, stride, padding } | Op::AvgPool { kernel, stride, padding } => {
                    no_seq("pooling")?;
                    let s = if *stride == 0 { *kernel } else { *stride };
                    if *kernel == 0 || *padding > *kernel / 2 {
                        return Err(err("pool kernel must be positive and padding at most half of it".into()));
                    }
                    match (out_len(h, *kernel, s, *padding, 1), out_len(w, *kernel, s, *padding, 1)) {
                        (Some(oh), Some(ow)) => [c, oh, ow],
                        _ => return Err(err(format!("pool kernel {kernel} does not fit input {h}x{w}"))),
                    }
                }
                Op::GlobalAvgPool => {
                    no_seq("global average pool (use token_pool)")?;
                    [c, 1, 1]
                }
                Op::Add { act } => {
                    if in_shapes[0] != in_shapes[1] || in_seq[0] != in_seq[1] {
                        return Err(err(format!("adds shapes {:?} and {:?}", in_shapes[0], in_shapes[1])));
                    }
                    if *act == Act::Gelu {
                        return Err(err("GELU is supported on linear layers only".into()));
                    }
                    out_seq = seq_in;
                    in_shapes[0]
                }
                // c*h*w cannot overflow: every shape is checked below when it is made.
                Op::Flatten => {
                    no_seq("flatten")?;
                    [c * h * w, 1, 1]
                }
                Op::Embedding { vocab, dim, padding_idx, .. } => {
                    if i != 0 || inputs[0] != INPUT || c != 1 || h != 1 {
                        return Err(err(format!(
                            "an embedding reads the token ids of the input (shape [1, 1, tokens]) as the first layer, got {:?}",
                            in_shapes[0]
                        )));
                    }
                    if *vocab == 0 || *dim == 0 || checked_elements(&[*vocab, *dim]).is_none() {
                        return Err(err(format!(
                            "embedding table [{vocab}, {dim}] must be positive and not too large"
                        )));
                    }
                    if padding_idx.is_some_and(|p| p >= *vocab) {
                        return Err(err(format!("padding_idx {padding_idx:?} is not below vocab {vocab}")));
                    }
                    out_seq = true;
                    [w, *dim, 1]
                }
                Op::Patchify { patch } => {
                    no_seq("patchify")?;
                    if *patch == 0 || h % patch != 0 || w % patch != 0 {
                        return Err(err(format!("patch {patch} must be positive and divide the {h}x{w} input")));
                    }
                    out_seq = true;
                    [(h / patch) * (w / patch), c * patch * patch, 1]
                }
                Op::ClsPos { cls } => {
                    need_seq("cls_pos")?;
                    out_seq = true;
                    [c + *cls as usize, h, 1]
                }
                Op::LayerNorm { eps } => {
                    need_seq("layer_norm")?;
                    if !(eps.is_finite() && *eps > 0.0) {
                        return Err(err(format!("eps {eps} must be finite and positive")));
                    }
                    out_seq = true;
                    in_shapes[0]
                }
                Op::Attention { heads, .. } => {
                    need_seq("attention")?;
                    if *heads == 0 || h % 3 != 0 || (h / 3) % heads != 0 {
                        return Err(err(format!(
                            "attention reads q, k, v ({h} features = 3 x D) split into {heads} heads: D must be a multiple of heads"
                        )));
                    }
                    out_seq = true;
                    [c, h / 3, 1]
                }
                Op::TokenPool { .. } => {
                    need_seq("token_pool")?;
                    [h, 1, 1]
                }
            };
            if checked_elements(&out_shape).is_none() {
                return Err(err(format!("output shape {out_shape:?} is too large")));
            }
            out.push(ResolvedNode { node: node.clone(), inputs, in_shapes, out_shape, in_seq, out_seq });
        }
        let last = out.last().map(|n| n.out_shape).unwrap_or([0, 0, 0]);
        if last != [self.num_classes, 1, 1] || out.last().is_some_and(|n| n.out_seq) {
            return Err(WqatError::invalid(format!(
                "model {} ends with shape {last:?}, expected [{}, 1, 1] logits",
                self.name, self.num_classes
            )));
        }
        Ok(out)
    }

    /// Parses a JSON model spec (see `docs` in README) and checks it resolves.
    pub fn from_json(path: &std::path::Path, text: &str) -> Result<Graph> {
        let g: Graph = serde_json::from_str(text).map_err(|e| WqatError::format(path, format!("model spec: {e}")))?;
        g.resolve().map_err(|e| match e {
            WqatError::InvalidArgument(m) => WqatError::format(path, m),
            other => WqatError::format(path, other.to_string()),
        })?;
        Ok(g)
    }
}
