//! The fused kernels of the compiled training step against the unfused kernel chains they
//! replace, bit for bit (those chains are checked against the CPU references in
//! batchnorm.rs, pool.rs and observer.rs): `batchnorm::{bn_forward, bn_backward}` (with and
//! without conv-BN folding), `bn_fold::{fold_forward_obs, fold_backward}`, the one-pass
//! observer finish `observer::final_qparams`, and the tiled max pool forward and backward. Every path
//! (training / eval statistics, ReLU, fold, per-tensor / per-channel, tiled / gather) is
//! forced at least once; shapes straddle the 256-wide workgroup walk (hw below, at and above 256).

use wqat::gpu::{DType, Dispatch, GpuContext, GpuTensor};
use wqat::kernels::batchnorm::{self as k, BnBackward, BnFoldGrad, BnForward};
use wqat::kernels::bn_fold as kf;
use wqat::kernels::observer::{self as ko, Observer, ObserverMode};
use wqat::kernels::pool::{self as kp, PoolSpec};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::reference::pool as rp;
use wqat::testing;

fn up(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, shape, v).unwrap()
}
fn zeros(ctx: &GpuContext, shape: &[usize]) -> GpuTensor {
    GpuTensor::zeros(ctx, shape, DType::F32).unwrap()
}
fn run(ctx: &GpuContext, ds: &[Dispatch]) {
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
}
fn bits(ctx: &GpuContext, t: &GpuTensor) -> Vec<u32> {
    t.read_f32(ctx).unwrap().iter().map(|v| v.to_bits()).collect()
}
fn same(ctx: &GpuContext, what: &str, a: &GpuTensor, b: &GpuTensor) {
    testing::assert_bit_exact(what, &bits(ctx, a), &bits(ctx, b));
}

/// Per-channel (min, max) of an `[N, C, hw]` tensor.
fn channel_ranges(v: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = [f32::INFINITY, f32::NEG_INFINITY].repeat(c);
    for (i, &x) in v.iter().enumerate() {
        let ch = (i / hw) % c;
        out[2 * ch] = out[2 * ch].min(x);
        out[2 * ch + 1] = out[2 * ch + 1].max(x);
    }
    out
}

