//! `shaders/observer.wgsl` against `reference::observer`: min/max exact, qparams exact
//! (scale, zero point) from the same min/max, moving average within a named tolerance.

use wqat::gpu::{DType, Dispatch, GpuTensor};
use wqat::kernels::observer::{self as k, Observer, ObserverMode};
use wqat::quant::{channel_geometry, QStateLayout, QuantSpec};
use wqat::reference::observer as r;
use wqat::testing::{self, assert_bit_exact, assert_close};

/// The moving average `old + c*(new-old)` may be contracted to an fma by the driver.
const EMA_RTOL: f32 = 1e-6;
/// `inv_scale = 1/s` is a WGSL division (2.5 ULP allowed by the spec).
const INV_SCALE_RTOL: f32 = 3e-7;

fn state_of(channels: usize) -> Vec<f32> {
    let mut s = vec![0.0; QStateLayout::new(channels).len()];
    s[QStateLayout::FQ_ENABLED] = 1.0;
    s[QStateLayout::OBS_ENABLED] = 1.0;
    s
}

fn run(ctx: &wqat::gpu::GpuContext, ds: &[Dispatch]) {
    let refs: Vec<&Dispatch> = ds.iter().collect();
    ctx.submit(&refs).unwrap();
}

/// Checks scale/zero point exactly and inv_scale within INV_SCALE_RTOL, given the GPU state.
fn check_qparams(what: &str, got: &[f32], spec: &QuantSpec, channels: usize) {
    let l = QStateLayout::new(channels);
    let mut want = got.to_vec();
    r::qparams(&mut want, spec, channels);
    let sl = |v: &[f32], o: usize| v[o..o + channels].to_vec();
    assert_bit_exact(&format!("{what} scale"), &sl(got, l.scale()), &sl(&want, l.scale()));
    assert_bit_exact(&format!("{what} zero point"), &sl(got, l.zero_point()), &sl(&want, l.zero_point()));
    assert_close(&format!("{what} inv_scale"), &sl(got, l.inv_scale()), &sl(&want, l.inv_scale()), INV_SCALE_RTOL, 0.0);
    assert_eq!(got[QStateLayout::INITIALIZED], 1.0, "{what}: initialized");
}

#[test]
fn observer_matches_reference_on_random_shapes() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(7);
    for case in 0..16u64 {
        let rank = 1 + (case % 4) as usize;
        let mut shape: Vec<usize> = (0..rank).map(|_| testing::size(&mut rng, 1, 29)).collect();
        if case % 5 == 0 {
            shape[0] = testing::size(&mut rng, 5000, 9000); // several chunks per channel
        }
        let bits = 2 + (case % 7) as u32;
        let spec = match case % 4 {
            0 => QuantSpec::activation(bits),
            1 => QuantSpec {
                channel_axis: Some(case as usize % rank),
                full_range: case % 8 == 1,
                ..QuantSpec::weight(bits)
            },
            2 => QuantSpec { bits, signed: true, symmetric: false, channel_axis: Some(rank - 1), full_range: false },
            _ => QuantSpec { bits, signed: false, symmetric: true, channel_axis: None, full_range: false },
        };
        let mode = if case % 2 == 0 { ObserverMode::MinMax } else { ObserverMode::MovingAverage { c: 0.1 } };
        let (channels, inner) = channel_geometry(&shape, spec.channel_axis).unwrap();
        let n: usize = shape.iter().product();
        let off = if case % 3 == 0 { 2.0 } else { 0.0 };
        let x1 = testing::uniform(&mut rng, n, -1.0 + off, 3.0 + off);
        let x2 = testing::uniform(&mut rng, n, -4.0, 1.5);
        let gx = GpuTensor::from_f32(&ctx, &shape, &x1).unwrap();
        let mut want = state_of(channels);
        let gs = GpuTensor::from_f32(&ctx, &[want.len()], &want).unwrap();
        let obs = Observer::new(&ctx, spec, mode, &gx, &gs).unwrap();
        let what = format!("case {case} shape {shape:?} {spec:?} {mode:?}");
        let l = QStateLayout::new(channels);
        for (step, x) in [&x1, &x2].into_iter().enumerate() {
            gx.write(&ctx, x).unwrap();
            run(&ctx, obs.dispatches());
            let got = gs.read_f32(&ctx).unwrap();
            r::observe(&mut want, x, channels, inner, mode);
            let rng_of = |v: &[f32]| v[l.min()..l.max() + channels].to_vec();
            match mode {
                ObserverMode::MinMax => {
                    assert_bit_exact(&format!("{what} step {step} range"), &rng_of(&got), &rng_of(&want))
                }
                _ => assert_close(&format!("{what} step {step} range"), &rng_of(&got), &rng_of(&want), EMA_RTOL, 1e-7),
            }
            check_qparams(&format!("{what} step {step}"), &got, &spec, channels);
            want = got; // continue from the GPU state so the comparison stays exact
        }
    }
}

