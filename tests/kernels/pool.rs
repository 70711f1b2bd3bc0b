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

/// Average pools of fake-quantized input (`*_forward_q`): with the quantizer on, the exact
/// mean of the code offsets rounded half to even, times the scale (the integer model's
/// rule); ties are frequent here (4-bit codes, 2x2 and 4x4 windows). With the quantizer off,
/// the same bits as the float pools.
#[test]
fn quantized_avg_pools_round_the_exact_code_mean() {
    use wqat::quant::QStateLayout;
    let ctx = testing::ctx();
    let mut rng = testing::rng(23);
    let mut ties = 0usize;
    for case in 0..10u64 {
        let (n, c) = (testing::size(&mut rng, 1, 3), testing::size(&mut rng, 1, 5));
        let (h, w) = (testing::size(&mut rng, 2, 17), testing::size(&mut rng, 2, 17));
        let kh = testing::size(&mut rng, 1, h.min(4));
        let kw = testing::size(&mut rng, 1, w.min(4));
        let spec = PoolSpec {
            kernel: (kh, kw),
            stride: (testing::size(&mut rng, 1, 3), testing::size(&mut rng, 1, 3)),
            padding: (testing::size(&mut rng, 0, kh / 2), testing::size(&mut rng, 0, kw / 2)),
        };
        let (g, os) = k::pool_geometry(&[n, c, h, w], &spec).unwrap();
        let (scale, zero) = (rand::Rng::random_range(&mut rng, 0.005f32..0.3), (case % 16) as f32);
        let inv = 1.0 / scale;
        // Fake-quantized values (q - z) * s of 4-bit codes q.
        let offsets: Vec<i32> =
            (0..n * c * h * w).map(|_| rand::Rng::random_range(&mut rng, 0..16) - zero as i32).collect();
        let x: Vec<f32> = offsets.iter().map(|&k| k as f32 * scale).collect();
        let gx = GpuTensor::from_f32(&ctx, &[n, c, h, w], &x).unwrap();
        for fq_on in [true, false] {
            let mut state = QStateLayout::exact(scale, inv, zero);
            state[QStateLayout::FQ_ENABLED] = if fq_on { 1.0 } else { 0.0 };
            let gq = GpuTensor::from_f32(&ctx, &[state.len()], &state).unwrap();
            let (ya, yb) =
                (GpuTensor::zeros(&ctx, &os, DType::F32).unwrap(), GpuTensor::zeros(&ctx, &os, DType::F32).unwrap());
            let (ga, gb) = (
                GpuTensor::zeros(&ctx, &[n, c], DType::F32).unwrap(),
                GpuTensor::zeros(&ctx, &[n, c], DType::F32).unwrap(),
            );
            let ds = [
                k::avgpool_forward_q(&ctx, &gx, &ya, &spec, &gq).unwrap(),
                k::avgpool_forward(&ctx, &gx, &yb, &spec).unwrap(),
                k::global_avgpool_forward_q(&ctx, &gx, &ga, &gq).unwrap(),
                k::global_avgpool_forward(&ctx, &gx, &gb).unwrap(),
            ];
            ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
            let what = |s: &str| format!("{s} case {case} fq {fq_on} x {:?} {spec:?}", [n, c, h, w]);
            let (got, got_g) = (ya.read_f32(&ctx).unwrap(), ga.read_f32(&ctx).unwrap());
            if !fq_on {
                assert_bit_exact(&what("avg q off"), &got, &yb.read_f32(&ctx).unwrap());
                assert_bit_exact(&what("global q off"), &got_g, &gb.read_f32(&ctx).unwrap());
                continue;
            }
            // Expected: integer window sums of the offsets, divided exactly.
            let mut want = vec![0f32; got.len()];
            for p in 0..n * c {
                for oy in 0..g.oh() {
                    for ox in 0..g.ow() {
                        let mut t = 0i32;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * spec.stride.0 + ky) as isize - spec.padding.0 as isize;
                                let ix = (ox * spec.stride.1 + kx) as isize - spec.padding.1 as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    t += offsets[p * h * w + iy as usize * w + ix as usize];
                                }
                            }
                        }
                        let win = (kh * kw) as i32;
                        ties += usize::from((2 * t.rem_euclid(win)) == win);
                        want[(p * g.oh() + oy) * g.ow() + ox] = wqat::infer::div_round_half_even(t, win) as f32 * scale;
                    }
                }
            }
            assert_bit_exact(&what("avg q"), &got, &want);
            let want_g: Vec<f32> = (0..n * c)
                .map(|p| {
                    let t: i32 = offsets[p * h * w..][..h * w].iter().sum();
                    wqat::infer::div_round_half_even(t, (h * w) as i32) as f32 * scale
                })
                .collect();
            assert_bit_exact(&what("global q"), &got_g, &want_g);
        }
    }
    assert!(ties > 20, "only {ties} rounding ties exercised");
}
