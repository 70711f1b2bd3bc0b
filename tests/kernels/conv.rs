//! The conv kernels (`shaders/conv*.wgsl`) against `reference::conv` on random geometries
//! (odd sizes straddling the tiles, strides, padding, dilation, groups, depthwise), with
//! fused fake-quant, STE masks exact, finite-difference checks of both backward passes, and
//! shape/limit errors.

use rand::Rng;
use std::sync::Arc;
use wqat::error::WqatError;
use wqat::gpu::{DType, GpuContext, GpuOptions, GpuTensor};
use wqat::kernels::conv::{self as k, Conv2dGeom, QuantOperand, SteMask};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::reference::{conv as r, fake_quant as rfq};
use wqat::testing::{self, assert_close_scaled, FINITE_DIFF_RTOL, FP32_REDUCTION_RTOL};

/// What each random case turns on.
#[derive(Debug, Clone, Copy)]
struct Flags {
    fq_x: bool,
    fq_w: bool,
    bias: bool,
    relu: bool,
    mask_x: bool,
    mask_w: bool,
    accumulate: bool,
    /// One weight scale for the whole tensor instead of one per output channel.
    w_per_tensor: bool,
}

fn upload(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, shape, v).unwrap()
}

/// Elements where the STE mask is 0 must come out exactly as `base` (0, or the old dx).
fn assert_masked_exact(what: &str, got: &[f32], mask: &[f32], base: &[f32]) {
    for i in 0..got.len() {
        if mask[i] == 0.0 {
            assert!(got[i] == base[i], "{what}: element {i} is masked, got {} want {}", got[i], base[i]);
        }
    }
}

fn run_case(seed: u64, cfg: &Conv2dGeom, f: Flags) {
    run_case_on(testing::ctx(), seed, cfg, f);
}

