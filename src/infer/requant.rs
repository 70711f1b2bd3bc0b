//! Fixed-point requantization (gemmlowp / TFLite arithmetic), the definition every int8
//! path (scalar, SIMD, WGSL) follows bit for bit.
//!
//! * A real multiplier `M > 0` is stored as `(M0, shift)` with `M0` in `[2^30, 2^31)` and
//!   `M ~= M0 * 2^(shift - 31)` ([`quantize_multiplier`], TFLite's `QuantizeMultiplier`).
//! * Conv / linear outputs and average pools are rounded ONCE:
//!   [`multiply_by_quantized_multiplier_rounded`]`(x, M0, shift)` = `round_half_even(x * M0 *
//!   2^(shift - 31))` from the exact 64-bit product, saturated to `±(2^31 - 1)`. That is the
//!   rounding the fake-quant simulation does (`round(y / s_out)`, half to even), so the two
//!   differ only where f32 error or the 31-bit `M0` moves a value across a tie. (TFLite's
//!   double rounding below rounds `x * M0 / 2^31` to an integer first: with the small
//!   accumulators of 4-bit layers that shifts ~5 % of the outputs by one code.)
//! * `MultiplyByQuantizedMultiplier(x, M0, shift)` (TFLite, kept for the quantized add, whose
//!   inputs are pre-scaled by 2^20 so its first rounding is negligible) = `RoundingDivideByPOT(
//!   SaturatingRoundingDoublingHighMul(x << max(shift, 0), M0), max(-shift, 0))`; the left
//!   shift saturates to the i32 range (TFLite leaves overflow undefined; we pin it down).
//! * `SaturatingRoundingDoublingHighMul(a, b)` = `(a*b + nudge) / 2^31` truncated, with
//!   `nudge = 2^30` for `a*b >= 0` else `1 - 2^30`, and `i32::MIN * i32::MIN -> i32::MAX`.
//! * `RoundingDivideByPOT` rounds half away from zero.
//! * The output is `clamp(v, act_min - z_out, act_max - z_out) + z_out` (the same as
//!   `clamp(v + z_out, act_min, act_max)` without any i32 overflow).

use crate::error::{Result, WqatError};

/// TFLite `QuantizeMultiplier`: `(M0, shift)` with `M0` in `[2^30, 2^31)` and
/// `M = M0 * 2^(shift - 31)` rounded to nearest (half away from zero). `M == 0` and tiny
/// multipliers (`shift < -31`) give `(0, 0)`; huge ones (`shift > 30`) saturate to
/// `(2^31 - 1, 30)`. Negative or non-finite `M` is an error.
pub fn quantize_multiplier(m: f64) -> Result<(i32, i32)> {
    if !m.is_finite() || m < 0.0 {
        return Err(WqatError::invalid(format!("requantization multiplier {m} must be finite and >= 0")));
    }
    let bits = m.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if m == 0.0 || exp == 0 {
        // Zero or subnormal: far below 2^-32, i.e. shift < -31.
        return Ok((0, 0));
    }
    // frexp: m = q * 2^e with q in [0.5, 1).
    let mut shift = exp - 1022;
    let q = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    let mut q_fixed = (q * (1u64 << 31) as f64).round() as i64;
    if q_fixed == 1i64 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        return Ok((0, 0));
    }
    if shift > 30 {
        return Ok((i32::MAX, 30));
    }
    Ok((q_fixed as i32, shift))
}

