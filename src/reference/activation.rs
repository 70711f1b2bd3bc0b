//! CPU references for `shaders/activation.wgsl` (f64; f32 inputs round-trip exactly).

/// `y = max(x, 0)`, clamped at 6 when `relu6`.
pub fn relu_forward(x: &[f64], relu6: bool) -> Vec<f64> {
    x.iter().map(|&v| if relu6 { v.clamp(0.0, 6.0) } else { v.max(0.0) }).collect()
}

/// `dx = dy` where `0 < x` (and `x < 6` for ReLU6), else 0; `x` is the forward INPUT.
pub fn relu_backward(x: &[f64], dy: &[f64], relu6: bool) -> Vec<f64> {
    x.iter().zip(dy).map(|(&v, &g)| if v > 0.0 && (!relu6 || v < 6.0) { g } else { 0.0 }).collect()
}

/// `out = a + b`.
pub fn add_forward(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// `dst += src`.
pub fn accumulate(dst: &mut [f64], src: &[f64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}
