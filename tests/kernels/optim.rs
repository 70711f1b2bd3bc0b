//! `shaders/optim.wgsl` against `reference::optim`: SGD and AdamW over several steps with a
//! learning rate and step count changed through the hyper buffer only, gradient-norm
//! clipping, and the skip-on-non-finite guard.

use wqat::gpu::{DType, Dispatch, GpuContext, GpuTensor};
use wqat::kernels::loss as kl;
use wqat::kernels::optim::{self as k, AdamWConfig, NormLayout, SgdConfig, StepInputs};
use wqat::reference::optim as r;
use wqat::testing::{self, assert_close, FP32_REDUCTION_RTOL};

/// Parameters and state after several steps: same formulas, but the GPU may contract
/// multiply-adds, its pow/sqrt/division differ by ulps, and errors compound over steps.
const OPT_RTOL: f32 = 1e-5;
const OPT_ATOL: f32 = 1e-6;
/// The clip factor depends on the norm, summed in another order.
const CLIP_RTOL: f32 = 1e-5;
const STEPS: u32 = 5;

fn submit(ctx: &GpuContext, ds: &[Dispatch]) {
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
}

fn lr_at(step: u32) -> f32 {
    0.05 * (1.0 - step as f32 / (2.0 * STEPS as f32))
}

#[test]
fn sgd_matches_reference_over_steps() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(21);
    let cfgs = [
        SgdConfig { momentum: 0.9, weight_decay: 1e-4, nesterov: false },
        SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        SgdConfig { momentum: 0.0, weight_decay: 0.0, nesterov: false },
        SgdConfig { momentum: 0.5, weight_decay: 0.1, nesterov: false },
    ];
    for (case, cfg) in cfgs.iter().enumerate() {
        let n = testing::size(&mut rng, 1, 3000);
        let mut p = testing::uniform(&mut rng, n, -1.0, 1.0);
        let mut buf = vec![0.0f32; n];
        let gp = GpuTensor::from_f32(&ctx, &[n], &p).unwrap();
        let gg = GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
        let gb = GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
        let hyper = k::new_hyper(&ctx).unwrap();
        let metrics = kl::new_metrics(&ctx).unwrap();
        let inp = StepInputs { hyper: &hyper, metrics: &metrics, clip: None, skip_nonfinite: case % 2 == 0 };
        let d = k::sgd_step(&ctx, &gp, &gg, &gb, cfg, &inp).unwrap();
        for step in 1..=STEPS {
            let g = testing::uniform(&mut rng, n, -2.0, 2.0);
            gg.write(&ctx, &g).unwrap();
            k::write_hyper(&ctx, &hyper, lr_at(step), step).unwrap();
            ctx.submit(&[&d]).unwrap();
            let s = r::StepState { lr: lr_at(step), step, clip: 1.0, skip: false };
            r::sgd_step(&mut p, &g, &mut buf, cfg, &s);
        }
        let what = format!("sgd case {case} n {n} {cfg:?}");
        assert_close(&format!("{what} params"), &gp.read_f32(&ctx).unwrap(), &p, OPT_RTOL, OPT_ATOL);
        assert_close(&format!("{what} momentum"), &gb.read_f32(&ctx).unwrap(), &buf, OPT_RTOL, OPT_ATOL);
    }
}

