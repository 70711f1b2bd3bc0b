//! Configuration structs of the int8 ops, with validation and output shapes. All tensors
//! are flat row-major slices: activations `u8`, weights `i8`, biases `i32`.

use super::requant::{
    activation_range, multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_rounded, quantize_multiplier,
    Activation,
};
use crate::error::{Result, WqatError};

/// Largest zero-point-free product magnitude |(x - z) * w| (255 * 128): K up to
/// `i32::MAX / 32640 = 65793` never wraps the accumulator before the bias is added.
pub const MAX_PRODUCT: i64 = 255 * 128;

fn check_zero(z: i32, what: &str) -> Result<()> {
    if !(0..=255).contains(&z) {
        return Err(WqatError::invalid(format!("{what} zero point {z} outside [0, 255]")));
    }
    Ok(())
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(WqatError::shape(format!("{what} has {got} elements, expected {want}")));
    }
    Ok(())
}

/// `out[i, c] = requant(sum_k (x[i, k] - x_zero) * w[c, k] + bias[c])`:
/// x `[m, k]` u8, w `[n, k]` i8, bias `[n]` i32, out `[m, n]` u8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearConfig {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Input zero point `z_x` in `[0, 255]`.
    pub x_zero: i32,
}

impl LinearConfig {
    /// Checks sizes against the slices.
    pub fn validate(&self, x: usize, w: usize, bias: usize, out: usize) -> Result<()> {
        if self.m == 0 || self.k == 0 || self.n == 0 {
            return Err(WqatError::shape(format!("int8 linear with a zero size: {self:?}")));
        }
        check_zero(self.x_zero, "input")?;
        check_len("linear x", x, self.m * self.k)?;
        check_len("linear w", w, self.n * self.k)?;
        check_len("linear bias", bias, self.n)?;
        check_len("linear out", out, self.m * self.n)
    }
}

/// NCHW conv: x `[batch, c_in, h, w]` u8, w `[c_out, c_in / groups, kh, kw]` i8, bias
/// `[c_out]`, out `[batch, c_out, oh, ow]` u8. Padding positions read `x_zero` (they add
/// nothing to the accumulator). `groups == c_in == c_out` is depthwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub x_zero: i32,
}

impl Conv2dConfig {
    /// `(oh, ow)`, or an error when the (dilated) kernel does not fit the padded input.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let mut o = [0usize; 2];
        let sizes = [self.h, self.w];
        for d in 0..2 {
            if self.kernel[d] == 0 || self.stride[d] == 0 || self.dilation[d] == 0 {
                return Err(WqatError::shape(format!("conv kernel/stride/dilation must be >= 1: {self:?}")));
            }
            let span = self.dilation[d] * (self.kernel[d] - 1) + 1;
            let padded = sizes[d] + 2 * self.padding[d];
            if padded < span {
                return Err(WqatError::shape(format!("conv kernel span {span} exceeds padded input {padded}")));
            }
            o[d] = (padded - span) / self.stride[d] + 1;
        }
        Ok((o[0], o[1]))
    }
    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.c_in / self.groups.max(1)
    }
    /// Output channels per group.
    pub fn cout_g(&self) -> usize {
        self.c_out / self.groups.max(1)
    }
    /// Reduction length `c_in / groups * kh * kw`.
    pub fn k(&self) -> usize {
        self.cin_g() * self.kernel[0] * self.kernel[1]
    }
    /// Output element count.
    pub fn out_len(&self) -> Result<usize> {
        let (oh, ow) = self.out_hw()?;
        Ok(self.batch * self.c_out * oh * ow)
    }
    /// Checks the geometry and the slice lengths.
    pub fn validate(&self, x: usize, w: usize, bias: usize, out: usize) -> Result<()> {
        if self.batch == 0 || self.c_in == 0 || self.h == 0 || self.w == 0 || self.c_out == 0 || self.groups == 0 {
            return Err(WqatError::shape(format!("int8 conv with a zero size: {self:?}")));
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return Err(WqatError::shape(format!("conv groups {} must divide c_in and c_out", self.groups)));
        }
        check_zero(self.x_zero, "input")?;
        check_len("conv x", x, self.batch * self.c_in * self.h * self.w)?;
        check_len("conv w", w, self.c_out * self.k())?;
        check_len("conv bias", bias, self.c_out)?;
        check_len("conv out", out, self.out_len()?)
    }
}

