//! CPU references for `shaders/fake_quant.wgsl`: plain loops, the semantics of `quant.rs`.

use crate::quant::QStateLayout;

/// The code of one value: `clamp(round(x * inv_s) + z, qmin, qmax)` (ties to even).
pub fn quantize_code(x: f32, inv_s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    ((x * inv_s).round_ties_even() + z).clamp(qmin, qmax)
}

/// `fake_quant_forward`: `(q - z) * s` per element, channel `(i / inner) % channels`;
/// identity when the state's fake-quant flag is 0.
pub fn fake_quant_forward(x: &[f32], state: &[f32], channels: usize, inner: usize, qmin: f32, qmax: f32) -> Vec<f32> {
    let l = QStateLayout::new(channels);
    if state[QStateLayout::FQ_ENABLED] == 0.0 {
        return x.to_vec();
    }
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / inner) % channels;
            let (s, inv, z) = (state[l.scale() + c], state[l.inv_scale() + c], state[l.zero_point() + c]);
            (quantize_code(v, inv, z, qmin, qmax) - z) * s
        })
        .collect()
}

/// `ste_backward`: `dy` where the unclamped code lies in `[qmin, qmax]`, else 0.
pub fn ste_backward(
    x: &[f32],
    dy: &[f32],
    state: &[f32],
    channels: usize,
    inner: usize,
    qmin: f32,
    qmax: f32,
) -> Vec<f32> {
    let l = QStateLayout::new(channels);
    if state[QStateLayout::FQ_ENABLED] == 0.0 {
        return dy.to_vec();
    }
    x.iter()
        .zip(dy)
        .enumerate()
        .map(|(i, (&v, &g))| {
            let c = (i / inner) % channels;
            let r = (v * state[l.inv_scale() + c]).round_ties_even() + state[l.zero_point() + c];
            if r >= qmin && r <= qmax {
                g
            } else {
                0.0
            }
        })
        .collect()
}
