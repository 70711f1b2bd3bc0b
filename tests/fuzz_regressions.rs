//! Inputs that once panicked a parser of outside bytes (found by fuzzing or by review while
//! writing the fuzz targets), each kept as a regression: it must now give a typed error.
//! Each test names where the input came from and what used to go wrong.

use std::path::Path;
use wqat::fuzzing;
use wqat::model::Graph;
use wqat::WqatError;

/// The input must be refused with a format error whose message holds `needle`.
fn refused_model_json(text: &str, needle: &str) {
    assert!(!fuzzing::model_json(text.as_bytes()), "accepted: {text}");
    match Graph::from_json(Path::new("spec.json"), text) {
        Err(WqatError::Format { message, .. }) => assert!(message.contains(needle), "{message:?} lacks {needle:?}"),
        other => panic!("want a format error with {needle:?}, got {other:?}"),
    }
}

fn one_layer(input: &str, node: &str) -> String {
    format!(
        r#"{{"name":"t","input":{input},"num_classes":2,"nodes":[{node},{{"name":"f","op":"flatten"}},{{"name":"l","op":"linear","out_features":2}}]}}"#
    )
}

/// Review: `dilation * (kernel - 1) + 1` overflowed (panic in debug builds, a wrong shape
/// in release) for huge kernel or dilation values in a JSON spec.
#[test]
fn conv_kernel_dilation_overflow() {
    refused_model_json(
        &one_layer(
            "[1,8,8]",
            r#"{"name":"c","op":"conv","out_channels":1,"kernel":18446744073709551615,"dilation":2}"#,
        ),
        "is too large",
    );
    refused_model_json(
        &one_layer("[1,8,8]", r#"{"name":"c","op":"conv","out_channels":1,"kernel":3,"dilation":9223372036854775807}"#),
        "does not fit",
    );
}

/// Review: `size + 2 * padding` overflowed for a huge padding (conv and pools), and the pool
/// check `2 * padding > kernel` overflowed first.
#[test]
fn padding_overflow() {
    refused_model_json(
        &one_layer("[1,8,8]", r#"{"name":"c","op":"conv","out_channels":1,"kernel":3,"padding":9223372036854775808}"#),
        "does not fit",
    );
    refused_model_json(
        &one_layer("[1,8,8]", r#"{"name":"p","op":"max_pool","kernel":3,"padding":9223372036854775808}"#),
        "padding at most half",
    );
}

/// Review: a flatten of a huge activation computed `c * h * w` with overflow, and a linear
/// layer's weight size `out * c*h*w` likewise (param_specs); now every shape is bounded.
#[test]
fn huge_shapes() {
    refused_model_json(
        &one_layer("[1,32768,32768]", r#"{"name":"c","op":"conv","out_channels":1099511627776,"kernel":1}"#),
        "too large",
    );
    refused_model_json(
        &one_layer("[4294967295,4294967295,4294967295]", r#"{"name":"m","op":"max_pool","kernel":1}"#),
        "input shape",
    );
    let text =
        r#"{"name":"t","input":[1,32768,32768],"num_classes":4,"nodes":[{"name":"l","op":"linear","out_features":4}]}"#;
    refused_model_json(text, "too large");
    // Zero-size inputs used to resolve to zero-size tensors.
    refused_model_json(&one_layer("[0,8,8]", r#"{"name":"m","op":"max_pool","kernel":1}"#), "must be positive");
}

/// libFuzzer `image_decode` (timeout after 13 s under ASan, 2026-11-29): a 580-byte JPEG whose
/// header claims 65287 x 255 pixels was decoded in full (16.6 M pixels) and then resized.
/// Now the header's dimensions are checked against `MAX_IMAGE_SIDE` before decoding.
#[test]
fn jpeg_header_claiming_a_huge_image() {
    let input = include_bytes!("../fuzz/regressions/image_decode/timeout-jpeg-65287x255");
    let started = std::time::Instant::now();
    assert!(!fuzzing::image_decode(input));
    match wqat::data::decode_image(&input[1..], (1, 28, 28)) {
        Err(WqatError::Format { message, .. }) => {
            assert!(message.contains("cannot decode image") && message.contains("limit"), "{message}")
        }
        other => panic!("want a format error, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "took {:?}", started.elapsed());
}