#[test]
fn fused_batchnorm_equals_unfused_chain_bit_for_bit() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(131);
    let hws = [1usize, 7, 64, 255, 256, 300, 784];
    for case in 0..14u64 {
        let n = testing::size(&mut rng, 1, 5) + 1;
        let c = testing::size(&mut rng, 1, 11);
        let hw = hws[case as usize % hws.len()];
        let shape: Vec<usize> = if hw == 1 { vec![n, c] } else { vec![n, c, 1, hw] };
        let len = n * c * hw;
        let training = case % 2 == 0;
        let relu = case % 3 != 0;
        let fold = case % 4 < 2;
        let (eps, mom) = (1e-5f32, 0.1f32);
        let what = |s: &str| format!("{s}: case {case} shape {shape:?} training {training} relu {relu} fold {fold}");
        let x = testing::uniform(&mut rng, len, -3.0, 5.0);
        let dy = testing::uniform(&mut rng, len, -1.0, 1.0);
        let gamma = testing::uniform(&mut rng, c, 0.5, 1.5);
        let beta = testing::uniform(&mut rng, c, -0.5, 0.5);
        let rm0 = testing::uniform(&mut rng, c, -0.2, 0.2);
        let rv0 = testing::uniform(&mut rng, c, 0.5, 2.0);
        let sfv = testing::uniform(&mut rng, c, 0.3, 2.0);
        let (gx, gdy) = (up(&ctx, &shape, &x), up(&ctx, &shape, &dy));
        let (gg, gb, gsf) = (up(&ctx, &[c], &gamma), up(&ctx, &[c], &beta), up(&ctx, &[c], &sfv));
        let dg0 = testing::uniform(&mut rng, c, -1.0, 1.0);

        // Unfused: [channel_div] -> bn_stats | bn_eval_stats -> bn_apply -> reduce -> dx -> [channel_div].
        let (rm1, rv1) = (up(&ctx, &[c], &rm0), up(&ctx, &[c], &rv0));
        let (saved1, y1, xo, dxo, dc1) =
            (zeros(&ctx, &[2 * c]), zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &shape));
        let (dg1, db1) = (up(&ctx, &[c], &dg0), zeros(&ctx, &[c]));
        let xin = if fold { &xo } else { &gx };
        let mut ds = Vec::new();
        if fold {
            ds.push(kf::channel_div(&ctx, &gx, &gsf, &xo).unwrap());
        }
        ds.push(if training {
            k::bn_stats(&ctx, xin, &saved1, &rm1, &rv1, eps, mom).unwrap()
        } else {
            k::bn_eval_stats(&ctx, &rm1, &rv1, &saved1, eps).unwrap()
        });
        ds.push(k::bn_apply(&ctx, xin, &saved1, &gg, &gb, &y1, relu).unwrap());
        let t1 = BnBackward {
            x: xin,
            saved: &saved1,
            gamma: &gg,
            dy: &gdy,
            y_relu: relu.then_some(&y1),
            dgamma: &dg1,
            dbeta: &db1,
            dx: if fold { &dxo } else { &dc1 },
        };
        ds.push(k::bn_backward_reduce(&ctx, &t1).unwrap());
        ds.push(k::bn_backward_dx(&ctx, &t1, training).unwrap());
        if fold {
            ds.push(kf::channel_div(&ctx, &dxo, &gsf, &dc1).unwrap());
        }
        run(&ctx, &ds);

        // Fused.
        let (rm2, rv2) = (up(&ctx, &[c], &rm0), up(&ctx, &[c], &rv0));
        let (saved2, y2, part, dc2) =
            (zeros(&ctx, &[2 * c]), zeros(&ctx, &shape), zeros(&ctx, &[2 * c]), zeros(&ctx, &shape));
        let (dg2, db2, tsum) = (up(&ctx, &[c], &dg0), zeros(&ctx, &[c]), zeros(&ctx, &[c]));
        let f = BnForward {
            x: &gx,
            sf: fold.then_some(&gsf),
            saved: &saved2,
            running_mean: &rm2,
            running_var: &rv2,
            gamma: &gg,
            beta: &gb,
            y: &y2,
            partials: &part,
        };
        let t2 = BnBackward {
            x: &gx,
            saved: &saved2,
            gamma: &gg,
            dy: &gdy,
            y_relu: relu.then_some(&y2),
            dgamma: &dg2,
            dbeta: &db2,
            dx: &dc2,
        };
        let fg = fold.then_some(BnFoldGrad { sf: &gsf, tsum: &tsum });
        run(
            &ctx,
            &[
                k::bn_forward(&ctx, &f, training, relu, eps, mom).unwrap(),
                k::bn_backward(&ctx, &t2, training, fg, None).unwrap(),
            ],
        );
        same(&ctx, &what("y"), &y2, &y1);
        same(&ctx, &what("saved"), &saved2, &saved1);
        same(&ctx, &what("running_mean"), &rm2, &rm1);
        same(&ctx, &what("running_var"), &rv2, &rv1);
        same(&ctx, &what("dgamma"), &dg2, &dg1);
        same(&ctx, &what("dbeta"), &db2, &db1);
        same(&ctx, &what("dx"), &dc2, &dc1);
        let y = y1.read_f32(&ctx).unwrap();
        testing::assert_bit_exact(&what("partials"), &part.read_f32(&ctx).unwrap(), &channel_ranges(&y, c, hw));
        if fold {
            // fold_gamma_backward's activation sum, via dsf = 0 in the unfused kernel:
            // dgamma += (0 - t / sf^2) / sqrt(rv + eps), compared through fold_backward with
            // a zero weight gradient on both sides.
            let w = zeros(&ctx, &[c, 3]);
            let (dw1, dw2, dsf) = (zeros(&ctx, &[c, 3]), zeros(&ctx, &[c, 3]), zeros(&ctx, &[c]));
            let grv = up(&ctx, &[c], &rv0);
            run(
                &ctx,
                &[
                    kf::fold_weight_backward(&ctx, &w, &w, &gsf, &dw1, &dsf).unwrap(),
                    kf::fold_gamma_backward(&ctx, &gx, &dxo, &gsf, &grv, &dsf, &dg1, eps).unwrap(),
                    kf::fold_backward(&ctx, &w, &w, &gsf, &dw2, &tsum, &grv, &dg2, eps, None).unwrap(),
                ],
            );
            same(&ctx, &what("dgamma after the fold"), &dg2, &dg1);
        }
    }
}

