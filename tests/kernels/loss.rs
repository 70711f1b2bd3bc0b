//! `shaders/loss.wgsl` against `reference::loss`: cross-entropy gradients and metrics on
//! random odd shapes, finite differences, accumulation over steps, evaluation, argmax
//! (ties, folded grids), labels out of range and the non-finite guard.

use wqat::gpu::{DType, GpuTensor};
use wqat::kernels::loss::{self as k, Metrics, MetricsLayout};
use wqat::reference::loss as r;
use wqat::testing::{self, assert_bit_exact, assert_close, FINITE_DIFF_RTOL};

/// dlogits: same formula, exp/division ulps and the sum of exps in another order.
const CE_GRAD_RTOL: f32 = 2e-5;
/// Absolute floor for dlogits, relative to `loss_scale / B` (the largest magnitude).
const CE_GRAD_ATOL: f32 = 1e-6;
/// Accumulated loss sum relative to itself (all terms are >= 0); per-row log/exp ulps plus
/// the summation order. Floor `CE_LOSS_ATOL` per row for rows with a near-zero loss.
const CE_LOSS_RTOL: f32 = 1e-5;
const CE_LOSS_ATOL: f32 = 1e-6;
/// Finite-difference step (f64 forward).
const FD_STEP: f64 = 1e-4;
/// Absolute floor of the finite-difference check (f32 gradient against f64 differences).
const FD_ATOL: f64 = 2e-7;

fn logits_with_ties(rng: &mut rand_chacha::ChaCha8Rng, b: usize, c: usize, spread: f32) -> Vec<f32> {
    let mut x = testing::uniform(rng, b * c, -spread, spread);
    // Some rows get their maximum duplicated at a later index (argmax must keep the first).
    for row in (0..b).step_by(3) {
        let r = &mut x[row * c..(row + 1) * c];
        let (arg, mx) = r.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        r[(arg + c / 2 + 1) % c] = mx;
    }
    x
}

fn labels(rng: &mut rand_chacha::ChaCha8Rng, b: usize, c: usize) -> Vec<u32> {
    (0..b).map(|_| testing::size(rng, 0, c - 1) as u32).collect()
}

fn assert_metrics(what: &str, got: &Metrics, want: &Metrics, rows: u32) {
    assert_eq!(got.correct, want.correct, "{what}: correct");
    assert_eq!(got.samples, want.samples, "{what}: samples");
    assert_eq!(got.flags, want.flags, "{what}: flags");
    let tol = CE_LOSS_RTOL * want.loss_sum.abs() + CE_LOSS_ATOL * rows as f32;
    assert!(
        (got.loss_sum - want.loss_sum).abs() <= tol,
        "{what}: loss sum {} vs {} (tol {tol})",
        got.loss_sum,
        want.loss_sum
    );
}

fn upload_u32(ctx: &wqat::gpu::GpuContext, v: &[u32]) -> GpuTensor {
    GpuTensor::from_u32(ctx, &[v.len()], v).unwrap()
}

