//! The UCI optical-recognition digits (8x8, 1797 images, 10 classes), embedded as the default.

use super::batcher::shuffle;
use super::dataset::{numeric_classes, RawSplit};
use super::{bad, maybe_gunzip, Dataset, Normalization};
use crate::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `assets/digits.csv.gz` (CC BY 4.0, see assets/README.md): 1797 rows of 64 pixel values
/// (0..16, 8x8 row-major) then the label.
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../assets/digits.csv.gz");

/// Seed of the fixed train/test split of the digits (see [`Dataset::digits`]).
pub const DIGITS_SPLIT_SEED: u64 = 1797;

const PIXELS: usize = 64;

/// Parses the digits CSV (gzipped or not): returns the pixels (0..16, N x 64) and labels (0..9).
/// Each non-empty line must hold exactly 65 integers.
pub fn parse_digits_csv(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let data = maybe_gunzip(bytes)?;
    let text = std::str::from_utf8(&data).map_err(|e| bad(format!("digits CSV is not UTF-8 text: {e}")))?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = 0usize;
        for (i, field) in line.split(',').enumerate() {
            fields += 1;
            if i > PIXELS {
                continue;
            }
            let v: u8 = field.trim().parse().map_err(|_| {
                bad(format!("digits CSV line {}: field {} is {field:?}, not an integer 0..16", n + 1, i + 1))
            })?;
            if i < PIXELS && v > 16 {
                return Err(bad(format!("digits CSV line {}: pixel {} is {v}, over 16", n + 1, i + 1)));
            }
            if i == PIXELS {
                if v > 9 {
                    return Err(bad(format!("digits CSV line {}: label {v} out of range 0..9", n + 1)));
                }
                labels.push(v);
            } else {
                pixels.push(v);
            }
        }
        if fields != PIXELS + 1 {
            return Err(bad(format!("digits CSV line {}: {fields} fields, want 65 (64 pixels and a label)", n + 1)));
        }
    }
    if labels.is_empty() {
        return Err(bad("digits CSV holds no rows"));
    }
    Ok((pixels, labels))
}

impl Dataset {
    /// The embedded UCI digits: 1x8x8 images, 10 classes, pixel/16 normalized with
    /// [`super::DIGITS_MEAN`]/[`super::DIGITS_STD`]. Split: the row indices 0..1797 are shuffled
    /// with ChaCha8 seeded by [`DIGITS_SPLIT_SEED`] (Fisher-Yates, see [`super::epoch_order`]);
    /// the first 1797/5 = 359 become the test split, the other 1438 the train split, each kept
    /// in file order.
    pub fn digits() -> Result<Dataset> {
        let (pixels, labels) = parse_digits_csv(DIGITS_CSV_GZ)?;
        let n = labels.len();
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, &mut ChaCha8Rng::seed_from_u64(DIGITS_SPLIT_SEED));
        let mut is_test = vec![false; n];
        for &i in &order[..n / 5] {
            is_test[i] = true;
        }
        let mut train = RawSplit { pixels: Vec::new(), labels: Vec::new() };
        let mut test = RawSplit { pixels: Vec::new(), labels: Vec::new() };
        for (i, (image, &label)) in pixels.chunks_exact(PIXELS).zip(&labels).enumerate() {
            let split = if is_test[i] { &mut test } else { &mut train };
            split.pixels.extend_from_slice(image);
            split.labels.push(label);
        }
        Dataset::from_raw("digits", (1, 8, 8), numeric_classes(10), Normalization::digits(), train, test)
    }
}
