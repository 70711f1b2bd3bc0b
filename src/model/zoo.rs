//! The model zoo: `mlp`, `mnist-cnn` (the reference network for comparisons with other
//! tools; keep it exactly as specified), `resnet20` and `resnet18` (CIFAR forms). Layer
//! names follow torchvision so PyTorch state_dicts map by name.

use super::graph::{Act, Graph, Node, Op, TokenPoolMode};
use crate::error::{Result, WqatError};

/// The zoo's model names.
pub const MODEL_NAMES: &[&str] = &["mlp", "mnist-cnn", "resnet20", "resnet18", "vit-tiny", "text-tiny"];

/// Width, depth, heads and MLP width of the tiny transformers (`vit-tiny`, `text-tiny`).
pub const TINY_DIM: usize = 64;
pub const TINY_DEPTH: usize = 4;
pub const TINY_HEADS: usize = 4;
pub const TINY_MLP: usize = 128;
/// Byte-level text: 256 byte ids, then CLS (256) and PAD (257).
pub const TEXT_VOCAB: usize = 258;
pub const TEXT_PAD_ID: usize = 257;

fn conv(out: usize, k: usize, stride: usize, pad: usize, act: Act) -> Op {
    Op::Conv { out_channels: out, kernel: k, stride, padding: pad, dilation: 1, groups: 1, bias: false, bn: true, act }
}

/// A model by name for inputs of shape (C, H, W) and `classes` outputs.
pub fn build(name: &str, input: [usize; 3], classes: usize) -> Result<Graph> {
    let nodes = match name {
        "mlp" => vec![
            Node::new("flatten", Op::Flatten),
            Node::new("fc1", Op::Linear { out_features: 128, bias: true, act: Act::Relu }),
            Node::new("fc2", Op::Linear { out_features: classes, bias: true, act: Act::None }),
        ],
        "mnist-cnn" => vec![
            Node::new("conv1", conv(16, 3, 1, 1, Act::Relu)).bn("bn1"),
            Node::new("pool1", Op::MaxPool { kernel: 2, stride: 2, padding: 0 }),
            Node::new("conv2", conv(32, 3, 1, 1, Act::Relu)).bn("bn2"),
            Node::new("pool2", Op::MaxPool { kernel: 2, stride: 2, padding: 0 }),
            Node::new("flatten", Op::Flatten),
            Node::new("fc1", Op::Linear { out_features: 128, bias: true, act: Act::Relu }),
            Node::new("fc2", Op::Linear { out_features: classes, bias: true, act: Act::None }),
        ],
        "resnet20" => resnet(&[16, 32, 64], &[3, 3, 3], classes),
        "resnet18" => resnet(&[64, 128, 256, 512], &[2, 2, 2, 2], classes),
        "vit-tiny" => {
            let [_, h, w] = input;
            let patch = vit_patch(h, w).ok_or_else(|| {
                WqatError::invalid(format!("vit-tiny: no patch size divides the {h}x{w} input into at most 64 tokens"))
            })?;
            let mut nodes = vec![
                Node::new("patchify", Op::Patchify { patch }),
                Node::new("patch_embed", Op::Linear { out_features: TINY_DIM, bias: true, act: Act::None }),
                Node::new("embed", Op::ClsPos { cls: true }),
            ];
            encoder(&mut nodes, classes);
            nodes
        }
        "text-tiny" => {
            if input[0] != 1 || input[1] != 1 || input[2] < 2 {
                return Err(WqatError::invalid(format!(
                    "text-tiny reads token ids of shape [1, 1, max_len] (a text data set), got input {input:?}"
                )));
            }
            let mut nodes = vec![
                Node::new(
                    "embed_tokens",
                    Op::Embedding {
                        vocab: TEXT_VOCAB,
                        dim: TINY_DIM,
                        padding_idx: Some(TEXT_PAD_ID),
                        quantize_weight: false,
                    },
                ),
                // The CLS token is id 256 at position 0 of every encoded text.
                Node::new("embed", Op::ClsPos { cls: false }),
            ];
            encoder(&mut nodes, classes);
            nodes
        }
        other => {
            return Err(WqatError::invalid(format!(
                "unknown model {other:?}; choose one of {} or a path to a JSON spec",
                MODEL_NAMES.join(", ")
            )))
        }
    };
    let g = Graph { name: name.to_string(), input, num_classes: classes, nodes };
    g.resolve()?;
    Ok(g)
}

