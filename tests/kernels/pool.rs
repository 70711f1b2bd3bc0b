//! `shaders/pool.wgsl` against `reference::pool`; backward checked by finite differences.

use wqat::gpu::{DType, GpuTensor};
use wqat::kernels::pool::{self as k, PoolSpec};
use wqat::reference::pool::{self as r, Pool2dGeom};
use wqat::testing::{self, assert_bit_exact, assert_close};

/// Pool sums of at most kh * kw (or H * W) terms in another order than the f64 reference.
const POOL_RTOL: f32 = testing::FP32_REDUCTION_RTOL;
/// Absolute floor for values of order 1.
const POOL_ATOL: f32 = 1e-6;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn pools_match_reference_on_random_shapes() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(21);
    for case in 0..12u64 {
        let (n, c) = (testing::size(&mut rng, 1, 3), testing::size(&mut rng, 1, 9));
        let (h, w) = (testing::size(&mut rng, 3, 19), testing::size(&mut rng, 3, 19));
        let kh = testing::size(&mut rng, 1, 4);
        let kw = testing::size(&mut rng, 1, 4);
        let spec = PoolSpec {
            kernel: (kh, kw),
            stride: (testing::size(&mut rng, 1, 3), testing::size(&mut rng, 1, 3)),
            padding: (testing::size(&mut rng, 0, kh / 2), testing::size(&mut rng, 0, kw / 2)),
        };
        let (g, os) = k::pool_geometry(&[n, c, h, w], &spec).unwrap();
        let x = testing::uniform(&mut rng, n * c * h * w, -2.0, 2.0);
        // Some exact ties so "first max wins" is exercised.
        let x: Vec<f32> = x.iter().enumerate().map(|(i, &v)| if i % 5 == 0 { 1.0 } else { v }).collect();
        let on = os.iter().product();
        let dy = testing::uniform(&mut rng, on, -1.0, 1.0);
        let dyg = testing::uniform(&mut rng, n * c, -1.0, 1.0);

        let gx = GpuTensor::from_f32(&ctx, &[n, c, h, w], &x).unwrap();
        let gdy = GpuTensor::from_f32(&ctx, &os, &dy).unwrap();
        let gdyg = GpuTensor::from_f32(&ctx, &[n, c], &dyg).unwrap();
        let ymax = GpuTensor::zeros(&ctx, &os, DType::F32).unwrap();
        let arg = GpuTensor::zeros(&ctx, &os, DType::U32).unwrap();
        let yavg = GpuTensor::zeros(&ctx, &os, DType::F32).unwrap();
        let yg = GpuTensor::zeros(&ctx, &[n, c], DType::F32).unwrap();
        let dxs: Vec<GpuTensor> = (0..3).map(|_| GpuTensor::zeros(&ctx, &[n, c, h, w], DType::F32).unwrap()).collect();
        let ds = [
            k::maxpool_forward(&ctx, &gx, &ymax, &arg, &spec).unwrap(),
            k::maxpool_backward(&ctx, &gdy, &arg, &dxs[0], &spec).unwrap(),
            k::avgpool_forward(&ctx, &gx, &yavg, &spec).unwrap(),
            k::avgpool_backward(&ctx, &gdy, &dxs[1], &spec).unwrap(),
            k::global_avgpool_forward(&ctx, &gx, &yg).unwrap(),
            k::global_avgpool_backward(&ctx, &gdyg, &dxs[2]).unwrap(),
        ];
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        let what = |s: &str| format!("{s} case {case} x {:?} {spec:?}", [n, c, h, w]);
        let (x64, dy64) = (f64s(&x), f64s(&dy));
        let (wy, widx) = r::maxpool_forward(&x64, &g);
        assert_bit_exact(&what("maxpool y"), &ymax.read_f32(&ctx).unwrap(), &f32s(&wy));
        assert_bit_exact(&what("maxpool argmax"), &arg.read_u32(&ctx).unwrap(), &widx);
        let want = f32s(&r::maxpool_backward(&dy64, &widx, &g));
        assert_close(&what("maxpool dx"), &dxs[0].read_f32(&ctx).unwrap(), &want, POOL_RTOL, POOL_ATOL);
        let want = f32s(&r::avgpool_forward(&x64, &g));
        assert_close(&what("avgpool y"), &yavg.read_f32(&ctx).unwrap(), &want, POOL_RTOL, POOL_ATOL);
        let want = f32s(&r::avgpool_backward(&dy64, &g));
        assert_close(&what("avgpool dx"), &dxs[1].read_f32(&ctx).unwrap(), &want, POOL_RTOL, POOL_ATOL);
        let want = f32s(&r::global_avgpool_forward(&x64, n * c, h * w));
        assert_close(&what("gap y"), &yg.read_f32(&ctx).unwrap(), &want, POOL_RTOL, POOL_ATOL);
        let want = f32s(&r::global_avgpool_backward(&f64s(&dyg), n * c, h * w));
        assert_close(&what("gap dx"), &dxs[2].read_f32(&ctx).unwrap(), &want, POOL_RTOL, POOL_ATOL);
    }
}

