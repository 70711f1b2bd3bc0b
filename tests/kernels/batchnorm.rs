//! `shaders/batchnorm.wgsl` and `shaders/bn_fold.wgsl` against `reference::{batchnorm,
//! bn_fold}` (f64 references); every backward checked by finite differences, including the
//! whole QAT conv-BN fold chain (running_var constant, fake-quant off).

use wqat::gpu::{DType, GpuTensor};
use wqat::kernels::batchnorm::{self as k, BnBackward};
use wqat::kernels::bn_fold as kf;
use wqat::reference::batchnorm::{self as r, Nchw};
use wqat::reference::bn_fold as rf;
use wqat::testing::{self, assert_close};

/// Batch statistics and normalized outputs: f32 two-pass reductions over up to ~2000
/// values in another order than the f64 reference.
const BN_RTOL: f32 = 1e-4;
/// Absolute floor for outputs of order 1 (means near 0, ReLU'd zeros).
const BN_ATOL: f32 = 1e-4;
/// Backward outputs: dx = k/M * (M g - sum g - xhat sum g xhat) cancels; sums of ~M terms.
const BN_BWD_ATOL: f32 = 5e-4;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
fn up(ctx: &wqat::gpu::GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, shape, v).unwrap()
}
fn zeros(ctx: &wqat::gpu::GpuContext, shape: &[usize]) -> GpuTensor {
    GpuTensor::zeros(ctx, shape, DType::F32).unwrap()
}

