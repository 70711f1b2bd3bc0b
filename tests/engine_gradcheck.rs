//! Whole-graph gradient check: the compiled backward pass (fake-quant off) against central
//! finite differences of the compiled forward loss, on a small graph that uses every op
//! (conv+BN+ReLU, max pool, conv with bias and ReLU6, residual add, average pools, flatten,
//! linear with ReLU, linear), and on two small transformers (patches, CLS token and
//! positions, LayerNorm, attention, GELU, residual adds, mean pool; token embeddings with a
//! padding id, key padding mask, CLS pool).

use wqat::engine::{CompileOptions, Compiled, ModelState, QConfig, StepOptions};
use wqat::gpu::GpuContext;
use wqat::kernels::{loss, optim};
use wqat::model::{Act, Graph, Node, Op, TokenPoolMode};
use wqat::testing;

/// Relative tolerance of an analytic gradient against f32 central differences.
const GRADCHECK_RTOL: f64 = 1e-2;

fn graph() -> Graph {
    let conv = |out, k, pad, bias, bn, act| Op::Conv {
        out_channels: out,
        kernel: k,
        stride: 1,
        padding: pad,
        dilation: 1,
        groups: 1,
        bias,
        bn,
        act,
    };
    let nodes = vec![
        Node::new("conv1", conv(4, 3, 1, false, true, Act::Relu)).bn("bn1"),
        Node::new("pool1", Op::MaxPool { kernel: 2, stride: 2, padding: 0 }),
        Node::new("conv2", conv(4, 3, 1, true, false, Act::Relu6)),
        Node::new("conv3", conv(4, 1, 0, false, true, Act::None)).from(&["pool1"]).bn("bn3"),
        Node::new("add", Op::Add { act: Act::Relu }).from(&["conv2", "conv3"]),
        Node::new("avg", Op::AvgPool { kernel: 2, stride: 1, padding: 0 }),
        Node::new("gap", Op::GlobalAvgPool).from(&["add"]),
        Node::new("flat_avg", Op::Flatten).from(&["avg"]),
        Node::new("fc_a", Op::Linear { out_features: 6, bias: true, act: Act::Relu }),
        Node::new("fc_b", Op::Linear { out_features: 6, bias: false, act: Act::None }).from(&["gap"]),
        Node::new("sum", Op::Add { act: Act::None }).from(&["fc_a", "fc_b"]),
        Node::new("fc", Op::Linear { out_features: 5, bias: true, act: Act::None }),
    ];
    let g = Graph { name: "gradcheck".into(), input: [2, 8, 8], num_classes: 5, nodes };
    g.resolve().expect("valid graph");
    g
}

fn loss_of(ctx: &GpuContext, c: &Compiled) -> f64 {
    loss::reset_metrics(ctx, &c.metrics).unwrap();
    ctx.submit_plan(&c.train_plan(false, false)).unwrap();
    let m = loss::read_metrics(ctx, &c.metrics).unwrap();
    m.loss_sum as f64 / c.batch as f64
}

#[test]
fn whole_graph_gradients_match_finite_differences() {
    let mut rng = testing::rng(11);
    let images = testing::uniform(&mut rng, 4 * 2 * 8 * 8, -1.0, 1.0);
    check_graph(&graph(), &images, 20);
}

/// A pre-LN encoder block (norm, qkv, attention, proj, add, norm, GELU MLP, add) after `prev`.
fn block(nodes: &mut Vec<Node>, prev: &str, p: &str, d: usize, heads: usize) -> String {
    nodes.push(Node::new(&format!("{p}.norm1"), Op::LayerNorm { eps: 1e-5 }).from(&[prev]));
    nodes.push(Node::new(&format!("{p}.qkv"), Op::Linear { out_features: 3 * d, bias: true, act: Act::None }));
    nodes.push(Node::new(&format!("{p}.attn"), Op::Attention { heads, quantize_matmul: false }));
    nodes.push(Node::new(&format!("{p}.proj"), Op::Linear { out_features: d, bias: true, act: Act::None }));
    nodes.push(Node::new(&format!("{p}.add1"), Op::Add { act: Act::None }).from(&[&format!("{p}.proj"), prev]));
    nodes.push(Node::new(&format!("{p}.norm2"), Op::LayerNorm { eps: 1e-5 }));
    nodes.push(Node::new(&format!("{p}.fc1"), Op::Linear { out_features: 2 * d, bias: true, act: Act::Gelu }));
    nodes.push(Node::new(&format!("{p}.fc2"), Op::Linear { out_features: d, bias: true, act: Act::None }));
    let out = format!("{p}.add2");
    nodes.push(Node::new(&out, Op::Add { act: Act::None }).from(&[&format!("{p}.fc2"), &format!("{p}.add1")]));
    out
}