/// Max / average pooling window over NCHW u8 (padding never contributes: max pool ignores
/// it, average pool divides by the number of in-bounds elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    pub batch: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl PoolConfig {
    /// `(oh, ow)`; padding must be less than the kernel so every window has an element.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let mut o = [0usize; 2];
        let sizes = [self.h, self.w];
        for d in 0..2 {
            if self.kernel[d] == 0 || self.stride[d] == 0 || self.padding[d] >= self.kernel[d] {
                return Err(WqatError::shape(format!("pool kernel/stride >= 1 and padding < kernel: {self:?}")));
            }
            let padded = sizes[d] + 2 * self.padding[d];
            if padded < self.kernel[d] {
                return Err(WqatError::shape(format!("pool kernel exceeds padded input: {self:?}")));
            }
            o[d] = (padded - self.kernel[d]) / self.stride[d] + 1;
        }
        Ok((o[0], o[1]))
    }
    /// Checks sizes.
    pub fn validate(&self, x: usize, out: usize) -> Result<()> {
        if self.batch == 0 || self.channels == 0 || self.h == 0 || self.w == 0 {
            return Err(WqatError::shape(format!("int8 pool with a zero size: {self:?}")));
        }
        let (oh, ow) = self.out_hw()?;
        check_len("pool x", x, self.batch * self.channels * self.h * self.w)?;
        check_len("pool out", out, self.batch * self.channels * oh * ow)
    }
    /// A window covering the whole `h x w` plane (global pooling).
    pub fn global(batch: usize, channels: usize, h: usize, w: usize) -> Self {
        PoolConfig { batch, channels, h, w, kernel: [h, w], stride: [1, 1], padding: [0, 0] }
    }
}

/// Average-pool rescaling of a window sum of `q - z_in` over a window of `kh * kw` positions
/// (padding counts as zero-valued, i.e. as `z_in`):
/// * same scale in and out (every pool the converter makes): `out = z + round(sum / (kh*kw))`,
///   the exact rational mean rounded half to even ([`AvgDivisor::Exact`]). The simulation
///   rounds the same exact mean of codes, so the two agree bit for bit; a fixed-point `1/n`
///   would round ties of even non-power-of-two windows (6, 10, 12, ...) either way;
/// * rescaling pools: `out = clamp(z_out + R(sum, M))`, `M = quantize_multiplier(s_in /
///   (s_out * kh * kw))` rounded once, half to even ([`AvgDivisor::Fixed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AvgRequant {
    pub in_zero: i32,
    pub out_zero: i32,
    /// `s_in / s_out` (1 when pooling keeps the scale).
    pub scale_ratio: f64,
    pub act_min: i32,
    pub act_max: i32,
}

impl AvgRequant {
    /// Same scale and zero point in and out, full 8-bit range.
    pub fn same_scale(zero: i32) -> Self {
        AvgRequant { in_zero: zero, out_zero: zero, scale_ratio: 1.0, act_min: 0, act_max: 255 }
    }
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        check_zero(self.in_zero, "avg-pool input")?;
        check_zero(self.out_zero, "avg-pool output")?;
        if !(self.scale_ratio.is_finite() && self.scale_ratio > 0.0)
            || self.act_min < 0
            || self.act_max > 255
            || self.act_min > self.act_max
        {
            return Err(WqatError::invalid(format!("avg-pool requant out of range: {self:?}")));
        }
        Ok(())
    }
    /// How a window of `window` positions (`kh * kw`) divides its sum.
    pub fn divisor(&self, window: usize) -> Result<AvgDivisor> {
        if window == 0 || window > (1 << 23) {
            return Err(WqatError::Limit(format!("avg-pool window of {window} elements (1 to 2^23)")));
        }
        if self.scale_ratio == 1.0 {
            return Ok(AvgDivisor::Exact(window as i32));
        }
        let (m0, shift) = quantize_multiplier(self.scale_ratio / window as f64)?;
        Ok(AvgDivisor::Fixed(m0, shift))
    }
    /// Output code of the sum of `count` in-bounds codes of a window.
    #[inline]
    pub fn apply(&self, sum: i32, count: i32, d: AvgDivisor) -> u8 {
        let t = sum - count * self.in_zero;
        let v = match d {
            AvgDivisor::Exact(n) => div_round_half_even(t, n),
            AvgDivisor::Fixed(m0, shift) => multiply_by_quantized_multiplier_rounded(t, m0, shift),
        };
        (v.clamp(self.act_min - self.out_zero, self.act_max - self.out_zero) + self.out_zero) as u8
    }
}

