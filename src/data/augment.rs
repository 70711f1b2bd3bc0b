//! Training-time augmentation: random crop after zero padding, then a random horizontal flip
//! (torchvision's `RandomCrop(size, padding)` + `RandomHorizontalFlip()` for CIFAR).

use super::batcher::below;
use crate::{Result, WqatError};
use rand::RngCore;

/// Which augmentation to apply; the crop keeps the image size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Zero padding on each side before the random crop (0: no crop).
    pub pad: usize,
    /// Flip horizontally with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// The CIFAR-10 standard: crop 32 after padding 4, and horizontal flips.
    pub fn cifar() -> Self {
        Augment { pad: 4, flip: true }
    }
    /// Draws the parameters for one image: exactly three u64 from `rng` whatever the settings,
    /// so per-image streams stay aligned.
    pub fn draw(&self, rng: &mut impl RngCore) -> AugmentParams {
        let span = 2 * self.pad + 1;
        let dx = below(rng, span);
        let dy = below(rng, span);
        let flip = rng.next_u64() >> 63 == 1;
        AugmentParams { dx, dy, flip: self.flip && flip }
    }
}

/// One image's draw: the crop's top-left corner in the padded image (0..=2*pad each) and
/// whether to flip. `dx == dy == pad` and no flip is the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AugmentParams {
    pub dx: usize,
    pub dy: usize,
    pub flip: bool,
}

/// Writes the augmented `src` ([C, H, W]) into `dst`: `dst[c][y][x] = padded[c][y + dy][x' + dx]`
/// with `x' = W-1-x` when flipping, where `padded` is `src` surrounded by `pad` pixels of
/// `fill[c]` (the normalized value of a zero pixel, so padding equals zero padding before
/// normalization). `dx`, `dy` must be at most `2 * pad`.
pub fn augment_image(
    src: &[f32],
    dst: &mut [f32],
    (c, h, w): (usize, usize, usize),
    fill: &[f32],
    pad: usize,
    p: AugmentParams,
) -> Result<()> {
    let n = c * h * w;
    if src.len() != n || dst.len() != n || fill.len() != c || p.dx > 2 * pad || p.dy > 2 * pad {
        return Err(WqatError::shape(format!(
            "augment: src {} / dst {} values for {c}x{h}x{w}, {} fill values, offsets ({}, {}) with pad {pad}",
            src.len(),
            dst.len(),
            fill.len(),
            p.dx,
            p.dy
        )));
    }
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let out = &mut dst[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            // Row y of the crop is row y + dy - pad of the source.
            let sy = (y + p.dy).checked_sub(pad).filter(|&sy| sy < h);
            for x in 0..w {
                let cx = if p.flip { w - 1 - x } else { x };
                let sx = (cx + p.dx).checked_sub(pad).filter(|&sx| sx < w);
                out[y * w + x] = match (sy, sx) {
                    (Some(sy), Some(sx)) => plane[sy * w + sx],
                    _ => fill[ch],
                };
            }
        }
    }
    Ok(())
}
