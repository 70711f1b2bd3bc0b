//! CIFAR-10 binary batches: records of 1 label byte then 3072 bytes (R, G, B planes of 32x32).

use super::dataset::RawSplit;
use super::{at_path, bad, first_existing, maybe_gunzip, read_file, Dataset, Normalization};
use crate::{Result, WqatError};
use std::path::{Path, PathBuf};

/// Bytes per CIFAR-10 record: 1 label + 3 x 32 x 32 pixels.
pub const CIFAR_RECORD_BYTES: usize = 1 + 3 * 32 * 32;

/// CIFAR-10 class names in label order (used when `batches.meta.txt` is absent).
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// One parsed batch: labels `[N]` (0..9) and pixels [N, 3, 32, 32] (u8, planar RGB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CifarBatch {
    pub labels: Vec<u8>,
    pub pixels: Vec<u8>,
}

/// Parses one CIFAR-10 binary batch (gzipped or not): a whole number (at least one) of
/// 3073-byte records with labels 0..9.
pub fn parse_cifar_batch(bytes: &[u8]) -> Result<CifarBatch> {
    let data = maybe_gunzip(bytes)?;
    if data.is_empty() {
        return Err(bad("empty CIFAR-10 batch"));
    }
    if data.len() % CIFAR_RECORD_BYTES != 0 {
        return Err(bad(format!(
            "truncated CIFAR-10 batch: {} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte records \
             ({} full records and {} bytes left over)",
            data.len(),
            data.len() / CIFAR_RECORD_BYTES,
            data.len() % CIFAR_RECORD_BYTES
        )));
    }
    let n = data.len() / CIFAR_RECORD_BYTES;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (CIFAR_RECORD_BYTES - 1));
    for (i, rec) in data.chunks_exact(CIFAR_RECORD_BYTES).enumerate() {
        let (label, image) = rec.split_at(1);
        if label[0] >= 10 {
            return Err(bad(format!(
                "record {i} has label {}, out of range for 10 classes (CIFAR-100 batches are not supported)",
                label[0]
            )));
        }
        labels.push(label[0]);
        pixels.extend_from_slice(image);
    }
    Ok(CifarBatch { labels, pixels })
}

/// The training batches present among `data_batch_1..5.bin[.gz]` (in order, at least one) and
/// `test_batch.bin[.gz]`; None unless both kinds exist.
pub fn find_cifar_files(dir: &Path) -> Option<(Vec<PathBuf>, PathBuf)> {
    let find = |stem: &str| first_existing(dir, &[format!("{stem}.bin"), format!("{stem}.bin.gz")]);
    let train: Vec<PathBuf> = (1..=5).filter_map(|k| find(&format!("data_batch_{k}"))).collect();
    let test = find("test_batch")?;
    (!train.is_empty()).then_some((train, test))
}

/// Class names from `batches.meta.txt` (ten non-empty lines) or the standard ones.
fn class_names(dir: &Path) -> Vec<String> {
    let from_file = std::fs::read_to_string(dir.join("batches.meta.txt")).ok().and_then(|text| {
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        (names.len() == 10).then_some(names)
    });
    from_file.unwrap_or_else(|| CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect())
}

/// Loads a CIFAR-10 directory (see [`find_cifar_files`]; gzip detected by magic bytes):
/// 3x32x32, normalized with [`super::CIFAR10_MEAN`]/[`super::CIFAR10_STD`], named `cifar10`.
pub fn load_cifar_dir(dir: &Path) -> Result<Dataset> {
    let (train_files, test_file) = find_cifar_files(dir).ok_or_else(|| {
        WqatError::format(dir, "missing CIFAR-10 batches: want data_batch_1.bin .. data_batch_5.bin and test_batch.bin (each optionally .gz)")
    })?;
    let load = |path: &Path| parse_cifar_batch(&read_file(path)?).map_err(|e| at_path(e, path));
    // The batches decompress independently: one thread each (inline if no thread can start).
    let mut batches: Vec<Result<CifarBatch>> = std::thread::scope(|s| {
        let jobs: Vec<_> = train_files
            .iter()
            .chain([&test_file])
            .map(|p| (p, std::thread::Builder::new().spawn_scoped(s, move || load(p)).ok()))
            .collect();
        jobs.into_iter()
            .map(|(p, h)| match h {
                Some(h) => h.join().unwrap_or_else(|_| Err(bad("CIFAR-10 loader thread panicked"))),
                None => load(p),
            })
            .collect()
    });
    let t = batches.pop().ok_or_else(|| bad("missing test batch"))??;
    let mut train = RawSplit { pixels: Vec::new(), labels: Vec::new() };
    for b in batches {
        let b = b?;
        train.pixels.extend_from_slice(&b.pixels);
        train.labels.extend_from_slice(&b.labels);
    }
    let test = RawSplit { pixels: t.pixels, labels: t.labels };
    Dataset::from_raw("cifar10", (3, 32, 32), class_names(dir), Normalization::cifar10(), train, test)
}