fn run_case_on(ctx: Arc<GpuContext>, seed: u64, cfg: &Conv2dGeom, f: Flags) {
    let mut rng = testing::rng(seed);
    let what = format!("seed {seed} {cfg:?} {f:?}");
    let (xs, ws, ys) = (cfg.x_shape(), cfg.w_shape(), cfg.y_shape());
    let (xn, wn, yn) = (xs.iter().product::<usize>(), ws.iter().product::<usize>(), ys.iter().product::<usize>());
    let x = testing::uniform(&mut rng, xn, -1.0, 2.0);
    let w = testing::uniform(&mut rng, wn, -0.5, 0.5);
    let bias = testing::uniform(&mut rng, cfg.c_out, -1.0, 1.0);
    let dy = testing::uniform(&mut rng, yn, -1.0, 1.0);
    let dx0 = testing::uniform(&mut rng, xn, -1.0, 1.0);

    // Quantizers: ranges narrower than the data so that clamping and masks matter.
    let xspec = QuantSpec::activation(rng.random_range(3..=8));
    let xstate = QStateLayout::new(1).build(&[1.5 / xspec.qmax() as f32], &[(xspec.qmax() / 3) as f32]);
    let mut wspec = QuantSpec::weight(rng.random_range(3..=8));
    let wch = if f.w_per_tensor { 1 } else { cfg.c_out };
    if f.w_per_tensor {
        wspec.channel_axis = None;
    }
    let wscales: Vec<f32> = (0..wch).map(|_| rng.random_range(0.25f32..0.45) / wspec.qmax() as f32).collect();
    let wstate = QStateLayout::new(wch).build(&wscales, &vec![0.0; wch]);
    let inner_w = wn / wch;
    let (xqmin, xqmax) = (xspec.qmin() as f32, xspec.qmax() as f32);
    let (wqmin, wqmax) = (wspec.qmin() as f32, wspec.qmax() as f32);

    let gx = upload(&ctx, &xs, &x);
    let gw = upload(&ctx, &ws, &w);
    let gb = upload(&ctx, &[cfg.c_out], &bias);
    let gdy = upload(&ctx, &ys, &dy);
    let gxs = upload(&ctx, &[xstate.len()], &xstate);
    let gws = upload(&ctx, &[wstate.len()], &wstate);
    let gy = GpuTensor::zeros(&ctx, &ys, DType::F32).unwrap();
    let gdx = upload(&ctx, &xs, &dx0);
    let gdw = GpuTensor::zeros(&ctx, &ws, DType::F32).unwrap();
    let gdb = GpuTensor::zeros(&ctx, &[cfg.c_out], DType::F32).unwrap();
    let xq = QuantOperand { state: &gxs, spec: xspec };
    let wq = QuantOperand { state: &gws, spec: wspec };

    let fwd = k::conv2d_forward(
        &ctx,
        cfg,
        &k::Conv2dForwardArgs {
            x: &gx,
            w: &gw,
            bias: f.bias.then_some(&gb),
            x_quant: f.fq_x.then_some(xq),
            w_quant: f.fq_w.then_some(wq),
            relu: f.relu,
            y: &gy,
        },
    )
    .unwrap();
    let bwd = k::conv2d_backward_data(
        &ctx,
        cfg,
        &k::Conv2dBackwardDataArgs {
            dy: &gdy,
            w: &gw,
            w_quant: f.fq_w.then_some(wq),
            x_mask: f.mask_x.then_some(SteMask { values: &gx, state: &gxs, spec: xspec }),
            accumulate: f.accumulate,
            dx: &gdx,
        },
    )
    .unwrap();
    let wg = k::conv2d_backward_weight(
        &ctx,
        cfg,
        &k::Conv2dBackwardWeightArgs {
            x: &gx,
            x_quant: f.fq_x.then_some(xq),
            dy: &gdy,
            w_mask: f.mask_w.then_some(SteMask { values: &gw, state: &gws, spec: wspec }),
            dw: &gdw,
        },
    )
    .unwrap();
    let bg = k::conv2d_bias_grad(&ctx, cfg, &gdy, &gdb).unwrap();
    let [wp, wr] = wg.dispatches();
    ctx.submit(&[&fwd, &bwd, wp, wr, &bg]).unwrap();

    let xq_ref = if f.fq_x { rfq::fake_quant_forward(&x, &xstate, 1, xn, xqmin, xqmax) } else { x.clone() };
    let wq_ref = if f.fq_w { rfq::fake_quant_forward(&w, &wstate, wch, inner_w, wqmin, wqmax) } else { w.clone() };

    let (want, scale) = r::conv2d_forward(cfg, &xq_ref, &wq_ref, f.bias.then_some(&bias[..]), f.relu);
    assert_close_scaled(&format!("forward {what}"), &gy.read_f32(&ctx).unwrap(), &want, &scale, FP32_REDUCTION_RTOL);

    let (mut want, mut scale) = r::conv2d_backward_data(cfg, &dy, &wq_ref);
    let ones_x = vec![1.0; xn];
    let mask_x = if f.mask_x { rfq::ste_backward(&x, &ones_x, &xstate, 1, xn, xqmin, xqmax) } else { ones_x.clone() };
    let base = if f.accumulate { dx0.clone() } else { vec![0.0; xn] };
    for i in 0..xn {
        want[i] = want[i] * mask_x[i] + base[i];
        scale[i] += base[i].abs();
    }
    let got = gdx.read_f32(&ctx).unwrap();
    assert_close_scaled(&format!("backward data {what}"), &got, &want, &scale, FP32_REDUCTION_RTOL);
    assert_masked_exact(&format!("backward data mask {what}"), &got, &mask_x, &base);

    let (mut want, scale) = r::conv2d_backward_weight(cfg, &xq_ref, &dy);
    let ones_w = vec![1.0; wn];
    let mask_w =
        if f.mask_w { rfq::ste_backward(&w, &ones_w, &wstate, wch, inner_w, wqmin, wqmax) } else { ones_w.clone() };
    for i in 0..wn {
        want[i] *= mask_w[i];
    }
    let got = gdw.read_f32(&ctx).unwrap();
    let what_w = format!("backward weight (splits {}) {what}", wg.splits);
    assert_close_scaled(&what_w, &got, &want, &scale, FP32_REDUCTION_RTOL);
    assert_masked_exact(&what_w, &got, &mask_w, &vec![0.0; wn]);

    let (want, scale) = r::conv2d_bias_grad(cfg, &dy);
    assert_close_scaled(&format!("bias grad {what}"), &gdb.read_f32(&ctx).unwrap(), &want, &scale, FP32_REDUCTION_RTOL);
}

