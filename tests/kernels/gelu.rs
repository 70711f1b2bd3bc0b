//! `shaders/gelu.wgsl` (and its `common/erf.wgsl`) against `reference::gelu` (f64, libm's
//! erfc) over the whole f32 range that matters, tails and tiny values included; the
//! reference derivative against finite differences of the reference forward.

use wqat::gpu::{DType, GpuTensor};
use wqat::kernels::gelu as k;
use wqat::reference::gelu as r;
use wqat::testing::{self, assert_close, GELU_ATOL, GELU_RTOL};

/// Inputs: a dense grid over [-10, 10], tiny and signed-zero values, random values; an
/// odd count, so the last workgroup is partial.
fn inputs(seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = (0..=20_000).map(|i| -10.0 + i as f32 * 1e-3).collect();
    for t in
        [0.0f32, 1e-38, 1e-30, 1e-20, 1e-10, 1e-7, 1e-5, 1e-3, 0.1, 0.75, 1.0, std::f32::consts::SQRT_2, 3.0, 5.0, 8.0]
    {
        x.extend([t, -t]);
    }
    let mut rng = testing::rng(seed);
    x.extend(testing::uniform(&mut rng, 3001, -6.0, 6.0));
    x
}

#[test]
fn gelu_matches_reference_over_the_range() {
    let ctx = testing::ctx();
    let seed = 41;
    let x = inputs(seed);
    let n = x.len();
    let mut rng = testing::rng(seed + 1);
    let dy = testing::uniform(&mut rng, n, -1.0, 1.0);
    let ones = vec![1.0f32; n];
    // [n] against a [1, n] output: the wrappers take element counts, not shapes.
    let gx = GpuTensor::from_f32(&ctx, &[n], &x).unwrap();
    let (gdy, gone) = (GpuTensor::from_f32(&ctx, &[n], &dy).unwrap(), GpuTensor::from_f32(&ctx, &[n], &ones).unwrap());
    let out = || GpuTensor::zeros(&ctx, &[1, n], DType::F32).unwrap();
    let (y, dx, grad) = (out(), out(), out());
    let ds = [
        k::gelu_forward(&ctx, &gx, &y).unwrap(),
        k::gelu_backward(&ctx, &gx, &gdy, &dx).unwrap(),
        k::gelu_backward(&ctx, &gx, &gone, &grad).unwrap(),
    ];
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
    let what = |s: &str| format!("{s} (seed {seed}, n {n})");
    let (gy, gdx, gg) = (y.read_f32(&ctx).unwrap(), dx.read_f32(&ctx).unwrap(), grad.read_f32(&ctx).unwrap());
    // Report the worst errors (useful when re-deriving the tolerance on another adapter).
    let worst = |got: &[f32], want: &[f32]| {
        let mut w = (0.0f64, 0.0f32);
        for (i, (g, v)) in got.iter().zip(want).enumerate() {
            let e = (g - v).abs() as f64 / (GELU_ATOL + GELU_RTOL * v.abs()) as f64;
            if e > w.0 {
                w = (e, x[i]);
            }
        }
        w
    };
    let (wy, wg) = (r::forward(&x), r::backward(&x, &ones));
    eprintln!("gelu: worst error / tolerance: forward {:?}, gradient {:?} (at x)", worst(&gy, &wy), worst(&gg, &wg));
    assert_close(&what("gelu forward"), &gy, &wy, GELU_RTOL, GELU_ATOL);
    assert_close(&what("gelu gradient (dy = 1)"), &gg, &wg, GELU_RTOL, GELU_ATOL);
    assert_close(&what("gelu backward"), &gdx, &r::backward(&x, &dy), GELU_RTOL, GELU_ATOL);
    // Signs are exact: gelu(x) has x's sign (0 where it underflows), the slope changes sign
    // once, near x = -0.7518.
    for (i, &v) in x.iter().enumerate() {
        assert!(gy[i] == 0.0 || gy[i].signum() == v.signum(), "{}: x {v} gave {}", what("sign"), gy[i]);
    }
}