#[test]
fn fused_fold_kernels_equal_unfused_bit_for_bit() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(132);
    for case in 0..6u64 {
        let co = testing::size(&mut rng, 1, 13);
        let inner = [1usize, 9, 255, 256, 300, 1200][case as usize];
        let eps = 1e-5f32;
        let wshape = [co, inner];
        let w = testing::uniform(&mut rng, co * inner, -0.5, 0.5);
        let dwf = testing::uniform(&mut rng, co * inner, -1.0, 1.0);
        let gamma = testing::uniform(&mut rng, co, 0.5, 1.5);
        let rv = testing::uniform(&mut rng, co, 0.5, 2.0);
        let tsum = testing::uniform(&mut rng, co, -3.0, 3.0);
        let dg0 = testing::uniform(&mut rng, co, -1.0, 1.0);
        let what = |s: &str| format!("{s}: case {case} w {wshape:?}");
        let (gw, gdwf, gg, grv) =
            (up(&ctx, &wshape, &w), up(&ctx, &wshape, &dwf), up(&ctx, &[co], &gamma), up(&ctx, &[co], &rv));
        let (sf1, wf1, sf2, wf2) = (zeros(&ctx, &[co]), zeros(&ctx, &wshape), zeros(&ctx, &[co]), zeros(&ctx, &wshape));
        let (rvc, part) = (zeros(&ctx, &[co]), zeros(&ctx, &[2 * co]));
        let copy = case % 2 == 0;
        run(
            &ctx,
            &[
                kf::fold_forward(&ctx, &gw, &gg, &grv, &sf1, &wf1, eps).unwrap(),
                kf::fold_forward_obs(&ctx, &gw, &gg, &grv, &sf2, &wf2, copy.then_some(&rvc), &part, eps).unwrap(),
            ],
        );
        same(&ctx, &what("sf"), &sf2, &sf1);
        same(&ctx, &what("w_fold"), &wf2, &wf1);
        let want_rv = if copy { rv.clone() } else { vec![0.0; co] };
        testing::assert_bit_exact(&what("rv copy"), &rvc.read_f32(&ctx).unwrap(), &want_rv);
        let wf = wf1.read_f32(&ctx).unwrap();
        testing::assert_bit_exact(&what("partials"), &part.read_f32(&ctx).unwrap(), &channel_ranges(&wf, co, inner));

        // fold_weight_backward + fold_gamma_backward (activation sum t given as y_conv = tsum,
        // dy_orig = 1 over one element per channel) vs fold_backward.
        let (dw1, dw2, dsf) = (zeros(&ctx, &wshape), zeros(&ctx, &wshape), zeros(&ctx, &[co]));
        let (dg1, dg2, gts) = (up(&ctx, &[co], &dg0), up(&ctx, &[co], &dg0), up(&ctx, &[co], &tsum));
        let (yc, ones) = (up(&ctx, &[1, co], &tsum), up(&ctx, &[1, co], &vec![1.0; co]));
        run(
            &ctx,
            &[
                kf::fold_weight_backward(&ctx, &gw, &gdwf, &sf1, &dw1, &dsf).unwrap(),
                kf::fold_gamma_backward(&ctx, &yc, &ones, &sf1, &grv, &dsf, &dg1, eps).unwrap(),
                kf::fold_backward(&ctx, &gw, &gdwf, &sf1, &dw2, &gts, &grv, &dg2, eps, None).unwrap(),
            ],
        );
        same(&ctx, &what("dw"), &dw2, &dw1);
        same(&ctx, &what("dgamma"), &dg2, &dg1);
    }
}

