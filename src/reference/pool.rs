//! CPU references for `shaders/pool.wgsl`: NCHW planes (`planes = N * C`), f64.

/// Pooling window geometry (ceil_mode off, as PyTorch's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dGeom {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
}

impl Pool2dGeom {
    /// Output height `(h + 2 ph - kh) / sh + 1`.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.sh + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.sw + 1
    }
    /// Valid input coordinates of the window of output (oy, ox).
    fn window(&self, oy: usize, ox: usize) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for ky in 0..self.kh {
            let iy = (oy * self.sh + ky) as isize - self.ph as isize;
            for kx in 0..self.kw {
                let ix = (ox * self.sw + kx) as isize - self.pw as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < self.h && (ix as usize) < self.w {
                    v.push((iy as usize, ix as usize));
                }
            }
        }
        v
    }
}

/// Max pool: (y, argmax) with argmax the plane-local index `iy * w + ix`; first max wins.
pub fn maxpool_forward(x: &[f64], g: &Pool2dGeom) -> (Vec<f64>, Vec<u32>) {
    let (oh, ow) = (g.oh(), g.ow());
    let mut y = Vec::new();
    let mut idx = Vec::new();
    for pl in 0..g.planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(f64, usize)> = None;
                for (iy, ix) in g.window(oy, ox) {
                    let v = x[pl * g.h * g.w + iy * g.w + ix];
                    if best.is_none_or(|(b, _)| v > b) {
                        best = Some((v, iy * g.w + ix));
                    }
                }
                let (b, i) = best.expect("window has a valid element");
                y.push(b);
                idx.push(i as u32);
            }
        }
    }
    (y, idx)
}

/// Max pool backward: scatters `dy` to the argmax (in output order).
pub fn maxpool_backward(dy: &[f64], argmax: &[u32], g: &Pool2dGeom) -> Vec<f64> {
    let (oh, ow) = (g.oh(), g.ow());
    let mut dx = vec![0.0; g.planes * g.h * g.w];
    for pl in 0..g.planes {
        for o in 0..oh * ow {
            dx[pl * g.h * g.w + argmax[pl * oh * ow + o] as usize] += dy[pl * oh * ow + o];
        }
    }
    dx
}

/// Average pool, count_include_pad: sum of the valid elements / (kh * kw).
pub fn avgpool_forward(x: &[f64], g: &Pool2dGeom) -> Vec<f64> {
    let (oh, ow) = (g.oh(), g.ow());
    let div = (g.kh * g.kw) as f64;
    let mut y = Vec::new();
    for pl in 0..g.planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let s: f64 = g.window(oy, ox).iter().map(|&(iy, ix)| x[pl * g.h * g.w + iy * g.w + ix]).sum();
                y.push(s / div);
            }
        }
    }
    y
}

/// Average pool backward: each output spreads `dy / (kh * kw)` over its window.
pub fn avgpool_backward(dy: &[f64], g: &Pool2dGeom) -> Vec<f64> {
    let (oh, ow) = (g.oh(), g.ow());
    let div = (g.kh * g.kw) as f64;
    let mut dx = vec![0.0; g.planes * g.h * g.w];
    for pl in 0..g.planes {
        for oy in 0..oh {
            for ox in 0..ow {
                for (iy, ix) in g.window(oy, ox) {
                    dx[pl * g.h * g.w + iy * g.w + ix] += dy[pl * oh * ow + oy * ow + ox] / div;
                }
            }
        }
    }
    dx
}

/// Global average pool `[planes, hw] -> [planes]`.
pub fn global_avgpool_forward(x: &[f64], planes: usize, hw: usize) -> Vec<f64> {
    (0..planes).map(|p| x[p * hw..(p + 1) * hw].iter().sum::<f64>() / hw as f64).collect()
}

/// Global average pool backward: `dx = dy[plane] / hw`.
pub fn global_avgpool_backward(dy: &[f64], planes: usize, hw: usize) -> Vec<f64> {
    (0..planes * hw).map(|i| dy[i / hw] / hw as f64).collect()
}
