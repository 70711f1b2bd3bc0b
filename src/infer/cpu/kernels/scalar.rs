//! The scalar reference: plain loops that define every int8 op. Accumulation is int32
//! with wrapping adds (`acc = sum_k (x - z_x) * w + bias`, mod 2^32), so every other path
//! that sums the same products in another order (or as `sum x*w - z_x * sum w`) matches bit
//! for bit even where a huge bias would wrap.

use crate::error::{Result, WqatError};
use crate::infer::ops::{AddConfig, AvgRequant, Conv2dConfig, LinearConfig, PoolConfig};
use crate::infer::requant::Requant;
use crate::infer::weights::PackedWeights;

/// Weight codes the kernels read one output channel's row at a time: int8 slices (borrowed)
/// or [`PackedWeights`] (unpacked row by row into a scratch row, never as a whole layer).
pub trait WeightRows {
    /// Number of codes.
    fn codes_len(&self) -> usize;
    /// Codes `start .. start + buf.len()`, borrowed or unpacked into `buf`.
    fn row<'a>(&'a self, start: usize, buf: &'a mut [i8]) -> &'a [i8];
}

impl WeightRows for [i8] {
    fn codes_len(&self) -> usize {
        self.len()
    }
    fn row<'a>(&'a self, start: usize, buf: &'a mut [i8]) -> &'a [i8] {
        &self[start..start + buf.len()]
    }
}

impl WeightRows for PackedWeights {
    fn codes_len(&self) -> usize {
        self.len()
    }
    fn row<'a>(&'a self, start: usize, buf: &'a mut [i8]) -> &'a [i8] {
        self.unpack_into(start, buf);
        buf
    }
}

/// `out[i, c] = requant_c(sum_k (x[i,k] - x_zero) * w[c,k] + bias[c])`.
pub fn linear(cfg: &LinearConfig, x: &[u8], w: &[i8], bias: &[i32], rq: &Requant, out: &mut [u8]) -> Result<()> {
    linear_rows(cfg, x, w, bias, rq, out)
}

/// [`linear`] reading packed weights (one channel row unpacked at a time).
pub fn linear_packed(
    cfg: &LinearConfig,
    x: &[u8],
    w: &PackedWeights,
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    linear_rows(cfg, x, w, bias, rq, out)
}

fn linear_rows<W: WeightRows + ?Sized>(
    cfg: &LinearConfig,
    x: &[u8],
    w: &W,
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    cfg.validate(x.len(), w.codes_len(), bias.len(), out.len())?;
    rq.validate(cfg.n)?;
    let mut buf = vec![0i8; cfg.k];
    for c in 0..cfg.n {
        let wr = w.row(c * cfg.k, &mut buf);
        for i in 0..cfg.m {
            let mut acc = bias[c];
            for k in 0..cfg.k {
                let xv = x[i * cfg.k + k] as i32 - cfg.x_zero;
                acc = acc.wrapping_add(xv * wr[k] as i32);
            }
            out[i * cfg.n + c] = rq.apply(acc, c);
        }
    }
    Ok(())
}

/// `acc[i, c] = sum_k (x[i,k] - x_zero) * w[c,k] + bias[c]` (wrapping int32): the
/// accumulators of a linear layer whose output leaves the integer domain (a transformer's
/// QKV, projections and GELU MLP input, dequantized by the caller).
pub fn linear_acc(cfg: &LinearConfig, x: &[u8], w: &[i8], bias: &[i32], acc: &mut [i32]) -> Result<()> {
    linear_acc_rows(cfg, x, w, bias, acc)
}

/// [`linear_acc`] reading packed weights (one channel row unpacked at a time).
pub fn linear_acc_packed(cfg: &LinearConfig, x: &[u8], w: &PackedWeights, bias: &[i32], acc: &mut [i32]) -> Result<()> {
    linear_acc_rows(cfg, x, w, bias, acc)
}

fn linear_acc_rows<W: WeightRows + ?Sized>(
    cfg: &LinearConfig,
    x: &[u8],
    w: &W,
    bias: &[i32],
    acc: &mut [i32],
) -> Result<()> {
    cfg.validate(x.len(), w.codes_len(), bias.len(), acc.len())?;
    let mut buf = vec![0i8; cfg.k];
    for c in 0..cfg.n {
        let wr = w.row(c * cfg.k, &mut buf);
        for i in 0..cfg.m {
            let row = &x[i * cfg.k..(i + 1) * cfg.k];
            // Sum of x*w minus z_x * sum of w: the same int32 value mod 2^32, in a form the
            // compiler vectorizes.
            let (mut xw, mut ws) = (0i32, 0i32);
            for (&xv, &wv) in row.iter().zip(wr) {
                xw = xw.wrapping_add(xv as i32 * wv as i32);
                ws = ws.wrapping_add(wv as i32);
            }
            acc[i * cfg.n + c] = bias[c].wrapping_add(xw).wrapping_sub(cfg.x_zero.wrapping_mul(ws));
        }
    }
    Ok(())
}

/// NCHW conv2d with stride, zero-point padding, dilation and groups.
pub fn conv2d(cfg: &Conv2dConfig, x: &[u8], w: &[i8], bias: &[i32], rq: &Requant, out: &mut [u8]) -> Result<()> {
    conv2d_rows(cfg, x, w, bias, rq, out)
}

