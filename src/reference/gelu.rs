//! CPU reference for `shaders/gelu.wgsl`: GELU in its exact erf form, in f64 with libm's
//! erfc. `gelu(x) = x Phi(x)` with `Phi(x) = erfc(-x / sqrt 2) / 2`, the same function as
//! `0.5 x (1 + erf(x / sqrt 2))` but without the cancellation of `1 + erf` for `x << 0`
//! (where f64's `1 + erf` would lose everything below 1e-16).

use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// Standard normal CDF in f64.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x * FRAC_1_SQRT_2)
}

/// Standard normal density in f64.
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
}

/// GELU in f64: `x Phi(x)`.
pub fn gelu_f64(x: f64) -> f64 {
    x * normal_cdf(x)
}

/// d gelu / dx in f64: `Phi(x) + x phi(x)` (0 where `phi` underflows, so +-Inf give 1 / 0).
pub fn gelu_grad_f64(x: f64) -> f64 {
    let pdf = normal_pdf(x);
    normal_cdf(x) + if pdf == 0.0 { 0.0 } else { x * pdf }
}

/// GELU of one f32 (computed in f64, rounded once): for the CPU reference graph.
pub fn gelu(x: f32) -> f32 {
    gelu_f64(x as f64) as f32
}

/// d gelu / dx of one f32 (computed in f64, rounded once).
pub fn gelu_grad(x: f32) -> f32 {
    gelu_grad_f64(x as f64) as f32
}

/// `y = gelu(x)` elementwise.
pub fn forward(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| gelu(v)).collect()
}

/// `dx = dy * gelu'(x)` elementwise, the product in f64 and rounded once; `x` is the
/// forward INPUT.
pub fn backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), dy.len(), "gelu backward: x and dy lengths differ");
    x.iter().zip(dy).map(|(&v, &g)| (g as f64 * gelu_grad_f64(v as f64)) as f32).collect()
}
