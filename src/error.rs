//! One error type for the whole crate (candle style): every fallible public function
//! returns [`Result`], and the CLI prints the message as one line with no backtrace.

use std::path::PathBuf;

/// Everything that can go wrong in wqat, with a message that names the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum WqatError {
    /// No GPU adapter at all: the most common first-run problem on a headless Linux box.
    #[error("no GPU adapter found{0}; on Linux install Mesa's Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`, or run scripts/setup-vulkan.sh)")]
    NoAdapter(String),
    /// An adapter was asked for by name and none matched.
    #[error("no adapter matches {wanted:?}; available: {available}")]
    AdapterNotFound { wanted: String, available: String },
    /// `request_device` failed.
    #[error("could not open the GPU device: {0}")]
    Device(String),
    /// A wgpu validation or out-of-memory error caught through an error scope.
    #[error("GPU error in {context}: {message}")]
    Gpu { context: String, message: String },
    /// Tensor shapes that do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// A request over what the adapter allows (buffer size, workgroup count).
    #[error("over the adapter's limits: {0}")]
    Limit(String),
    /// An argument outside its valid range (bit width, tolerance, hyper-parameter).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A WGSL source failed naga validation.
    #[error("shader {file} is invalid: {message}")]
    Shader { file: String, message: String },
    /// A data, checkpoint or model file that is malformed.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// An I/O error with the path it happened on (and the usual fix for full disks and
    /// permissions).
    #[error("{path}: {source}{}", io_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A non-finite loss or gradient.
    #[error("non-finite value (NaN or Inf) in {0}")]
    NonFinite(String),
    /// Training stopped by SIGINT/SIGTERM after a checkpoint was written.
    #[error("interrupted: {0}")]
    Interrupted(String),
}

/// What to do about the common I/O failures.
fn io_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::StorageFull => " (the disk is full: free space or choose another --out directory)",
        std::io::ErrorKind::PermissionDenied => " (no permission: choose a directory you can write, e.g. --out ./out)",
        std::io::ErrorKind::ReadOnlyFilesystem => " (read-only file system: choose another --out directory)",
        _ => "",
    }
}

/// Crate-wide result alias.
pub type Result<T, E = WqatError> = std::result::Result<T, E>;

impl WqatError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WqatError::Io { path: path.into(), source }
    }
    /// A shape error from any message.
    pub fn shape(msg: impl Into<String>) -> Self {
        WqatError::Shape(msg.into())
    }
    /// An invalid-argument error from any message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        WqatError::InvalidArgument(msg.into())
    }
    /// A format error for a file.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        WqatError::Format { path: path.into(), message: msg.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_the_fix() {
        let full = WqatError::io("/x/ckpt", std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(full.to_string().contains("disk is full"), "{full}");
        let perm = WqatError::io("/x", std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(perm.to_string().contains("--out"), "{perm}");
    }
}