/// [`conv2d`] reading packed weights (one output channel's row unpacked at a time).
pub fn conv2d_packed(
    cfg: &Conv2dConfig,
    x: &[u8],
    w: &PackedWeights,
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    conv2d_rows(cfg, x, w, bias, rq, out)
}

fn conv2d_rows<W: WeightRows + ?Sized>(
    cfg: &Conv2dConfig,
    x: &[u8],
    w: &W,
    bias: &[i32],
    rq: &Requant,
    out: &mut [u8],
) -> Result<()> {
    cfg.validate(x.len(), w.codes_len(), bias.len(), out.len())?;
    rq.validate(cfg.c_out)?;
    let (oh, ow) = cfg.out_hw()?;
    let (cin_g, cout_g) = (cfg.cin_g(), cfg.cout_g());
    let [kh, kw] = cfg.kernel;
    let k = cin_g * kh * kw;
    let mut buf = vec![0i8; k];
    for co in 0..cfg.c_out {
        let wr = w.row(co * k, &mut buf);
        for b in 0..cfg.batch {
            let g = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[co];
                    for ci in 0..cin_g {
                        let plane = (b * cfg.c_in + g * cin_g + ci) * cfg.h * cfg.w;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * cfg.stride[0] + ky * cfg.dilation[0]) as isize - cfg.padding[0] as isize;
                                let ix = (ox * cfg.stride[1] + kx * cfg.dilation[1]) as isize - cfg.padding[1] as isize;
                                let inside = iy >= 0 && ix >= 0 && (iy as usize) < cfg.h && (ix as usize) < cfg.w;
                                let xv = if inside {
                                    x[plane + iy as usize * cfg.w + ix as usize] as i32
                                } else {
                                    cfg.x_zero
                                };
                                let wv = wr[(ci * kh + ky) * kw + kx] as i32;
                                acc = acc.wrapping_add((xv - cfg.x_zero) * wv);
                            }
                        }
                    }
                    out[((b * cfg.c_out + co) * oh + oy) * ow + ox] = rq.apply(acc, co);
                }
            }
        }
    }
    Ok(())
}

/// Visits the in-bounds elements of every pooling window: `f(out_index, window values)`.
fn for_windows(cfg: &PoolConfig, x: &[u8], mut f: impl FnMut(usize, &mut dyn Iterator<Item = u8>)) -> Result<()> {
    let (oh, ow) = cfg.out_hw()?;
    for bc in 0..cfg.batch * cfg.channels {
        let plane = &x[bc * cfg.h * cfg.w..(bc + 1) * cfg.h * cfg.w];
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * cfg.stride[0]) as isize - cfg.padding[0] as isize;
                let x0 = (ox * cfg.stride[1]) as isize - cfg.padding[1] as isize;
                let ys = y0.max(0) as usize..((y0 + cfg.kernel[0] as isize).min(cfg.h as isize)) as usize;
                let xs = x0.max(0) as usize..((x0 + cfg.kernel[1] as isize).min(cfg.w as isize)) as usize;
                let mut it = ys.flat_map(|y| xs.clone().map(move |xx| plane[y * cfg.w + xx]));
                f((bc * oh + oy) * ow + ox, &mut it);
            }
        }
    }
    Ok(())
}

/// Max pool in the uint8 domain (same scale and zero point in and out; padding ignored).
pub fn max_pool(cfg: &PoolConfig, x: &[u8], out: &mut [u8]) -> Result<()> {
    cfg.validate(x.len(), out.len())?;
    for_windows(cfg, x, |o, it| out[o] = it.max().unwrap_or(0))
}

/// Average pool: integer sum of the in-bounds window, divided by `kh * kw` (padding counts
/// as zero-valued, as in the simulation; see [`AvgRequant`]).
pub fn avg_pool(cfg: &PoolConfig, rq: &AvgRequant, x: &[u8], out: &mut [u8]) -> Result<()> {
    cfg.validate(x.len(), out.len())?;
    rq.validate()?;
    let d = rq.divisor(cfg.kernel[0] * cfg.kernel[1])?;
    for_windows(cfg, x, |o, it| {
        let (mut sum, mut count) = (0i32, 0usize);
        for v in it {
            sum += v as i32;
            count += 1;
        }
        out[o] = rq.apply(sum, count as i32, d);
    })
}

/// Global average pool over `h x w` per (batch, channel): out `[batch, channels]`.
pub fn global_avg_pool(cfg: &PoolConfig, rq: &AvgRequant, x: &[u8], out: &mut [u8]) -> Result<()> {
    let g = PoolConfig::global(cfg.batch, cfg.channels, cfg.h, cfg.w);
    avg_pool(&g, rq, x, out)
}

/// Elementwise quantized add of two equally shaped u8 tensors (see [`AddConfig`]).
pub fn add(cfg: &AddConfig, a: &[u8], b: &[u8], out: &mut [u8]) -> Result<()> {
    if a.len() != b.len() || a.len() != out.len() || a.is_empty() {
        return Err(WqatError::shape(format!("int8 add of {} + {} into {}", a.len(), b.len(), out.len())));
    }
    for i in 0..a.len() {
        out[i] = cfg.apply(a[i], b[i]);
    }
    Ok(())
}