/// Patch size of `vit-tiny`: 7 on 28x28 (16 tokens), 4 on 32x32 (64 tokens), else the
/// smallest size that cuts the image into at most 16 patches.
fn vit_patch(h: usize, w: usize) -> Option<usize> {
    if h == 32 && w == 32 {
        return Some(4);
    }
    (1..=h.min(w)).find(|&p| h.is_multiple_of(p) && w.is_multiple_of(p) && (h / p) * (w / p) <= 16)
}

/// Pre-LN transformer encoder blocks (timm's ViT names), final LayerNorm, CLS token
/// pool and classifier, appended after the embedding nodes.
fn encoder(nodes: &mut Vec<Node>, classes: usize) {
    let mut prev = nodes.last().map(|n| n.name.clone()).unwrap_or_default();
    for k in 0..TINY_DEPTH {
        let p = format!("blocks.{k}");
        nodes.push(Node::new(&format!("{p}.norm1"), Op::LayerNorm { eps: 1e-5 }).from(&[&prev]));
        nodes.push(Node::new(
            &format!("{p}.attn.qkv"),
            Op::Linear { out_features: 3 * TINY_DIM, bias: true, act: Act::None },
        ));
        nodes.push(Node::new(&format!("{p}.attn.core"), Op::Attention { heads: TINY_HEADS, quantize_matmul: false }));
        nodes.push(Node::new(
            &format!("{p}.attn.proj"),
            Op::Linear { out_features: TINY_DIM, bias: true, act: Act::None },
        ));
        let add1 = format!("{p}.add1");
        nodes.push(Node::new(&add1, Op::Add { act: Act::None }).from(&[&format!("{p}.attn.proj"), &prev]));
        nodes.push(Node::new(&format!("{p}.norm2"), Op::LayerNorm { eps: 1e-5 }));
        nodes.push(Node::new(
            &format!("{p}.mlp.fc1"),
            Op::Linear { out_features: TINY_MLP, bias: true, act: Act::Gelu },
        ));
        nodes.push(Node::new(
            &format!("{p}.mlp.fc2"),
            Op::Linear { out_features: TINY_DIM, bias: true, act: Act::None },
        ));
        let add2 = format!("{p}.add2");
        nodes.push(Node::new(&add2, Op::Add { act: Act::None }).from(&[&format!("{p}.mlp.fc2"), &add1]));
        prev = add2;
    }
    nodes.push(Node::new("norm", Op::LayerNorm { eps: 1e-5 }).from(&[&prev]));
    nodes.push(Node::new("pool", Op::TokenPool { mode: TokenPoolMode::Cls }));
    nodes.push(Node::new("head", Op::Linear { out_features: classes, bias: true, act: Act::None }));
}

/// CIFAR ResNet: 3x3 stem, no max pool, stages of basic blocks, projection shortcuts
/// (1x1 conv + BN, torchvision's `downsample`) where the shape changes.
fn resnet(widths: &[usize], blocks: &[usize], classes: usize) -> Vec<Node> {
    let mut nodes = vec![Node::new("conv1", conv(widths[0], 3, 1, 1, Act::Relu)).bn("bn1")];
    let mut prev = "conv1".to_string();
    let mut in_c = widths[0];
    for (s, (&w, &n)) in widths.iter().zip(blocks).enumerate() {
        for b in 0..n {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", s + 1, b);
            nodes.push(
                Node::new(&format!("{p}.conv1"), conv(w, 3, stride, 1, Act::Relu))
                    .from(&[&prev])
                    .bn(&format!("{p}.bn1")),
            );
            nodes.push(Node::new(&format!("{p}.conv2"), conv(w, 3, 1, 1, Act::None)).bn(&format!("{p}.bn2")));
            let shortcut = if stride != 1 || in_c != w {
                let d = format!("{p}.downsample.0");
                nodes.push(
                    Node::new(&d, conv(w, 1, stride, 0, Act::None)).from(&[&prev]).bn(&format!("{p}.downsample.1")),
                );
                d
            } else {
                prev.clone()
            };
            let add = format!("{p}.add");
            nodes.push(Node::new(&add, Op::Add { act: Act::Relu }).from(&[&format!("{p}.conv2"), &shortcut]));
            prev = add;
            in_c = w;
        }
    }
    nodes.push(Node::new("avgpool", Op::GlobalAvgPool).from(&[&prev]));
    nodes.push(Node::new("flatten", Op::Flatten));
    nodes.push(Node::new("fc", Op::Linear { out_features: classes, bias: true, act: Act::None }));
    nodes
}