#[test]
fn cross_entropy_matches_reference_and_accumulates_over_two_steps() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(7);
    for case in 0..10u64 {
        let b = testing::size(&mut rng, 1, 70);
        // Both paths: thread-per-row (C <= SMALL_C) and workgroup-per-row.
        let c = if case % 2 == 0 {
            testing::size(&mut rng, 2, k::SMALL_C)
        } else {
            testing::size(&mut rng, k::SMALL_C + 1, 300)
        };
        let loss_scale = if case % 2 == 0 { 1.0 } else { 128.0 };
        let gl = GpuTensor::zeros(&ctx, &[b, c], DType::F32).unwrap();
        let gy = GpuTensor::zeros(&ctx, &[b], DType::U32).unwrap();
        let gd = GpuTensor::zeros(&ctx, &[b, c], DType::F32).unwrap();
        let gm = k::new_metrics(&ctx).unwrap();
        let ds = k::softmax_cross_entropy(&ctx, &gl, &gy, &gd, &gm, loss_scale).unwrap();
        let mut want_m = Metrics::default();
        // Two steps with different data into the same metrics, dispatches built once.
        for step in 0..2 {
            let x = logits_with_ties(&mut rng, b, c, 6.0);
            let y = labels(&mut rng, b, c);
            gl.write(&ctx, &x).unwrap();
            gy.write(&ctx, &y).unwrap();
            ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
            let want_d = r::softmax_cross_entropy(&x, &y, c, loss_scale, &mut want_m);
            let what = format!("case {case} step {step} B {b} C {c} scale {loss_scale}");
            let atol = CE_GRAD_ATOL * loss_scale / b as f32;
            assert_close(&format!("{what} dlogits"), &gd.read_f32(&ctx).unwrap(), &want_d, CE_GRAD_RTOL, atol);
            let got_m = k::read_metrics(&ctx, &gm).unwrap();
            assert_metrics(&what, &got_m, &want_m, b as u32 * (step + 1));
            assert_eq!(got_m.samples, b as u32 * (step + 1));
        }
        // Reset through the queued write, and through the dispatch.
        k::reset_metrics(&ctx, &gm).unwrap();
        assert_eq!(k::read_metrics(&ctx, &gm).unwrap(), Metrics::default());
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(k::read_metrics(&ctx, &gm).unwrap().samples, b as u32);
        let reset = k::metrics_reset(&ctx, &gm).unwrap();
        ctx.submit(&[&reset]).unwrap();
        assert_eq!(k::read_metrics(&ctx, &gm).unwrap(), Metrics::default());
    }
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(11);
    for (case, &(b, c, loss_scale)) in [(3usize, 5usize, 1.0f32), (2, 67, 1.0), (5, 3, 8.0)].iter().enumerate() {
        let x = testing::uniform(&mut rng, b * c, -3.0, 3.0);
        let y = labels(&mut rng, b, c);
        let gl = GpuTensor::from_f32(&ctx, &[b, c], &x).unwrap();
        let gy = upload_u32(&ctx, &y);
        let gd = GpuTensor::zeros(&ctx, &[b, c], DType::F32).unwrap();
        let gm = k::new_metrics(&ctx).unwrap();
        let ds = k::softmax_cross_entropy(&ctx, &gl, &gy, &gd, &gm, loss_scale).unwrap();
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        let got = gd.read_f32(&ctx).unwrap();
        let want_ref = r::softmax_cross_entropy(&x, &y, c, loss_scale, &mut Metrics::default());
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut f = |v: &[f64]| r::mean_loss_f64(v, &y, c, loss_scale as f64);
        for i in 0..b * c {
            let fd = testing::finite_diff(&mut f, &x64, i, FD_STEP);
            let tol = FINITE_DIFF_RTOL * fd.abs() + FD_ATOL * loss_scale as f64;
            for (name, g) in [("gpu", got[i]), ("reference", want_ref[i])] {
                assert!(
                    (g as f64 - fd).abs() <= tol,
                    "case {case} {name} dlogits[{i}] = {g}, finite difference {fd} (tol {tol})"
                );
            }
        }
        // The accumulated loss is the reference loss.
        let m = k::read_metrics(&ctx, &gm).unwrap();
        let want = r::mean_loss_f64(&x64, &y, c, 1.0) * b as f64;
        assert!((m.loss_sum as f64 - want).abs() <= 1e-5 * want.abs() + 1e-6, "loss {} vs {want}", m.loss_sum);
    }
}

#[test]
fn evaluation_and_argmax_match_reference() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(13);
    for case in 0..6u64 {
        let b = testing::size(&mut rng, 1, 90);
        let c =
            if case % 2 == 0 { testing::size(&mut rng, k::SMALL_C + 1, 1000) } else { testing::size(&mut rng, 2, 13) };
        let x = logits_with_ties(&mut rng, b, c, 4.0);
        let y = labels(&mut rng, b, c);
        let gl = GpuTensor::from_f32(&ctx, &[b, c], &x).unwrap();
        let gy = upload_u32(&ctx, &y);
        let gm = k::new_metrics(&ctx).unwrap();
        let gp = GpuTensor::zeros(&ctx, &[b], DType::U32).unwrap();
        let mut ds = k::cross_entropy_eval(&ctx, &gl, &gy, &gm).unwrap();
        ds.push(k::argmax(&ctx, &gl, &gp).unwrap());
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        let mut want = Metrics::default();
        r::cross_entropy_eval(&x, &y, c, &mut want);
        assert_metrics(&format!("eval case {case} B {b} C {c}"), &k::read_metrics(&ctx, &gm).unwrap(), &want, b as u32);
        assert_bit_exact(&format!("argmax case {case}"), &gp.read_u32(&ctx).unwrap(), &r::argmax(&x, c));
    }
    // More rows than one grid dimension holds (the grid folds into y), both paths.
    for (b, c) in [(66_001usize, k::SMALL_C + 1), (64 * 65_535 + 77, 2)] {
        let x: Vec<f32> = (0..b * c).map(|i| ((i * 7919) % 13) as f32).collect();
        let gl = GpuTensor::from_f32(&ctx, &[b, c], &x).unwrap();
        let gp = GpuTensor::zeros(&ctx, &[b], DType::U32).unwrap();
        let d = k::argmax(&ctx, &gl, &gp).unwrap();
        assert!(d.workgroups[1] > 1);
        ctx.submit(&[&d]).unwrap();
        assert_bit_exact(&format!("argmax folded grid B {b} C {c}"), &gp.read_u32(&ctx).unwrap(), &r::argmax(&x, c));
    }
}