#[test]
fn gelu_special_values() {
    let ctx = testing::ctx();
    let x = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 30.0, -30.0, 1e30, -1e30, 0.0, -0.0];
    let dy = [1.0f32; 9];
    let gx = GpuTensor::from_f32(&ctx, &[9], &x).unwrap();
    let gdy = GpuTensor::from_f32(&ctx, &[9], &dy).unwrap();
    let (y, dx) =
        (GpuTensor::zeros(&ctx, &[9], DType::F32).unwrap(), GpuTensor::zeros(&ctx, &[9], DType::F32).unwrap());
    let ds = [k::gelu_forward(&ctx, &gx, &y).unwrap(), k::gelu_backward(&ctx, &gx, &gdy, &dx).unwrap()];
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
    let (y, dx) = (y.read_f32(&ctx).unwrap(), dx.read_f32(&ctx).unwrap());
    assert!(y[0].is_nan() && dx[0].is_nan(), "NaN must propagate: y {} dx {}", y[0], dx[0]);
    assert_eq!(y[1], f32::INFINITY, "gelu(+inf)");
    assert_eq!(&dx[1..3], &[1.0, 0.0], "gelu'(+-inf)");
    assert_eq!(&y[3..7], &[30.0, 0.0, 1e30, 0.0], "saturated tails");
    assert_eq!(&dx[3..7], &[1.0, 0.0, 1.0, 0.0], "saturated tail gradients");
    assert_eq!(&y[7..], &[0.0, 0.0]);
    assert_eq!(&dx[7..], &[0.5, 0.5]);
}

#[test]
fn gelu_reference_values_and_finite_differences() {
    // Values PyTorch's nn.GELU() gives (to f32), and gelu'(0) = 1/2.
    let known = [(1.0f32, 0.841_344_8_f32), (-1.0, -0.158_655_25), (2.0, 1.954_499_7), (-3.0, -0.004_049_694)];
    for (x, want) in known {
        assert!((r::gelu(x) - want).abs() <= 1e-7 * want.abs().max(1.0), "gelu({x}) = {}, want {want}", r::gelu(x));
    }
    assert_eq!(r::gelu_grad(0.0), 0.5);
    // Deep negative tail: relative accuracy (1 + erf would give exactly 0 here in f64).
    let t = r::gelu_f64(-10.0);
    assert!(t < 0.0 && (t / -7.619853e-23 - 1.0).abs() < 1e-6, "gelu(-10) = {t}");
    let mut f = |v: &[f64]| r::gelu_f64(v[0]);
    for i in 0..=400 {
        let x = -10.0 + 0.05 * i as f64 + 0.0123;
        let fd = testing::finite_diff(&mut f, &[x], 0, 1e-5);
        let a = r::gelu_grad_f64(x);
        assert!((fd - a).abs() <= testing::FINITE_DIFF_RTOL * (1.0 + fd.abs()), "x {x}: fd {fd} analytic {a}");
        // backward = dy * gradient.
        assert_eq!(r::backward(&[x as f32], &[2.0])[0], (2.0 * r::gelu_grad_f64(x as f32 as f64)) as f32);
    }
}

#[test]
fn gelu_shape_errors_are_reported() {
    let ctx = testing::ctx();
    let a = GpuTensor::zeros(&ctx, &[3, 5], DType::F32).unwrap();
    let b = GpuTensor::zeros(&ctx, &[5, 3], DType::F32).unwrap();
    let c = GpuTensor::zeros(&ctx, &[14], DType::F32).unwrap();
    let i = GpuTensor::zeros(&ctx, &[15], DType::I32).unwrap();
    // Same element count, other shape: fine (flat buffers).
    assert!(k::gelu_forward(&ctx, &a, &b).is_ok());
    assert!(k::gelu_forward(&ctx, &a, &c).is_err());
    assert!(k::gelu_forward(&ctx, &i, &a).is_err());
    assert!(k::gelu_backward(&ctx, &a, &c, &b).is_err());
    assert!(k::gelu_backward(&ctx, &a, &b, &c).is_err());
    assert!(k::gelu_backward(&ctx, &a, &i, &b).is_err());
}
