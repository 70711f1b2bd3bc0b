//! The `metadata_props` of an exported model: everything a user needs to feed it without
//! reading wqat's source (input name, layout, shape, normalization or text encoding, class
//! names, the output's quantization step), as JSON strings under `wqat.*` keys.

use super::onnx::{LOGITS, OPSET, PIXELS, TOKENS};
use crate::data::TextEncoding;
use crate::error::Result;
use crate::infer::{ActQuant, Int8Model};
use crate::model::graph::Op;
use serde_json::json;

/// Version of the exported form (bump when the graph's interface changes).
pub const EXPORT_FORMAT: &str = "wqat-onnx-qdq/1";

/// `(key, value)` pairs; `logits` is the output's quantization when the logits are codes.
pub fn metadata(m: &Int8Model, logits: &Option<ActQuant>) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| out.push((k.to_string(), v));
    let [c, h, w] = m.input_shape();
    put("wqat.format", EXPORT_FORMAT.into());
    put("wqat.model", m.graph.name.clone());
    put("wqat.opset", OPSET.to_string());
    put(
        "wqat.quantization",
        "QDQ: uint8 activations (per tensor, affine), int8 weights (per output channel, symmetric), int32 biases \
         (scale s_in * s_w); codes under 8 bits are uint8 QuantizeLinear -> Clip -> DequantizeLinear"
            .into(),
    );
    let text = matches!(m.nodes().first().map(|r| &r.node.op), Some(Op::Embedding { .. }));
    if text {
        let max_len = c * h * w;
        let pad = match m.nodes().first().map(|r| &r.node.op) {
            Some(Op::Embedding { padding_idx, .. }) => *padding_idx,
            _ => None,
        };
        put(
            "wqat.input",
            json!({"name": TOKENS, "dtype": "int64", "shape": ["batch", max_len],
                   "content": "token ids; padding ids are masked in attention and mean pools",
                   "padding_id": pad})
            .to_string(),
        );
        let enc = m.text.unwrap_or(TextEncoding { max_len });
        put(
            "wqat.text_encoding",
            json!({"max_len": enc.max_len, "cls_id": TextEncoding::CLS_ID, "pad_id": TextEncoding::PAD_ID,
                   "vocab": TextEncoding::VOCAB,
                   "encode": "[CLS] + the first max_len - 1 UTF-8 bytes of the text (ids 0..255) + [PAD] up to max_len"})
            .to_string(),
        );
    } else {
        let n = m.normalization();
        put(
            "wqat.input",
            json!({"name": PIXELS, "dtype": "float32", "layout": "NCHW", "shape": ["batch", c, h, w],
                   "range": [0.0, n.max_value],
                   "content": "raw pixel values; the first nodes normalize them: (pixel / max_value - mean[c]) / std[c]"})
            .to_string(),
        );
        put("wqat.normalization", serde_json::to_string(n).unwrap_or_default());
    }
    put("wqat.class_names", serde_json::to_string(m.class_names()).unwrap_or_default());
    put(
        "wqat.output",
        match logits {
            Some(q) => json!({"name": LOGITS, "shape": ["batch", m.num_classes()], "quantized": true,
                              "scale": q.scale, "zero_point": q.zero, "bits": q.bits}),
            None => json!({"name": LOGITS, "shape": ["batch", m.num_classes()], "quantized": false}),
        }
        .to_string(),
    );
    put("wqat.graph", serde_json::to_string(&m.graph).unwrap_or_default());
    put("wqat.qconfig", serde_json::to_string(&m.qconfig).unwrap_or_default());
    Ok(out)
}
