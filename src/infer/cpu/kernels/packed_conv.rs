//! Conv2d on the pair kernels of [`super::gemm`], packed once per layer, without im2col.
//!
//! The input is stored padded, channels last, as `x - z_x` in i16: `[batch][h + 2 ph][w +
//! 2 pw][cp]` (zeros in the padding, so padded taps add nothing). Each output position is
//! a GEMM row whose reduction steps are fixed offsets from the position's top-left input
//! pixel: one step per (tap, pair of input channels), or for a single-channel input one
//! step per pair of horizontally adjacent taps. Outputs are channels last,
//! `[batch][oh][ow][c_out]`.

use super::gemm::{widen_sub, PackedGemm, Step};
use super::simd::SimdKernel;
use crate::error::{Result, WqatError};
use crate::infer::ops::Conv2dConfig;
use crate::infer::requant::Requant;

/// A conv layer packed for the pair kernels (geometry without the batch size).
#[derive(Debug, Clone)]
pub struct PackedConv {
    pub cfg: Conv2dConfig,
    pub oh: usize,
    pub ow: usize,
    hp: usize,
    wp: usize,
    /// Channels stored per input group (`cin_g`, rounded up to even unless it is the only
    /// channel), and per pixel.
    cin_gp: usize,
    cp: usize,
    groups: Vec<PackedGemm>,
    /// Offset of output position `oy * ow + ox`'s first input pixel in one image.
    pos_base: Vec<usize>,
    /// The same for the four positions of every 2x2 max-pool window (`oh / 2 * ow / 2`).
    pool_base: Vec<[usize; 4]>,
}

impl PackedConv {
    /// Bytes of the packed weight panels (i16 per code: the pair kernels' `vpmaddwd` operand).
    pub fn weight_bytes(&self) -> usize {
        self.groups.iter().map(PackedGemm::weight_bytes).sum()
    }

    /// Packs `w` (`[c_out, c_in / g, kh, kw]`), `bias` and `rq` for `cfg` (its `batch` is
    /// ignored; `x_zero` is the input zero point every call uses).
    pub fn new(cfg: &Conv2dConfig, w: &[i8], bias: &[i32], rq: &Requant) -> Result<Self> {
        let c1 = Conv2dConfig { batch: 1, ..*cfg };
        c1.validate(c1.c_in * c1.h * c1.w, w.len(), bias.len(), c1.out_len()?)?;
        rq.validate(c1.c_out)?;
        let (oh, ow) = c1.out_hw()?;
        let (cin_g, cout_g, k) = (c1.cin_g(), c1.cout_g(), c1.k());
        let [kh, kw] = c1.kernel;
        let [dh, dw] = c1.dilation;
        let (hp, wp) = (c1.h + 2 * c1.padding[0], c1.w + 2 * c1.padding[1]);
        let single = c1.groups == 1 && cin_g == 1;
        let cin_gp = if single { 1 } else { cin_g.div_ceil(2) * 2 };
        let cp = c1.groups * cin_gp;
        let mut steps = Vec::new();
        for ky in 0..kh {
            let row = ky * dh * wp;
            if single {
                let mut kx = 0;
                while kx < kw {
                    let pair = dw == 1 && kx + 1 < kw;
                    let second = pair.then(|| (ky * kw + kx + 1) as u32);
                    steps.push(Step { off: (row + kx * dw) as u32, k: [Some((ky * kw + kx) as u32), second] });
                    kx += if pair { 2 } else { 1 };
                }
            } else {
                for kx in 0..kw {
                    for ci in (0..cin_g).step_by(2) {
                        let idx = |ci: usize| (ci < cin_g).then(|| ((ci * kh + ky) * kw + kx) as u32);
                        steps.push(Step { off: ((row + kx * dw) * cp + ci) as u32, k: [idx(ci), idx(ci + 1)] });
                    }
                }
            }
        }
        let groups = (0..c1.groups)
            .map(|g| {
                let ch0 = g * cout_g;
                PackedGemm::new(&steps, cout_g, |c, kk| w[(ch0 + c) * k + kk], bias, rq, ch0)
            })
            .collect();
        let [sh, sw] = c1.stride;
        let pos_base: Vec<usize> = (0..oh * ow).map(|p| ((p / ow) * sh * wp + (p % ow) * sw) * cp).collect();
        let (ph, pw) = (oh / 2, ow / 2);
        let pool_base = (0..ph * pw)
            .map(|p| {
                let (y, x) = (2 * (p / pw), 2 * (p % pw));
                [y * ow + x, y * ow + x + 1, (y + 1) * ow + x, (y + 1) * ow + x + 1].map(|q| pos_base[q])
            })
            .collect();
        Ok(PackedConv { cfg: c1, oh, ow, hp, wp, cin_gp, cp, groups, pos_base, pool_base })
    }

    fn image_len(&self) -> usize {
        self.hp * self.wp * self.cp
    }

    /// Length of the padded input of `batch` images (plus slack for the last pair read).
    pub fn input_len(&self, batch: usize) -> usize {
        batch * self.image_len() + 2
    }

    /// Output rows (positions) of `batch` images.
    pub fn rows(&self, batch: usize) -> usize {
        batch * self.oh * self.ow
    }