/// gemmlowp `SaturatingRoundingDoublingHighMul`: the high 32 bits of `2*a*b`, rounded.
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = a as i64 * b as i64;
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// gemmlowp `RoundingDivideByPOT`: `x / 2^exponent` rounded half away from zero,
/// `exponent` in `0..=31`.
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    debug_assert!(exponent <= 31);
    let mask = ((1u32 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// `x * 2^l` saturated to the i32 range.
pub fn saturating_left_shift(x: i32, l: u32) -> i32 {
    if l == 0 {
        return x;
    }
    if x > (i32::MAX >> l) {
        i32::MAX
    } else if x < (i32::MIN >> l) {
        i32::MIN
    } else {
        x << l
    }
}

/// TFLite `MultiplyByQuantizedMultiplier(x, M0, shift)` (double rounding), with a
/// saturating left shift for `shift > 0`.
pub fn multiply_by_quantized_multiplier(x: i32, m0: i32, shift: i32) -> i32 {
    let left = shift.max(0) as u32;
    let right = (-shift).max(0) as u32;
    rounding_divide_by_pot(saturating_rounding_doubling_high_mul(saturating_left_shift(x, left), m0), right)
}

/// Fused activation, applied as a clamp in the quantized domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `[qmin, qmax]`.
    None,
    /// `[z_out, qmax]`.
    Relu,
    /// `[z_out, min(qmax, z_out + round(6 / s_out))]`.
    Relu6,
}

/// The clamp range `[act_min, act_max]` of an unsigned `bits`-wide output with scale
/// `s_out` and zero point `z_out` (round is half-to-even, as in `quant.rs`).
pub fn activation_range(act: Activation, bits: u32, s_out: f32, z_out: i32) -> Result<(i32, i32)> {
    if !(2..=8).contains(&bits) {
        return Err(WqatError::invalid(format!("output bit width {bits} is outside 2..=8")));
    }
    let qmax = (1i32 << bits) - 1;
    if !((0..=qmax).contains(&z_out) && s_out.is_finite() && s_out > 0.0) {
        return Err(WqatError::invalid(format!("output zero point {z_out} / scale {s_out} invalid for {bits} bits")));
    }
    Ok(match act {
        Activation::None => (0, qmax),
        Activation::Relu => (z_out, qmax),
        Activation::Relu6 => {
            let six = (6.0f64 / s_out as f64).round_ties_even().min(1e9) as i32;
            (z_out, qmax.min(z_out + six))
        }
    })
}

/// Per-output-channel requantization of an int32 accumulator to uint8.
#[derive(Debug, Clone, PartialEq)]
pub struct Requant {
    /// `M0[c]` in `[2^30, 2^31)` (or 0).
    pub multiplier: Vec<i32>,
    /// `shift[c]` in `[-31, 30]` (positive: left shift).
    pub shift: Vec<i32>,
    /// Output zero point `z_out`.
    pub out_zero: i32,
    /// Clamp range of the output codes (activation folded in), inside `[0, 255]`.
    pub act_min: i32,
    pub act_max: i32,
}

impl Requant {
    /// `M[c] = s_x * s_w[c] / s_out` quantized with [`quantize_multiplier`] (computed in f64).
    pub fn from_scales(s_x: f32, s_w: &[f32], s_out: f32, z_out: i32, out_bits: u32, act: Activation) -> Result<Self> {
        let (act_min, act_max) = activation_range(act, out_bits, s_out, z_out)?;
        let mut multiplier = Vec::with_capacity(s_w.len());
        let mut shift = Vec::with_capacity(s_w.len());
        for &sw in s_w {
            let (m, s) = quantize_multiplier(s_x as f64 * sw as f64 / s_out as f64)?;
            multiplier.push(m);
            shift.push(s);
        }
        Ok(Requant { multiplier, shift, out_zero: z_out, act_min, act_max })
    }

    /// Checks the channel count and ranges.
    pub fn validate(&self, channels: usize) -> Result<()> {
        if self.multiplier.len() != channels || self.shift.len() != channels {
            return Err(WqatError::shape(format!(
                "requant has {} multipliers / {} shifts for {channels} channels",
                self.multiplier.len(),
                self.shift.len()
            )));
        }
        if self.shift.iter().any(|s| !(-31..=30).contains(s)) || self.multiplier.iter().any(|&m| m < 0) {
            return Err(WqatError::invalid("requant shift outside [-31, 30] or negative multiplier"));
        }
        if !(0..=255).contains(&self.out_zero) || self.act_min < 0 || self.act_max > 255 || self.act_min > self.act_max
        {
            return Err(WqatError::invalid(format!(
                "requant zero point {} / clamp [{}, {}] outside [0, 255]",
                self.out_zero, self.act_min, self.act_max
            )));
        }
        Ok(())
    }

    /// The uint8 output code of accumulator `acc` in channel `c`.
    #[inline]
    pub fn apply(&self, acc: i32, c: usize) -> u8 {
        requantize(acc, self.multiplier[c], self.shift[c], self.out_zero, self.act_min, self.act_max) as u8
    }
}

/// `round_half_even(x * M0 * 2^(shift - 31))` from the exact product, saturated to
/// `[-(2^31 - 1), 2^31 - 1]`; `M0 >= 0`, `shift` in `[-31, 30]` (total right shift 1..=62).
#[inline]
pub fn multiply_by_quantized_multiplier_rounded(x: i32, m0: i32, shift: i32) -> i32 {
    let k = (31 - shift).clamp(1, 62) as u32;
    let p = x as i64 * m0 as i64;
    let q = p >> k; // floor
    let rem = p - (q << k); // in [0, 2^k)
    let half = 1i64 << (k - 1);
    let q = q + i64::from(rem > half || (rem == half && q & 1 == 1));
    q.clamp(-(i32::MAX as i64), i32::MAX as i64) as i32
}

/// `clamp(round_once(acc * M), act_min - z_out, act_max - z_out) + z_out` with
/// [`multiply_by_quantized_multiplier_rounded`].
#[inline]
pub fn requantize(acc: i32, m0: i32, shift: i32, z_out: i32, act_min: i32, act_max: i32) -> i32 {
    multiply_by_quantized_multiplier_rounded(acc, m0, shift).clamp(act_min - z_out, act_max - z_out) + z_out
}

/// `round(b / (s_x * s_w[c]))` (half to even, in f64), saturated to i32.
pub fn quantize_bias(bias: &[f32], s_x: f32, s_w: &[f32]) -> Result<Vec<i32>> {
    if bias.len() != s_w.len() {
        return Err(WqatError::shape(format!("{} biases for {} weight scales", bias.len(), s_w.len())));
    }
    Ok(bias
        .iter()
        .zip(s_w)
        .map(|(&b, &sw)| {
            let v = (b as f64 / (s_x as f64 * sw as f64)).round_ties_even();
            v.clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect())
}
