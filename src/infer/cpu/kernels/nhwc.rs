//! Channels-last (`[batch][h][w][c]`) u8 helpers of the fast CPU executor: layout
//! transposes and pooling with the semantics of [`super::scalar`] (max pool ignores
//! padding; average pool as `crate::infer::cpu::avg_pool_codes`: divisor `kh * kw`,
//! in-bounds sum). Channels are contiguous, so the inner loops vectorize.

use crate::error::{Result, WqatError};
use crate::infer::ops::AvgRequant;

/// `[batch][c][hw]` -> `[batch][hw][c]`.
pub fn nchw_to_hwc(x: &[u8], batch: usize, c: usize, hw: usize, out: &mut [u8]) {
    for b in 0..batch {
        let (src, dst) = (&x[b * hw * c..][..hw * c], &mut out[b * hw * c..][..hw * c]);
        for ch in 0..c {
            for p in 0..hw {
                dst[p * c + ch] = src[ch * hw + p];
            }
        }
    }
}

/// Geometry of a channels-last pooling window.
#[derive(Debug, Clone, Copy)]
pub struct PoolGeom {
    pub batch: usize,
    /// `[c, h, w]` of the input.
    pub chw: [usize; 3],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub out_hw: [usize; 2],
}

impl PoolGeom {
    fn check(&self, x: usize, out: usize) -> Result<()> {
        let [c, h, w] = self.chw;
        let [oh, ow] = self.out_hw;
        if x != self.batch * c * h * w || out != self.batch * c * oh * ow {
            return Err(WqatError::shape(format!("channels-last pool of {x} -> {out} codes for {self:?}")));
        }
        Ok(())
    }
    /// In-bounds input ranges `(ys, xs)` of output pixel `(oy, ox)`.
    fn window(&self, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let [_, h, w] = self.chw;
        let r = |o: usize, d: usize, size: usize| {
            let a = (o * self.stride[d]) as isize - self.padding[d] as isize;
            a.max(0) as usize..((a + self.kernel[d] as isize).min(size as isize)).max(0) as usize
        };
        (r(oy, 0, h), r(ox, 1, w))
    }
}

/// Max pool of channels-last codes.
pub fn max_pool_hwc(g: &PoolGeom, x: &[u8], out: &mut [u8]) -> Result<()> {
    g.check(x.len(), out.len())?;
    let [c, h, w] = g.chw;
    let [oh, ow] = g.out_hw;
    if g.padding == [0, 0] && c.is_multiple_of(16) {
        // Every window inside: 16 channels at a time in registers.
        let [kh, kw] = g.kernel;
        for (b, o) in out.chunks_exact_mut(oh * ow * c).enumerate().take(g.batch) {
            let img = &x[b * h * w * c..][..h * w * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    let first = (oy * g.stride[0] * w + ox * g.stride[1]) * c;
                    for ch in (0..c).step_by(16) {
                        let mut m = [0u8; 16];
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let v: &[u8; 16] = img[first + (ky * w + kx) * c + ch..][..16].try_into().unwrap();
                                m.iter_mut().zip(v).for_each(|(a, &b)| *a = (*a).max(b));
                            }
                        }
                        o[(oy * ow + ox) * c + ch..][..16].copy_from_slice(&m);
                    }
                }
            }
        }
        return Ok(());
    }
    for b in 0..g.batch {
        let img = &x[b * h * w * c..][..h * w * c];
        for oy in 0..oh {
            for ox in 0..ow {
                let o = &mut out[((b * oh + oy) * ow + ox) * c..][..c];
                o.fill(0);
                let (ys, xs) = g.window(oy, ox);
                for y in ys {
                    for xx in xs.clone() {
                        max_into(o, &img[(y * w + xx) * c..][..c]);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Average pool of channels-last codes: per channel `rq.apply(sum, count, divisor(kh * kw))`
/// over the in-bounds window (the divisor is always `kh * kw`).
pub fn avg_pool_hwc(g: &PoolGeom, rq: &AvgRequant, x: &[u8], out: &mut [u8]) -> Result<()> {
    g.check(x.len(), out.len())?;
    rq.validate()?;
    let m = rq.divisor(g.kernel[0] * g.kernel[1])?;
    let [c, h, w] = g.chw;
    let [oh, ow] = g.out_hw;
    let mut sum = vec![0i32; c];
    for b in 0..g.batch {
        let img = &x[b * h * w * c..][..h * w * c];
        for oy in 0..oh {
            for ox in 0..ow {
                sum.fill(0);
                let (ys, xs) = g.window(oy, ox);
                let count = (ys.len() * xs.len()) as i32;
                for y in ys {
                    for xx in xs.clone() {
                        let v = &img[(y * w + xx) * c..][..c];
                        sum.iter_mut().zip(v).for_each(|(a, &b)| *a += b as i32);
                    }
                }
                let o = &mut out[((b * oh + oy) * ow + ox) * c..][..c];
                o.iter_mut().zip(&sum).for_each(|(o, &s)| *o = rq.apply(s, count, m));
            }
        }
    }
    Ok(())
}

/// `o[i] = max(o[i], v[i])`, 16 lanes at a time.
fn max_into(o: &mut [u8], v: &[u8]) {
    let mut oc = o.chunks_exact_mut(16);
    let mut vc = v.chunks_exact(16);
    for (a, b) in (&mut oc).zip(&mut vc) {
        for (a, &b) in a.iter_mut().zip(b) {
            *a = (*a).max(b);
        }
    }
    for (a, &b) in oc.into_remainder().iter_mut().zip(vc.remainder()) {
        *a = (*a).max(b);
    }
}