/// A random geometry: groups 1, 2 or depthwise; kernels 1, 3, 5; stride 1-2; padding 0-2;
/// dilation 1-2; channel counts and pixel counts on both sides of the tile sizes.
fn random_config(rng: &mut rand_chacha::ChaCha8Rng, case: u64) -> Conv2dGeom {
    let k = [1, 3, 5][(case % 3) as usize];
    let (groups, cin_g, cout_g) = match case % 4 {
        0 | 1 => (1, testing::size(rng, 1, 9), [3, 17, 33, 65][testing::size(rng, 0, 3)]),
        2 => (2, testing::size(rng, 1, 5), testing::size(rng, 1, 20)),
        _ => {
            let c = testing::size(rng, 1, 6);
            (c, 1, 1)
        }
    };
    let stride = testing::size(rng, 1, 2);
    let padding = testing::size(rng, 0, 2);
    let dilation = if k > 1 { testing::size(rng, 1, 2) } else { 1 };
    let span = dilation * (k - 1) + 1;
    let lo = span.saturating_sub(2 * padding).max(1);
    let h = testing::size(rng, lo, lo + 13);
    let w = testing::size(rng, lo, lo + 17);
    let n = testing::size(rng, 1, 3);
    Conv2dGeom {
        n,
        c_in: groups * cin_g,
        h,
        w,
        c_out: groups * cout_g,
        kh: k,
        kw: k,
        stride: (stride, stride),
        padding: (padding, padding),
        dilation: (dilation, dilation),
        groups,
    }
}

#[test]
fn conv_matches_reference_on_random_geometries() {
    let mut rng = testing::rng(7);
    for case in 0..24u64 {
        let cfg = random_config(&mut rng, case);
        let b = |bit: u64| (case >> bit) & 1 == 1;
        let flags = Flags {
            fq_x: b(0) || case % 5 == 0,
            fq_w: b(1) || case % 5 == 0,
            bias: b(2),
            relu: b(3),
            mask_x: b(1) || b(4),
            mask_w: b(0) || b(4),
            accumulate: b(2) ^ b(3),
            w_per_tensor: case % 3 == 1,
        };
        run_case(1000 + case, &cfg, flags);
    }
}

#[test]
fn conv_on_model_shapes_with_full_quantization() {
    let all = Flags {
        fq_x: true,
        fq_w: true,
        bias: true,
        relu: true,
        mask_x: true,
        mask_w: true,
        accumulate: false,
        w_per_tensor: false,
    };
    // mnist-cnn layers (batch cut to 2), resnet20 stride-2 downsampling and a 1x1 shortcut.
    run_case(1, &Conv2dGeom::new(2, 1, 28, 28, 16, 3).with_padding(1), all);
    run_case(2, &Conv2dGeom::new(2, 16, 14, 14, 32, 3).with_padding(1), all);
    run_case(3, &Conv2dGeom::new(2, 16, 16, 16, 32, 3).with_padding(1).with_stride(2), all);
    run_case(4, &Conv2dGeom::new(2, 32, 8, 8, 64, 1).with_stride(2), Flags { accumulate: true, ..all });
    run_case(5, &Conv2dGeom::new(2, 16, 14, 14, 32, 3).with_padding(1), Flags { w_per_tensor: true, ..all });
}