/// The division of an average pool's window sum (see [`AvgRequant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvgDivisor {
    /// `round_half_even(sum / n)`, exact.
    Exact(i32),
    /// `R(sum, M0, shift)`: one fixed-point multiply, rounded once.
    Fixed(i32, i32),
}

/// `t / n` rounded to the nearest integer, ties to even, exactly (`n > 0`).
#[inline]
pub fn div_round_half_even(t: i32, n: i32) -> i32 {
    let q = t.div_euclid(n);
    let r = t.rem_euclid(n);
    match (2 * r).cmp(&n) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    }
}

/// TFLite quantized ADD of two u8 tensors with different scales: with `left_shift = 20`,
/// `twice_max = 2 * max(s1, s2)`, `M1 = s1 / twice_max`, `M2 = s2 / twice_max`,
/// `Mo = twice_max / (2^20 * s_out)`:
/// `out = clamp(z_out + MBQM(MBQM((a - z1) << 20, M1) + MBQM((b - z2) << 20, M2), Mo))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddConfig {
    pub a_zero: i32,
    pub b_zero: i32,
    pub out_zero: i32,
    pub a_mult: (i32, i32),
    pub b_mult: (i32, i32),
    pub out_mult: (i32, i32),
    pub act_min: i32,
    pub act_max: i32,
}

impl AddConfig {
    /// The TFLite left shift applied to both inputs.
    pub const LEFT_SHIFT: u32 = 20;

    /// Multipliers from the real scales; the output is `out_bits` wide with `act` folded in.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s_a: f32,
        z_a: i32,
        s_b: f32,
        z_b: i32,
        s_out: f32,
        z_out: i32,
        out_bits: u32,
        act: Activation,
    ) -> Result<Self> {
        check_zero(z_a, "add input a")?;
        check_zero(z_b, "add input b")?;
        if !(s_a > 0.0 && s_b > 0.0 && s_a.is_finite() && s_b.is_finite()) {
            return Err(WqatError::invalid(format!("add input scales {s_a}, {s_b} must be finite and > 0")));
        }
        let (act_min, act_max) = activation_range(act, out_bits, s_out, z_out)?;
        let twice_max = 2.0 * (s_a.max(s_b) as f64);
        Ok(AddConfig {
            a_zero: z_a,
            b_zero: z_b,
            out_zero: z_out,
            a_mult: quantize_multiplier(s_a as f64 / twice_max)?,
            b_mult: quantize_multiplier(s_b as f64 / twice_max)?,
            out_mult: quantize_multiplier(twice_max / ((1u64 << Self::LEFT_SHIFT) as f64 * s_out as f64))?,
            act_min,
            act_max,
        })
    }

    /// One output code.
    #[inline]
    pub fn apply(&self, a: u8, b: u8) -> u8 {
        let sa = (a as i32 - self.a_zero) << Self::LEFT_SHIFT;
        let sb = (b as i32 - self.b_zero) << Self::LEFT_SHIFT;
        let ra = multiply_by_quantized_multiplier(sa, self.a_mult.0, self.a_mult.1);
        let rb = multiply_by_quantized_multiplier(sb, self.b_mult.0, self.b_mult.1);
        let v = multiply_by_quantized_multiplier(ra.wrapping_add(rb), self.out_mult.0, self.out_mult.1);
        (v.clamp(self.act_min - self.out_zero, self.act_max - self.out_zero) + self.out_zero) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact half-to-even division against f64 (exact for these magnitudes), and the case
    /// it exists for: a fixed-point `1/6` rounds some exact ties of a 6-element window up.
    #[test]
    fn exact_pool_division_rounds_ties_to_even() {
        for n in 1..=70 {
            for t in -255 * n..=255 * n {
                let want = (t as f64 / n as f64).round_ties_even() as i32;
                assert_eq!(div_round_half_even(t, n), want, "{t} / {n}");
            }
        }
        let rq = AvgRequant::same_scale(0);
        assert_eq!(rq.divisor(6).unwrap(), AvgDivisor::Exact(6));
        let (m0, shift) = quantize_multiplier(1.0 / 6.0).unwrap();
        let fixed_differs =
            (-1530..=1530).any(|t| multiply_by_quantized_multiplier_rounded(t, m0, shift) != div_round_half_even(t, 6));
        assert!(fixed_differs, "the fixed-point 1/6 is exact here: the exact path would not be needed");
        let rescale = AvgRequant { scale_ratio: 0.5, ..rq };
        assert!(matches!(rescale.divisor(4).unwrap(), AvgDivisor::Fixed(..)));
        assert!(rq.divisor(0).is_err());
    }
}