    /// Sizes `dst` for `batch` images. Only the interior is ever written, so a buffer this
    /// layer already used (same length) keeps its zero padding and is not cleared again;
    /// a buffer of another length is zeroed.
    fn prepare(&self, x_len: usize, batch: usize, dst: &mut Vec<i16>) -> Result<()> {
        let c = &self.cfg;
        if x_len != batch * c.c_in * c.h * c.w {
            return Err(WqatError::shape(format!("packed conv input of {x_len} codes for {batch} images of {c:?}")));
        }
        if dst.len() != self.input_len(batch) {
            dst.clear();
            dst.resize(self.input_len(batch), 0);
        }
        Ok(())
    }

    /// Loads channels-last codes `[batch][h][w][c_in]` into the padded input (`dst`: a
    /// fresh buffer, or one only this layer's loads wrote).
    pub fn load_hwc(&self, x: &[u8], batch: usize, dst: &mut Vec<i16>) -> Result<()> {
        self.prepare(x.len(), batch, dst)?;
        let c = &self.cfg;
        let cin_g = c.cin_g();
        if c.groups == 1 && self.cin_gp == c.c_in {
            // Whole image rows at once.
            let n = c.w * c.c_in;
            for b in 0..batch {
                for y in 0..c.h {
                    let d0 = ((b * self.hp + y + c.padding[0]) * self.wp + c.padding[1]) * self.cp;
                    widen_sub(&x[(b * c.h + y) * n..][..n], c.x_zero, &mut dst[d0..d0 + n]);
                }
            }
            return Ok(());
        }
        for b in 0..batch {
            for y in 0..c.h {
                for xx in 0..c.w {
                    let src = &x[((b * c.h + y) * c.w + xx) * c.c_in..][..c.c_in];
                    let d0 = ((b * self.hp + y + c.padding[0]) * self.wp + xx + c.padding[1]) * self.cp;
                    for g in 0..c.groups {
                        let d = &mut dst[d0 + g * self.cin_gp..][..cin_g];
                        widen_sub(&src[g * cin_g..(g + 1) * cin_g], c.x_zero, d);
                    }
                }
            }
        }
        Ok(())
    }

    /// Loads NCHW codes `[batch][c_in][h][w]` into the padded input (`dst` as for
    /// [`PackedConv::load_hwc`]).
    pub fn load_nchw(&self, x: &[u8], batch: usize, dst: &mut Vec<i16>) -> Result<()> {
        self.prepare(x.len(), batch, dst)?;
        let c = &self.cfg;
        let cin_g = c.cin_g();
        for b in 0..batch {
            for ci in 0..c.c_in {
                let slot = (ci / cin_g) * self.cin_gp + ci % cin_g;
                for y in 0..c.h {
                    let src = &x[((b * c.c_in + ci) * c.h + y) * c.w..][..c.w];
                    let d0 = ((b * self.hp + y + c.padding[0]) * self.wp + c.padding[1]) * self.cp + slot;
                    for (xx, &v) in src.iter().enumerate() {
                        dst[d0 + xx * self.cp] = v as i16 - c.x_zero as i16;
                    }
                }
            }
        }
        Ok(())
    }

    /// Output rows `rows` (position `(b * oh + oy) * ow + ox`) of the loaded input into
    /// `out`, channels last, the slice starting at row `rows.start`.
    pub fn run(&self, kernel: SimdKernel, xp: &[i16], rows: std::ops::Range<usize>, out: &mut [u8]) -> Result<()> {
        let c = &self.cfg;
        let (ohw, img) = (self.oh * self.ow, self.image_len());
        let (r0, c_out, cout_g) = (rows.start, c.c_out, c.cout_g());
        // Image by image (no division per row).
        let mut lo = rows.start;
        while lo < rows.end {
            let b = lo / ohw;
            let hi = rows.end.min((b + 1) * ohw);
            let pb = &self.pos_base[..];
            for (g, p) in self.groups.iter().enumerate() {
                let x0 = b * img + g * self.cin_gp;
                let (first, o0) = (b * ohw, g * cout_g);
                p.run(kernel, xp, lo..hi, |r| x0 + pb[r - first], out, |r| (r - r0) * c_out + o0)?;
            }
            lo = hi;
        }
        Ok(())
    }

    /// Rows of the conv followed by a 2x2 stride-2 max pool without padding (`oh / 2 x ow /
    /// 2` outputs per image; row `(b * oh / 2 + py) * (ow / 2) + px`), channels last, into
    /// `out` starting at row `rows.start`. Equal to the conv then the pool: the pool takes
    /// the max of the four accumulators (bias added) and requantizes it once.
    pub fn run_pool2(
        &self,
        kernel: SimdKernel,
        xp: &[i16],
        rows: std::ops::Range<usize>,
        out: &mut [u8],
    ) -> Result<()> {
        let c = &self.cfg;
        let (per, img) = (self.pool_base.len(), self.image_len());
        let (r0, c_out, cout_g) = (rows.start, c.c_out, c.cout_g());
        let mut lo = rows.start;
        while lo < rows.end {
            let b = lo / per;
            let hi = rows.end.min((b + 1) * per);
            let pb = &self.pool_base[..];
            for (g, p) in self.groups.iter().enumerate() {
                let x0 = b * img + g * self.cin_gp;
                let (first, o0) = (b * per, g * cout_g);
                let b4 = &pb[lo - first..hi - first];
                p.run_pool4(kernel, xp, x0, b4, out, (lo - r0) * c_out + o0, c_out)?;
            }
            lo = hi;
        }
        Ok(())
    }

    /// Pooled rows of `batch` images for [`PackedConv::run_pool2`].
    pub fn pooled_rows(&self, batch: usize) -> usize {
        batch * self.pool_base.len()
    }
}
