//! `shaders/fake_quant.wgsl` against `reference::fake_quant`: codes bit-exact, ties included.

use wqat::gpu::GpuTensor;
use wqat::kernels::fake_quant as k;
use wqat::quant::{channel_geometry, QStateLayout, QuantSpec};
use wqat::reference::fake_quant as r;
use wqat::testing::{self, assert_bit_exact};

fn run_case(seed: u64, shape: &[usize], spec: QuantSpec) {
    let ctx = testing::ctx();
    let mut rng = testing::rng(seed);
    let n: usize = shape.iter().product();
    let (channels, inner) = channel_geometry(shape, spec.channel_axis).unwrap();
    let scales = testing::uniform(&mut rng, channels, 0.01, 0.2);
    let zps: Vec<f32> = (0..channels)
        .map(|c| if spec.symmetric { 0.0 } else { ((c * 7) % (spec.qmax() as usize + 1)) as f32 })
        .collect();
    let state = QStateLayout::new(channels).build(&scales, &zps);
    // Values on exact ties (k + 0.5) * s for some elements, random for the rest, and some far
    // outside the range so clamping is exercised.
    let mut x = testing::uniform(&mut rng, n, -30.0, 30.0);
    for (i, v) in x.iter_mut().enumerate() {
        let c = (i / inner) % channels;
        if i % 3 == 0 {
            *v = ((i % 11) as f32 - 5.0 + 0.5) * scales[c];
        }
    }
    let dy = testing::uniform(&mut rng, n, -1.0, 1.0);
    let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);

    let gx = GpuTensor::from_f32(&ctx, shape, &x).unwrap();
    let gs = GpuTensor::from_f32(&ctx, &[state.len()], &state).unwrap();
    let gout = GpuTensor::zeros(&ctx, shape, wqat::gpu::DType::F32).unwrap();
    let gdy = GpuTensor::from_f32(&ctx, shape, &dy).unwrap();
    let gdx = GpuTensor::zeros(&ctx, shape, wqat::gpu::DType::F32).unwrap();
    let f = k::fake_quant_forward(&ctx, &gx, &gs, &gout, &spec).unwrap();
    let b = k::ste_backward(&ctx, &gx, &gs, &gdy, &gdx, &spec).unwrap();
    ctx.submit(&[&f, &b]).unwrap();

    let want = r::fake_quant_forward(&x, &state, channels, inner, qmin, qmax);
    let got = gout.read_f32(&ctx).unwrap();
    let what = format!("fake_quant_forward seed {seed} shape {shape:?} {spec:?}");
    assert_bit_exact(&what, &got, &want);
    let want = r::ste_backward(&x, &dy, &state, channels, inner, qmin, qmax);
    let got = gdx.read_f32(&ctx).unwrap();
    assert_bit_exact(&format!("ste_backward seed {seed} shape {shape:?}"), &got, &want);
}

#[test]
fn fake_quant_matches_reference_on_random_shapes() {
    let mut rng = testing::rng(1);
    for case in 0..24u64 {
        let bits = 2 + (case % 7) as u32;
        let rank = 1 + (case % 4) as usize;
        let shape: Vec<usize> = (0..rank).map(|_| testing::size(&mut rng, 1, 37)).collect();
        let spec = match case % 3 {
            0 => QuantSpec::activation(bits),
            1 => QuantSpec { channel_axis: Some((case as usize) % rank), ..QuantSpec::weight(bits) },
            _ => QuantSpec { bits, signed: true, symmetric: false, channel_axis: None, full_range: false },
        };
        run_case(100 + case, &shape, spec);
    }
}

#[test]
fn ties_round_half_to_even() {
    // 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, -1.5 -> -2 at scale 1.
    let x = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5];
    let state = QStateLayout::new(1).build(&[1.0], &[0.0]);
    let spec = QuantSpec::weight(8);
    let ctx = testing::ctx();
    let gx = GpuTensor::from_f32(&ctx, &[7], &x).unwrap();
    let gs = GpuTensor::from_f32(&ctx, &[state.len()], &state).unwrap();
    let go = GpuTensor::zeros(&ctx, &[7], wqat::gpu::DType::F32).unwrap();
    let d = k::fake_quant_forward(&ctx, &gx, &gs, &go, &QuantSpec { channel_axis: None, ..spec }).unwrap();
    ctx.submit(&[&d]).unwrap();
    let got = go.read_f32(&ctx).unwrap();
    assert_eq!(got, vec![0.0, 2.0, 2.0, -0.0, -2.0, -2.0, 4.0]);
}

#[test]
fn disabled_quantizer_is_identity_and_shapes_are_checked() {
    let ctx = testing::ctx();
    let mut state = QStateLayout::new(1).build(&[0.5], &[0.0]);
    state[QStateLayout::FQ_ENABLED] = 0.0;
    let x = [0.3f32, -7.1, 100.0];
    let gx = GpuTensor::from_f32(&ctx, &[3], &x).unwrap();
    let gs = GpuTensor::from_f32(&ctx, &[state.len()], &state).unwrap();
    let go = GpuTensor::zeros(&ctx, &[3], wqat::gpu::DType::F32).unwrap();
    let spec = QuantSpec::activation(8);
    let d = k::fake_quant_forward(&ctx, &gx, &gs, &go, &spec).unwrap();
    ctx.submit(&[&d]).unwrap();
    assert_eq!(go.read_f32(&ctx).unwrap(), x.to_vec());
    let bad = GpuTensor::zeros(&ctx, &[4], wqat::gpu::DType::F32).unwrap();
    assert!(k::fake_quant_forward(&ctx, &gx, &gs, &bad, &spec).is_err());
    assert!(k::fake_quant_forward(&ctx, &gx, &gs, &go, &QuantSpec { bits: 9, ..spec }).is_err());
    assert!(GpuTensor::zeros(&ctx, &[0, 3], wqat::gpu::DType::F32).is_err());
}

#[test]
fn channel_runs_longer_and_shorter_than_a_workgroup_chunk() {
    // The kernels read per-channel parameters once per invocation when a channel run
    // (`inner` elements) is longer than an invocation's span and per element otherwise;
    // sizes around those thresholds, with runs crossing chunk boundaries and ragged tails.
    let shapes: [(&[usize], usize); 6] =
        [(&[5, 1000], 0), (&[3, 1025], 0), (&[7, 300], 0), (&[2, 3, 4096], 1), (&[9, 256], 0), (&[4, 2049], 0)];
    for (i, (shape, axis)) in shapes.into_iter().enumerate() {
        let spec = QuantSpec { channel_axis: Some(axis), ..QuantSpec::weight(8) };
        run_case(300 + i as u64, shape, spec);
        let spec = QuantSpec { channel_axis: Some(axis), ..QuantSpec::activation(5) };
        run_case(400 + i as u64, shape, spec);
    }
    run_case(500, &[3 * 1024 + 17], QuantSpec::activation(8));
}