fn state_of(channels: usize) -> Vec<f32> {
    let mut s = vec![0.0; QStateLayout::new(channels).len()];
    s[QStateLayout::FQ_ENABLED] = 1.0;
    s[QStateLayout::OBS_ENABLED] = 1.0;
    s
}

#[test]
fn one_pass_observer_finish_equals_final_then_qparams() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(133);
    for case in 0..8u64 {
        let shape = [testing::size(&mut rng, 1, 300), testing::size(&mut rng, 1, 40), testing::size(&mut rng, 1, 30)];
        let spec = match case % 3 {
            0 => QuantSpec::activation(8),
            1 => QuantSpec { channel_axis: Some(1), ..QuantSpec::activation(4) },
            _ => QuantSpec::weight(6),
        };
        let mode = if case % 2 == 0 { ObserverMode::MinMax } else { ObserverMode::MovingAverage { c: 0.25 } };
        let channels = spec.channel_axis.map(|a| shape[a]).unwrap_or(1);
        let n: usize = shape.iter().product();
        let what = format!("case {case} shape {shape:?} {spec:?} {mode:?}");
        let gx = zeros(&ctx, &shape);
        let s0 = state_of(channels);
        let (st1, st2) = (up(&ctx, &[s0.len()], &s0), up(&ctx, &[s0.len()], &s0));
        let mut three = ko::minmax_dispatches(&ctx, &gx, &st1, &spec, mode).unwrap().0;
        three.push(ko::qparams(&ctx, &st1, &spec, channels).unwrap());
        let one = Observer::new(&ctx, spec, mode, &gx, &st2).unwrap();
        assert_eq!(one.dispatches().len(), 2, "{what}");
        for step in 0..3 {
            gx.write(&ctx, &testing::uniform(&mut rng, n, -2.0 + step as f32, 3.0)).unwrap();
            run(&ctx, &three);
            run(&ctx, one.dispatches());
            same(&ctx, &format!("{what} step {step}"), &st2, &st1);
        }
        // Frozen (obs_on = 0): untouched.
        let mut frozen = st1.read_f32(&ctx).unwrap();
        frozen[QStateLayout::OBS_ENABLED] = 0.0;
        st2.write(&ctx, &frozen).unwrap();
        run(&ctx, one.dispatches());
        testing::assert_bit_exact(&format!("{what} frozen"), &st2.read_f32(&ctx).unwrap(), &frozen);
    }
}

#[test]
fn observer_from_producer_partials_equals_full_observer() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(134);
    let (n, c, hw) = (3usize, 5usize, 37usize);
    let shape = [n, c, 1, hw];
    let x = testing::uniform(&mut rng, n * c * hw, -1.0, 4.0);
    let gx = up(&ctx, &shape, &x);
    let part = up(&ctx, &[2 * c], &channel_ranges(&x, c, hw));
    for (spec, chunks, channels) in
        [(QuantSpec::activation(8), c, 1), (QuantSpec { channel_axis: Some(1), ..QuantSpec::activation(8) }, 1, c)]
    {
        let s0 = state_of(channels);
        let (st1, st2) = (up(&ctx, &[s0.len()], &s0), up(&ctx, &[s0.len()], &s0));
        let full = Observer::new(&ctx, spec, ObserverMode::MinMax, &gx, &st1).unwrap();
        let fin = Observer::from_partials(&ctx, spec, ObserverMode::MinMax, &part, chunks, &st2, channels).unwrap();
        run(&ctx, full.dispatches());
        run(&ctx, fin.dispatches());
        same(&ctx, &format!("{spec:?}"), &st2, &st1);
    }
    assert!(Observer::from_partials(
        &ctx,
        QuantSpec::activation(8),
        ObserverMode::MinMax,
        &part,
        2,
        &zeros(&ctx, &[9]),
        1
    )
    .is_err());
}