/// Every conv path, forced (`GpuOptions::conv_direct`, `conv_strip`): the direct one with its
/// strip kernel (the CPU-adapter default for 3-wide kernels), the generic direct kernels
/// (register blocks from storage) and the workgroup-tiled one (the GPU default), against
/// the reference on odd shapes: stride 2 with padding, dilation, groups, depthwise, rows and
/// columns straddling the 4 x 8 blocks, fake-quant on and off, masks, accumulate.
#[test]
fn direct_and_tiled_paths_match_reference() {
    let all = Flags {
        fq_x: true,
        fq_w: true,
        bias: true,
        relu: false,
        mask_x: true,
        mask_w: true,
        accumulate: true,
        w_per_tensor: false,
    };
    let none = Flags {
        fq_x: false,
        fq_w: false,
        bias: false,
        relu: false,
        mask_x: false,
        mask_w: false,
        accumulate: false,
        w_per_tensor: false,
    };
    let cases = [
        (Conv2dGeom::new(3, 5, 11, 9, 7, 3).with_stride(2).with_padding(1), all),
        (Conv2dGeom::new(2, 6, 10, 13, 10, 3).with_dilation(2).with_padding(2), none),
        (Conv2dGeom::new(2, 6, 9, 9, 9, 3).with_groups(3).with_stride(2), Flags { accumulate: false, ..all }),
        (Conv2dGeom::new(2, 5, 12, 7, 5, 3).with_groups(5).with_padding(1), Flags { fq_x: false, ..all }),
        (
            Conv2dGeom { padding: (2, 0), stride: (1, 2), dilation: (2, 1), ..Conv2dGeom::new(1, 9, 8, 11, 13, 5) },
            Flags { fq_w: false, mask_w: false, ..all },
        ),
        (Conv2dGeom::new(2, 17, 6, 5, 3, 1).with_stride(2), Flags { mask_x: false, relu: true, ..all }),
        (Conv2dGeom::new(2, 1, 15, 15, 16, 3).with_padding(1), all),
        (Conv2dGeom::new(2, 6, 9, 9, 9, 3).with_groups(3).with_stride(2), Flags { w_per_tensor: true, ..all }),
        // Strip kernel shapes (kernel 3 wide): rows not a multiple of 8, rows of pixels not a
        // multiple of 8, kernel heights 1 and 5, dilation along H only, stride 2 along W
        // only, groups, and more taps than one staging chunk (forward: 60 x 9 input taps;
        // data gradient: 60 x 9 output taps).
        (Conv2dGeom { kh: 1, padding: (0, 1), ..Conv2dGeom::new(2, 4, 7, 19, 11, 3) }, all),
        (Conv2dGeom { kh: 5, padding: (2, 1), ..Conv2dGeom::new(1, 3, 9, 13, 9, 3) }, Flags { relu: true, ..all }),
        (Conv2dGeom { dilation: (2, 1), padding: (2, 1), ..Conv2dGeom::new(2, 3, 10, 12, 9, 3) }, all),
        (Conv2dGeom { stride: (1, 2), padding: (1, 1), ..Conv2dGeom::new(3, 5, 17, 21, 13, 3) }, none),
        (Conv2dGeom::new(2, 6, 9, 10, 10, 3).with_groups(2).with_padding(1), Flags { w_per_tensor: true, ..all }),
        (Conv2dGeom::new(1, 60, 5, 9, 9, 3).with_padding(1), all),
        (Conv2dGeom::new(1, 9, 5, 9, 60, 3).with_padding(1), Flags { accumulate: false, ..all }),
        (Conv2dGeom::new(3, 16, 14, 14, 32, 3).with_padding(1), all),
    ];
    // (direct, strip): the strip kernel, the generic direct kernels, the tiled kernels.
    for (direct, strip) in [(true, true), (true, false), (false, false)] {
        let opts = GpuOptions { conv_direct: Some(direct), conv_strip: Some(strip), ..GpuOptions::from_env() };
        let ctx = GpuContext::new(&opts).unwrap();
        assert_eq!((ctx.conv_direct, ctx.conv_strip), (direct, strip));
        for (i, (cfg, f)) in cases.iter().enumerate() {
            run_case_on(ctx.clone(), 3000 + i as u64, cfg, *f);
        }
    }
}

