//! CPU reference for `shaders/lsq.wgsl`: LSQ scale and zero-point gradients.

use crate::quant::QStateLayout;

/// Per-element `(d(out)/ds, d(out)/dz)` for one value (see shaders/lsq.wgsl).
pub fn local_grads(x: f32, s: f32, inv_s: f32, z: f32, qmin: f32, qmax: f32) -> (f32, f32) {
    let u = x * inv_s;
    let ru = u.round_ties_even();
    let r = ru + z;
    if r < qmin {
        (qmin - z, -s)
    } else if r > qmax {
        (qmax - z, -s)
    } else {
        (ru - u, 0.0)
    }
}

/// `(dscale, dzero, |dscale| terms, |dzero| terms)` per channel: `grad_factor * sum dy * d(out)/d.`
/// and the sums of absolute terms (the yardstick for reduction tolerances).
#[allow(clippy::too_many_arguments)]
pub fn lsq_grads(
    x: &[f32],
    dy: &[f32],
    state: &[f32],
    channels: usize,
    inner: usize,
    qmin: f32,
    qmax: f32,
    grad_factor: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let l = QStateLayout::new(channels);
    let mut ds = vec![0f64; channels];
    let mut dz = vec![0f64; channels];
    let mut ads = vec![0f64; channels];
    let mut adz = vec![0f64; channels];
    if state[QStateLayout::FQ_ENABLED] != 0.0 {
        for (i, (&v, &g)) in x.iter().zip(dy).enumerate() {
            let c = (i / inner) % channels;
            let (a, b) =
                local_grads(v, state[l.scale() + c], state[l.inv_scale() + c], state[l.zero_point() + c], qmin, qmax);
            ds[c] += (a * g) as f64;
            dz[c] += (b * g) as f64;
            ads[c] += (a * g).abs() as f64;
            adz[c] += (b * g).abs() as f64;
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|t| (t * grad_factor as f64) as f32).collect::<Vec<f32>>();
    (f(ds), f(dz), f(ads), f(adz))
}
