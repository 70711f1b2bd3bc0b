//! `shaders/lsq.wgsl` against `reference::lsq`, and the LSQ gradients against central
//! finite differences of the straight-through forward (round's value frozen, slope 1).

use wqat::gpu::{DType, Dispatch, GpuTensor};
use wqat::kernels::lsq::LsqGrad;
use wqat::quant::{channel_geometry, QStateLayout, QuantSpec};
use wqat::reference::lsq as r;
use wqat::testing::{self, assert_close_scaled, FINITE_DIFF_RTOL, FP32_REDUCTION_RTOL};

struct Case {
    shape: Vec<usize>,
    spec: QuantSpec,
    x: Vec<f32>,
    dy: Vec<f32>,
    state: Vec<f32>,
}

fn make(seed: u64, shape: Vec<usize>, spec: QuantSpec, avoid_edges: bool) -> Case {
    let mut rng = testing::rng(seed);
    let (channels, inner) = channel_geometry(&shape, spec.channel_axis).unwrap();
    let n: usize = shape.iter().product();
    let scales = testing::uniform(&mut rng, channels, 0.02, 0.3);
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
    let zps: Vec<f32> = (0..channels)
        .map(|c| if spec.symmetric { 0.0 } else { (qmin + ((c * 5) as f32) % (qmax - qmin)).floor() })
        .collect();
    let state = QStateLayout::new(channels).build(&scales, &zps);
    // Codes from qmin-6 to qmax+6 so both clamps are exercised.
    let codes = testing::uniform(&mut rng, n, qmin - 6.0, qmax + 6.0);
    let fracs = testing::uniform(&mut rng, n, 0.1, 0.4);
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let c = (i / inner) % channels;
            let mut u = codes[i] - zps[c];
            if avoid_edges {
                // Away from rounding ties, and codes never exactly qmin or qmax (the
                // frozen-round forward has its clamp kink there).
                let mut k = u.round();
                if k + zps[c] == qmin {
                    k -= 2.0;
                } else if k + zps[c] == qmax {
                    k += 2.0;
                }
                u = k + if i % 2 == 0 { fracs[i] } else { -fracs[i] };
            }
            u * scales[c]
        })
        .collect();
    let dy = testing::uniform(&mut rng, n, -1.0, 1.0);
    Case { shape, spec, x, dy, state }
}

/// Runs the GPU kernel; returns (dscale, dzero).
fn gpu(case: &Case, grad_factor: f32) -> (Vec<f32>, Vec<f32>) {
    let ctx = testing::ctx();
    let (channels, _) = channel_geometry(&case.shape, case.spec.channel_axis).unwrap();
    let gx = GpuTensor::from_f32(&ctx, &case.shape, &case.x).unwrap();
    let gdy = GpuTensor::from_f32(&ctx, &case.shape, &case.dy).unwrap();
    let gs = GpuTensor::from_f32(&ctx, &[case.state.len()], &case.state).unwrap();
    let ds = GpuTensor::zeros(&ctx, &[channels], DType::F32).unwrap();
    let dz = GpuTensor::zeros(&ctx, &[channels], DType::F32).unwrap();
    let g = LsqGrad::new(&ctx, &case.spec, &gx, &gdy, &gs, &ds, &dz, grad_factor).unwrap();
    let refs: Vec<&Dispatch> = g.dispatches().iter().collect();
    ctx.submit(&refs).unwrap();
    (ds.read_f32(&ctx).unwrap(), dz.read_f32(&ctx).unwrap())
}

fn spec_for(case: u64, rank: usize) -> QuantSpec {
    let bits = 2 + (case % 7) as u32;
    match case % 3 {
        0 => QuantSpec::activation(bits),
        1 => QuantSpec { channel_axis: Some(case as usize % rank), ..QuantSpec::weight(bits) },
        _ => QuantSpec { bits, signed: true, symmetric: false, channel_axis: Some(rank - 1), full_range: false },
    }
}

#[test]
fn lsq_matches_reference_on_random_shapes() {
    let mut rng = testing::rng(3);
    for case in 0..14u64 {
        let rank = 1 + (case % 4) as usize;
        let mut shape: Vec<usize> = (0..rank).map(|_| testing::size(&mut rng, 1, 31)).collect();
        if case % 5 == 0 {
            shape[0] = testing::size(&mut rng, 4100, 9000);
        }
        let spec = spec_for(case, rank);
        let c = make(50 + case, shape, spec, false);
        let (channels, inner) = channel_geometry(&c.shape, spec.channel_axis).unwrap();
        let gf = if case % 2 == 0 { 1.0 } else { 0.37 };
        let (ds, dz) = gpu(&c, gf);
        let (q0, q1) = (spec.qmin() as f32, spec.qmax() as f32);
        let (wds, wdz, ads, adz) = r::lsq_grads(&c.x, &c.dy, &c.state, channels, inner, q0, q1, gf);
        let what = format!("case {case} shape {:?} {spec:?}", c.shape);
        assert_close_scaled(&format!("{what} dscale"), &ds, &wds, &ads, FP32_REDUCTION_RTOL);
        assert_close_scaled(&format!("{what} dzero"), &dz, &wdz, &adz, FP32_REDUCTION_RTOL);
    }
}