#[test]
fn tiled_maxpool_backward_equals_gather_and_reference() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(135);
    for case in 0..6u64 {
        let (kh, kw) = [(2, 2), (3, 3), (2, 3), (1, 1), (2, 2), (4, 2)][case as usize];
        let (n, c) = (testing::size(&mut rng, 1, 3), testing::size(&mut rng, 1, 7));
        let (oh, ow) = (testing::size(&mut rng, 1, 15), testing::size(&mut rng, 1, 15));
        let (h, w) = (oh * kh, ow * kw);
        let spec = PoolSpec { kernel: (kh, kw), stride: (kh, kw), padding: (0, 0) };
        let (g, os) = kp::pool_geometry(&[n, c, h, w], &spec).unwrap();
        assert!(kp::maxpool_tiles(&g));
        let x: Vec<f32> = testing::uniform(&mut rng, n * c * h * w, -2.0, 2.0)
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 3 == 0 { 1.0 } else { v })
            .collect();
        let dy = testing::uniform(&mut rng, os.iter().product(), -1.0, 1.0);
        let gx = up(&ctx, &[n, c, h, w], &x);
        let gdy = up(&ctx, &os, &dy);
        let y = zeros(&ctx, &os);
        let arg = GpuTensor::zeros(&ctx, &os, DType::U32).unwrap();
        // Stale values in dx: the tiled kernel must write every element.
        let (dx1, dx2) = (up(&ctx, &[n, c, h, w], &x), up(&ctx, &[n, c, h, w], &x));
        run(
            &ctx,
            &[
                kp::maxpool_forward(&ctx, &gx, &y, &arg, &spec).unwrap(),
                kp::maxpool_backward_path(&ctx, &gdy, &arg, &dx1, &spec, false).unwrap(),
                kp::maxpool_backward(&ctx, &gdy, &arg, &dx2, &spec).unwrap(),
            ],
        );
        let what = format!("case {case} x {:?} {spec:?}", [n, c, h, w]);
        let (wy, widx) = rp::maxpool_forward(&x.iter().map(|&v| v as f64).collect::<Vec<_>>(), &g);
        testing::assert_bit_exact(&what, &y.read_f32(&ctx).unwrap(), &wy.iter().map(|&v| v as f32).collect::<Vec<_>>());
        testing::assert_bit_exact(&what, &arg.read_u32(&ctx).unwrap(), &widx);
        same(&ctx, &what, &dx2, &dx1);
        let idx = arg.read_u32(&ctx).unwrap();
        let want: Vec<f32> = rp::maxpool_backward(&dy.iter().map(|&v| v as f64).collect::<Vec<_>>(), &idx, &g)
            .iter()
            .map(|&v| v as f32)
            .collect();
        testing::assert_bit_exact(&what, &dx2.read_f32(&ctx).unwrap(), &want);
    }
    // A non-tiling shape takes the gather.
    let (g, _) =
        kp::pool_geometry(&[1, 1, 5, 4], &PoolSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) }).unwrap();
    assert!(!kp::maxpool_tiles(&g));
}