#[test]
fn adamw_matches_reference_over_steps() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(22);
    let cfgs = [AdamWConfig::default(), AdamWConfig { beta1: 0.8, beta2: 0.99, eps: 1e-6, weight_decay: 0.1 }];
    for (case, cfg) in cfgs.iter().enumerate() {
        let n = testing::size(&mut rng, 1, 3000);
        let mut p = testing::uniform(&mut rng, n, -1.0, 1.0);
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let gp = GpuTensor::from_f32(&ctx, &[n], &p).unwrap();
        let gg = GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
        let gm = GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
        let gv = GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
        let hyper = k::new_hyper(&ctx).unwrap();
        let metrics = kl::new_metrics(&ctx).unwrap();
        let inp = StepInputs { hyper: &hyper, metrics: &metrics, clip: None, skip_nonfinite: case == 0 };
        let ds = k::adamw_step(&ctx, &gp, &gg, &gm, &gv, cfg, &inp).unwrap();
        // Case 1 starts late (step counts ~1000) so the bias correction is not just step 1.
        let t0 = if case == 0 { 0 } else { 994 };
        for step in t0 + 1..=t0 + STEPS + 1 {
            let g = testing::uniform(&mut rng, n, -2.0, 2.0);
            gg.write(&ctx, &g).unwrap();
            k::write_hyper(&ctx, &hyper, lr_at(step), step).unwrap();
            submit(&ctx, &ds);
            let s = r::StepState { lr: lr_at(step), step, clip: 1.0, skip: false };
            r::adamw_step(&mut p, &g, &mut m, &mut v, cfg, &s);
        }
        let what = format!("adamw case {case} n {n}");
        assert_close(&format!("{what} params"), &gp.read_f32(&ctx).unwrap(), &p, OPT_RTOL, OPT_ATOL);
        assert_close(&format!("{what} exp_avg"), &gm.read_f32(&ctx).unwrap(), &m, OPT_RTOL, OPT_ATOL);
        assert_close(&format!("{what} exp_avg_sq"), &gv.read_f32(&ctx).unwrap(), &v, OPT_RTOL, OPT_ATOL);
    }
}

/// `1 - b^t` of the kernels against f64, relative.
const BIAS_CORRECTION_RTOL: f64 = 2e-6;

#[test]
fn bias_correction_is_accurate() {
    for &b in &[0.9f32, 0.99, 0.999, 0.9999, 0.5, 0.3, 0.0, 0.999999] {
        for &t in &[1u32, 2, 3, 7, 10, 100, 1000, 12345, 1 << 20, (1 << 24) - 1] {
            let got = r::one_minus_pow(b, t) as f64;
            let want = 1.0 - (b as f64).powf(t as f64);
            assert!((got - want).abs() <= BIAS_CORRECTION_RTOL * want, "1 - {b}^{t}: {got} vs {want}");
        }
    }
}

#[test]
fn clipping_matches_reference() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(23);
    // Sizes below one workgroup, odd, and beyond MAX_PARTIALS * 256 (grid-stride loop).
    let sizes = [1usize, 777, 70_001];
    let norm = k::new_norm(&ctx, sizes.len()).unwrap();
    let hyper = k::new_hyper(&ctx).unwrap();
    let metrics = kl::new_metrics(&ctx).unwrap();
    let sgd = SgdConfig { momentum: 0.9, weight_decay: 1e-4, nesterov: false };
    let adam = AdamWConfig::default();
    for &max_norm in &[0.5f32, 1e6] {
        let mut ps: Vec<Vec<f32>> = sizes.iter().map(|&n| testing::uniform(&mut rng, n, -1.0, 1.0)).collect();
        let mut st0: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut st1 = st0.clone();
        let gps: Vec<GpuTensor> = ps.iter().map(|p| GpuTensor::from_f32(&ctx, &[p.len()], p).unwrap()).collect();
        let ggs: Vec<GpuTensor> = sizes.iter().map(|&n| GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap()).collect();
        let g0s: Vec<GpuTensor> = sizes.iter().map(|&n| GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap()).collect();
        let g1s: Vec<GpuTensor> = sizes.iter().map(|&n| GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap()).collect();
        let inp = StepInputs { hyper: &hyper, metrics: &metrics, clip: Some(&norm), skip_nonfinite: true };
        let mut plan = Vec::new();
        for (i, g) in ggs.iter().enumerate() {
            plan.extend(k::grad_sum_squares(&ctx, g, &norm, i).unwrap());
        }
        plan.push(k::clip_finalize(&ctx, &norm, max_norm).unwrap());
        for i in 0..sizes.len() {
            // Tensor 1 uses AdamW, the others SGD: one clip factor serves both.
            if i == 1 {
                plan.extend(k::adamw_step(&ctx, &gps[i], &ggs[i], &g0s[i], &g1s[i], &adam, &inp).unwrap());
            } else {
                plan.push(k::sgd_step(&ctx, &gps[i], &ggs[i], &g0s[i], &sgd, &inp).unwrap());
            }
        }
        for step in 1..=3u32 {
            let gs: Vec<Vec<f32>> = sizes.iter().map(|&n| testing::uniform(&mut rng, n, -0.05, 0.05)).collect();
            for (g, t) in gs.iter().zip(&ggs) {
                t.write(&ctx, g).unwrap();
            }
            k::write_hyper(&ctx, &hyper, lr_at(step), step).unwrap();
            submit(&ctx, &plan);
            let slots: Vec<f32> = gs.iter().map(|g| r::sum_squares(g)).collect();
            let (cf, tn, total) = r::clip_factor(&slots, max_norm);
            let got = norm.read_f32(&ctx).unwrap();
            let what = format!("max_norm {max_norm} step {step}");
            assert_close(&format!("{what} slots"), &got[NormLayout::SLOTS..], &slots, FP32_REDUCTION_RTOL, 0.0);
            assert_close(
                &format!("{what} total"),
                &got[NormLayout::TOTAL_SUMSQ..][..1],
                &[total],
                FP32_REDUCTION_RTOL,
                0.0,
            );
            assert_close(&format!("{what} norm"), &got[NormLayout::TOTAL_NORM..][..1], &[tn], FP32_REDUCTION_RTOL, 0.0);
            assert_close(&format!("{what} clip factor"), &got[NormLayout::CLIP_FACTOR..][..1], &[cf], CLIP_RTOL, 0.0);
            assert_eq!(cf < 1.0, max_norm < 1.0, "{what}: the test means to clip only with the small max_norm");
            let s = r::StepState { lr: lr_at(step), step, clip: cf, skip: false };
            for i in 0..sizes.len() {
                if i == 1 {
                    r::adamw_step(&mut ps[i], &gs[i], &mut st0[i], &mut st1[i], &adam, &s);
                } else {
                    r::sgd_step(&mut ps[i], &gs[i], &mut st0[i], &sgd, &s);
                }
            }
        }
        for i in 0..sizes.len() {
            let what = format!("clipped step max_norm {max_norm} tensor {i}");
            assert_close(&format!("{what} params"), &gps[i].read_f32(&ctx).unwrap(), &ps[i], OPT_RTOL, OPT_ATOL);
            assert_close(&format!("{what} state"), &g0s[i].read_f32(&ctx).unwrap(), &st0[i], OPT_RTOL, OPT_ATOL);
        }
    }
}