/// `sum dy * out` in f64 where round(u) is frozen at the base point `u0` (slope 1): the
/// forward whose exact derivative the LSQ estimator is.
fn ste_loss(c: &Case, channels: usize, inner: usize, s: &[f64], z: &[f64], s0: &[f64]) -> f64 {
    let (qmin, qmax) = (c.spec.qmin() as f64, c.spec.qmax() as f64);
    let mut acc = 0.0;
    for (i, (&x, &g)) in c.x.iter().zip(&c.dy).enumerate() {
        let ch = (i / inner) % channels;
        let u0 = x as f64 / s0[ch];
        let r = u0.round_ties_even() + (x as f64 / s[ch] - u0) + z[ch];
        acc += g as f64 * (r.clamp(qmin, qmax) - z[ch]) * s[ch];
    }
    acc
}

#[test]
fn lsq_matches_finite_differences() {
    for case in 0..6u64 {
        let rank = 1 + (case % 3) as usize;
        let shape: Vec<usize> = (0..rank).map(|d| 3 + (case as usize + d) % 4).collect();
        let spec = spec_for(case, rank);
        let c = make(900 + case, shape, spec, true);
        let (channels, inner) = channel_geometry(&c.shape, spec.channel_axis).unwrap();
        let l = QStateLayout::new(channels);
        let s0: Vec<f64> = (0..channels).map(|k| c.state[l.scale() + k] as f64).collect();
        let z0: Vec<f64> = (0..channels).map(|k| c.state[l.zero_point() + k] as f64).collect();
        let (ds, dz) = gpu(&c, 1.0);
        let (q0, q1) = (spec.qmin() as f32, spec.qmax() as f32);
        let (_, _, ads, adz) = r::lsq_grads(&c.x, &c.dy, &c.state, channels, inner, q0, q1, 1.0);
        for k in 0..channels {
            let mut fs = |p: &[f64]| {
                let mut s = s0.clone();
                s[k] = p[0];
                ste_loss(&c, channels, inner, &s, &z0, &s0)
            };
            let fd_s = testing::finite_diff(&mut fs, &[s0[k]], 0, 1e-6 * s0[k]);
            let mut fz = |p: &[f64]| {
                let mut z = z0.clone();
                z[k] = p[0];
                ste_loss(&c, channels, inner, &s0, &z, &s0)
            };
            let fd_z = testing::finite_diff(&mut fz, &[z0[k]], 0, 1e-3);
            let what = format!("case {case} {spec:?} channel {k}");
            let tol_s = FINITE_DIFF_RTOL * (ads[k] as f64).max(1e-6);
            let tol_z = FINITE_DIFF_RTOL * (adz[k] as f64).max(1e-6);
            assert!((ds[k] as f64 - fd_s).abs() <= tol_s, "{what}: dscale {} vs finite diff {fd_s}", ds[k]);
            assert!((dz[k] as f64 - fd_z).abs() <= tol_z, "{what}: dzero {} vs finite diff {fd_z}", dz[k]);
        }
    }
}

#[test]
fn lsq_disabled_and_bad_inputs() {
    let ctx = testing::ctx();
    let mut c = make(5, vec![7, 5], QuantSpec::activation(8), false);
    c.state[QStateLayout::FQ_ENABLED] = 0.0;
    let (ds, dz) = gpu(&c, 1.0);
    assert_eq!((ds, dz), (vec![0.0], vec![0.0]));
    let gx = GpuTensor::zeros(&ctx, &[7, 5], DType::F32).unwrap();
    let gdy = GpuTensor::zeros(&ctx, &[5, 7], DType::F32).unwrap();
    let gs = GpuTensor::zeros(&ctx, &[QStateLayout::new(1).len()], DType::F32).unwrap();
    let one = GpuTensor::zeros(&ctx, &[1], DType::F32).unwrap();
    let spec = QuantSpec::activation(8);
    assert!(LsqGrad::new(&ctx, &spec, &gx, &gdy, &gs, &one, &one, 1.0).is_err());
    assert!(LsqGrad::new(&ctx, &spec, &gx, &gx, &gs, &one, &one, f32::NAN).is_err());
    assert!(LsqGrad::new(&ctx, &QuantSpec::weight(8), &gx, &gx, &gs, &one, &one, 1.0).is_err());
    assert!(LsqGrad::new(&ctx, &spec, &gx, &gx, &gs, &one, &one, 1.0).is_ok());
}