fn check_fd(what: &str, x: &[f64], dx: &[f64], f: &mut dyn FnMut(&[f64]) -> f64) {
    for (i, &d) in dx.iter().enumerate() {
        let fd = testing::finite_diff(f, x, i, 1e-5);
        assert!((fd - d).abs() <= testing::FINITE_DIFF_RTOL * (1.0 + fd.abs()), "{what}: i {i} fd {fd} analytic {d}");
    }
}

#[test]
fn pool_backward_matches_finite_differences() {
    let mut rng = testing::rng(22);
    for (h, w, spec) in [
        (5, 6, PoolSpec { kernel: (3, 3), stride: (2, 2), padding: (1, 1) }),
        (4, 7, PoolSpec { kernel: (2, 3), stride: (1, 2), padding: (0, 1) }),
    ] {
        let g = Pool2dGeom {
            planes: 2,
            h,
            w,
            kh: spec.kernel.0,
            kw: spec.kernel.1,
            sh: spec.stride.0,
            sw: spec.stride.1,
            ph: spec.padding.0,
            pw: spec.padding.1,
        };
        // Distinct values (a shuffled ramp) so the max is never near a tie.
        let n = 2 * h * w;
        let mut x: Vec<f64> = (0..n).map(|i| ((i * 37) % n) as f64 * 0.1).collect();
        for v in x.iter_mut() {
            *v += rng_small(&mut rng);
        }
        let on = 2 * g.oh() * g.ow();
        let wt: Vec<f64> = testing::uniform(&mut rng, on, -1.0, 1.0).iter().map(|&v| v as f64).collect();
        let loss = |y: &[f64]| y.iter().zip(&wt).map(|(a, b)| a * b).sum::<f64>();
        let (_, idx) = r::maxpool_forward(&x, &g);
        check_fd("maxpool", &x, &r::maxpool_backward(&wt, &idx, &g), &mut |x| loss(&r::maxpool_forward(x, &g).0));
        check_fd("avgpool", &x, &r::avgpool_backward(&wt, &g), &mut |x| loss(&r::avgpool_forward(x, &g)));
        let wg = &wt[..2];
        check_fd("gap", &x, &r::global_avgpool_backward(wg, 2, h * w), &mut |x| {
            r::global_avgpool_forward(x, 2, h * w).iter().zip(wg).map(|(a, b)| a * b).sum()
        });
    }
}

fn rng_small(rng: &mut rand_chacha::ChaCha8Rng) -> f64 {
    testing::uniform(rng, 1, 0.0, 0.01)[0] as f64
}

#[test]
fn shape_errors_are_reported() {
    let ctx = testing::ctx();
    let x = GpuTensor::zeros(&ctx, &[1, 2, 5, 5], DType::F32).unwrap();
    let spec = PoolSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) };
    let y = GpuTensor::zeros(&ctx, &[1, 2, 2, 2], DType::F32).unwrap();
    let bad = GpuTensor::zeros(&ctx, &[1, 2, 3, 3], DType::F32).unwrap();
    let arg = GpuTensor::zeros(&ctx, &[1, 2, 2, 2], DType::U32).unwrap();
    assert!(k::avgpool_forward(&ctx, &x, &y, &spec).is_ok());
    assert!(k::avgpool_forward(&ctx, &x, &bad, &spec).is_err());
    assert!(k::maxpool_forward(&ctx, &x, &y, &y, &spec).is_err(), "argmax must be U32");
    assert!(k::maxpool_forward(&ctx, &x, &y, &arg, &PoolSpec { padding: (2, 0), ..spec }).is_err());
    assert!(k::maxpool_forward(&ctx, &x, &y, &arg, &PoolSpec { kernel: (7, 2), ..spec }).is_err());
    assert!(k::avgpool_forward(&ctx, &y, &x, &PoolSpec { stride: (0, 1), ..spec }).is_err());
    let flat = GpuTensor::zeros(&ctx, &[2, 25], DType::F32).unwrap();
    assert!(k::global_avgpool_forward(&ctx, &flat, &y).is_err());
    assert!(k::global_avgpool_forward(&ctx, &x, &flat).is_err());
}
