//! JSON model specs: the checked-in `assets/models/*.json` are the zoo graphs, and bad
//! specs give clear errors (format errors naming the file and the layer), never panics.

use std::path::{Path, PathBuf};
use wqat::model::{zoo, Graph};
use wqat::WqatError;

/// (file stem, zoo name, input shape, classes) of every checked-in spec.
const SPECS: &[(&str, &str, [usize; 3], usize)] = &[
    ("mnist-cnn", "mnist-cnn", [1, 28, 28], 10),
    ("resnet20", "resnet20", [3, 32, 32], 10),
    ("vit-tiny", "vit-tiny", [1, 28, 28], 10),
    ("text-tiny", "text-tiny", [1, 1, 24], 6),
];

fn spec_path(stem: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models").join(format!("{stem}.json"))
}

#[test]
fn checked_in_specs_equal_the_zoo() {
    for &(stem, name, input, classes) in SPECS {
        let path = spec_path(stem);
        let text = std::fs::read_to_string(&path).unwrap();
        let g = Graph::from_json(&path, &text).unwrap();
        assert_eq!(g, zoo::build(name, input, classes).unwrap(), "{}", path.display());
    }
}

/// Regenerates the checked-in specs from the zoo:
/// `cargo test --test model_specs -- --ignored write_specs`.
#[test]
#[ignore]
fn write_specs() {
    for &(stem, name, input, classes) in SPECS {
        let g = zoo::build(name, input, classes).unwrap();
        let text = serde_json::to_string_pretty(&g).unwrap() + "\n";
        std::fs::write(spec_path(stem), text).unwrap();
    }
}

/// Parses `text`, expecting a format error naming `spec.json` whose message holds every needle.
fn expect_error(text: &str, needles: &[&str]) {
    let path = Path::new("dir/spec.json");
    match Graph::from_json(path, text) {
        Err(e @ WqatError::Format { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("dir/spec.json: "), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "error {msg:?} lacks {n:?}");
            }
        }
        other => panic!("want a format error with {needles:?}, got {other:?}"),
    }
}

/// A small valid spec with `layers` spliced in before the final linear.
fn spec(layers: &str) -> String {
    format!(
        r#"{{"name": "t", "input": [1, 8, 8], "num_classes": 10, "nodes": [
            {{"name": "conv1", "op": "conv", "out_channels": 4, "kernel": 3, "padding": 1, "bn": true, "act": "relu"}},
            {layers}
            {{"name": "flatten", "op": "flatten"}},
            {{"name": "fc", "op": "linear", "out_features": 10}}]}}"#
    )
}

#[test]
fn valid_small_spec_parses() {
    let g = Graph::from_json(Path::new("s.json"), &spec("")).unwrap();
    assert_eq!(g.nodes.len(), 3);
}

