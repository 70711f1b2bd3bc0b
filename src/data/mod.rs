//! Data sets behind one interface ([`Dataset`]), robust parsers and a background batcher.
//!
//! Sources (all normalized to f32 NCHW, see [`Normalization`] for the constants):
//! - [`Dataset::digits`]: the UCI digits embedded in the binary (the default, no files needed).
//! - [`load_idx_dir`]: MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, ...).
//! - [`load_cifar_dir`]: CIFAR-10 binary batches (`data_batch_1..5.bin[.gz]`, `test_batch.bin[.gz]`).
//! - [`load_image_folder`]: `root/<class>/*.png|jpg` (or `root/{train,test}/<class>/...`).
//! - [`load_text_folder`]: `root/{train,test}/<class>.txt`, one UTF-8 sample per line, encoded
//!   as byte-level token ids stored as f32 ([`TextEncoding`]; never normalized or augmented).
//! - [`load`] / [`load_with`]: any of the above from the word `digits` or a directory (detected
//!   from its files).
//!
//! Every parser works from bytes (`parse_idx_images(&[u8])`, `parse_cifar_batch`,
//! `parse_digits_csv`, `decode_image`, `parse_text_lines`) so it can be fuzzed: gzip is
//! detected by its magic bytes (never by extension), sizes claimed by headers are checked
//! against the bytes present before anything is allocated, and every problem is a
//! [`WqatError::Format`], never a panic. Parsers report the path `<bytes>`; the file loaders
//! replace it with the file's path.
//!
//! [`Batcher`] turns a split into shuffled, optionally augmented batches prepared on a
//! background thread ([`BatchIter`]).

mod augment;
mod batcher;
mod cifar;
mod dataset;
mod digits;
mod folder;
mod idx;
mod text;

pub use augment::{augment_image, Augment, AugmentParams};
pub use batcher::{epoch_order, Batch, BatchConfig, BatchIter, Batcher};
pub use cifar::{find_cifar_files, load_cifar_dir, parse_cifar_batch, CifarBatch, CIFAR10_CLASSES, CIFAR_RECORD_BYTES};
pub use dataset::{
    Dataset, Normalization, Split, CIFAR10_MEAN, CIFAR10_STD, DIGITS_MEAN, DIGITS_STD, MNIST_MEAN, MNIST_STD,
};
pub use digits::{parse_digits_csv, DIGITS_CSV_GZ, DIGITS_SPLIT_SEED};
pub use folder::{decode_image, is_image_folder, load_image_folder, MAX_IMAGE_DECODE_BYTES, MAX_IMAGE_SIDE};
pub use idx::{find_idx_files, idx_dataset_from_bytes, load_idx_dir, parse_idx_images, parse_idx_labels, IdxImages};
pub use text::{
    is_text_folder, load_text_folder, parse_text_lines, TextEncoding, DEFAULT_MAX_LEN, MAX_TEXT_LEN, TEXT_ORDER_SEED,
};

use crate::{Result, WqatError};
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest decompressed size accepted from one gzip stream (a guard against gzip bombs; the
/// biggest real input, MNIST's training images, is 47 MB).
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// The path parsers report before a loader names the real file.
pub(crate) const BYTES_PATH: &str = "<bytes>";

/// A format error from a parser working on bytes.
pub(crate) fn bad(msg: impl Into<String>) -> WqatError {
    WqatError::format(BYTES_PATH, msg)
}

/// Replaces the placeholder path of a format error by `path`.
pub(crate) fn at_path(e: WqatError, path: &Path) -> WqatError {
    match e {
        WqatError::Format { path: p, message } if p == Path::new(BYTES_PATH) => WqatError::format(path, message),
        other => other,
    }
}

/// True when `bytes` start with the gzip magic `1f 8b`.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Decompresses `bytes` when they start with the gzip magic, else borrows them unchanged.
/// Corrupt or truncated streams and streams over [`MAX_DECOMPRESSED_BYTES`] are format errors.
pub fn maybe_gunzip(bytes: &[u8]) -> Result<Cow<'_, [u8]>> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(bytes).take(MAX_DECOMPRESSED_BYTES + 1);
    dec.read_to_end(&mut out).map_err(|e| bad(format!("gzip stream is corrupt or truncated: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(bad(format!("gzip stream decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")));
    }
    Ok(Cow::Owned(out))
}

/// Reads a whole file (I/O errors carry the path).
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| WqatError::io(path, e))
}

/// The first of `names` that exists as a file in `dir`.
pub(crate) fn first_existing(dir: &Path, names: &[String]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Where a data set comes from, as [`detect`] reads a `load` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// The embedded UCI digits.
    Digits,
    /// A directory of MNIST-style IDX files.
    Idx(PathBuf),
    /// A directory of CIFAR-10 binary batches.
    Cifar(PathBuf),
    /// A directory of class folders holding images.
    Folder(PathBuf),
    /// A directory holding `train/<class>.txt` and `test/<class>.txt`.
    Text(PathBuf),
}

/// Reads a `load` argument: the word `digits`, or a directory holding IDX files, CIFAR-10
/// batches, class folders of images or `train/<class>.txt` text files (checked in that order).
pub fn detect(spec: &str) -> Result<DataSource> {
    if spec == "digits" {
        return Ok(DataSource::Digits);
    }
    let dir = PathBuf::from(spec);
    if !dir.exists() {
        return Err(WqatError::invalid(format!(
            "data set {spec:?}: no such directory (give `digits`, or a directory holding MNIST IDX files, \
             CIFAR-10 .bin batches, <class>/ image folders or train/<class>.txt + test/<class>.txt)"
        )));
    }
    if !dir.is_dir() {
        return Err(WqatError::format(&dir, "not a directory (give the directory that holds the data files)"));
    }
    if find_idx_files(&dir).is_some() {
        return Ok(DataSource::Idx(dir));
    }
    if find_cifar_files(&dir).is_some() {
        return Ok(DataSource::Cifar(dir));
    }
    if is_image_folder(&dir) {
        return Ok(DataSource::Folder(dir));
    }
    if is_text_folder(&dir) {
        return Ok(DataSource::Text(dir));
    }
    Err(WqatError::format(
        &dir,
        "no data set found here: expected train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] + \
         t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz], or data_batch_<k>.bin[.gz] + \
         test_batch.bin[.gz], or <class>/ sub-directories holding .png/.jpg images, or \
         train/<class>.txt + test/<class>.txt text files (one sample per line)",
    ))
}

/// Settings of [`load_with`] that only some kinds of data set use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Tokens per text sequence, CLS included (`--max-len`; 2..=[`MAX_TEXT_LEN`]). Image sets
    /// ignore it.
    pub max_len: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { max_len: DEFAULT_MAX_LEN }
    }
}

/// Loads a data set from the word `digits` or a directory (see [`detect`]) with the default
/// [`LoadOptions`]. Image folders keep the size and colour of their first image; use
/// [`load_image_folder`] to choose a shape.
pub fn load(spec: &str) -> Result<Dataset> {
    load_with(spec, &LoadOptions::default())
}

/// [`load`] with options: text folders are encoded with `opts.max_len` tokens per sequence.
pub fn load_with(spec: &str, opts: &LoadOptions) -> Result<Dataset> {
    match detect(spec)? {
        DataSource::Digits => Dataset::digits(),
        DataSource::Idx(d) => load_idx_dir(&d),
        DataSource::Cifar(d) => load_cifar_dir(&d),
        DataSource::Folder(d) => load_image_folder(&d, None),
        DataSource::Text(d) => load_text_folder(&d, TextEncoding::new(opts.max_len)?),
    }
}
