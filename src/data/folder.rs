//! Image folders: `root/<class>/*.png|jpg`, classes sorted by name, decoded through `image`.

use super::dataset::RawSplit;
use super::{at_path, bad, read_file, Dataset, Normalization};
use crate::{Result, WqatError};
use image::imageops::FilterType;
use image::{ColorType, DynamicImage};
use std::path::{Path, PathBuf};

/// Largest image accepted after resizing (c*h*w values).
const MAX_IMAGE_VALUES: usize = 1 << 24;

fn check_shape((c, h, w): (usize, usize, usize)) -> Result<()> {
    let values = c.checked_mul(h).and_then(|v| v.checked_mul(w));
    if !(c == 1 || c == 3) || h == 0 || w == 0 || values.is_none_or(|v| v > MAX_IMAGE_VALUES) {
        return Err(WqatError::invalid(format!(
            "image shape ({c}, {h}, {w}) must have 1 or 3 channels and 1..={MAX_IMAGE_VALUES} values"
        )));
    }
    Ok(())
}

/// Largest width or height of an image file accepted (checked from its header, before any
/// pixel is decoded): a few hundred bytes of JPEG header can claim 65535 x 65535 pixels.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Most memory the decoder may allocate for one image (a 16-megapixel RGB photo needs 48 MiB).
pub const MAX_IMAGE_DECODE_BYTES: u64 = 128 << 20;

fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    let err = |e: &dyn std::fmt::Display| bad(format!("cannot decode image: {e}"));
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| err(&e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_DECODE_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| err(&e))
}

fn to_chw(img: &DynamicImage, (c, h, w): (usize, usize, usize)) -> Vec<u8> {
    let (w32, h32) = (w as u32, h as u32);
    let resize = |img: &DynamicImage| {
        if img.width() == w32 && img.height() == h32 {
            img.clone()
        } else {
            img.resize_exact(w32, h32, FilterType::Triangle)
        }
    };
    if c == 1 {
        resize(img).to_luma8().into_raw()
    } else {
        let hwc = resize(img).to_rgb8().into_raw();
        let mut out = vec![0u8; c * h * w];
        for (p, px) in hwc.chunks_exact(3).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                out[ch * h * w + p] = v;
            }
        }
        out
    }
}

/// Decodes a PNG or JPEG (format from its bytes) into u8 CHW of `shape` (c = 1 grey or 3 RGB),
/// converting the colour and resizing (triangle filter) when the image differs. Images over
/// [`MAX_IMAGE_SIDE`] pixels wide or high, or needing more than [`MAX_IMAGE_DECODE_BYTES`] to
/// decode, are format errors.
pub fn decode_image(bytes: &[u8], shape: (usize, usize, usize)) -> Result<Vec<u8>> {
    check_shape(shape)?;
    Ok(to_chw(&decode(bytes)?, shape))
}

fn is_image_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