#[test]
fn batchnorm_matches_reference_on_random_shapes() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(31);
    for case in 0..8u64 {
        let n = testing::size(&mut rng, 1, 5);
        let c = testing::size(&mut rng, 1, 19);
        let shape: Vec<usize> = if case % 3 == 0 {
            vec![n + 1, c]
        } else {
            vec![n, c, testing::size(&mut rng, 1, 13), testing::size(&mut rng, 2, 17)]
        };
        let g = k::bn_geometry(&shape).unwrap();
        let relu = case % 2 == 1;
        let (eps, mom) = (1e-5f32, 0.1f32);
        let x = testing::uniform(&mut rng, g.len(), -3.0, 5.0);
        let dy = testing::uniform(&mut rng, g.len(), -1.0, 1.0);
        let gamma = testing::uniform(&mut rng, c, 0.5, 1.5);
        let beta = testing::uniform(&mut rng, c, -0.5, 0.5);
        let rm0 = testing::uniform(&mut rng, c, -0.2, 0.2);
        let rv0 = testing::uniform(&mut rng, c, 0.5, 2.0);

        let gx = up(&ctx, &shape, &x);
        let gdy = up(&ctx, &shape, &dy);
        let (gg, gb) = (up(&ctx, &[c], &gamma), up(&ctx, &[c], &beta));
        let (grm, grv) = (up(&ctx, &[c], &rm0), up(&ctx, &[c], &rv0));
        let (saved, saved_e) = (zeros(&ctx, &[2 * c]), zeros(&ctx, &[2 * c]));
        let (y, ye, dx, dxe) = (zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &shape));
        let (dgm, dbt, dgme, dbte) = (zeros(&ctx, &[c]), zeros(&ctx, &[c]), zeros(&ctx, &[c]), zeros(&ctx, &[c]));
        let yr = if relu { Some(&y) } else { None };
        let bt =
            BnBackward { x: &gx, saved: &saved, gamma: &gg, dy: &gdy, y_relu: yr, dgamma: &dgm, dbeta: &dbt, dx: &dx };
        let be = BnBackward { saved: &saved_e, dgamma: &dgme, dbeta: &dbte, dx: &dxe, y_relu: None, ..bt };
        // Eval statistics come from the running stats BEFORE this step's update.
        let ds = [
            k::bn_eval_stats(&ctx, &grm, &grv, &saved_e, eps).unwrap(),
            k::bn_apply(&ctx, &gx, &saved_e, &gg, &gb, &ye, false).unwrap(),
            k::bn_backward_reduce(&ctx, &be).unwrap(),
            k::bn_backward_dx(&ctx, &be, false).unwrap(),
            k::bn_stats(&ctx, &gx, &saved, &grm, &grv, eps, mom).unwrap(),
            k::bn_apply(&ctx, &gx, &saved, &gg, &gb, &y, relu).unwrap(),
            k::bn_backward_reduce(&ctx, &bt).unwrap(),
            k::bn_backward_dx(&ctx, &bt, true).unwrap(),
        ];
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();

        let (x64, dy64, g64, b64) = (f64s(&x), f64s(&dy), f64s(&gamma), f64s(&beta));
        let (mut rm, mut rv) = (f64s(&rm0), f64s(&rv0));
        let (em, ei) = r::bn_eval_stats(&rm, &rv, eps as f64);
        let (mean, invstd) = r::bn_stats(&x64, g, eps as f64, mom as f64, &mut rm, &mut rv);
        let what = |s: &str| format!("{s} case {case} shape {shape:?} relu {relu}");
        let want_saved: Vec<f64> = mean.iter().chain(&invstd).copied().collect();
        assert_close(&what("saved"), &saved.read_f32(&ctx).unwrap(), &f32s(&want_saved), BN_RTOL, BN_ATOL);
        assert_close(&what("running_mean"), &grm.read_f32(&ctx).unwrap(), &f32s(&rm), BN_RTOL, BN_ATOL);
        assert_close(&what("running_var"), &grv.read_f32(&ctx).unwrap(), &f32s(&rv), BN_RTOL, BN_ATOL);
        let wy = r::bn_apply(&x64, g, &mean, &invstd, &g64, &b64, relu);
        assert_close(&what("y"), &y.read_f32(&ctx).unwrap(), &f32s(&wy), BN_RTOL, BN_ATOL);
        let (wdx, wdg, wdb) = r::bn_backward(&x64, g, &mean, &invstd, &g64, &dy64, relu.then_some(&wy[..]), true);
        assert_close(&what("dgamma"), &dgm.read_f32(&ctx).unwrap(), &f32s(&wdg), BN_RTOL, BN_BWD_ATOL);
        assert_close(&what("dbeta"), &dbt.read_f32(&ctx).unwrap(), &f32s(&wdb), BN_RTOL, BN_BWD_ATOL);
        assert_close(&what("dx"), &dx.read_f32(&ctx).unwrap(), &f32s(&wdx), BN_RTOL, BN_BWD_ATOL);
        // Eval path.
        let want_e: Vec<f64> = em.iter().chain(&ei).copied().collect();
        assert_close(&what("saved eval"), &saved_e.read_f32(&ctx).unwrap(), &f32s(&want_e), BN_RTOL, BN_ATOL);
        let wye = r::bn_apply(&x64, g, &em, &ei, &g64, &b64, false);
        assert_close(&what("y eval"), &ye.read_f32(&ctx).unwrap(), &f32s(&wye), BN_RTOL, BN_ATOL);
        let (wdx, wdg, wdb) = r::bn_backward(&x64, g, &em, &ei, &g64, &dy64, None, false);
        assert_close(&what("dgamma eval"), &dgme.read_f32(&ctx).unwrap(), &f32s(&wdg), BN_RTOL, BN_BWD_ATOL);
        assert_close(&what("dbeta eval"), &dbte.read_f32(&ctx).unwrap(), &f32s(&wdb), BN_RTOL, BN_BWD_ATOL);
        assert_close(&what("dx eval"), &dxe.read_f32(&ctx).unwrap(), &f32s(&wdx), BN_RTOL, BN_BWD_ATOL);
    }
}

fn assert_fd(what: &str, analytic: &[f64], x: &[f64], f: &mut dyn FnMut(&[f64]) -> f64) {
    for (i, &a) in analytic.iter().enumerate() {
        let fd = testing::finite_diff(f, x, i, 1e-5);
        assert!((fd - a).abs() <= testing::FINITE_DIFF_RTOL * (1.0 + fd.abs()), "{what}: i {i} fd {fd} analytic {a}");
    }
}