#[test]
fn unknown_op() {
    expect_error(&spec(r#"{"name": "x", "op": "softmax"},"#), &["model spec", "unknown variant `softmax`", "line"]);
}

#[test]
fn unknown_input_name() {
    expect_error(
        &spec(r#"{"name": "sum", "op": "add", "inputs": ["conv1", "conv9"]},"#),
        &["layer sum", "unknown or later input \"conv9\""],
    );
    // An input that exists but comes later is refused the same way (no cycles).
    expect_error(
        &spec(r#"{"name": "a", "op": "add", "inputs": ["conv1", "b"]}, {"name": "b", "op": "max_pool", "kernel": 1},"#),
        &["layer a", "unknown or later input \"b\""],
    );
}

#[test]
fn add_shape_mismatch() {
    expect_error(
        &spec(
            r#"{"name": "conv2", "op": "conv", "out_channels": 8, "kernel": 3, "padding": 1},
               {"name": "sum", "op": "add", "inputs": ["conv1", "conv2"]},"#,
        ),
        &["layer sum", "adds shapes [4, 8, 8] and [8, 8, 8]"],
    );
    expect_error(
        &spec(r#"{"name": "sum", "op": "add", "inputs": ["conv1"]},"#),
        &["layer sum", "takes 2 input(s), got 1"],
    );
}

#[test]
fn bad_kernel_size() {
    expect_error(
        &spec(r#"{"name": "conv2", "op": "conv", "out_channels": 4, "kernel": 0},"#),
        &["layer conv2", "kernel, stride, dilation and channels must be positive"],
    );
    expect_error(
        &spec(r#"{"name": "conv2", "op": "conv", "out_channels": 4, "kernel": 9},"#),
        &["layer conv2", "kernel 9 does not fit input 8x8"],
    );
    expect_error(
        &spec(r#"{"name": "pool", "op": "max_pool", "kernel": 0},"#),
        &["layer pool", "pool kernel must be positive"],
    );
    expect_error(
        &spec(r#"{"name": "pool", "op": "avg_pool", "kernel": 16},"#),
        &["layer pool", "pool kernel 16 does not fit"],
    );
}

#[test]
fn other_bad_specs() {
    expect_error("", &["model spec", "EOF"]);
    expect_error("{\"name\": 1}", &["model spec", "invalid type"]);
    expect_error(&spec(r#"{"name": "conv1", "op": "flatten"},"#), &["layer conv1", "duplicate layer name"]);
    expect_error(
        &spec(r#"{"name": "conv2", "op": "conv", "out_channels": 4, "kernel": 3, "groups": 3},"#),
        &["layer conv2", "groups 3 must divide 4 input and 4 output channels"],
    );
    expect_error(
        &spec("").replace("\"num_classes\": 10", "\"num_classes\": 7"),
        &["ends with shape [10, 1, 1], expected [7, 1, 1] logits"],
    );
    expect_error(&spec("").replace("[1, 8, 8]", "[1, 0, 8]"), &["input shape [1, 0, 8]", "must be positive"]);
    expect_error(&spec("").replace("[1, 8, 8]", "[1, -8, 8]"), &["model spec", "invalid value"]);
    expect_error(r#"{"name": "t", "input": [1, 8, 8], "num_classes": 10, "nodes": []}"#, &["has no layers"]);
}

/// Per-node `qconfig` settings in a spec become per-layer QConfig overrides, applied before
/// the command line's; bad settings and reserved names are format errors.
#[test]
fn per_node_qconfig_in_specs() {
    let text = spec(r#"{"name": "conv2", "op": "conv", "out_channels": 4, "kernel": 3, "padding": 1, "qconfig": "w8,a6,per-tensor"},"#)
        .replace(r#""out_features": 10}"#, r#""out_features": 10, "qconfig": "fp32"}"#);
    let mut g = Graph::from_json(Path::new("s.json"), &text).unwrap();
    let cli = wqat::engine::LayerQConfig::parse("conv2=a5").unwrap();
    let cfg = wqat::engine::TrainConfig { weight_bits: 4, act_bits: 4, layer_qconfig: vec![cli], ..Default::default() };
    let q = wqat::engine::train::run_qconfig(&cfg, &g).unwrap();
    assert_eq!(q.weight_spec("conv2").bits, 8);
    assert_eq!(q.weight_spec("conv2").channel_axis, None);
    assert_eq!(q.activation_spec("conv2").bits, 5, "the command line wins");
    assert_eq!(q.weight_spec("conv1").bits, 4);
    q.apply_fp32(&mut g);
    assert!(g.nodes.iter().find(|n| n.name == "fc").unwrap().fp32);
    // The settings survive a JSON round trip (they are part of the checkpoint's graph).
    let back: Graph = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
    assert_eq!(back, g);
    expect_error(
        &spec(r#"{"name": "conv2", "op": "conv", "out_channels": 4, "kernel": 3, "qconfig": "w9"},"#),
        &["conv2", "bit width 9"],
    );
    expect_error(&spec(r#"{"name": "input", "op": "max_pool", "kernel": 2},"#), &["input"]);
    expect_error(&spec(r#"{"name": "conv*", "op": "conv", "out_channels": 4, "kernel": 3},"#), &["conv*"]);
}

#[test]
fn bad_transformer_specs() {
    let seq = |layers: &str| {
        format!(
            r#"{{"name": "s", "input": [1, 4, 4], "num_classes": 3, "nodes": [
                {{"name": "p", "op": "patchify", "patch": 2}},
                {{"name": "e", "op": "linear", "out_features": 6}}{layers},
                {{"name": "pool", "op": "token_pool", "mode": "cls"}},
                {{"name": "fc", "op": "linear", "out_features": 3}}]}}"#
        )
    };
    Graph::from_json(Path::new("s.json"), &seq("")).unwrap();
    expect_error(&seq(r#", {"name": "a", "op": "attention", "heads": 4}"#), &["layer a", "multiple of heads"]);
    expect_error(&seq(r#", {"name": "n", "op": "layer_norm", "eps": 0.0}"#), &["layer n", "eps"]);
    expect_error(&seq(r#", {"name": "c", "op": "conv", "out_channels": 2, "kernel": 1}"#), &["layer c", "sequence"]);
    let patch3 = seq("").replace(r#""patch": 2"#, r#""patch": 3"#);
    expect_error(&patch3, &["layer p", "patch 3"]);
    // A sequence cannot be the logits, and an embedding must read the token ids.
    let text = r#"{"name": "t", "input": [1, 1, 5], "num_classes": 4, "nodes": [
        {"name": "emb", "op": "embedding", "vocab": 10, "dim": 4, "padding_idx": 12},
        {"name": "pool", "op": "token_pool", "mode": "mean"}]}"#;
    expect_error(text, &["layer emb", "padding_idx"]);
    let ends_seq = text.replace(r#""padding_idx": 12"#, r#""padding_idx": 9"#).replace(
        r#"{"name": "pool", "op": "token_pool", "mode": "mean"}"#,
        r#"{"name": "fc", "op": "linear", "out_features": 4}"#,
    );
    expect_error(&ends_seq, &["ends with shape"]);
}
