//! MNIST-style IDX files: `00 00 08 <ndims>` then `ndims` big-endian u32 sizes, then u8 data.

use super::dataset::{numeric_classes, RawSplit};
use super::{at_path, bad, first_existing, maybe_gunzip, read_file, Dataset, Normalization};
use crate::Result;
use std::path::{Path, PathBuf};

/// Images of one IDX file: `count` images of `rows` x `cols` u8 pixels, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Number of classes the IDX loader accepts (the MNIST family: digits, Fashion, KMNIST).
const IDX_CLASSES: usize = 10;

/// Checks the header of an (already decompressed) IDX file holding unsigned bytes with `ndims`
/// dimensions; returns the sizes and the payload, whose length must match them exactly.
fn parse_header<'a>(data: &'a [u8], ndims: u8, what: &str) -> Result<(Vec<usize>, &'a [u8])> {
    let magic = data.get(..4).ok_or_else(|| {
        bad(format!("truncated IDX {what} file: {} bytes, shorter than the 4-byte magic", data.len()))
    })?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad(format!(
            "not an IDX file: bad magic bytes {:02x} {:02x} {:02x} {:02x} (IDX {what} start with 00 00 08 {ndims:02x})",
            magic[0], magic[1], magic[2], magic[3]
        )));
    }
    if magic[2] != 0x08 {
        return Err(bad(format!("IDX element type 0x{:02x} is not supported (only 0x08, unsigned bytes)", magic[2])));
    }
    if magic[3] != ndims {
        return Err(bad(format!(
            "IDX {what} file has {} dimension(s), want {ndims} (magic 00 00 08 {ndims:02x})",
            magic[3]
        )));
    }
    let header_len = 4 + 4 * ndims as usize;
    let sizes = data
        .get(4..header_len)
        .ok_or_else(|| bad(format!("truncated IDX {what} header: {} bytes, want {header_len}", data.len())))?;
    let dims: Vec<usize> =
        sizes.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    if dims.contains(&0) {
        return Err(bad(format!("IDX {what} file has a zero dimension: {dims:?}")));
    }
    let payload = &data[header_len..];
    let want = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match want {
        Some(want) if want == payload.len() as u64 => Ok((dims, payload)),
        Some(want) if want > payload.len() as u64 => Err(bad(format!(
            "truncated IDX {what} file: header claims {dims:?} = {want} bytes of data, only {} present",
            payload.len()
        ))),
        Some(want) => Err(bad(format!(
            "IDX {what} file has {} bytes of trailing data after the {want} bytes its header {dims:?} claims",
            payload.len() as u64 - want
        ))),
        None => Err(bad(format!("IDX {what} header claims impossible sizes {dims:?}"))),
    }
}

/// Parses an IDX image file (`00 00 08 03`, gzipped or not).
pub fn parse_idx_images(bytes: &[u8]) -> Result<IdxImages> {
    let data = maybe_gunzip(bytes)?;
    let (dims, payload) = parse_header(&data, 3, "images")?;
    Ok(IdxImages { count: dims[0], rows: dims[1], cols: dims[2], pixels: payload.to_vec() })
}

/// Parses an IDX label file (`00 00 08 01`, gzipped or not); every label must be below
/// `num_classes`.
pub fn parse_idx_labels(bytes: &[u8], num_classes: usize) -> Result<Vec<u8>> {
    let data = maybe_gunzip(bytes)?;
    let (_, payload) = parse_header(&data, 1, "labels")?;
    if let Some((i, &l)) = payload.iter().enumerate().find(|(_, &l)| l as usize >= num_classes) {
        return Err(bad(format!("label {i} is {l}, out of range for {num_classes} classes")));
    }
    Ok(payload.to_vec())
}

/// The four IDX files of a directory (train images, train labels, test images, test labels),
/// each found as `<name>`, `<name>.gz` or with the `.idx3-ubyte` spelling; None unless all four exist.
pub fn find_idx_files(dir: &Path) -> Option<[PathBuf; 4]> {
    let find = |stem: &str, kind: &str| {
        let names: Vec<String> = [format!("{stem}-{kind}"), format!("{stem}.{kind}")]
            .iter()
            .flat_map(|n| [n.clone(), format!("{n}.gz")])
            .collect();
        first_existing(dir, &names)
    };
    Some([
        find("train-images", "idx3-ubyte")?,
        find("train-labels", "idx1-ubyte")?,
        find("t10k-images", "idx3-ubyte")?,
        find("t10k-labels", "idx1-ubyte")?,
    ])
}

/// Builds the data set from the bytes of the four IDX files (gzipped or not): both splits must
/// have as many labels as images and the same image size; labels must be 0..9. Normalized with
/// the MNIST constants ([`super::MNIST_MEAN`], [`super::MNIST_STD`]); named `mnist` here,
/// by its directory in [`load_idx_dir`].
/// Errors name the file (`paths`, in the same order as the bytes).
pub fn idx_dataset_from_bytes(files: [&[u8]; 4], paths: &[PathBuf; 4]) -> Result<Dataset> {
    let mut splits = Vec::with_capacity(2);
    let mut shape = None;
    for (k, which) in [(0, "train"), (2, "test")] {
        let images = parse_idx_images(files[k]).map_err(|e| at_path(e, &paths[k]))?;
        let labels = parse_idx_labels(files[k + 1], IDX_CLASSES).map_err(|e| at_path(e, &paths[k + 1]))?;
        if images.count != labels.len() {
            return Err(at_path(
                bad(format!(
                    "{which} images and labels disagree: {} images but {} labels in {}",
                    images.count,
                    labels.len(),
                    paths[k + 1].display()
                )),
                &paths[k],
            ));
        }
        let this = (1, images.rows, images.cols);
        if *shape.get_or_insert(this) != this {
            return Err(at_path(
                bad(format!("test images are {}x{}, train images {:?}", images.rows, images.cols, shape)),
                &paths[k],
            ));
        }
        splits.push(RawSplit { pixels: images.pixels, labels });
    }
    let test = splits.pop().ok_or_else(|| bad("missing test split"))?;
    let train = splits.pop().ok_or_else(|| bad("missing train split"))?;
    let shape = shape.ok_or_else(|| bad("no images"))?;
    Dataset::from_raw("mnist", shape, numeric_classes(IDX_CLASSES), Normalization::mnist(), train, test)
}

/// Loads an MNIST-style directory (see [`find_idx_files`]; gzip detected by magic bytes).
pub fn load_idx_dir(dir: &Path) -> Result<Dataset> {
    let paths = find_idx_files(dir).ok_or_else(|| {
        crate::WqatError::format(
            dir,
            "missing IDX files: want train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte \
             and t10k-labels-idx1-ubyte (each optionally .gz)",
        )
    })?;
    let bytes = [read_file(&paths[0])?, read_file(&paths[1])?, read_file(&paths[2])?, read_file(&paths[3])?];
    let mut ds = idx_dataset_from_bytes([&bytes[0], &bytes[1], &bytes[2], &bytes[3]], &paths)?;
    // Any IDX folder (Fashion-MNIST, KMNIST, ...) is named by its directory, not assumed MNIST.
    if let Some(name) = dir.canonicalize().ok().as_deref().unwrap_or(dir).file_name().and_then(|n| n.to_str()) {
        ds.name = name.to_string();
    }
    Ok(ds)
}