pub(super) fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| WqatError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let path = entry.map_err(|e| WqatError::io(dir, e))?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
        if !hidden {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn name_of(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Class directories of `root` (sorted by name) with their sorted image files.
fn scan_classes(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let mut classes = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let files: Vec<PathBuf> = sorted_entries(&dir)?.into_iter().filter(|p| is_image_file(p)).collect();
        classes.push((name_of(&dir), files));
    }
    Ok(classes)
}

fn has_images(root: &Path) -> bool {
    scan_classes(root).is_ok_and(|c| c.iter().any(|(_, f)| !f.is_empty()))
}

/// True when `root` holds class folders with images, directly or under `root/train`.
pub fn is_image_folder(root: &Path) -> bool {
    has_images(root) || has_images(&root.join("train"))
}

/// Loads an image folder. Layouts: `root/train/<class>/*` + `root/test/<class>/*` (used as
/// given), or `root/<class>/*`, split per class: the class's files sorted by name, every fifth
/// (index % 5 == 4) goes to test, the rest to train. Classes are the sorted directory names
/// (at most 256, each with at least one training image); files are .png/.jpg/.jpeg.
/// `shape` (c, h, w) with c = 1 or 3; None takes the size and colour (grey or RGB) of the first
/// training image. Normalization: per-channel mean/std of pixel/255 over the training split
/// (std 1 for a constant channel), stored in [`Dataset::norm`].
pub fn load_image_folder(root: &Path, shape: Option<(usize, usize, usize)>) -> Result<Dataset> {
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let split_dirs = train_dir.is_dir() && test_dir.is_dir();
    let mut train_files: Vec<(PathBuf, u8)> = Vec::new();
    let mut test_files: Vec<(PathBuf, u8)> = Vec::new();
    let classes = scan_classes(if split_dirs { &train_dir } else { root })?;
    if classes.is_empty() {
        return Err(WqatError::format(root, "no class directories (want root/<class>/*.png|jpg)"));
    }
    if classes.len() > 256 {
        return Err(WqatError::format(root, format!("{} classes, at most 256 supported", classes.len())));
    }
    let names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
    for (label, (name, files)) in classes.into_iter().enumerate() {
        if split_dirs {
            train_files.extend(files.into_iter().map(|f| (f, label as u8)));
            continue;
        }
        let n_train = files.len() - files.len() / 5;
        if n_train == 0 {
            return Err(WqatError::format(root.join(&name), "class directory holds no .png/.jpg image"));
        }
        for (i, f) in files.into_iter().enumerate() {
            if i % 5 == 4 { &mut test_files } else { &mut train_files }.push((f, label as u8));
        }
    }
    if split_dirs {
        for (name, files) in scan_classes(&test_dir)? {
            let label = names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| WqatError::format(test_dir.join(&name), "test class is not among the train classes"))?;
            test_files.extend(files.into_iter().map(|f| (f, label as u8)));
        }
        for (label, name) in names.iter().enumerate() {
            if !train_files.iter().any(|(_, l)| *l as usize == label) {
                return Err(WqatError::format(train_dir.join(name), "class directory holds no .png/.jpg image"));
            }
        }
    }
    let shape = match shape {
        Some(s) => s,
        None => {
            let first = &train_files.first().ok_or_else(|| WqatError::format(root, "no training image"))?.0;
            let img = decode(&read_file(first)?).map_err(|e| at_path(e, first))?;
            let grey = matches!(img.color(), ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16);
            (if grey { 1 } else { 3 }, img.height() as usize, img.width() as usize)
        }
    };
    check_shape(shape)?;
    let load = |files: &[(PathBuf, u8)]| -> Result<RawSplit> {
        let mut raw = RawSplit { pixels: Vec::new(), labels: Vec::new() };
        for (path, label) in files {
            let px = decode_image(&read_file(path)?, shape).map_err(|e| at_path(e, path))?;
            raw.pixels.extend_from_slice(&px);
            raw.labels.push(*label);
        }
        Ok(raw)
    };
    let (train, test) = (load(&train_files)?, load(&test_files)?);
    let norm = channel_stats(&train.pixels, shape)?;
    let name = root.canonicalize().map(|p| name_of(&p)).unwrap_or_else(|_| name_of(root));
    let name = if name.is_empty() { "folder".to_string() } else { name };
    Dataset::from_raw(&name, shape, names, norm, train, test).map_err(|e| at_path(e, root))
}

/// Per-channel mean and std of pixel/255 over u8 CHW images.
fn channel_stats(pixels: &[u8], (c, h, w): (usize, usize, usize)) -> Result<Normalization> {
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for image in pixels.chunks_exact(c * h * w) {
        for (ch, plane) in image.chunks_exact(h * w).enumerate() {
            for &p in plane {
                let v = p as f64 / 255.0;
                sum[ch] += v;
                sq[ch] += v * v;
            }
        }
    }
    let n = (pixels.len() / c).max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std: Vec<f32> = sum
        .iter()
        .zip(&sq)
        .map(|(s, q)| {
            let var = (q / n - (s / n) * (s / n)).max(0.0);
            if var.sqrt() < 1e-6 {
                1.0
            } else {
                var.sqrt() as f32
            }
        })
        .collect();
    Normalization::new(255.0, mean, std)
}