#[test]
fn nan_gradient_sets_flag_and_skip_leaves_params_untouched() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(24);
    let n = 1001;
    let p0 = testing::uniform(&mut rng, n, -1.0, 1.0);
    let mut g = testing::uniform(&mut rng, n, -1.0, 1.0);
    g[500] = f32::NAN;
    let hyper = k::new_hyper(&ctx).unwrap();
    let metrics = kl::new_metrics(&ctx).unwrap();
    let norm = k::new_norm(&ctx, 1).unwrap();
    k::write_hyper(&ctx, &hyper, 0.1, 1).unwrap();
    let gg = GpuTensor::from_f32(&ctx, &[n], &g).unwrap();
    for skip in [true, false] {
        let gp = GpuTensor::from_f32(&ctx, &[n], &p0).unwrap();
        let state0 = testing::uniform(&mut rng, n, -0.1, 0.1);
        let state1 = testing::uniform(&mut rng, n, 0.0, 0.1);
        let (s0, s1, s2) = (
            GpuTensor::from_f32(&ctx, &[n], &state0).unwrap(),
            GpuTensor::from_f32(&ctx, &[n], &state0).unwrap(),
            GpuTensor::from_f32(&ctx, &[n], &state1).unwrap(),
        );
        let inp = StepInputs { hyper: &hyper, metrics: &metrics, clip: Some(&norm), skip_nonfinite: skip };
        let sgd = SgdConfig { momentum: 0.9, weight_decay: 0.01, nesterov: true };
        let mut plan = k::grad_sum_squares(&ctx, &gg, &norm, 0).unwrap();
        plan.push(k::clip_finalize(&ctx, &norm, 1.0).unwrap());
        plan.push(kl::nonfinite_check(&ctx, &gg, &metrics).unwrap());
        plan.push(k::sgd_step(&ctx, &gp, &gg, &s0, &sgd, &inp).unwrap());
        // AdamW on a second copy of the parameters.
        let gp2 = GpuTensor::from_f32(&ctx, &[n], &p0).unwrap();
        plan.extend(k::adamw_step(&ctx, &gp2, &gg, &s1, &s2, &AdamWConfig::default(), &inp).unwrap());
        kl::reset_metrics(&ctx, &metrics).unwrap();
        submit(&ctx, &plan);
        assert!(kl::read_metrics(&ctx, &metrics).unwrap().non_finite());
        let got = [gp.read_f32(&ctx).unwrap(), gp2.read_f32(&ctx).unwrap()];
        let states = [s0.read_f32(&ctx).unwrap(), s1.read_f32(&ctx).unwrap(), s2.read_f32(&ctx).unwrap()];
        if skip {
            // Bit for bit unchanged, parameters and state.
            for p in &got {
                assert_eq!(
                    p.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    p0.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
            assert_eq!(states[0], state0);
            assert_eq!(states[1], state0);
            assert_eq!(states[2], state1);
        } else {
            // Without the guard the NaN reaches the parameters (at least where it was; the
            // clip factor min(1, NaN) is implementation-defined in WGSL).
            assert!(got[0][500].is_nan() && got[1][500].is_nan());
        }
    }
    // With the non-finite flag cleared and finite gradients, the skipping step runs.
    g[500] = 0.25;
    gg.write(&ctx, &g).unwrap();
    let gp = GpuTensor::from_f32(&ctx, &[n], &p0).unwrap();
    let s0 = GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
    let inp = StepInputs { hyper: &hyper, metrics: &metrics, clip: None, skip_nonfinite: true };
    let cfg = SgdConfig { momentum: 0.9, weight_decay: 0.0, nesterov: false };
    let d = k::sgd_step(&ctx, &gp, &gg, &s0, &cfg, &inp).unwrap();
    // Only the non-finite bit skips: a bad-label flag alone does not.
    metrics.write(&ctx, &[0u32, 0, 0, kl::MetricsLayout::FLAG_BAD_LABEL]).unwrap();
    ctx.submit(&[&d]).unwrap();
    let mut want = p0.clone();
    r::sgd_step(&mut want, &g, &mut vec![0.0; n], &cfg, &r::StepState { lr: 0.1, step: 1, clip: 1.0, skip: false });
    assert_close("step after reset", &gp.read_f32(&ctx).unwrap(), &want, OPT_RTOL, OPT_ATOL);
}

#[test]
fn bad_arguments_are_errors() {
    let ctx = testing::ctx();
    let t = |n: usize| GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
    let (p, g, b, short) = (t(10), t(10), t(10), t(9));
    let hyper = k::new_hyper(&ctx).unwrap();
    let metrics = kl::new_metrics(&ctx).unwrap();
    let norm = k::new_norm(&ctx, 2).unwrap();
    let inp = StepInputs { hyper: &hyper, metrics: &metrics, clip: None, skip_nonfinite: false };
    let sgd = SgdConfig { momentum: 0.9, weight_decay: 0.0, nesterov: false };
    assert!(k::sgd_step(&ctx, &p, &g, &b, &sgd, &inp).is_ok());
    assert!(k::sgd_step(&ctx, &p, &short, &b, &sgd, &inp).is_err());
    assert!(k::sgd_step(&ctx, &p, &g, &short, &sgd, &inp).is_err());
    assert!(k::sgd_step(&ctx, &p, &g, &b, &SgdConfig { momentum: 0.0, nesterov: true, ..sgd }, &inp).is_err());
    assert!(k::sgd_step(&ctx, &p, &g, &b, &sgd, &StepInputs { hyper: &short, ..inp }).is_err());
    assert!(k::sgd_step(&ctx, &p, &g, &b, &sgd, &StepInputs { metrics: &hyper, ..inp }).is_err());
    let bad_adam = AdamWConfig { beta1: 1.0, ..Default::default() };
    assert!(k::adamw_step(&ctx, &p, &g, &b, &short, &AdamWConfig::default(), &inp).is_err());
    assert!(k::adamw_step(&ctx, &p, &g, &b, &t(10), &bad_adam, &inp).is_err());
    assert!(k::grad_sum_squares(&ctx, &g, &norm, 2).is_err());
    assert!(k::grad_sum_squares(&ctx, &g, &hyper, 0).is_err());
    assert!(k::clip_finalize(&ctx, &norm, 0.0).is_err());
    assert!(k::write_hyper(&ctx, &hyper, 0.1, 0).is_err());
    assert!(k::write_hyper(&ctx, &short, 0.1, 1).is_err());
}