#[test]
fn non_finite_values_and_bad_labels_set_flags() {
    let ctx = testing::ctx();
    let (b, c) = (5usize, 7usize);
    let mut rng = testing::rng(17);
    let mut x = testing::uniform(&mut rng, b * c, -2.0, 2.0);
    let mut y = labels(&mut rng, b, c);
    let gl = GpuTensor::from_f32(&ctx, &[b, c], &x).unwrap();
    let gy = upload_u32(&ctx, &y);
    let gd = GpuTensor::zeros(&ctx, &[b, c], DType::F32).unwrap();
    let gm = k::new_metrics(&ctx).unwrap();
    let ds = k::softmax_cross_entropy(&ctx, &gl, &gy, &gd, &gm, 1.0).unwrap();
    let run = || {
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        k::read_metrics(&ctx, &gm).unwrap()
    };
    assert_eq!(run().flags, 0);
    // A label out of range: flag bit 1, that row's gradient is zero, the others are right.
    y[2] = c as u32;
    gy.write(&ctx, &y).unwrap();
    k::reset_metrics(&ctx, &gm).unwrap();
    let m = run();
    assert!(m.bad_label() && !m.non_finite(), "{m:?}");
    let mut want_m = Metrics::default();
    let want = r::softmax_cross_entropy(&x, &y, c, 1.0, &mut want_m);
    assert_close("bad label dlogits", &gd.read_f32(&ctx).unwrap(), &want, CE_GRAD_RTOL, CE_GRAD_ATOL);
    assert!(want[2 * c..3 * c].iter().all(|&v| v == 0.0));
    assert_metrics("bad label", &m, &want_m, b as u32);
    y[2] = 0;
    gy.write(&ctx, &y).unwrap();
    // NaN, +Inf and -Inf logits each set bit 0.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        x[c + 3] = bad;
        gl.write(&ctx, &x).unwrap();
        k::reset_metrics(&ctx, &gm).unwrap();
        let m = run();
        assert_eq!(m.flags, MetricsLayout::FLAG_NONFINITE, "logit {bad}: {m:?}");
        let mut want_m = Metrics::default();
        r::softmax_cross_entropy(&x, &y, c, 1.0, &mut want_m);
        assert_eq!(want_m.flags, MetricsLayout::FLAG_NONFINITE);
    }
    // The guard over any tensor: finite leaves the flag alone, NaN/Inf set it.
    let n = 1037;
    let mut g = testing::uniform(&mut rng, n, -1.0, 1.0);
    let gg = GpuTensor::from_f32(&ctx, &[n], &g).unwrap();
    let check = k::nonfinite_check(&ctx, &gg, &gm).unwrap();
    k::reset_metrics(&ctx, &gm).unwrap();
    ctx.submit(&[&check]).unwrap();
    assert_eq!(k::read_metrics(&ctx, &gm).unwrap().flags, 0);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        g[n - 1] = bad;
        gg.write(&ctx, &g).unwrap();
        k::reset_metrics(&ctx, &gm).unwrap();
        ctx.submit(&[&check]).unwrap();
        let mut want = Metrics::default();
        r::nonfinite_check(&g, &mut want);
        assert_eq!(k::read_metrics(&ctx, &gm).unwrap().flags, want.flags);
        assert_eq!(want.flags, MetricsLayout::FLAG_NONFINITE);
    }
}

#[test]
fn bad_shapes_are_errors() {
    let ctx = testing::ctx();
    let gl = GpuTensor::zeros(&ctx, &[4, 3], DType::F32).unwrap();
    let gy = GpuTensor::zeros(&ctx, &[4], DType::U32).unwrap();
    let gd = GpuTensor::zeros(&ctx, &[4, 3], DType::F32).unwrap();
    let gm = k::new_metrics(&ctx).unwrap();
    let y3 = GpuTensor::zeros(&ctx, &[3], DType::U32).unwrap();
    let yf = GpuTensor::zeros(&ctx, &[4], DType::F32).unwrap();
    let d5 = GpuTensor::zeros(&ctx, &[4, 5], DType::F32).unwrap();
    let flat = GpuTensor::zeros(&ctx, &[12], DType::F32).unwrap();
    let m8 = GpuTensor::zeros(&ctx, &[8], DType::U32).unwrap();
    assert!(k::softmax_cross_entropy(&ctx, &gl, &gy, &gd, &gm, 1.0).is_ok());
    assert!(k::softmax_cross_entropy(&ctx, &gl, &y3, &gd, &gm, 1.0).is_err());
    assert!(k::softmax_cross_entropy(&ctx, &gl, &yf, &gd, &gm, 1.0).is_err());
    assert!(k::softmax_cross_entropy(&ctx, &gl, &gy, &d5, &gm, 1.0).is_err());
    assert!(k::softmax_cross_entropy(&ctx, &flat, &gy, &gd, &gm, 1.0).is_err());
    assert!(k::softmax_cross_entropy(&ctx, &gl, &gy, &gd, &m8, 1.0).is_err());
    assert!(k::softmax_cross_entropy(&ctx, &gl, &gy, &gd, &gm, f32::NAN).is_err());
    assert!(k::cross_entropy_eval(&ctx, &gl, &y3, &gm).is_err());
    assert!(k::argmax(&ctx, &gl, &y3).is_err());
    assert!(k::nonfinite_check(&ctx, &gy, &gm).is_err());
    assert!(k::metrics_reset(&ctx, &m8).is_err());
    assert!(Metrics::from_words(&[0, 1]).is_err());
}
