//! CPU reference for `shaders/histogram.wgsl` (PyTorch's HistogramObserver), in f32 with
//! the kernel's formulas; the search's error sum uses the kernel's reduction order.

use crate::kernels::histogram::{HEADER, SEARCH_STEP};
use crate::quant::QuantSpec;

/// The histogram state as the GPU keeps it (see `HistogramObserver::state`).
#[derive(Debug, Clone)]
pub struct HistState {
    pub v: Vec<f32>,
    pub bins: usize,
    pub upsample: usize,
}

impl HistState {
    pub fn new(bins: usize, upsample: usize) -> Self {
        HistState { v: vec![0.0; HEADER + bins], bins, upsample }
    }
    pub fn hist(&self) -> &[f32] {
        &self.v[HEADER..]
    }
    /// One batch: range update, re-binning, accumulation (no-op when `obs_on` is false).
    pub fn observe(&mut self, x: &[f32], obs_on: bool) {
        let (bins, up) = (self.bins, self.upsample);
        let h = &mut self.v;
        h[4] = if obs_on { 1.0 } else { 0.0 };
        if !obs_on {
            return;
        }
        let bmin = x.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let bmax = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let reset = h[6] == 0.0 || h[0] == h[1];
        let (nmin, nmax) = if reset { (bmin, bmax) } else { (h[0].min(bmin), h[1].max(bmax)) };
        let (lo, hi) = if nmin == nmax { (nmin - 1.0, nmax + 1.0) } else { (nmin, nmax) };
        h[2] = nmin;
        h[3] = nmax;
        h[5] = if reset { 1.0 } else { 0.0 };
        h[6] = 1.0;
        h[7] = lo;
        h[8] = hi;
        // Re-binned old histogram.
        let mut tmp = vec![0f32; bins];
        if !reset {
            let (cmin, cmax) = (h[0], h[1]);
            if cmin == nmin && cmax == nmax {
                tmp.copy_from_slice(&h[HEADER..]);
            } else {
                let fine_w = (cmax - cmin) * (1.0 / (bins * up) as f32);
                let new_w = (nmax - nmin) * (1.0 / bins as f32);
                let inv_up = 1.0 / up as f32;
                for k in 0..bins * up {
                    let mid = cmin + (k as f32 + 0.5) * fine_w;
                    let b = ((mid - nmin) / new_w).floor().clamp(0.0, (bins - 1) as f32) as usize;
                    tmp[b] += h[HEADER + k / up] * inv_up;
                }
            }
        }
        let mut counts = vec![0u32; bins];
        for &v in x {
            if v >= lo && v <= hi {
                let b = (((v - lo) / (hi - lo) * bins as f32) as u32).min(bins as u32 - 1);
                counts[b as usize] += 1;
            }
        }
        for j in 0..bins {
            h[HEADER + j] = counts[j] as f32 + tmp[j];
        }
        h[0] = nmin;
        h[1] = nmax;
    }
}

fn get_norm(db: f32, de: f32, density: f32) -> f32 {
    density * ((de * de * de - db * db * db) / 3.0)
}

/// Quantization-error estimate of one source bin (PyTorch's _compute_quantization_error).
fn bin_error(hist: &[f32], i: usize, ns: usize, bw: f32, dst_w: f32, dst: usize) -> f32 {
    let dmax = (dst - 1) as f32;
    let src_begin = (i as f32 - ns as f32) * bw;
    let src_end = src_begin + bw;
    let db = (src_begin / dst_w).floor().clamp(0.0, dmax);
    let db_center = (db + 0.5) * dst_w;
    let de = (src_end / dst_w).floor().clamp(0.0, dmax);
    let density = hist[i] / bw;
    let half_w = dst_w / 2.0;
    let mut norm = get_norm(src_begin - db_center, half_w, density);
    norm += (de - db - 1.0) * get_norm(-half_w, half_w, density);
    let de_center = de * dst_w + half_w;
    norm + get_norm(-half_w, src_end - de_center, density)
}

/// Sum in the kernel's order: 256 strided partial sums, then a halving tree.
fn wg_sum(vals: &[f32]) -> f32 {
    let mut part = [0f32; 256];
    for (t, p) in part.iter_mut().enumerate() {
        let mut i = t;
        while i < vals.len() {
            *p += vals[i];
            i += 256;
        }
    }
    let mut s = 128;
    while s > 0 {
        for t in 0..s {
            part[t] += part[t + s];
        }
        s /= 2;
    }
    part[0]
}

/// The L2 quantization-error estimate of keeping bins `[ns, ne]`.
pub fn quantization_error(hist: &[f32], min: f32, max: f32, ns: usize, ne: usize, dst: usize) -> f32 {
    let bins = hist.len();
    let bw = (max - min) * (1.0 / bins as f32);
    let dst_w = bw * (ne - ns + 1) as f32 * (1.0 / dst as f32);
    if dst_w == 0.0 {
        return 0.0;
    }
    let errs: Vec<f32> = (0..bins).map(|i| bin_error(hist, i, ns, bw, dst_w, dst)).collect();
    wg_sum(&errs)
}

/// PyTorch's _non_linear_param_search over the histogram on `[min, max]`: the chosen range.
pub fn search(hist: &[f32], min: f32, max: f32, spec: &QuantSpec) -> (f32, f32) {
    if min == max {
        return (min, max);
    }
    let bins = hist.len();
    let dst = (spec.qmax() - spec.qmin() + 1) as usize;
    let mut csum = vec![0f32; bins];
    let mut c = 0f32;
    for i in 0..bins {
        c += hist[i];
        csum[i] = c;
    }
    let total = csum[bins - 1];
    let bw = (max - min) * (1.0 / bins as f32);
    let (mut alpha, mut beta) = (0f32, 1f32);
    let (mut start, mut end) = (0usize, bins - 1);
    let mut norm_min = f32::INFINITY;
    while alpha < beta {
        let na = alpha + SEARCH_STEP;
        let nb = beta - SEARCH_STEP;
        let mut l = start;
        while l < end && csum[l] < na * total {
            l += 1;
        }
        let mut r = end;
        while r > start && csum[r] > nb * total {
            r -= 1;
        }
        let (mut ns, mut ne) = (start, end);
        if (l as i64 - start as i64) > (end as i64 - r as i64) {
            ns = l;
            alpha = na;
        } else {
            ne = r;
            beta = nb;
        }
        if ns == start && ne == end {
            continue;
        }
        let norm = quantization_error(hist, min, max, ns, ne, dst);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start = ns;
        end = ne;
    }
    (min + bw * start as f32, min + bw * (end + 1) as f32)
}
