//! Helpers shared by the test binaries and benches: one lazily created device per process,
//! seeded random data, named tolerances and comparisons that print where they failed.

use crate::gpu::{GpuContext, GpuOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, OnceLock};

/// Relative tolerance for fp32 elementwise kernels (same operations, same order).
pub const FP32_ELEMENTWISE_RTOL: f32 = 1e-6;
/// Relative tolerance for fp32 reductions (GEMM, conv, sums): the GPU sums in another
/// order, so the error is measured against the sum of absolute terms.
pub const FP32_REDUCTION_RTOL: f32 = 1e-5;
/// Relative tolerance of finite-difference gradient checks (central differences in f64).
pub const FINITE_DIFF_RTOL: f64 = 1e-4;
/// GELU (erf form, `shaders/common/erf.wgsl`) against the f64 reference: `|got - want| <=
/// GELU_ATOL + GELU_RTOL * |want|`. The erf/erfc fit itself is good to 5.4e-8 relative, so
/// what remains is f32 rounding: a few ulp (1.2e-7 each) in the bulk, and for x << 0 the
/// rounding of x / sqrt 2 and of the exponent -x^2 / 2 (relative ~x^2 * 2^-24, ~3e-6 at
/// x = -10) plus the adapter's exp (WGSL allows 3 + 2|x| ulp). The relative part covers
/// the bulk; the absolute part the tails (where |gelu| < 1e-5 by then) and the zero of
/// gelu' near x = -0.75, where Phi(x) ~ 0.2 and x phi(x) ~ -0.23 cancel with a few ulp
/// (1.5e-8) each. On lavapipe the worst cases use 31% (forward) and 62% (gradient) of it.
pub const GELU_RTOL: f32 = 1e-6;
/// See [`GELU_RTOL`].
pub const GELU_ATOL: f32 = 2e-7;

static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();

/// The device shared by every test in this process, built from `GpuOptions::from_env()`
/// (adapter choice). Tests of a path that an option forces (int8 dot4 or unpack, conv
/// DIRECT or tiled) build a context per path themselves. Panics with the adapter error,
/// which names the fix, when no adapter exists.
pub fn ctx() -> Arc<GpuContext> {
    CTX.get_or_init(|| match GpuContext::new(&GpuOptions::from_env()) {
        Ok(c) => {
            eprintln!("wqat tests on adapter: {} ({})", c.summary.name, c.summary.backend);
            c
        }
        Err(e) => panic!("{e}"),
    })
    .clone()
}

/// A seeded RNG; tests print the seed on failure through their messages.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` values uniform in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// A size in `[lo, hi]` (tests pick ranges that straddle workgroup sizes).
pub fn size(rng: &mut ChaCha8Rng, lo: usize, hi: usize) -> usize {
    rng.random_range(lo..=hi)
}

/// Asserts `|a - b| <= atol + rtol * |b|` elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: got {g}, want {w} (rtol {rtol}, atol {atol})");
    }
}

/// Asserts `|a - b| <= rtol * scale[i]` where `scale[i]` is the sum of absolute terms that
/// produced element i (e.g. `sum_k |a_ik * b_kj|`), the right yardstick for reductions.
pub fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], scale: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for i in 0..got.len() {
        let tol = rtol * scale[i].max(1e-30) + 1e-30;
        assert!((got[i] - want[i]).abs() <= tol, "{what}: element {i}: got {}, want {} (tol {tol})", got[i], want[i]);
    }
}

/// Asserts exact equality (fake-quant codes, integer paths).
pub fn assert_bit_exact<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: element {i}: got {g:?}, want {w:?}");
    }
}

/// Central finite difference of a scalar function of `x` at coordinate `i`, in f64.
pub fn finite_diff(f: &mut dyn FnMut(&[f64]) -> f64, x: &[f64], i: usize, h: f64) -> f64 {
    let mut xp = x.to_vec();
    xp[i] += h;
    let fp = f(&xp);
    xp[i] -= 2.0 * h;
    let fm = f(&xp);
    (fp - fm) / (2.0 * h)
}

/// A Python interpreter whose `import {imports}` works (`WQAT_PYTHON`, then `python3`, then
/// `/usr/bin/python3`), or None after printing why the caller is skipped (`hint`: how to get
/// the modules). With `WQAT_REQUIRE_PYTHON=1` (CI) a missing interpreter is a failure.
pub fn python_with(imports: &str, who: &str, hint: &str) -> Option<String> {
    let mut candidates: Vec<String> = std::env::var("WQAT_PYTHON").into_iter().collect();
    candidates.extend(["python3".to_string(), "/usr/bin/python3".to_string()]);
    let code = format!("import {imports}");
    for py in &candidates {
        let ok = std::process::Command::new(py).args(["-c", &code]).output().is_ok_and(|o| o.status.success());
        if ok {
            return Some(py.clone());
        }
    }
    let msg = format!("{who}: SKIPPED: none of {candidates:?} can `import {imports}` ({hint})");
    if std::env::var("WQAT_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!("{msg}; WQAT_REQUIRE_PYTHON=1 makes this a failure");
    }
    eprintln!("{msg}");
    None
}