#[test]
fn fused_kernel_shape_errors_are_reported() {
    let ctx = testing::ctx();
    let (x, c4, c3, c8) = (zeros(&ctx, &[2, 4, 3, 3]), zeros(&ctx, &[4]), zeros(&ctx, &[3]), zeros(&ctx, &[8]));
    let f = BnForward {
        x: &x,
        sf: None,
        saved: &c8,
        running_mean: &c4,
        running_var: &c4,
        gamma: &c4,
        beta: &c4,
        y: &x,
        partials: &c4,
    };
    assert!(k::bn_forward(&ctx, &f, true, false, 1e-5, 0.1).is_err(), "short partials");
    assert!(k::bn_forward(&ctx, &BnForward { partials: &c8, sf: Some(&c3), ..f }, true, false, 1e-5, 0.1).is_err());
    let t = BnBackward { x: &x, saved: &c8, gamma: &c4, dy: &x, y_relu: None, dgamma: &c4, dbeta: &c4, dx: &x };
    assert!(k::bn_backward(&ctx, &t, true, Some(BnFoldGrad { sf: &c4, tsum: &c3 }), None).is_err());
    let w = zeros(&ctx, &[4, 5]);
    assert!(kf::fold_forward_obs(&ctx, &w, &c4, &c4, &c4, &w, None, &c4, 1e-5).is_err(), "short partials");
    assert!(kf::fold_backward(&ctx, &w, &w, &c4, &w, &c3, &c4, &c4, 1e-5, None).is_err(), "short tsum");
    assert!(ko::final_qparams(&ctx, &c8, 3, &c4, &QuantSpec::activation(8), 1, ObserverMode::MinMax).is_err());
}

#[test]
fn add_quant_equals_fake_quant_add_relu_chain() {
    use wqat::kernels::activation::{self as ka, AddInputQuant, Relu};
    use wqat::kernels::fake_quant as kq;
    let ctx = testing::ctx();
    let mut rng = testing::rng(136);
    for case in 0..8u64 {
        let shape = [testing::size(&mut rng, 1, 4), testing::size(&mut rng, 1, 9), testing::size(&mut rng, 1, 40), 17];
        let n: usize = shape.iter().product();
        let (fa, fb, relu) = (case % 2 == 0, case % 4 < 2, case % 3 != 0);
        let what = format!("case {case} shape {shape:?} fq a {fa} b {fb} relu {relu}");
        let a = testing::uniform(&mut rng, n, -3.0, 3.0);
        let b = testing::uniform(&mut rng, n, -2.0, 4.0);
        let (ga, gb) = (up(&ctx, &shape, &a), up(&ctx, &shape, &b));
        let specs = [QuantSpec::activation(8), QuantSpec { bits: 4, signed: true, ..QuantSpec::activation(4) }];
        let mut states = Vec::new();
        for (k, spec) in specs.iter().enumerate() {
            let mut s = state_of(1);
            s[4] = 0.031 + 0.01 * k as f32;
            s[5] = 1.0 / s[4];
            s[6] = if spec.signed { 0.0 } else { 37.0 };
            if case == 7 {
                s[QStateLayout::FQ_ENABLED] = 0.0;
            }
            states.push(up(&ctx, &[s.len()], &s));
        }
        let (ma, mb, sum, out1, out2) =
            (zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &shape), zeros(&ctx, &shape));
        let mut ds = Vec::new();
        if fa {
            ds.push(kq::fake_quant_forward(&ctx, &ga, &states[0], &ma, &specs[0]).unwrap());
        }
        if fb {
            ds.push(kq::fake_quant_forward(&ctx, &gb, &states[1], &mb, &specs[1]).unwrap());
        }
        let (ia, ib) = (if fa { &ma } else { &ga }, if fb { &mb } else { &gb });
        if relu {
            ds.push(ka::add_forward(&ctx, ia, ib, &sum).unwrap());
            ds.push(ka::relu_forward(&ctx, &sum, &out1, Relu::Relu).unwrap());
        } else {
            ds.push(ka::add_forward(&ctx, ia, ib, &out1).unwrap());
        }
        let part = zeros(&ctx, &[2 * ka::add_quant_chunks(&ctx, n)]);
        let q = |k: usize, on: bool| on.then_some(AddInputQuant { state: &states[k], spec: specs[k] });
        ds.push(ka::add_quant(&ctx, &ga, q(0, fa), &gb, q(1, fb), &out2, relu, &part).unwrap());
        run(&ctx, &ds);
        same(&ctx, &what, &out2, &out1);
        // The partials reduce to the output's range.
        let y = out1.read_f32(&ctx).unwrap();
        let p = part.read_f32(&ctx).unwrap();
        let lo = p.iter().step_by(2).fold(f32::INFINITY, |m, &v| m.min(v));
        let hi = p.iter().skip(1).step_by(2).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        assert_eq!(lo, y.iter().fold(f32::INFINITY, |m, &v| m.min(v)), "{what} min");
        assert_eq!(hi, y.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), "{what} max");
    }
    let t = zeros(&ctx, &[2, 3]);
    let chan = QuantSpec { channel_axis: Some(1), ..QuantSpec::activation(8) };
    let st = zeros(&ctx, &[QStateLayout::new(3).len()]);
    let part = zeros(&ctx, &[2 * ka::add_quant_chunks(&ctx, 6)]);
    assert!(
        ka::add_quant(&ctx, &t, Some(AddInputQuant { state: &st, spec: chan }), &t, None, &t, false, &part).is_err()
    );
    assert!(ka::add_quant(&ctx, &t, None, &t, None, &t, false, &zeros(&ctx, &[1])).is_err());
}