/// `lsq_init` copies the calibrated state into the parameters; `lsq_sync` clamps the scale
/// to `SCALE_EPS` (written back), writes scale, 1/scale and the rounded, clamped zero point
/// into the state; `lsq_hyper` scales the learning rate and keeps the step.
#[test]
fn lsq_parameter_kernels() {
    use wqat::kernels::lsq::{lsq_hyper, lsq_init, lsq_sync, LsqParams, SCALE_EPS};
    let ctx = testing::ctx();
    let spec = QuantSpec::activation(4);
    let c = 5;
    let l = QStateLayout::new(c);
    let state0 = l.build(&[0.5, 0.25, 2.0, 1.0, 0.125], &[0.0, 3.0, 7.0, 15.0, 1.0]);
    let st = GpuTensor::from_f32(&ctx, &[l.len()], &state0).unwrap();
    let s = GpuTensor::zeros(&ctx, &[c], DType::F32).unwrap();
    let z = GpuTensor::zeros(&ctx, &[c], DType::F32).unwrap();
    let lp = LsqParams { scale: &s, zero: Some(&z) };
    ctx.submit(&[&lsq_init(&ctx, &spec, &st, &lp).unwrap()]).unwrap();
    assert_eq!(s.read_f32(&ctx).unwrap(), state0[l.scale()..l.scale() + c]);
    assert_eq!(z.read_f32(&ctx).unwrap(), state0[l.zero_point()..l.zero_point() + c]);
    s.write(&ctx, &[0.3f32, -1.0, 0.0, 3.0, 1e-9]).unwrap();
    z.write(&ctx, &[2.5f32, 3.5, -4.0, 16.2, 0.49]).unwrap();
    ctx.submit(&[&lsq_sync(&ctx, &spec, &st, &lp).unwrap()]).unwrap();
    let want_s = [0.3, SCALE_EPS, SCALE_EPS, 3.0, SCALE_EPS];
    assert_eq!(s.read_f32(&ctx).unwrap(), want_s);
    let v = st.read_f32(&ctx).unwrap();
    assert_eq!(&v[l.scale()..l.scale() + c], &want_s);
    for k in 0..c {
        let inv = v[l.inv_scale() + k];
        assert!((inv * want_s[k] - 1.0).abs() < 1e-6, "inv_scale {k}: {inv}");
    }
    // Ties to even, clamped to [0, 15].
    assert_eq!(&v[l.zero_point()..l.zero_point() + c], &[2.0, 4.0, 0.0, 15.0, 0.0]);
    // Without a learned zero point the state's stays.
    let lp = LsqParams { scale: &s, zero: None };
    st.write(&ctx, &state0).unwrap();
    ctx.submit(&[&lsq_sync(&ctx, &spec, &st, &lp).unwrap()]).unwrap();
    let v = st.read_f32(&ctx).unwrap();
    assert_eq!(&v[l.zero_point()..l.zero_point() + c], &state0[l.zero_point()..l.zero_point() + c]);
    // Learning rate times the multiplier.
    let h = GpuTensor::from_f32(&ctx, &[4], &[0.01, 7.0, 0.0, 0.0]).unwrap();
    let h2 = GpuTensor::zeros(&ctx, &[4], DType::F32).unwrap();
    ctx.submit(&[&lsq_hyper(&ctx, &h, &h2, 0.5).unwrap()]).unwrap();
    assert_eq!(h2.read_f32(&ctx).unwrap(), [0.005, 7.0, 0.0, 0.0]);
    // Shape errors.
    let short = GpuTensor::zeros(&ctx, &[c - 1], DType::F32).unwrap();
    assert!(lsq_sync(&ctx, &spec, &st, &LsqParams { scale: &short, zero: None }).is_err());
    assert!(lsq_init(&ctx, &spec, &st, &LsqParams { scale: &s, zero: Some(&short) }).is_err());
    assert!(lsq_hyper(&ctx, &h, &GpuTensor::zeros(&ctx, &[3], DType::F32).unwrap(), 1.0).is_err());
    assert!(lsq_hyper(&ctx, &h, &h2, f32::NAN).is_err());
}
