//! CPU references for the conv kernels (`shaders/conv*.wgsl`): plain loops over NCHW
//! tensors in f64. Each returns the result and, where it is a reduction, the sum of the
//! absolute values of the terms of every element (the yardstick for
//! `testing::assert_close_scaled`). Fake-quant and STE masks are applied by the caller with
//! `reference::fake_quant`, so these define the plain convolution only.

use crate::kernels::conv::Conv2dGeom;

/// Calls `f(kh, kw, ih, iw)` for every tap of output `(oh, ow)` that reads an input
/// position (taps on padding are skipped).
fn taps(cfg: &Conv2dGeom, oh: usize, ow: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let (h, w) = (cfg.h as isize, cfg.w as isize);
    for kh in 0..cfg.kh {
        let ih = (oh * cfg.stride.0 + kh * cfg.dilation.0) as isize - cfg.padding.0 as isize;
        if ih < 0 || ih >= h {
            continue;
        }
        for kw in 0..cfg.kw {
            let iw = (ow * cfg.stride.1 + kw * cfg.dilation.1) as isize - cfg.padding.1 as isize;
            if iw < 0 || iw >= w {
                continue;
            }
            f(kh, kw, ih as usize, iw as usize);
        }
    }
}

/// `y[n, co, oh, ow] = sum_{ci, kh, kw} w[co, ci, kh, kw] * x[n, g*cin_g + ci, ih, iw]`
/// (+ bias[co]), in f64; returns (y, sum of |terms|). No ReLU.
pub fn conv2d_forward_f64(cfg: &Conv2dGeom, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let (oh_n, ow_n) = cfg.out_size();
    let (cin_g, cout_g) = (cfg.c_in / cfg.groups, cfg.c_out / cfg.groups);
    let mut y = vec![0.0; cfg.n * cfg.c_out * oh_n * ow_n];
    let mut scale = vec![0.0; y.len()];
    for n in 0..cfg.n {
        for co in 0..cfg.c_out {
            let g = co / cout_g;
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let (mut acc, mut abs) = (0.0, 0.0);
                    if let Some(b) = bias {
                        acc = b[co];
                        abs = b[co].abs();
                    }
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        taps(cfg, oh, ow, |kh, kw, ih, iw| {
                            let t = w[((co * cin_g + ci) * cfg.kh + kh) * cfg.kw + kw]
                                * x[((n * cfg.c_in + c) * cfg.h + ih) * cfg.w + iw];
                            acc += t;
                            abs += t.abs();
                        });
                    }
                    let i = ((n * cfg.c_out + co) * oh_n + oh) * ow_n + ow;
                    y[i] = acc;
                    scale[i] = abs;
                }
            }
        }
    }
    (y, scale)
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// f32 wrapper of [`conv2d_forward_f64`] with the optional ReLU applied to y (not to the scale).
pub fn conv2d_forward(
    cfg: &Conv2dGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> (Vec<f32>, Vec<f32>) {
    let b = bias.map(to64);
    let (y, s) = conv2d_forward_f64(cfg, &to64(x), &to64(w), b.as_deref());
    let y = y.iter().map(|&v| if relu { v.max(0.0) } else { v }).collect::<Vec<_>>();
    (to32(&y), to32(&s))
}

/// Backward data: `dx[n, c, ih, iw] = sum over (co, kh, kw) reading (ih, iw) of
/// dy[n, co, oh, ow] * w[co, ci, kh, kw]`; returns (dx, sum of |terms|).
pub fn conv2d_backward_data(cfg: &Conv2dGeom, dy: &[f32], w: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (oh_n, ow_n) = cfg.out_size();
    let (cin_g, cout_g) = (cfg.c_in / cfg.groups, cfg.c_out / cfg.groups);
    let mut dx = vec![0.0f64; cfg.n * cfg.c_in * cfg.h * cfg.w];
    let mut scale = vec![0.0f64; dx.len()];
    for n in 0..cfg.n {
        for co in 0..cfg.c_out {
            let g = co / cout_g;
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let d = dy[((n * cfg.c_out + co) * oh_n + oh) * ow_n + ow] as f64;
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        taps(cfg, oh, ow, |kh, kw, ih, iw| {
                            let t = d * w[((co * cin_g + ci) * cfg.kh + kh) * cfg.kw + kw] as f64;
                            let i = ((n * cfg.c_in + c) * cfg.h + ih) * cfg.w + iw;
                            dx[i] += t;
                            scale[i] += t.abs();
                        });
                    }
                }
            }
        }
    }
    (to32(&dx), to32(&scale))
}

/// Backward weight: `dw[co, ci, kh, kw] = sum over (n, oh, ow) of dy[n, co, oh, ow] *
/// x[n, g*cin_g + ci, ih, iw]`; returns (dw, sum of |terms|).
pub fn conv2d_backward_weight(cfg: &Conv2dGeom, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (oh_n, ow_n) = cfg.out_size();
    let (cin_g, cout_g) = (cfg.c_in / cfg.groups, cfg.c_out / cfg.groups);
    let mut dw = vec![0.0f64; cfg.c_out * cin_g * cfg.kh * cfg.kw];
    let mut scale = vec![0.0f64; dw.len()];
    for n in 0..cfg.n {
        for co in 0..cfg.c_out {
            let g = co / cout_g;
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    let d = dy[((n * cfg.c_out + co) * oh_n + oh) * ow_n + ow] as f64;
                    for ci in 0..cin_g {
                        let c = g * cin_g + ci;
                        taps(cfg, oh, ow, |kh, kw, ih, iw| {
                            let t = d * x[((n * cfg.c_in + c) * cfg.h + ih) * cfg.w + iw] as f64;
                            let i = ((co * cin_g + ci) * cfg.kh + kh) * cfg.kw + kw;
                            dw[i] += t;
                            scale[i] += t.abs();
                        });
                    }
                }
            }
        }
    }
    (to32(&dw), to32(&scale))
}

/// Bias gradient: `db[co] = sum over (n, oh, ow) of dy[n, co, oh, ow]`; returns (db, sum |dy|).
pub fn conv2d_bias_grad(cfg: &Conv2dGeom, dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (oh_n, ow_n) = cfg.out_size();
    let ohw = oh_n * ow_n;
    let mut db = vec![0.0f64; cfg.c_out];
    let mut scale = vec![0.0f64; cfg.c_out];
    for n in 0..cfg.n {
        for co in 0..cfg.c_out {
            for &v in &dy[(n * cfg.c_out + co) * ohw..][..ohw] {
                db[co] += v as f64;
                scale[co] += (v as f64).abs();
            }
        }
    }
    (to32(&db), to32(&scale))
}