#[test]
fn bn_gradient_guards_flag_non_finite_values() {
    use wqat::kernels::loss;
    let ctx = testing::ctx();
    let mut rng = testing::rng(137);
    let (n, c, hw) = (3usize, 4usize, 10usize);
    let shape = [n, c, 1, hw];
    let x = testing::uniform(&mut rng, n * c * hw, -2.0, 2.0);
    let (c4, c8) = (up(&ctx, &[c], &[0.7; 4]), up(&ctx, &[2 * c], &[0.1, 0.2, 0.3, 0.4, 1.0, 1.1, 1.2, 1.3]));
    let gx = up(&ctx, &shape, &x);
    for (fold, poison) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut dy = testing::uniform(&mut rng, n * c * hw, -1.0, 1.0);
        if poison {
            dy[17] = f32::NAN;
        }
        let gdy = up(&ctx, &shape, &dy);
        let (dg, db, dx, tsum) = (zeros(&ctx, &[c]), zeros(&ctx, &[c]), zeros(&ctx, &shape), zeros(&ctx, &[c]));
        let metrics = loss::new_metrics(&ctx).unwrap();
        let t = BnBackward { x: &gx, saved: &c8, gamma: &c4, dy: &gdy, y_relu: None, dgamma: &dg, dbeta: &db, dx: &dx };
        let fg = fold.then_some(BnFoldGrad { sf: &c4, tsum: &tsum });
        run(&ctx, &[k::bn_backward(&ctx, &t, true, fg, Some(&metrics)).unwrap()]);
        let flags = metrics.read_u32(&ctx).unwrap()[3];
        assert_eq!(flags & 1, poison as u32, "bn_backward fold {fold} poison {poison}");
    }
    // fold_backward: the final dgamma.
    let w = up(&ctx, &[c, 3], &[0.5; 12]);
    for poison in [false, true] {
        let ts = up(&ctx, &[c], &[1.0, if poison { f32::INFINITY } else { 2.0 }, 3.0, 4.0]);
        let (dw, dg) = (zeros(&ctx, &[c, 3]), zeros(&ctx, &[c]));
        let metrics = loss::new_metrics(&ctx).unwrap();
        run(&ctx, &[kf::fold_backward(&ctx, &w, &w, &c4, &dw, &ts, &c4, &dg, 1e-5, Some(&metrics)).unwrap()]);
        assert_eq!(metrics.read_u32(&ctx).unwrap()[3] & 1, poison as u32, "fold_backward poison {poison}");
    }
}
