//! CPU reference for `shaders/layernorm.wgsl`: LayerNorm over the last dimension (PyTorch
//! semantics: biased variance, `rstd = 1 / sqrt(var + eps)`), plain loops in f64.
//!
//! The f32 functions are what the kernels are compared with (stats rounded to f32 once, as
//! the GPU stores them); the `_f64` cores take f64 throughout, so finite differences of the
//! forward check the backward formula without f32 noise.

/// `(y, stats)` in f64: `stats = [mean_0, rstd_0, mean_1, rstd_1, ...]`.
pub fn forward_f64(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let d = gamma.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && beta.len() == d, "layernorm reference: bad shapes");
    let mut y = vec![0.0; x.len()];
    let mut stats = Vec::with_capacity(2 * x.len() / d);
    for (xr, yr) in x.chunks(d).zip(y.chunks_mut(d)) {
        let mean = xr.iter().sum::<f64>() / d as f64;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for k in 0..d {
            yr[k] = (xr[k] - mean) * rstd * gamma[k] + beta[k];
        }
        stats.extend([mean, rstd]);
    }
    (y, stats)
}

/// `(dx, dgamma, dbeta)` in f64 from the forward input, gamma, the saved stats and `dy`.
pub fn backward_f64(x: &[f64], gamma: &[f64], stats: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let d = gamma.len();
    assert!(d > 0 && x.len().is_multiple_of(d), "layernorm reference: bad shapes");
    assert!(stats.len() == 2 * x.len() / d && dy.len() == x.len(), "layernorm reference: bad shapes");
    let mut dx = vec![0.0; x.len()];
    let (mut dgamma, mut dbeta) = (vec![0.0; d], vec![0.0; d]);
    for (r, ((xr, dyr), dxr)) in x.chunks(d).zip(dy.chunks(d)).zip(dx.chunks_mut(d)).enumerate() {
        let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..d).map(|k| gamma[k] * dyr[k]).collect();
        let mg = g.iter().sum::<f64>() / d as f64;
        let mgx = (0..d).map(|k| g[k] * xhat[k]).sum::<f64>() / d as f64;
        for k in 0..d {
            dxr[k] = rstd * (g[k] - mg - xhat[k] * mgx);
            dgamma[k] += dyr[k] * xhat[k];
            dbeta[k] += dyr[k];
        }
    }
    (dx, dgamma, dbeta)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `(y, stats)`: `y = (x - mean) * rstd * gamma + beta` per row of `D = gamma.len()`,
/// `stats` `[R, 2]` = (mean, rstd). Computed in f64, rounded once.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let (y, stats) = forward_f64(&f64s(x), &f64s(gamma), &f64s(beta), eps as f64);
    (f32s(&y), f32s(&stats))
}

/// `(dx, dgamma, dbeta)` from the forward input, gamma, the saved (f32) stats and `dy`.
/// Computed in f64, rounded once.
pub fn backward(x: &[f32], gamma: &[f32], stats: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (dx, dg, db) = backward_f64(&f64s(x), &f64s(gamma), &f64s(stats), &f64s(dy));
    (f32s(&dx), f32s(&dg), f32s(&db))
}
