//! The one interface every data set comes through: normalized f32 NCHW images (or token ids
//! stored as f32, for text), u8 labels.

use super::bad;
use super::text::TextEncoding;
use crate::{Result, WqatError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// MNIST (and any IDX data set): mean of pixel/255 over the training set (the usual constant).
pub const MNIST_MEAN: f32 = 0.1307;
/// MNIST: standard deviation of pixel/255 over the training set.
pub const MNIST_STD: f32 = 0.3081;
/// UCI digits: mean of pixel/16 over all 1797 images (computed once from the embedded file).
pub const DIGITS_MEAN: f32 = 0.3053;
/// UCI digits: standard deviation of pixel/16 over all 1797 images.
pub const DIGITS_STD: f32 = 0.3760;
/// CIFAR-10: per-channel (R, G, B) mean of pixel/255 over the training set.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10: per-channel (R, G, B) standard deviation of pixel/255 over the training set.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// How raw pixels become model inputs: `x = (pixel / max_value - mean[c]) / std[c]`.
/// Saved with a model so inference normalizes exactly as training did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// The largest raw pixel value (255 for 8-bit images, 16 for the UCI digits).
    pub max_value: f32,
    /// Per-channel mean of `pixel / max_value`.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of `pixel / max_value` (all > 0).
    pub std: Vec<f32>,
}

impl Normalization {
    /// Checks the values: one mean and std per channel, finite, std > 0, max_value > 0.
    pub fn new(max_value: f32, mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        let n = Normalization { max_value, mean, std };
        n.validate()?;
        Ok(n)
    }
    /// The checks of [`Normalization::new`] (the fields are public, so users of a value that
    /// may have been built by hand call this before indexing by channel).
    pub fn validate(&self) -> Result<()> {
        let (mean, std, max_value) = (&self.mean, &self.std, self.max_value);
        if mean.is_empty() || mean.len() != std.len() {
            return Err(WqatError::invalid(format!(
                "normalization needs one mean and one std per channel (got {} and {})",
                mean.len(),
                std.len()
            )));
        }
        let finite = mean.iter().chain(std).all(|v| v.is_finite());
        if !(max_value.is_finite() && max_value > 0.0 && finite) || std.iter().any(|&s| s <= 0.0) {
            return Err(WqatError::invalid(format!(
                "normalization must be finite with max_value > 0 and std > 0 (max {max_value}, mean {mean:?}, std {std:?})"
            )));
        }
        Ok(())
    }
    /// MNIST / IDX data: pixel/255, mean 0.1307, std 0.3081.
    pub fn mnist() -> Self {
        Normalization { max_value: 255.0, mean: vec![MNIST_MEAN], std: vec![MNIST_STD] }
    }
    /// UCI digits: pixel/16, mean 0.3053, std 0.3760.
    pub fn digits() -> Self {
        Normalization { max_value: 16.0, mean: vec![DIGITS_MEAN], std: vec![DIGITS_STD] }
    }
    /// CIFAR-10: pixel/255 with the per-channel constants above.
    pub fn cifar10() -> Self {
        Normalization { max_value: 255.0, mean: CIFAR10_MEAN.to_vec(), std: CIFAR10_STD.to_vec() }
    }
    /// One channel left as it is (max_value 1, mean 0, std 1): what text data sets carry, whose
    /// values are token ids that nothing may normalize.
    pub fn identity() -> Self {
        Normalization { max_value: 1.0, mean: vec![0.0], std: vec![1.0] }
    }
    /// Number of channels it applies to.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }
    /// The normalized value of a raw pixel (panics if `channel >= channels()` or the value
    /// was built by hand with fewer stds than means; see [`Normalization::validate`]).
    pub fn apply(&self, channel: usize, pixel: f32) -> f32 {
        (pixel / self.max_value - self.mean[channel]) / self.std[channel]
    }
    /// The normalized value of a zero pixel in `channel` (what padding fills with).
    pub fn zero_value(&self, channel: usize) -> f32 {
        self.apply(channel, 0.0)
    }
    /// Normalizes raw u8 images laid out NCHW with `hw` pixels per channel plane.
    pub fn apply_u8(&self, pixels: &[u8], hw: usize) -> Result<Vec<f32>> {
        self.validate()?;
        let c = self.channels();
        if hw == 0 || !pixels.len().is_multiple_of(c * hw) {
            return Err(WqatError::shape(format!(
                "{} pixels are not a whole number of {c}x{hw}-pixel images",
                pixels.len()
            )));
        }
        let lut: Vec<[f32; 256]> = (0..c).map(|ch| std::array::from_fn(|p| self.apply(ch, p as f32))).collect();
        let mut out = Vec::with_capacity(pixels.len());
        for image in pixels.chunks_exact(c * hw) {
            for (plane, table) in image.chunks_exact(hw).zip(&lut) {
                out.extend(plane.iter().map(|&p| table[p as usize]));
            }
        }
        Ok(out)
    }
}

/// One split (train or test): `len()` images of `image_len()` f32 values each, NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    images: Vec<f32>,
    labels: Vec<u8>,
    image_len: usize,
}