#[test]
fn vision_transformer_gradients_match_finite_differences() {
    let d = 8;
    let mut nodes = vec![
        Node::new("patchify", Op::Patchify { patch: 2 }),
        Node::new("patch_embed", Op::Linear { out_features: d, bias: true, act: Act::None }),
        Node::new("embed", Op::ClsPos { cls: true }),
    ];
    let out = block(&mut nodes, "embed", "b0", d, 2);
    nodes.push(Node::new("norm", Op::LayerNorm { eps: 1e-5 }).from(&[&out]));
    nodes.push(Node::new("pool", Op::TokenPool { mode: TokenPoolMode::Mean }));
    nodes.push(Node::new("head", Op::Linear { out_features: 5, bias: true, act: Act::None }));
    let g = Graph { name: "vit-gradcheck".into(), input: [2, 4, 6], num_classes: 5, nodes };
    g.resolve().expect("valid graph");
    let mut rng = testing::rng(12);
    let images = testing::uniform(&mut rng, 4 * 2 * 4 * 6, -1.0, 1.0);
    check_graph(&g, &images, 30);
}

#[test]
fn text_transformer_gradients_match_finite_differences() {
    let (d, len, vocab, pad) = (8, 7, 12, 11);
    let mut nodes = vec![
        Node::new("tokens", Op::Embedding { vocab, dim: d, padding_idx: Some(pad), quantize_weight: false }),
        Node::new("embed", Op::ClsPos { cls: false }),
    ];
    let out = block(&mut nodes, "embed", "b0", d, 2);
    nodes.push(Node::new("norm", Op::LayerNorm { eps: 1e-5 }).from(&[&out]));
    nodes.push(Node::new("pool", Op::TokenPool { mode: TokenPoolMode::Cls }));
    nodes.push(Node::new("head", Op::Linear { out_features: 5, bias: true, act: Act::None }));
    let g = Graph { name: "text-gradcheck".into(), input: [1, 1, len], num_classes: 5, nodes };
    g.resolve().expect("valid graph");
    // Token 10 plays CLS; ids repeat (the embedding gradient sums them); padding at the end.
    let ids: Vec<f32> =
        [[10, 3, 4, 3, 11, 11, 11], [10, 1, 2, 5, 6, 7, 8], [10, 0, 11, 11, 11, 11, 11], [10, 9, 9, 9, 4, 11, 11]]
            .iter()
            .flatten()
            .map(|&v| v as f32)
            .collect();
    check_graph(&g, &ids, 30);
}

/// Compiles `g` (fake-quant off), runs one step at lr 0 and checks the largest components
/// of every trainable gradient against central differences of the loss.
fn check_graph(g: &Graph, images: &[f32], min_checked: usize) {
    let ctx = testing::ctx();
    let state = ModelState::new(&ctx, g, QConfig::new(8, 8).unwrap(), 3).unwrap();
    let batch = 4;
    let opts = CompileOptions { batch, quant: false, train: true };
    // lr = 0, no momentum or decay: the step leaves the parameters unchanged.
    let step = StepOptions {
        optimizer: Default::default(),
        momentum: 0.0,
        weight_decay: 0.0,
        clip_grad_norm: None,
        skip_nonfinite: false,
        lsq_lr_mult: 1.0,
    };
    let c = Compiled::new(&ctx, &state, &opts, Some(&step)).unwrap();
    optim::write_hyper(&ctx, &c.hyper, 0.0, 1).unwrap();
    c.images.write(&ctx, images).unwrap();
    c.labels.write(&ctx, &[0u32, 3, 4, 1]).unwrap();
    let base = loss_of(&ctx, &c);
    assert!(base.is_finite() && base > 0.0);
    let mut checked = 0;
    for p in state.params.iter().filter(|p| p.spec.kind.trainable()) {
        let grad = p.grad.as_ref().unwrap().read_f32(&ctx).unwrap();
        let values = p.value.read_f32(&ctx).unwrap();
        // The largest few components of each gradient (small ones drown in f32 noise).
        let mut order: Vec<usize> = (0..grad.len()).collect();
        order.sort_by(|&a, &b| grad[b].abs().partial_cmp(&grad[a].abs()).unwrap());
        for &k in order.iter().take(3) {
            // ReLU and max-pool kinks make a single step size unreliable: accept the
            // analytic value when central differences at one of several steps agree.
            let an = grad[k] as f64;
            let mut best = f64::INFINITY;
            let mut best_fd = 0.0;
            for h in [2e-3f32, 1e-3, 5e-4] {
                let mut v = values.clone();
                v[k] = values[k] + h;
                p.value.write(&ctx, &v).unwrap();
                let up = loss_of(&ctx, &c);
                v[k] = values[k] - h;
                p.value.write(&ctx, &v).unwrap();
                let down = loss_of(&ctx, &c);
                let fd = (up - down) / (2.0 * h as f64);
                let err = (fd - an).abs() / fd.abs().max(an.abs()).max(1e-3);
                if err < best {
                    best = err;
                    best_fd = fd;
                }
            }
            p.value.write(&ctx, &values).unwrap();
            assert!(
                best < GRADCHECK_RTOL,
                "{}[{k}]: analytic {an:.6e}, finite difference {best_fd:.6e} (rel {best:.3e})",
                p.spec.name
            );
            checked += 1;
        }
    }
    assert!(checked >= min_checked, "{}: checked {checked} components", g.name);
}