#[test]
fn disabled_quantizers_pass_through() {
    // fq_on = 0 in both states: the fused kernels must equal the plain convolution, masks off,
    // although x ranges far outside the quantizers' ranges.
    let ctx = testing::ctx();
    let cfg = Conv2dGeom::new(2, 3, 9, 7, 5, 3).with_padding(1);
    let mut rng = testing::rng(11);
    let x = testing::uniform(&mut rng, 2 * 3 * 9 * 7, -3.0, 3.0);
    let w = testing::uniform(&mut rng, 5 * 3 * 9, -1.0, 1.0);
    let mut xstate = QStateLayout::new(1).build(&[0.1], &[3.0]);
    let mut wstate = QStateLayout::new(5).build(&[0.01; 5], &[0.0; 5]);
    xstate[QStateLayout::FQ_ENABLED] = 0.0;
    wstate[QStateLayout::FQ_ENABLED] = 0.0;
    let (gx, gw) = (upload(&ctx, &cfg.x_shape(), &x), upload(&ctx, &cfg.w_shape(), &w));
    let (gxs, gws) = (upload(&ctx, &[xstate.len()], &xstate), upload(&ctx, &[wstate.len()], &wstate));
    let gy = GpuTensor::zeros(&ctx, &cfg.y_shape(), DType::F32).unwrap();
    let d = k::conv2d_forward(
        &ctx,
        &cfg,
        &k::Conv2dForwardArgs {
            x: &gx,
            w: &gw,
            bias: None,
            x_quant: Some(QuantOperand { state: &gxs, spec: QuantSpec::activation(4) }),
            w_quant: Some(QuantOperand { state: &gws, spec: QuantSpec::weight(4) }),
            relu: false,
            y: &gy,
        },
    )
    .unwrap();
    // Backward with FQ and both STE masks requested: the off states make them pass-through.
    let dy = testing::uniform(&mut rng, cfg.y_shape().iter().product(), -1.0, 1.0);
    let gdy = upload(&ctx, &cfg.y_shape(), &dy);
    let gdx = GpuTensor::zeros(&ctx, &cfg.x_shape(), DType::F32).unwrap();
    let gdw = GpuTensor::zeros(&ctx, &cfg.w_shape(), DType::F32).unwrap();
    let (xspec, wspec) = (QuantSpec::activation(4), QuantSpec::weight(4));
    let bd = k::conv2d_backward_data(
        &ctx,
        &cfg,
        &k::Conv2dBackwardDataArgs {
            dy: &gdy,
            w: &gw,
            w_quant: Some(QuantOperand { state: &gws, spec: wspec }),
            x_mask: Some(SteMask { values: &gx, state: &gxs, spec: xspec }),
            accumulate: false,
            dx: &gdx,
        },
    )
    .unwrap();
    let bw = k::conv2d_backward_weight(
        &ctx,
        &cfg,
        &k::Conv2dBackwardWeightArgs {
            x: &gx,
            x_quant: Some(QuantOperand { state: &gxs, spec: xspec }),
            dy: &gdy,
            w_mask: Some(SteMask { values: &gw, state: &gws, spec: wspec }),
            dw: &gdw,
        },
    )
    .unwrap();
    let [p, q] = bw.dispatches();
    ctx.submit(&[&d, &bd, p, q]).unwrap();
    let (want, scale) = r::conv2d_forward(&cfg, &x, &w, None, false);
    assert_close_scaled("fq off", &gy.read_f32(&ctx).unwrap(), &want, &scale, FP32_REDUCTION_RTOL);
    let (want, scale) = r::conv2d_backward_data(&cfg, &dy, &w);
    assert_close_scaled("fq off dx", &gdx.read_f32(&ctx).unwrap(), &want, &scale, FP32_REDUCTION_RTOL);
    let (want, scale) = r::conv2d_backward_weight(&cfg, &x, &dy);
    assert_close_scaled("fq off dw", &gdw.read_f32(&ctx).unwrap(), &want, &scale, FP32_REDUCTION_RTOL);
}