#[test]
fn qparams_degenerate_and_zero_widening() {
    let ctx = testing::ctx();
    // Channels: all zero (degenerate -> scale 1), positive only (range widened to 0),
    // negative only, tiny range.
    let ranges = [(0.0f32, 0.0f32), (0.5, 2.0), (-3.0, -1.0), (1e-39, 2e-39), (-0.7, 0.3)];
    for spec in [
        QuantSpec::activation(8),
        QuantSpec::weight(4),
        QuantSpec { full_range: true, ..QuantSpec::weight(4) },
        QuantSpec { bits: 3, signed: true, symmetric: false, channel_axis: Some(0), full_range: false },
    ] {
        let c = ranges.len();
        let l = QStateLayout::new(c);
        let mut st = state_of(c);
        for (i, (lo, hi)) in ranges.iter().enumerate() {
            st[l.min() + i] = *lo;
            st[l.max() + i] = *hi;
        }
        let gs = GpuTensor::from_f32(&ctx, &[st.len()], &st).unwrap();
        let d = k::qparams(&ctx, &gs, &spec, c).unwrap();
        run(&ctx, &[d]);
        let got = gs.read_f32(&ctx).unwrap();
        check_qparams(&format!("{spec:?}"), &got, &spec, c);
        assert_eq!(got[l.scale()], 1.0);
        let (s, _, z) = spec.qparams(0.5, 2.0);
        assert_eq!(s, 2.0 * spec.inv_scale_denominator());
        if !spec.symmetric {
            assert_eq!(z, spec.qmin() as f32);
        }
    }
}

#[test]
fn frozen_observer_leaves_state_untouched() {
    let ctx = testing::ctx();
    let spec = QuantSpec::activation(8);
    let x = [1.0f32, -2.0, 5.0];
    let mut st = state_of(1);
    let gx = GpuTensor::from_f32(&ctx, &[3], &x).unwrap();
    let gs = GpuTensor::from_f32(&ctx, &[st.len()], &st).unwrap();
    let obs = Observer::new(&ctx, spec, ObserverMode::MinMax, &gx, &gs).unwrap();
    run(&ctx, obs.dispatches());
    let first = gs.read_f32(&ctx).unwrap();
    let l = QStateLayout::new(1);
    assert_eq!((first[l.min()], first[l.max()]), (-2.0, 5.0));
    // Freeze: one host write of the flag, same dispatches.
    st = first.clone();
    st[QStateLayout::OBS_ENABLED] = 0.0;
    gs.write(&ctx, &st).unwrap();
    gx.write(&ctx, &[100.0f32, -100.0, 0.0]).unwrap();
    run(&ctx, obs.dispatches());
    assert_eq!(gs.read_f32(&ctx).unwrap(), st);
}

#[test]
fn bad_inputs_are_errors() {
    let ctx = testing::ctx();
    let gx = GpuTensor::zeros(&ctx, &[4, 3], DType::F32).unwrap();
    let gs = GpuTensor::zeros(&ctx, &[QStateLayout::new(1).len()], DType::F32).unwrap();
    assert!(Observer::new(&ctx, QuantSpec::weight(8), ObserverMode::MinMax, &gx, &gs).is_err());
    assert!(Observer::new(&ctx, QuantSpec::activation(9), ObserverMode::MinMax, &gx, &gs).is_err());
    assert!(Observer::new(&ctx, QuantSpec::activation(8), ObserverMode::MovingAverage { c: 1.5 }, &gx, &gs).is_err());
    assert!(Observer::new(
        &ctx,
        QuantSpec { channel_axis: Some(2), ..QuantSpec::weight(8) },
        ObserverMode::MinMax,
        &gx,
        &gs
    )
    .is_err());
    assert!(Observer::new(&ctx, QuantSpec::activation(8), ObserverMode::MinMax, &gx, &gs).is_ok());
}
