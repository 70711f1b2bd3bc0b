//! CPU reference of `shaders/bias_quant.wgsl`: the bias the integer model adds, in f32 with
//! the same operation order as the shader (so the GPU matches bit for bit).

use crate::quant::QStateLayout;

/// `round(b * (inv_s_x * inv_s_w)) * (s_x * s_w)` with the code clamped to the i32 range.
pub fn quantize_one(b: f32, s_x: f32, inv_s_x: f32, s_w: f32, inv_s_w: f32) -> f32 {
    const I32_MAX: f32 = 2147483520.0;
    let code = (b * (inv_s_x * inv_s_w)).round_ties_even().clamp(-I32_MAX, I32_MAX);
    code * (s_x * s_w)
}

/// `(scale, inv_scale)` of channel `c` of a raw quantizer state (channel 0 when per tensor).
fn scale_of(state: &[f32], c: usize) -> (f32, f32) {
    let l = QStateLayout::new((state.len() - QStateLayout::HEADER) / 5);
    let c = if l.channels == 1 { 0 } else { c };
    (state[l.scale() + c], state[l.inv_scale() + c])
}

/// Bias mode: the quantized biases (pass-through while a fake-quant flag is off).
pub fn quantize_bias(bias: &[f32], x_state: &[f32], w_state: &[f32]) -> Vec<f32> {
    let on = x_state[QStateLayout::FQ_ENABLED] != 0.0 && w_state[QStateLayout::FQ_ENABLED] != 0.0;
    let (sx, isx) = scale_of(x_state, 0);
    (0..bias.len())
        .map(|c| {
            if !on {
                return bias[c];
            }
            let (sw, isw) = scale_of(w_state, c);
            quantize_one(bias[c], sx, isx, sw, isw)
        })
        .collect()
}

/// BN mode: `beta + b_q(b_eff) - b_eff` with `b_eff = beta - mean * gamma / sqrt(var + eps)`.
pub fn quantize_bn_beta(
    beta: &[f32],
    gamma: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    x_state: &[f32],
    w_state: &[f32],
) -> Vec<f32> {
    let on = x_state[QStateLayout::FQ_ENABLED] != 0.0 && w_state[QStateLayout::FQ_ENABLED] != 0.0;
    let (sx, isx) = scale_of(x_state, 0);
    (0..beta.len())
        .map(|c| {
            if !on {
                return beta[c];
            }
            let b_eff = beta[c] - mean[c] * (gamma[c] / (var[c] + eps).sqrt());
            let (sw, isw) = scale_of(w_state, c);
            beta[c] + (quantize_one(b_eff, sx, isx, sw, isw) - b_eff)
        })
        .collect()
}