/// GPU backward passes (FQ off, no masks) against central differences of the f64 reference
/// forward of `L = sum(r * conv(x, w))`, whose gradients are `backward(dy = r)`.
fn finite_diff_case(seed: u64, cfg: &Conv2dGeom) {
    let ctx = testing::ctx();
    let mut rng = testing::rng(seed);
    let (xs, ws, ys) = (cfg.x_shape(), cfg.w_shape(), cfg.y_shape());
    let x = testing::uniform(&mut rng, xs.iter().product(), -1.0, 1.0);
    let w = testing::uniform(&mut rng, ws.iter().product(), -1.0, 1.0);
    let rr = testing::uniform(&mut rng, ys.iter().product(), -1.0, 1.0);
    let (gx, gw, gr) = (upload(&ctx, &xs, &x), upload(&ctx, &ws, &w), upload(&ctx, &ys, &rr));
    let gdx = GpuTensor::zeros(&ctx, &xs, DType::F32).unwrap();
    let gdw = GpuTensor::zeros(&ctx, &ws, DType::F32).unwrap();
    let bd = k::conv2d_backward_data(
        &ctx,
        cfg,
        &k::Conv2dBackwardDataArgs { dy: &gr, w: &gw, w_quant: None, x_mask: None, accumulate: false, dx: &gdx },
    )
    .unwrap();
    let bw = k::conv2d_backward_weight(
        &ctx,
        cfg,
        &k::Conv2dBackwardWeightArgs { x: &gx, x_quant: None, dy: &gr, w_mask: None, dw: &gdw },
    )
    .unwrap();
    let [p, q] = bw.dispatches();
    ctx.submit(&[&bd, p, q]).unwrap();
    let (gdx, gdw) = (gdx.read_f32(&ctx).unwrap(), gdw.read_f32(&ctx).unwrap());

    let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (x64, w64, r64) = (to64(&x), to64(&w), to64(&rr));
    let loss = |x: &[f64], w: &[f64]| {
        let (y, _) = r::conv2d_forward_f64(cfg, x, w, None);
        y.iter().zip(&r64).map(|(a, b)| a * b).sum::<f64>()
    };
    let (_, sx) = r::conv2d_backward_data(cfg, &rr, &w);
    for i in 0..x.len() {
        let fd = testing::finite_diff(&mut |xv| loss(xv, &w64), &x64, i, 1e-2);
        let tol = FINITE_DIFF_RTOL * (sx[i] as f64 + fd.abs() + 1e-6);
        assert!((gdx[i] as f64 - fd).abs() <= tol, "dx[{i}] {cfg:?}: gpu {} fd {fd}", gdx[i]);
    }
    let (_, sw) = r::conv2d_backward_weight(cfg, &x, &rr);
    for i in 0..w.len() {
        let fd = testing::finite_diff(&mut |wv| loss(&x64, wv), &w64, i, 1e-2);
        let tol = FINITE_DIFF_RTOL * (sw[i] as f64 + fd.abs() + 1e-6);
        assert!((gdw[i] as f64 - fd).abs() <= tol, "dw[{i}] {cfg:?}: gpu {} fd {fd}", gdw[i]);
    }
}

#[test]
fn backward_matches_finite_differences() {
    finite_diff_case(21, &Conv2dGeom::new(2, 3, 7, 6, 4, 3).with_padding(1).with_stride(2));
    finite_diff_case(22, &Conv2dGeom::new(1, 4, 9, 8, 6, 3).with_dilation(2).with_padding(2).with_groups(2));
    finite_diff_case(
        23,
        &Conv2dGeom { padding: (0, 2), stride: (2, 1), ..Conv2dGeom::new(2, 3, 5, 4, 3, 1) }.with_groups(3),
    );
    // Stride 3 with dilation 2: three stride phases, each with its own tap progression.
    finite_diff_case(25, &Conv2dGeom::new(1, 2, 11, 10, 3, 3).with_stride(3).with_dilation(2).with_padding(2));
    finite_diff_case(24, &Conv2dGeom { kh: 5, kw: 3, padding: (2, 1), ..Conv2dGeom::new(1, 2, 6, 5, 3, 0) });
}

