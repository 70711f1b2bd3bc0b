//! CPU references for `shaders/observer.wgsl`: min/max per channel, the running/moving
//! average update of the quantizer state, and qparams.

use crate::kernels::observer::ObserverMode;
use crate::quant::{QStateLayout, QuantSpec};

/// Per-channel (min, max) of `x`, channel of element i being `(i / inner) % channels`.
pub fn minmax(x: &[f32], channels: usize, inner: usize) -> (Vec<f32>, Vec<f32>) {
    let mut lo = vec![f32::INFINITY; channels];
    let mut hi = vec![f32::NEG_INFINITY; channels];
    for (i, &v) in x.iter().enumerate() {
        let c = (i / inner) % channels;
        lo[c] = lo[c].min(v);
        hi[c] = hi[c].max(v);
    }
    (lo, hi)
}

/// `minmax_final`: folds the batch range of `x` into `state` per `mode`; no-op when the
/// observer flag is 0. Does not touch `initialized` (the qparams pass sets it).
pub fn observe(state: &mut [f32], x: &[f32], channels: usize, inner: usize, mode: ObserverMode) {
    if state[QStateLayout::OBS_ENABLED] == 0.0 {
        return;
    }
    let l = QStateLayout::new(channels);
    let (lo, hi) = minmax(x, channels, inner);
    let init = state[QStateLayout::INITIALIZED] != 0.0;
    for c in 0..channels {
        let (old_lo, old_hi) = (state[l.min() + c], state[l.max() + c]);
        let (m, big_m) = match (init, mode) {
            (false, _) => (lo[c], hi[c]),
            (true, ObserverMode::MinMax) => (old_lo.min(lo[c]), old_hi.max(hi[c])),
            (true, ObserverMode::MovingAverage { c: k }) => {
                (old_lo + k * (lo[c] - old_lo), old_hi + k * (hi[c] - old_hi))
            }
        };
        state[l.min() + c] = m;
        state[l.max() + c] = big_m;
    }
}

/// `qparams`: scale, inv_scale, zero point from the state's min/max; sets `initialized`;
/// no-op when the observer flag is 0.
pub fn qparams(state: &mut [f32], spec: &QuantSpec, channels: usize) {
    if state[QStateLayout::OBS_ENABLED] == 0.0 {
        return;
    }
    let l = QStateLayout::new(channels);
    for c in 0..channels {
        let (s, inv, z) = spec.qparams(state[l.min() + c], state[l.max() + c]);
        state[l.scale() + c] = s;
        state[l.inv_scale() + c] = inv;
        state[l.zero_point() + c] = z;
    }
    state[QStateLayout::INITIALIZED] = 1.0;
}
