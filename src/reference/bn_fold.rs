//! CPU references for `shaders/bn_fold.wgsl` (PyTorch ConvBn2d `_forward_approximate`), f64.
//! Weights are `[Cout, inner]` (inner = Cin * kh * kw); activations `[N, Cout, hw]`.

/// `sf[c] = gamma[c] / sqrt(running_var[c] + eps)`.
pub fn scale_factor(gamma: &[f64], running_var: &[f64], eps: f64) -> Vec<f64> {
    gamma.iter().zip(running_var).map(|(g, v)| g / (v + eps).sqrt()).collect()
}

/// `(sf, w_fold = w * sf[c])`.
pub fn fold_forward(w: &[f64], gamma: &[f64], running_var: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let sf = scale_factor(gamma, running_var, eps);
    let inner = w.len() / gamma.len();
    let wf = w.iter().enumerate().map(|(i, &v)| v * sf[i / inner]).collect();
    (sf, wf)
}

/// `dst = src / sf[(i / inner) % c]` (y_orig from y_conv, or dy_conv from dy_orig).
pub fn channel_div(src: &[f64], sf: &[f64], inner: usize) -> Vec<f64> {
    src.iter().enumerate().map(|(i, &v)| v / sf[(i / inner) % sf.len()]).collect()
}

/// `(dw = dw_fold * sf[c], dsf_w[c] = sum(dw_fold * w))`.
pub fn fold_weight_backward(w: &[f64], dw_fold: &[f64], sf: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let inner = w.len() / sf.len();
    let mut dsf = vec![0.0; sf.len()];
    let dw = (0..w.len())
        .map(|i| {
            dsf[i / inner] += dw_fold[i] * w[i];
            dw_fold[i] * sf[i / inner]
        })
        .collect();
    (dw, dsf)
}

/// Completes `dsf` with the `y_orig = y_conv / sf` term and adds the gamma gradient:
/// `dsf[c] -= sum(dy_orig * y_conv) / sf^2; dgamma[c] += dsf[c] / sqrt(running_var + eps)`.
#[allow(clippy::too_many_arguments)]
pub fn fold_gamma_backward(
    y_conv: &[f64],
    dy_orig: &[f64],
    sf: &[f64],
    running_var: &[f64],
    eps: f64,
    hw: usize,
    dsf: &mut [f64],
    dgamma: &mut [f64],
) {
    let c = sf.len();
    let mut t = vec![0.0; c];
    for i in 0..y_conv.len() {
        t[(i / hw) % c] += dy_orig[i] * y_conv[i];
    }
    for k in 0..c {
        dsf[k] -= t[k] / (sf[k] * sf[k]);
        dgamma[k] += dsf[k] / (running_var[k] + eps).sqrt();
    }
}
