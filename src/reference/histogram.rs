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

/// The chosen range of a percentile observer over the histogram on `[min, max]`, keeping
/// `fraction` (= percentile / 100) of the mass on each side: the upper end is the upper edge
/// of the first bin whose cumulative count reaches `fraction * total`, the lower end the
/// lower edge of the last bin whose count from the top reaches it. `fraction = 1` gives the
/// histogram's occupied range. (The kernel `hist_percentile` does the same in f32, serially.)
pub fn percentile_range(hist: &[f32], min: f32, max: f32, fraction: f32) -> (f32, f32) {
    if min == max {
        return (min, max);
    }
    let bins = hist.len();
    let total: f32 = hist.iter().fold(0.0, |a, &h| a + h);
    let thr = fraction * total;
    let mut c = 0f32;
    let mut end = bins - 1;
    for (i, &h) in hist.iter().enumerate() {
        c += h;
        if c >= thr {
            end = i;
            break;
        }
    }
    let mut c = 0f32;
    let mut start = 0;
    for i in (0..bins).rev() {
        c += hist[i];
        if c >= thr {
            start = i;
            break;
        }
    }
    let bw = (max - min) * (1.0 / bins as f32);
    (min + bw * start as f32, min + bw * (end + 1) as f32)
}

/// Clipping thresholds of the MSE search: candidate `k` (1..=MSE_GRID) is the observed range
/// (widened to include 0) scaled toward 0 by `k / MSE_GRID`.
pub const MSE_GRID: u32 = 128;

/// The candidate range `k` of the MSE search over a histogram on `[min, max]`.
pub fn mse_candidate(min: f32, max: f32, k: u32) -> (f32, f32) {
    let t = k as f32 / MSE_GRID as f32;
    (min.min(0.0) * t, max.max(0.0) * t)
}

/// `∫ (x - Q(x))^2` over one bin `[a, a + bw]` holding `h` values spread uniformly, where
/// `Q` rounds to the grid `{(k - z) s : qmin <= k <= qmax}` (values outside clip to its ends).
/// In-range part in grid units `t = x / s`: with `n = floor(t + 1/2)`, `f = t - n`, the
/// primitive of `(t - round t)^2` is `n / 12 + (f^3 + 1/8) / 3` (the constant cancels).
#[allow(clippy::too_many_arguments)]
pub fn mse_bin_error(a: f32, bw: f32, h: f32, s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    let b = a + bw;
    let lo = (qmin - z) * s;
    let hi = (qmax - z) * s;
    let mut e = 0f32;
    if a < lo {
        let u = b.min(lo) - lo;
        let v = a - lo;
        e += (u * u * u - v * v * v) / 3.0;
    }
    if b > hi {
        let u = b - hi;
        let v = a.max(hi) - hi;
        e += (u * u * u - v * v * v) / 3.0;
    }
    let u = a.max(lo);
    let v = b.min(hi);
    if u < v {
        let tu = u / s;
        let tv = v / s;
        let nu = (tu + 0.5).floor();
        let nv = (tv + 0.5).floor();
        let fu = tu - nu;
        let fv = tv - nv;
        e += s * s * s * ((nv - nu) / 12.0 + (fv * fv * fv - fu * fu * fu) / 3.0);
    }
    e * (h / bw)
}

/// The expected squared quantization error (summed over the histogram's values) of
/// quantizing with the range `[lo, hi]` under `spec` (scale and zero point as `qparams`).
pub fn mse_error(hist: &[f32], min: f32, max: f32, lo: f32, hi: f32, spec: &QuantSpec) -> f32 {
    let bins = hist.len();
    let bw = (max - min) * (1.0 / bins as f32);
    let (s, _, z) = spec.qparams(lo, hi);
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
    let errs: Vec<f32> = (0..bins)
        .map(|i| if hist[i] == 0.0 { 0.0 } else { mse_bin_error(min + bw * i as f32, bw, hist[i], s, z, qmin, qmax) })
        .collect();
    wg_sum(&errs)
}