impl Split {
    /// Checks that `images` holds exactly `labels.len()` images of `image_len` values.
    pub fn new(images: Vec<f32>, labels: Vec<u8>, image_len: usize) -> Result<Self> {
        if image_len == 0 || Some(images.len()) != labels.len().checked_mul(image_len) {
            return Err(WqatError::shape(format!(
                "split holds {} values for {} labels of {image_len} values each",
                images.len(),
                labels.len()
            )));
        }
        Ok(Split { images, labels, image_len })
    }
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Values per image (c*h*w).
    pub fn image_len(&self) -> usize {
        self.image_len
    }
    /// All images, contiguous f32 [N, C, H, W].
    pub fn images(&self) -> &[f32] {
        &self.images
    }
    /// All labels, `[N]`.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// Image `i` ([C, H, W]), or None past the end.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        let start = i.checked_mul(self.image_len)?;
        self.images.get(start..start.checked_add(self.image_len)?)
    }
    /// Splits off a validation split of `round(fraction * len)` images chosen by a seeded
    /// shuffle; returns (the rest, in their stored order; the validation images). Both keep
    /// at least one image.
    pub fn split_off_validation(&self, fraction: f32, seed: u64) -> Result<(Split, Split)> {
        let n = self.len();
        let k = (fraction as f64 * n as f64).round() as usize;
        if !(fraction > 0.0 && fraction < 1.0) || k == 0 || k >= n {
            return Err(WqatError::invalid(format!(
                "validation fraction {fraction} of {n} training images leaves an empty split"
            )));
        }
        let order = super::epoch_order(n, seed, 0);
        let mut is_val = vec![false; n];
        order[..k].iter().for_each(|&i| is_val[i] = true);
        let pick = |want: bool| -> Result<Split> {
            let idx: Vec<usize> = (0..n).filter(|&i| is_val[i] == want).collect();
            let images = idx.iter().flat_map(|&i| self.images[i * self.image_len..][..self.image_len].iter().copied());
            Split::new(images.collect(), idx.iter().map(|&i| self.labels[i]).collect(), self.image_len)
        };
        Ok((pick(false)?, pick(true)?))
    }
    /// The first `n` images (all of them when `n >= len`).
    pub fn truncated(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            images: self.images[..n * self.image_len].to_vec(),
            labels: self.labels[..n].to_vec(),
            image_len: self.image_len,
        }
    }
}

/// A data set: a train and a test split of normalized f32 NCHW images with u8 labels, or, for
/// text ([`Dataset::text`] is Some), of token-id sequences stored as f32 integers.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Short name: `digits`, `mnist`, `cifar10`, or the image or text folder's directory name.
    pub name: String,
    /// Image shape (channels, height, width); `(1, 1, max_len)` for text.
    pub shape: (usize, usize, usize),
    /// Number of classes; every label is below it.
    pub num_classes: usize,
    /// One name per class (digits for the digit sets, CIFAR's class names, folder names).
    pub class_names: Vec<String>,
    /// The normalization applied to the raw pixels ([`Normalization::identity`] for text,
    /// whose ids are never normalized).
    pub norm: Normalization,
    /// Training split (shared with batchers without copying).
    pub train: Arc<Split>,
    /// Test split.
    pub test: Arc<Split>,
    /// For a text data set, how its samples were encoded into token ids (None for images).
    /// Text sets are never augmented (see [`super::Batcher::train`]).
    pub text: Option<TextEncoding>,
}

/// Raw u8 pixels (NCHW) and labels of one split, before normalization.
pub(crate) struct RawSplit {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Builds a data set from raw u8 NCHW pixels, checking labels against `class_names.len()`
    /// and pixel counts against `shape`.
    pub(crate) fn from_raw(
        name: &str,
        shape: (usize, usize, usize),
        class_names: Vec<String>,
        norm: Normalization,
        train: RawSplit,
        test: RawSplit,
    ) -> Result<Self> {
        let (c, h, w) = shape;
        if c != norm.channels() {
            return Err(WqatError::shape(format!("{c} channels but normalization for {}", norm.channels())));
        }
        let num_classes = class_names.len();
        let mut splits = Vec::with_capacity(2);
        for (which, raw) in [("train", train), ("test", test)] {
            if let Some((i, &l)) = raw.labels.iter().enumerate().find(|(_, &l)| l as usize >= num_classes) {
                return Err(bad(format!("{which} label {i} is {l}, out of range for {num_classes} classes")));
            }
            let images = norm.apply_u8(&raw.pixels, h * w)?;
            splits.push(Arc::new(Split::new(images, raw.labels, c * h * w)?));
        }
        let test = splits.pop().ok_or_else(|| WqatError::shape("missing test split"))?;
        let train = splits.pop().ok_or_else(|| WqatError::shape("missing train split"))?;
        Ok(Dataset { name: name.to_string(), shape, num_classes, class_names, norm, train, test, text: None })
    }
    /// Values per image (c*h*w).
    pub fn image_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }
    /// True for a text data set.
    pub fn is_text(&self) -> bool {
        self.text.is_some()
    }
    /// One line: name, shape, classes and split sizes.
    pub fn summary(&self) -> String {
        if let Some(enc) = &self.text {
            return format!(
                "{}: {} classes, {} train / {} test sequences of at most {} tokens",
                self.name,
                self.num_classes,
                self.train.len(),
                self.test.len(),
                enc.max_len
            );
        }
        let (c, h, w) = self.shape;
        format!(
            "{}: {}x{}x{} images, {} classes, {} train / {} test",
            self.name,
            c,
            h,
            w,
            self.num_classes,
            self.train.len(),
            self.test.len()
        )
    }
}

/// Class names "0".."n-1".
pub(crate) fn numeric_classes(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}
