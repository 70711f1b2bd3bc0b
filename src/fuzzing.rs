//! Entry points of every parser of outside bytes, one per fuzz target, shared by the
//! libFuzzer targets (`fuzz/`) and the stable-Rust smoke test (`tests/fuzz_smoke.rs`) so both
//! exercise exactly the same calls. Each takes arbitrary bytes and returns whether they
//! parsed; a panic (or a hang, or an unbounded allocation) is the bug being looked for —
//! every malformed input must come back as a `WqatError`.

use crate::data;
use crate::model::{import, zoo, Graph};
use crate::tensorfile::TensorFile;
use std::path::Path;

/// Fuzz target names, in the order of `fuzz/Cargo.toml` (`fuzz/corpus/<name>/` holds each
/// one's corpus).
pub const TARGETS: &[&str] = &[
    "idx_images",
    "idx_labels",
    "cifar_batch",
    "digits_csv",
    "image_decode",
    "tensorfile",
    "model_json",
    "state_dict",
    "int8_model",
    "text_lines",
];

/// The path parse errors name.
const FUZZ_PATH: &str = "<fuzz>";

/// Shapes [`image_decode`] asks for, picked by the first input byte.
const IMAGE_SHAPES: [(usize, usize, usize); 4] = [(1, 8, 8), (3, 32, 32), (1, 28, 28), (3, 5, 7)];

/// The small model [`state_dict`] imports into: mnist-cnn on 1x4x4 inputs with 3 classes
/// (conv+BN, pools, two linears: every kind of parameter, tiny tensors).
pub fn state_dict_graph() -> Graph {
    zoo::build("mnist-cnn", [1, 4, 4], 3).expect("the fuzz graph resolves")
}

/// MNIST-style IDX images.
pub fn idx_images(bytes: &[u8]) -> bool {
    data::parse_idx_images(bytes).is_ok()
}

/// MNIST-style IDX labels (10 classes).
pub fn idx_labels(bytes: &[u8]) -> bool {
    data::parse_idx_labels(bytes, 10).is_ok()
}

/// One CIFAR-10 binary batch.
pub fn cifar_batch(bytes: &[u8]) -> bool {
    data::parse_cifar_batch(bytes).is_ok()
}

/// The digits CSV.
pub fn digits_csv(bytes: &[u8]) -> bool {
    data::parse_digits_csv(bytes).is_ok()
}

/// A PNG or JPEG decoded to a shape chosen by the first byte (the rest is the file).
pub fn image_decode(bytes: &[u8]) -> bool {
    let Some((&pick, file)) = bytes.split_first() else { return false };
    data::decode_image(file, IMAGE_SHAPES[pick as usize % IMAGE_SHAPES.len()]).is_ok()
}

/// A wqat tensor file (safetensors with metadata).
pub fn tensorfile(bytes: &[u8]) -> bool {
    TensorFile::from_bytes(Path::new(FUZZ_PATH), bytes).is_ok()
}

/// A JSON model spec (any bytes; non-UTF-8 is rejected as the CLI's file reader would).
pub fn model_json(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else { return false };
    match Graph::from_json(Path::new(FUZZ_PATH), text) {
        // A spec that resolves must also give its parameter list without trouble.
        Ok(g) => crate::model::params::param_specs(&g).is_ok(),
        Err(_) => false,
    }
}

/// A PyTorch state_dict (safetensors) imported into [`state_dict_graph`].
pub fn state_dict(bytes: &[u8]) -> bool {
    import::import_state_dict_bytes(&state_dict_graph(), Path::new(FUZZ_PATH), bytes).is_ok()
}

/// An int8 model file (`Int8Model::from_bytes`: safetensors, metadata, every field validated).
pub fn int8_model(bytes: &[u8]) -> bool {
    crate::infer::Int8Model::from_bytes(Path::new(FUZZ_PATH), bytes).is_ok()
}

/// A text data file (one UTF-8 sample per line, raw or gzip); valid input is also encoded
/// (default `max_len`, and the smallest one) to check that every sample gives exactly
/// `max_len` ids.
pub fn text_lines(bytes: &[u8]) -> bool {
    let Ok(lines) = data::parse_text_lines(bytes) else { return false };
    for enc in [data::TextEncoding::default(), data::TextEncoding { max_len: 2 }] {
        for line in &lines {
            assert_eq!(enc.encode(line).len(), enc.max_len, "encoded length of {line:?}");
        }
    }
    true
}

/// Runs the target named `name` (one of [`TARGETS`]); None for an unknown name.
pub fn run(name: &str, bytes: &[u8]) -> Option<bool> {
    Some(match name {
        "idx_images" => idx_images(bytes),
        "idx_labels" => idx_labels(bytes),
        "cifar_batch" => cifar_batch(bytes),
        "digits_csv" => digits_csv(bytes),
        "image_decode" => image_decode(bytes),
        "tensorfile" => tensorfile(bytes),
        "model_json" => model_json(bytes),
        "state_dict" => state_dict(bytes),
        "int8_model" => int8_model(bytes),
        "text_lines" => text_lines(bytes),
        _ => return None,
    })
}