#[test]
fn bad_geometry_shapes_and_limits_are_errors() {
    let ctx = testing::ctx();
    let ok = Conv2dGeom::new(1, 4, 6, 6, 4, 3);
    assert!(ok.validate().is_ok());
    for bad in [
        ok.with_groups(3),
        ok.with_stride(0),
        ok.with_dilation(0),
        Conv2dGeom { c_out: 6, ..ok.with_groups(4) },
        Conv2dGeom::new(1, 4, 2, 6, 4, 3),
        ok.with_dilation(3),
        Conv2dGeom { n: 0, ..ok },
    ] {
        assert!(matches!(bad.validate(), Err(WqatError::Shape(_))), "{bad:?} should be a shape error");
    }
    assert!(matches!(Conv2dGeom::new(1 << 20, 64, 64, 64, 4, 3).validate(), Err(WqatError::Limit(_))));

    let x = GpuTensor::zeros(&ctx, &ok.x_shape(), DType::F32).unwrap();
    let w = GpuTensor::zeros(&ctx, &ok.w_shape(), DType::F32).unwrap();
    let y = GpuTensor::zeros(&ctx, &ok.y_shape(), DType::F32).unwrap();
    let wrong = GpuTensor::zeros(&ctx, &[1, 4, 5, 6], DType::F32).unwrap();
    let xstate = GpuTensor::zeros(&ctx, &[QStateLayout::new(1).len()], DType::F32).unwrap();
    let args = k::Conv2dForwardArgs { x: &x, w: &w, bias: None, x_quant: None, w_quant: None, relu: false, y: &y };
    assert!(k::conv2d_forward(&ctx, &ok, &args).is_ok());
    assert!(k::conv2d_forward(&ctx, &ok, &k::Conv2dForwardArgs { x: &wrong, ..args }).is_err());
    assert!(k::conv2d_forward(&ctx, &ok, &k::Conv2dForwardArgs { bias: Some(&x), ..args }).is_err());
    // A per-tensor state given for the per-channel weights, and a per-channel spec for x.
    let wq = QuantOperand { state: &xstate, spec: QuantSpec::weight(8) };
    assert!(k::conv2d_forward(&ctx, &ok, &k::Conv2dForwardArgs { w_quant: Some(wq), ..args }).is_err());
    let xq = QuantOperand { state: &xstate, spec: QuantSpec::weight(8) };
    assert!(k::conv2d_forward(&ctx, &ok, &k::Conv2dForwardArgs { x_quant: Some(xq), ..args }).is_err());
    let xq = QuantOperand { state: &xstate, spec: QuantSpec::activation(9) };
    assert!(k::conv2d_forward(&ctx, &ok, &k::Conv2dForwardArgs { x_quant: Some(xq), ..args }).is_err());
    let dx = GpuTensor::zeros(&ctx, &ok.x_shape(), DType::F32).unwrap();
    let bd = k::Conv2dBackwardDataArgs { dy: &x, w: &w, w_quant: None, x_mask: None, accumulate: false, dx: &dx };
    assert!(k::conv2d_backward_data(&ctx, &ok, &bd).is_err());
    let bw = k::Conv2dBackwardWeightArgs { x: &x, x_quant: None, dy: &y, w_mask: None, dw: &x };
    assert!(k::conv2d_backward_weight(&ctx, &ok, &bw).is_err());
    assert!(k::conv2d_bias_grad(&ctx, &ok, &y, &y).is_err());

    // Depthwise over more channels than workgroups allowed in one grid dimension.
    let big = Conv2dGeom::new(1, 70000, 1, 1, 70000, 1).with_groups(70000);
    let bx = GpuTensor::zeros(&ctx, &big.x_shape(), DType::F32).unwrap();
    let bw = GpuTensor::zeros(&ctx, &big.w_shape(), DType::F32).unwrap();
    let by = GpuTensor::zeros(&ctx, &big.y_shape(), DType::F32).unwrap();
    let args = k::Conv2dForwardArgs { x: &bx, w: &bw, bias: None, x_quant: None, w_quant: None, relu: false, y: &by };
    assert!(matches!(k::conv2d_forward(&ctx, &big, &args), Err(WqatError::Limit(_))));
    let bb = GpuTensor::zeros(&ctx, &[70000], DType::F32).unwrap();
    assert!(matches!(k::conv2d_bias_grad(&ctx, &big, &by, &bb), Err(WqatError::Limit(_))));
}
