//! Export of a converted integer model ([`crate::infer::Int8Model`]) to other formats.
//! Today: ONNX in QDQ form ([`onnx`]), written with `prost` messages declared from the
//! official schema ([`onnx_proto`]), built by a small graph builder ([`builder`]), with the
//! model's interface in its metadata ([`metadata`]).

pub mod builder;
pub mod metadata;
pub mod onnx;
pub mod onnx_proto;

use crate::error::{Result, WqatError};
use crate::infer::Int8Model;
use std::path::Path;

/// Formats `wqat export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Onnx,
}

impl std::str::FromStr for ExportFormat {
    type Err = WqatError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "onnx" => Ok(ExportFormat::Onnx),
            other => Err(WqatError::invalid(format!("export format {other:?}: use onnx"))),
        }
    }
}

/// The serialized ONNX model (protobuf bytes) of `m`.
pub fn onnx_bytes(m: &Int8Model) -> Result<Vec<u8>> {
    use prost::Message;
    Ok(onnx::to_onnx(m)?.encode_to_vec())
}

/// Writes `m` to `path` in `format`, atomically (temporary file, fsync, rename).
pub fn export(m: &Int8Model, format: ExportFormat, path: &Path) -> Result<()> {
    let bytes = match format {
        ExportFormat::Onnx => onnx_bytes(m)?,
    };
    crate::tensorfile::write_atomic(path, &bytes)
}
