//! Quantization semantics shared by the GPU kernels, the CPU references and (later) the
//! integer backends. Written down once here so every path agrees.
//!
//! * Codes: `q = clamp(round(x * inv_s) + z, qmin, qmax)`, value `(q - z) * s`.
//! * `round` is round-half-to-even everywhere (PyTorch's `nearbyint`; WGSL `round()` is
//!   specified the same way; Rust `f32::round_ties_even`).
//! * We multiply by a stored `inv_s = 1/s` rather than divide: WGSL division is only
//!   accurate to 2.5 ULP, while multiplication is correctly rounded, so GPU and CPU codes
//!   agree bit for bit when both read the same stored `inv_s` (PyTorch also uses `x * inv_scale`).
//! * Weights: symmetric, `z = 0`, by default the restricted signed range
//!   `[-(2^(b-1)-1), 2^(b-1)-1]` with `s = max|w| / qmax`; with `full_range` the whole signed
//!   range `[-2^(b-1), 2^(b-1)-1]` with `s = max|w| / ((qmax - qmin) / 2)` (PyTorch's
//!   symmetric qint8 observers: one more level, 7 % finer steps at 4 bits; `+max|w|` lands
//!   half a step above `qmax` and is clamped).
//! * Activations: affine, unsigned `[0, 2^b - 1]`, the range always including 0.
//!
//! Quantizer state lives on the GPU as one `array<f32>` (see [`QStateLayout`]).

use crate::error::{Result, WqatError};

/// How one tensor is quantized.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantSpec {
    /// 2..=8.
    pub bits: u32,
    /// Signed codes (weights) or unsigned (activations).
    pub signed: bool,
    /// Symmetric (z = 0) or affine.
    pub symmetric: bool,
    /// `Some(axis)` for per-channel quantization along that axis of the tensor.
    pub channel_axis: Option<usize>,
    /// Signed symmetric only: use the full range `[-2^(b-1), 2^(b-1)-1]` (see the module docs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_range: bool,
}

impl QuantSpec {
    /// Per-channel symmetric signed weights (channel axis 0: output channels).
    pub fn weight(bits: u32) -> Self {
        QuantSpec { bits, signed: true, symmetric: true, channel_axis: Some(0), full_range: false }
    }
    /// Per-tensor affine unsigned activations.
    pub fn activation(bits: u32) -> Self {
        QuantSpec { bits, signed: false, symmetric: false, channel_axis: None, full_range: false }
    }
    /// Checks the bit width.
    pub fn validate(&self) -> Result<()> {
        if !(2..=8).contains(&self.bits) {
            return Err(WqatError::invalid(format!("bit width {} is outside 2..=8", self.bits)));
        }
        if self.full_range && !(self.signed && self.symmetric) {
            return Err(WqatError::invalid("full_range applies to signed symmetric quantization only"));
        }
        Ok(())
    }
    /// Smallest code.
    pub fn qmin(&self) -> i32 {
        match (self.signed, self.symmetric) {
            (true, true) if !self.full_range => -((1 << (self.bits - 1)) - 1),
            (true, _) => -(1 << (self.bits - 1)),
            (false, _) => 0,
        }
    }
    /// Largest code.
    pub fn qmax(&self) -> i32 {
        if self.signed {
            (1 << (self.bits - 1)) - 1
        } else {
            (1 << self.bits) - 1
        }
    }
    /// Reciprocal of the code-range denominator the scale is built from, computed once on the
    /// host in f32 and passed to the GPU `qparams` kernel: `1/qmax` (symmetric signed), else
    /// `1/(qmax - qmin)`. Multiplying by it (correctly rounded on every GPU) instead of
    /// dividing is what lets GPU and CPU agree bit for bit on the scale.
    pub fn inv_scale_denominator(&self) -> f32 {
        let (qmin, qmax) = (self.qmin() as f32, self.qmax() as f32);
        if self.symmetric && self.signed && !self.full_range {
            1.0 / qmax
        } else if self.symmetric && self.signed {
            2.0 / (qmax - qmin)
        } else {
            1.0 / (qmax - qmin)
        }
    }
    /// `(scale, inv_scale, zero_point)` from an observed range, exactly as the GPU `qparams`
    /// kernel (shaders/observer.wgsl) computes them. The range is widened to include 0; a
    /// degenerate range gives scale 1. The scale is `range * inv_scale_denominator()`;
    /// `inv_scale = 1/scale` and `z = clamp(qmin - round(min / scale))` use a division, which
    /// WGSL only guarantees to 2.5 ULP (exact on lavapipe).
    pub fn qparams(&self, min: f32, max: f32) -> (f32, f32, f32) {
        let (qmin, qmax) = (self.qmin() as f32, self.qmax() as f32);
        let inv_den = self.inv_scale_denominator();
        let min = min.min(0.0);
        let max = max.max(0.0);
        if self.symmetric {
            let amax = max.max(-min);
            let s = amax * inv_den;
            let s = if s > f32::MIN_POSITIVE { s } else { 1.0 };
            let z = if self.signed { 0.0 } else { qmin };
            (s, 1.0 / s, z)
        } else {
            let s = (max - min) * inv_den;
            let s = if s > f32::MIN_POSITIVE { s } else { 1.0 };
            let z = (qmin - (min / s).round_ties_even()).clamp(qmin, qmax);
            (s, 1.0 / s, z)
        }
    }
}

