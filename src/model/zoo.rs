//! The model zoo: `mlp`, `mnist-cnn` (the reference network for comparisons with other
//! tools; keep it exactly as specified), `resnet20` and `resnet18` (CIFAR forms). Layer
//! names follow torchvision so PyTorch state_dicts map by name.

use super::graph::{Act, Graph, Node, Op};
use crate::error::{Result, WqatError};

/// The zoo's model names.
pub const MODEL_NAMES: &[&str] = &["mlp", "mnist-cnn", "resnet20", "resnet18"];

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