/// The MSE observer's range: the candidate of [`mse_candidate`] with the least
/// [`mse_error`], scanning k from MSE_GRID down to 1 and keeping the first minimum (ties keep
/// the wider range). Returns the range and its candidate index.
pub fn mse_range(hist: &[f32], min: f32, max: f32, spec: &QuantSpec) -> ((f32, f32), u32) {
    if min == max {
        return ((min, max), MSE_GRID);
    }
    let mut best = (f32::INFINITY, MSE_GRID);
    for k in (1..=MSE_GRID).rev() {
        let (lo, hi) = mse_candidate(min, max, k);
        let e = mse_error(hist, min, max, lo, hi, spec);
        if e < best.0 {
            best = (e, k);
        }
    }
    (mse_candidate(min, max, best.1), best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 bins of width 1 on [0, 100]: 1000 values in each of bins 0..10, one outlier in bin 99.
    fn uniform_plus_outlier() -> Vec<f32> {
        let mut h = vec![0f32; 100];
        h[..10].fill(1000.0);
        h[99] = 1.0;
        h
    }

    #[test]
    fn percentile_clips_the_outlier() {
        let h = uniform_plus_outlier();
        // 99.99 % of 10001 = 9999.9999: reached at bin 9 from below, at bin 0 from above.
        assert_eq!(percentile_range(&h, 0.0, 100.0, 0.9999), (0.0, 10.0));
        // 100 %: the whole occupied range, the outlier's bin included.
        assert_eq!(percentile_range(&h, 0.0, 100.0, 1.0), (0.0, 100.0));
        // 99.9 % = 9991.0 counts: bin 9 from below; from above bin 0 (10001), bin 1 has 9001.
        assert_eq!(percentile_range(&h, 0.0, 100.0, 0.999), (0.0, 10.0));
        // Two-sided: on [-50, 50], outliers in the first and last bins; 1000 values in each of
        // bins 45..55 ([-5, 5)). 99.99 % of 10002 = 10001.0 is reached at bin 54 from below,
        // at bin 45 from above: the range [-5, 5] drops both outliers.
        let mut h2 = vec![0f32; 100];
        h2[45..55].fill(1000.0);
        h2[0] = 1.0;
        h2[99] = 1.0;
        assert_eq!(percentile_range(&h2, -50.0, 50.0, 0.9999), (-5.0, 5.0));
        assert_eq!(percentile_range(&h2, -50.0, 50.0, 1.0), (-50.0, 50.0));
        assert_eq!(percentile_range(&h2, 3.0, 3.0, 0.9), (3.0, 3.0));
    }

    /// `mse_bin_error` against an f64 midpoint-rule integral of `(x - fq(x))^2`.
    #[test]
    fn mse_bin_error_matches_numeric_integral() {
        let spec = QuantSpec::activation(4);
        for &(lo, hi, a, bw) in &[
            (-1.0f32, 3.0f32, -2.0f32, 0.7f32),
            (-1.0, 3.0, 0.13, 0.05),
            (-1.0, 3.0, 0.1, 1.3),
            (-1.0, 3.0, 2.9, 1.0),
            (0.0, 2.0, -0.5, 3.0),
        ] {
            let (s, _, z) = spec.qparams(lo, hi);
            let (qmin, qmax) = (spec.qmin() as f64, spec.qmax() as f64);
            let n = 200_000;
            let mut num = 0f64;
            for j in 0..n {
                let x = a as f64 + (j as f64 + 0.5) * bw as f64 / n as f64;
                let q = ((x / s as f64).round() + z as f64).clamp(qmin, qmax);
                let d = x - (q - z as f64) * s as f64;
                num += d * d * (bw as f64 / n as f64);
            }
            let h = 7.0f32;
            let got = mse_bin_error(a, bw, h, s, z, qmin as f32, qmax as f32) as f64;
            let want = num * h as f64 / bw as f64;
            assert!(
                (got - want).abs() <= 1e-4 * want.max(1e-6),
                "bin [{a}, {}] in [{lo}, {hi}]: {got} vs {want}",
                a + bw
            );
        }
    }

    #[test]
    fn mse_search_takes_the_grid_minimum() {
        // A uniform histogram on [0, 1] at 8 bits, no clipping: N s^2 / 12 (half cells at both
        // ends make up one cell), s = 1/255.
        let h = vec![10.0f32; 256];
        let spec = QuantSpec::activation(8);
        let e = mse_error(&h, 0.0, 1.0, 0.0, 1.0, &spec) as f64;
        let want = 2560.0 / (12.0 * 255.0 * 255.0);
        assert!((e - want).abs() < 1e-3 * want, "{e} vs {want}");
        // Uniform [0, 10) plus one far outlier at 4 bits: clipping near the bulk wins.
        for (hist, max, bits) in [(uniform_plus_outlier(), 100.0f32, 4u32), (uniform_plus_outlier(), 100.0, 8)] {
            let spec = QuantSpec::activation(bits);
            let ((lo, hi), k) = mse_range(&hist, 0.0, max, &spec);
            let chosen = mse_error(&hist, 0.0, max, lo, hi, &spec);
            for j in 1..=MSE_GRID {
                let (l, u) = mse_candidate(0.0, max, j);
                let ej = mse_error(&hist, 0.0, max, l, u, &spec);
                assert!(chosen <= ej, "{bits} bits: k {k} error {chosen} > k {j} error {ej}");
            }
            assert_eq!((lo, hi), mse_candidate(0.0, max, k));
            if bits == 4 {
                // Range [0, c]: noise ~ 10000 (c/15)^2/12 plus the outlier's (99.5 - c)^2, least
                // at c = 99.5 / (1 + 10000/2700) = 21.2: the grid point 20.3 (k = 26).
                assert!((15.0..25.0).contains(&hi), "4 bits: chosen range [{lo}, {hi}]");
            } else {
                // 8 bits: 10000 (c/255)^2/12 + (99.5 - c)^2 is least at c = 98.2: the outlier
                // (spread over its bin [99, 100]) is nearly kept.
                assert!((95.0..100.0).contains(&hi), "8 bits: chosen range [{lo}, {hi}] (k {k})");
            }
        }
    }
}