/// Offsets into a quantizer's GPU state buffer (`array<f32>`), for `c` channels
/// (`c = 1` per tensor). Flags are stored as 0.0 / 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QStateLayout {
    pub channels: usize,
}

impl QStateLayout {
    /// Flag: fake-quant applied (else kernels pass values through).
    pub const FQ_ENABLED: usize = 0;
    /// Flag: observer updates the range.
    pub const OBS_ENABLED: usize = 1;
    /// Flag: the observer has seen at least one batch (EMA starts from the first range).
    pub const INITIALIZED: usize = 2;
    /// Header length in f32 slots.
    pub const HEADER: usize = 4;
    pub fn new(channels: usize) -> Self {
        QStateLayout { channels }
    }
    pub fn scale(&self) -> usize {
        Self::HEADER
    }
    pub fn inv_scale(&self) -> usize {
        Self::HEADER + self.channels
    }
    pub fn zero_point(&self) -> usize {
        Self::HEADER + 2 * self.channels
    }
    pub fn min(&self) -> usize {
        Self::HEADER + 3 * self.channels
    }
    pub fn max(&self) -> usize {
        Self::HEADER + 4 * self.channels
    }
    /// Total f32 slots.
    pub fn len(&self) -> usize {
        Self::HEADER + 5 * self.channels
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    /// A one-channel state holding exactly `scale`, `inv_scale` and `zero_point` (as a
    /// checkpoint or int8 file stores them), fake-quant on, observer off.
    pub fn exact(scale: f32, inv_scale: f32, zero_point: f32) -> Vec<f32> {
        let l = QStateLayout::new(1);
        let mut v = vec![0.0; l.len()];
        v[Self::FQ_ENABLED] = 1.0;
        v[Self::INITIALIZED] = 1.0;
        v[l.scale()] = scale;
        v[l.inv_scale()] = inv_scale;
        v[l.zero_point()] = zero_point;
        v
    }
    /// A host-side state with the given per-channel scales and zero points, fake-quant and
    /// observer enabled; `inv_s` is computed here once and then read by every path.
    pub fn build(&self, scales: &[f32], zero_points: &[f32]) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        v[Self::FQ_ENABLED] = 1.0;
        v[Self::OBS_ENABLED] = 1.0;
        for c in 0..self.channels {
            v[self.scale() + c] = scales[c];
            v[self.inv_scale() + c] = 1.0 / scales[c];
            v[self.zero_point() + c] = zero_points[c];
        }
        v
    }
}

/// Geometry of per-channel indexing: element `i` of a tensor belongs to channel
/// `(i / inner) % channels`, where `inner` is the product of the dims after the axis.
pub fn channel_geometry(shape: &[usize], axis: Option<usize>) -> Result<(usize, usize)> {
    match axis {
        None => Ok((1, shape.iter().product::<usize>().max(1))),
        Some(a) if a < shape.len() => Ok((shape[a], shape[a + 1..].iter().product::<usize>().max(1))),
        Some(a) => Err(WqatError::shape(format!("channel axis {a} out of range for shape {shape:?}"))),
    }
}