fn rand64(rng: &mut rand_chacha::ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f64> {
    f64s(&testing::uniform(rng, n, lo, hi))
}

#[test]
fn batchnorm_backward_matches_finite_differences() {
    let mut rng = testing::rng(32);
    let g = Nchw { n: 3, c: 2, hw: 5 };
    let eps = 1e-5;
    let x = rand64(&mut rng, g.len(), -2.0, 2.0);
    let wt = rand64(&mut rng, g.len(), -1.0, 1.0);
    let gamma = rand64(&mut rng, g.c, 0.5, 1.5);
    let beta = rand64(&mut rng, g.c, -0.3, 0.3);
    let (rm, rv) = (rand64(&mut rng, g.c, -0.2, 0.2), rand64(&mut rng, g.c, 0.5, 2.0));
    let loss = |y: &[f64]| y.iter().zip(&wt).map(|(a, b)| a * b).sum::<f64>();
    for relu in [false, true] {
        let y = r::bn_train_forward(&x, g, &gamma, &beta, eps, relu);
        let (mut a, mut b) = (vec![0.0; g.c], vec![1.0; g.c]);
        let (mean, invstd) = r::bn_stats(&x, g, eps, 0.1, &mut a, &mut b);
        let (dx, dg, db) = r::bn_backward(&x, g, &mean, &invstd, &gamma, &wt, relu.then_some(&y[..]), true);
        let w = format!("train relu {relu}");
        assert_fd(&format!("{w} dx"), &dx, &x, &mut |x| loss(&r::bn_train_forward(x, g, &gamma, &beta, eps, relu)));
        assert_fd(&format!("{w} dgamma"), &dg, &gamma, &mut |gm| {
            loss(&r::bn_train_forward(&x, g, gm, &beta, eps, relu))
        });
        assert_fd(&format!("{w} dbeta"), &db, &beta, &mut |bt| {
            loss(&r::bn_train_forward(&x, g, &gamma, bt, eps, relu))
        });
    }
    let (em, ei) = r::bn_eval_stats(&rm, &rv, eps);
    let (dx, dg, db) = r::bn_backward(&x, g, &em, &ei, &gamma, &wt, None, false);
    let fwd = |x: &[f64], gm: &[f64], bt: &[f64]| loss(&r::bn_apply(x, g, &em, &ei, gm, bt, false));
    assert_fd("eval dx", &dx, &x, &mut |x| fwd(x, &gamma, &beta));
    assert_fd("eval dgamma", &dg, &gamma, &mut |gm| fwd(&x, gm, &beta));
    assert_fd("eval dbeta", &db, &beta, &mut |bt| fwd(&x, &gamma, bt));
}

/// Valid (no padding, stride 1) conv for the fold chain: x [n, ci, h, w], w [co, ci, k, k].
struct Conv {
    n: usize,
    ci: usize,
    co: usize,
    h: usize,
    w: usize,
    k: usize,
}

impl Conv {
    fn oh(&self) -> usize {
        self.h - self.k + 1
    }
    fn ow(&self) -> usize {
        self.w - self.k + 1
    }
    fn xi(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        ((n * self.ci + c) * self.h + y) * self.w + x
    }
    fn wi(&self, o: usize, c: usize, y: usize, x: usize) -> usize {
        ((o * self.ci + c) * self.k + y) * self.k + x
    }
    fn yi(&self, n: usize, o: usize, y: usize, x: usize) -> usize {
        ((n * self.co + o) * self.oh() + y) * self.ow() + x
    }
    /// Calls `f(x index, w index, y index)` for every multiply-add.
    fn each(&self, mut f: impl FnMut(usize, usize, usize)) {
        for n in 0..self.n {
            for o in 0..self.co {
                for oy in 0..self.oh() {
                    for ox in 0..self.ow() {
                        for c in 0..self.ci {
                            for ky in 0..self.k {
                                for kx in 0..self.k {
                                    f(self.xi(n, c, oy + ky, ox + kx), self.wi(o, c, ky, kx), self.yi(n, o, oy, ox));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    fn forward(&self, x: &[f64], w: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.n * self.co * self.oh() * self.ow()];
        self.each(|xi, wi, yi| y[yi] += x[xi] * w[wi]);
        y
    }
    fn backward_w(&self, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let mut dw = vec![0.0; self.co * self.ci * self.k * self.k];
        self.each(|xi, wi, yi| dw[wi] += x[xi] * dy[yi]);
        dw
    }
}

#[test]
fn conv_bn_fold_chain_matches_finite_differences() {
    let mut rng = testing::rng(33);
    let cv = Conv { n: 2, ci: 2, co: 3, h: 5, w: 4, k: 2 };
    let g = Nchw { n: cv.n, c: cv.co, hw: cv.oh() * cv.ow() };
    let eps = 1e-5;
    let x = rand64(&mut rng, cv.n * cv.ci * cv.h * cv.w, -1.0, 1.0);
    let w = rand64(&mut rng, cv.co * cv.ci * cv.k * cv.k, -0.5, 0.5);
    let gamma = rand64(&mut rng, cv.co, 0.5, 1.5);
    let beta = rand64(&mut rng, cv.co, -0.3, 0.3);
    let (rm, rv) = (rand64(&mut rng, cv.co, -0.2, 0.2), rand64(&mut rng, cv.co, 0.5, 2.0));
    let wt = rand64(&mut rng, g.len(), -1.0, 1.0);
    let loss = |y: &[f64]| y.iter().zip(&wt).map(|(a, b)| a * b).sum::<f64>();
    for frozen in [false, true] {
        // Forward of the whole chain: fold, conv, unscale, BN (batch or running stats).
        let fwd = |w: &[f64], gamma: &[f64], beta: &[f64]| {
            let (sf, wf) = rf::fold_forward(w, gamma, &rv, eps);
            let y_orig = rf::channel_div(&cv.forward(&x, &wf), &sf, g.hw);
            if frozen {
                let (m, i) = r::bn_eval_stats(&rm, &rv, eps);
                loss(&r::bn_apply(&y_orig, g, &m, &i, gamma, beta, false))
            } else {
                loss(&r::bn_train_forward(&y_orig, g, gamma, beta, eps, false))
            }
        };
        // Backward pieces in the order a plan records them.
        let (sf, wf) = rf::fold_forward(&w, &gamma, &rv, eps);
        let y_conv = cv.forward(&x, &wf);
        let y_orig = rf::channel_div(&y_conv, &sf, g.hw);
        let (mean, invstd) = if frozen {
            r::bn_eval_stats(&rm, &rv, eps)
        } else {
            let (mut a, mut b) = (vec![0.0; g.c], vec![1.0; g.c]);
            r::bn_stats(&y_orig, g, eps, 0.1, &mut a, &mut b)
        };
        let (dy_orig, mut dgamma, dbeta) = r::bn_backward(&y_orig, g, &mean, &invstd, &gamma, &wt, None, !frozen);
        let dy_conv = rf::channel_div(&dy_orig, &sf, g.hw);
        let dw_fold = cv.backward_w(&x, &dy_conv);
        let (dw, mut dsf) = rf::fold_weight_backward(&w, &dw_fold, &sf);
        rf::fold_gamma_backward(&y_conv, &dy_orig, &sf, &rv, eps, g.hw, &mut dsf, &mut dgamma);
        let what = format!("fold chain frozen {frozen}");
        assert_fd(&format!("{what} dw"), &dw, &w, &mut |w| fwd(w, &gamma, &beta));
        assert_fd(&format!("{what} dgamma"), &dgamma, &gamma, &mut |gm| fwd(&w, gm, &beta));
        assert_fd(&format!("{what} dbeta"), &dbeta, &beta, &mut |bt| fwd(&w, &gamma, bt));
    }
}

#[test]
fn bn_fold_kernels_match_reference_on_random_shapes() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(34);
    for case in 0..6u64 {
        let co = testing::size(&mut rng, 1, 13);
        let inner = testing::size(&mut rng, 1, 300);
        let n = testing::size(&mut rng, 1, 4);
        let ashape: Vec<usize> = if case % 3 == 0 {
            vec![n, co]
        } else {
            vec![n, co, testing::size(&mut rng, 1, 9), testing::size(&mut rng, 1, 11)]
        };
        let an: usize = ashape.iter().product();
        let hw = an / (n * co);
        let eps = 1e-5f32;
        let w = testing::uniform(&mut rng, co * inner, -0.5, 0.5);
        let dwf = testing::uniform(&mut rng, co * inner, -1.0, 1.0);
        let gamma = testing::uniform(&mut rng, co, 0.5, 1.5);
        let rv = testing::uniform(&mut rng, co, 0.5, 2.0);
        let yc = testing::uniform(&mut rng, an, -2.0, 2.0);
        let dyo = testing::uniform(&mut rng, an, -1.0, 1.0);
        let dg0 = testing::uniform(&mut rng, co, -1.0, 1.0);

        let wshape = [co, inner];
        let (gw, gdwf) = (up(&ctx, &wshape, &w), up(&ctx, &wshape, &dwf));
        let (gg, grv, gdg) = (up(&ctx, &[co], &gamma), up(&ctx, &[co], &rv), up(&ctx, &[co], &dg0));
        let (gyc, gdyo) = (up(&ctx, &ashape, &yc), up(&ctx, &ashape, &dyo));
        let (sf, wf, dw, dsf) = (zeros(&ctx, &[co]), zeros(&ctx, &wshape), zeros(&ctx, &wshape), zeros(&ctx, &[co]));
        let yo = zeros(&ctx, &ashape);
        let ds = [
            kf::fold_forward(&ctx, &gw, &gg, &grv, &sf, &wf, eps).unwrap(),
            kf::channel_div(&ctx, &gyc, &sf, &yo).unwrap(),
            kf::fold_weight_backward(&ctx, &gw, &gdwf, &sf, &dw, &dsf).unwrap(),
            kf::fold_gamma_backward(&ctx, &gyc, &gdyo, &sf, &grv, &dsf, &gdg, eps).unwrap(),
        ];
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        let what = |s: &str| format!("{s} case {case} w {wshape:?} act {ashape:?}");
        let (wsf, wwf) = rf::fold_forward(&f64s(&w), &f64s(&gamma), &f64s(&rv), eps as f64);
        // Compare against the reference fed the GPU's own f32 sf, so only the op under test differs.
        let sf32 = sf.read_f32(&ctx).unwrap();
        assert_close(&what("sf"), &sf32, &f32s(&wsf), testing::FP32_ELEMENTWISE_RTOL * 4.0, 0.0);
        assert_close(
            &what("w_fold"),
            &wf.read_f32(&ctx).unwrap(),
            &f32s(&wwf),
            testing::FP32_ELEMENTWISE_RTOL * 8.0,
            1e-12,
        );
        let sf64 = f64s(&sf32);
        let wyo = rf::channel_div(&f64s(&yc), &sf64, hw);
        assert_close(
            &what("y_orig"),
            &yo.read_f32(&ctx).unwrap(),
            &f32s(&wyo),
            testing::FP32_ELEMENTWISE_RTOL * 2.0,
            1e-12,
        );
        let (wdw, mut wdsf) = rf::fold_weight_backward(&f64s(&w), &f64s(&dwf), &sf64);
        assert_close(
            &what("dw"),
            &dw.read_f32(&ctx).unwrap(),
            &f32s(&wdw),
            testing::FP32_ELEMENTWISE_RTOL * 2.0,
            1e-12,
        );
        let mut wdg = f64s(&dg0);
        rf::fold_gamma_backward(&f64s(&yc), &f64s(&dyo), &sf64, &f64s(&rv), eps as f64, hw, &mut wdsf, &mut wdg);
        assert_close(&what("dsf"), &dsf.read_f32(&ctx).unwrap(), &f32s(&wdsf), BN_RTOL, BN_BWD_ATOL);
        assert_close(&what("dgamma"), &gdg.read_f32(&ctx).unwrap(), &f32s(&wdg), BN_RTOL, BN_BWD_ATOL);
    }
}

#[test]
fn shape_errors_are_reported() {
    let ctx = testing::ctx();
    let x = zeros(&ctx, &[2, 3, 4, 4]);
    let c3 = zeros(&ctx, &[3]);
    let c4 = zeros(&ctx, &[4]);
    let s6 = zeros(&ctx, &[6]);
    let (rm, rv) = (zeros(&ctx, &[3]), zeros(&ctx, &[3]));
    assert!(k::bn_stats(&ctx, &x, &s6, &rm, &rv, 1e-5, 0.1).is_ok());
    assert!(k::bn_stats(&ctx, &x, &c3, &c3, &c3.clone(), 1e-5, 0.1).is_err(), "saved must be 2C");
    assert!(k::bn_stats(&ctx, &x, &s6, &c4, &c3, 1e-5, 0.1).is_err());
    assert!(k::bn_stats(&ctx, &x, &s6, &c3, &c3.clone(), 0.0, 0.1).is_err());
    let one = zeros(&ctx, &[1, 3]);
    assert!(k::bn_stats(&ctx, &one, &s6, &c3, &c3.clone(), 1e-5, 0.1).is_err(), "one value per channel");
    assert!(k::bn_geometry(&[2, 3, 4]).is_err());
    let y = zeros(&ctx, &[2, 3, 4, 5]);
    assert!(k::bn_apply(&ctx, &x, &s6, &c3, &c3.clone(), &y, false).is_err());
    assert!(k::bn_apply(&ctx, &x, &s6, &c4, &c3, &x.clone(), false).is_err());
    let t = BnBackward { x: &x, saved: &s6, gamma: &c3, dy: &y, y_relu: None, dgamma: &c3, dbeta: &c3, dx: &x };
    assert!(k::bn_backward_reduce(&ctx, &t).is_err());
    let w = zeros(&ctx, &[3, 2, 3, 3]);
    assert!(kf::fold_forward(&ctx, &w, &c4, &c3, &c3.clone(), &w.clone(), 1e-5).is_err());
    assert!(kf::fold_forward(&ctx, &w, &c3, &c3.clone(), &c3.clone(), &x, 1e-5).is_err());
    assert!(kf::channel_div(&ctx, &x, &c4, &x.clone()).is_err());
    assert!(kf::fold_gamma_backward(&ctx, &x, &y, &c3, &c3.clone(), &c3.clone(), &c3.clone(), 1e-5).is_err());
}

#[test]
fn large_channel_reduction_matches_reference() {
    // ~18k values per channel (70 per thread) and a mean far from zero: the two-pass
    // variance must not cancel. Also times one training BN (stats + apply + backward).
    let ctx = testing::ctx();
    let mut rng = testing::rng(35);
    let shape = [16, 3, 33, 35];
    let g = k::bn_geometry(&shape).unwrap();
    let x: Vec<f32> = testing::uniform(&mut rng, g.len(), -1.0, 1.0).iter().map(|v| v + 50.0).collect();
    let dy = testing::uniform(&mut rng, g.len(), -1.0, 1.0);
    let ones = vec![1.0f32; 3];
    let (gx, gdy) = (up(&ctx, &shape, &x), up(&ctx, &shape, &dy));
    let (gg, gb, rm, rv) = (up(&ctx, &[3], &ones), zeros(&ctx, &[3]), zeros(&ctx, &[3]), up(&ctx, &[3], &ones));
    let (saved, y, dx, dgm, dbt) =
        (zeros(&ctx, &[6]), zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &[3]), zeros(&ctx, &[3]));
    let t = BnBackward {
        x: &gx,
        saved: &saved,
        gamma: &gg,
        dy: &gdy,
        y_relu: Some(&y),
        dgamma: &dgm,
        dbeta: &dbt,
        dx: &dx,
    };
    let ds = [
        k::bn_stats(&ctx, &gx, &saved, &rm, &rv, 1e-5, 0.1).unwrap(),
        k::bn_apply(&ctx, &gx, &saved, &gg, &gb, &y, true).unwrap(),
        k::bn_backward_reduce(&ctx, &t).unwrap(),
        k::bn_backward_dx(&ctx, &t, true).unwrap(),
    ];
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
    ctx.wait().unwrap();
    let t0 = std::time::Instant::now();
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
    ctx.wait().unwrap();
    eprintln!("batchnorm train fwd+bwd {shape:?}: {:?}", t0.elapsed());
    let x64 = f64s(&x);
    let (mut a, mut b) = (vec![0.0; 3], vec![1.0; 3]);
    let (mean, invstd) = r::bn_stats(&x64, g, 1e-5, 0.1, &mut a, &mut b);
    let want: Vec<f64> = mean.iter().chain(&invstd).copied().collect();
    // mean ~50: relative error of an f32 sum; invstd ~1.7 from a variance ~1/3.
    assert_close("large saved", &saved.read_f32(&ctx).unwrap(), &f32s(&want), BN_RTOL, BN_ATOL);
    let wy = r::bn_apply(&x64, g, &mean, &invstd, &f64s(&ones), &[0.0; 3], true);
    let (wdx, _, wdb) = r::bn_backward(&x64, g, &mean, &invstd, &f64s(&ones), &f64s(&dy), Some(&wy), true);
    assert_close("large dbeta", &dbt.read_f32(&ctx).unwrap(), &f32s(&wdb), BN_RTOL, 1e-2);
    assert_close("large dx", &dx.read_f32(&ctx).unwrap(), &f32s(&wdx), BN_RTOL, BN_BWD_ATOL);
}
