// erf, erfc, the standard normal CDF/PDF and GELU in f32 (WGSL has no erf).
//
// Why these forms: GELU (erf form) is x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2. Written
// as 0.5 x (1 + erf(x / sqrt 2)) it cancels in the negative tail (1 + erf(-3.5) keeps about
// 3 significant bits in f32), so the primary routines keep erfc RELATIVELY accurate for
// large arguments and erf relatively accurate near 0; erf and erfc are never formed as
// 1 - (something close to 1).
//
// The approximation (fitted for wqat: near-minimax, by Lawson-reweighted least squares in
// f64 against libm's erf/erfc, each coefficient rounded to f32 in turn and the higher ones
// refitted, so the error bounds below hold for the f32 coefficients as written):
//   |x| < 1:  erf(x) = x * P(x^2), P of degree 6; max relative error 5.4e-8, almost all of
//             it 2/sqrt(pi) rounded to f32 (P0, unavoidable in f32).
//   z >= 1:   erfc(z) = t * exp(Q(t) - z^2), t = 1 / (1 + z / 2), Q of degree 8 (the form of
//             Numerical Recipes' `erfcc`, refitted on z in [1, 10] only); max relative
//             error 3.2e-9.
//   erfc(x) = 1 - erf(x) for |x| < 1 (erfc in (0.157, 1.843): no cancellation),
//   erfc(-z) = 2 - erfc(z), erf(x) = sign(x) (1 - erfc(|x|)) for |x| >= 1.
// Evaluated in f32 (measured on a 2e6-point grid over [-12, 12] and at tiny x, no FMA,
// correctly rounded exp): erf max abs error 1.2e-7 (2 ulp near |x| = 0.97) and max relative
// error 1.7e-7; erfc max relative error 1.1e-6 for x < 3 and 7.8e-6 up to x = 9.2, all of
// it the f32 rounding of z^2 inside exp (relative ~z^2 * 2^-24, while erfc(3) = 2.2e-5
// already). A GPU's exp adds its own few ulp ("3 + 2|x| ulp" in the WGSL spec), again
// relative to a value that is tiny once |x| is large.
// Special values: NaN in -> NaN out (tested on the bits: WGSL implementations may assume
// float comparisons never see NaN); for z >= 10, erfc(z) < 2.1e-45 returns 0 and erf +-1,
// so +-Inf saturates too and exp never sees an infinite argument.

// Coefficients of P (erf(x) / x in powers of x^2) and Q (powers of t), lowest first.
const ERF_P0: f32 = 1.1283791;
const ERF_P1: f32 = -0.37612218;
const ERF_P2: f32 = 0.11278958;
const ERF_P3: f32 = -0.026660467;
const ERF_P4: f32 = 0.0048213666;
const ERF_P5: f32 = -0.00047893715;
const ERF_P6: f32 = -2.7723618e-05;

const ERFC_Q0: f32 = -1.2654983;
const ERFC_Q1: f32 = 0.9996853;
const ERFC_Q2: f32 = 0.3778149;
const ERFC_Q3: f32 = 0.071683295;
const ERFC_Q4: f32 = -0.072894104;
const ERFC_Q5: f32 = -0.06596455;
const ERFC_Q6: f32 = -0.44979122;
const ERFC_Q7: f32 = 0.6439759;
const ERFC_Q8: f32 = -0.24022596;

const FRAC_1_SQRT_2: f32 = 0.70710678;
const FRAC_1_SQRT_2PI: f32 = 0.39894228;

fn erf_is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// erf(x) for |x| < 1: x * P(x^2).
fn erf_small(x: f32) -> f32 {
    let s = x * x;
    let p = ERF_P0 + s * (ERF_P1 + s * (ERF_P2 + s * (ERF_P3 + s * (ERF_P4 + s * (ERF_P5 + s * ERF_P6)))));
    return x * p;
}

// erfc(z) for z >= 1 (0 from z = 10 on).
fn erfc_tail(z: f32) -> f32 {
    if (z >= 10.0) { return 0.0; }
    let t = 1.0 / (1.0 + 0.5 * z);
    let q = ERFC_Q0 + t * (ERFC_Q1 + t * (ERFC_Q2 + t * (ERFC_Q3 + t * (ERFC_Q4 + t * (ERFC_Q5
        + t * (ERFC_Q6 + t * (ERFC_Q7 + t * ERFC_Q8)))))));
    return t * exp(q - z * z);
}

fn erf(x: f32) -> f32 {
    if (erf_is_nan(x)) { return x; }
    let a = abs(x);
    if (a < 1.0) { return erf_small(x); }
    let r = 1.0 - erfc_tail(a);
    return select(r, -r, x < 0.0);
}

fn erfc(x: f32) -> f32 {
    if (erf_is_nan(x)) { return x; }
    if (x >= 1.0) { return erfc_tail(x); }
    if (x > -1.0) { return 1.0 - erf_small(x); }
    return 2.0 - erfc_tail(-x);
}

// Standard normal CDF Phi(x) = erfc(-x / sqrt 2) / 2 (relatively accurate for x << 0).
fn normal_cdf(x: f32) -> f32 {
    return 0.5 * erfc(-x * FRAC_1_SQRT_2);
}

// Standard normal density phi(x) = exp(-x^2 / 2) / sqrt(2 pi) (0 once exp underflows).
fn normal_pdf(x: f32) -> f32 {
    return FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
}

// GELU, erf form (PyTorch's nn.GELU()): x * Phi(x). The one definition shared by the training
// kernel (gelu.wgsl) and the integer model's GELU before quantization (int8_ops.wgsl).
fn gelu(x: f32) -> f32 {
    return x * normal_cdf(x);
}
