//! `shaders/activation.wgsl` against `reference::activation`: all bit exact (single f32 ops).

use wqat::gpu::{DType, GpuTensor};
use wqat::kernels::activation::{self as k, Relu};
use wqat::reference::activation as r;
use wqat::testing::{self, assert_bit_exact};

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn activations_match_reference_on_random_shapes() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(7);
    for case in 0..10u64 {
        let rank = 1 + (case % 4) as usize;
        let shape: Vec<usize> = (0..rank).map(|_| testing::size(&mut rng, 1, 23)).collect();
        let n: usize = shape.iter().product();
        let a = testing::uniform(&mut rng, n, -8.0, 8.0);
        let b = testing::uniform(&mut rng, n, -1.0, 1.0);
        let ga = GpuTensor::from_f32(&ctx, &shape, &a).unwrap();
        let gb = GpuTensor::from_f32(&ctx, &shape, &b).unwrap();
        let out = |_: ()| GpuTensor::zeros(&ctx, &shape, DType::F32).unwrap();
        let (y, y6, dx, dx6, sum) = (out(()), out(()), out(()), out(()), out(()));
        let acc = GpuTensor::from_f32(&ctx, &shape, &b).unwrap();
        let filled = out(());
        let ds = [
            k::relu_forward(&ctx, &ga, &y, Relu::Relu).unwrap(),
            k::relu_forward(&ctx, &ga, &y6, Relu::Relu6).unwrap(),
            k::relu_backward(&ctx, &ga, &gb, &dx, Relu::Relu).unwrap(),
            k::relu_backward(&ctx, &ga, &gb, &dx6, Relu::Relu6).unwrap(),
            k::add_forward(&ctx, &ga, &gb, &sum).unwrap(),
            k::accumulate(&ctx, &ga, &acc).unwrap(),
            k::fill(&ctx, &filled, -2.5).unwrap(),
        ];
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        let (a64, b64) = (f64s(&a), f64s(&b));
        let what = |s: &str| format!("{s} case {case} shape {shape:?}");
        assert_bit_exact(&what("relu"), &y.read_f32(&ctx).unwrap(), &f32s(&r::relu_forward(&a64, false)));
        assert_bit_exact(&what("relu6"), &y6.read_f32(&ctx).unwrap(), &f32s(&r::relu_forward(&a64, true)));
        assert_bit_exact(&what("relu_bwd"), &dx.read_f32(&ctx).unwrap(), &f32s(&r::relu_backward(&a64, &b64, false)));
        assert_bit_exact(&what("relu6_bwd"), &dx6.read_f32(&ctx).unwrap(), &f32s(&r::relu_backward(&a64, &b64, true)));
        assert_bit_exact(&what("add"), &sum.read_f32(&ctx).unwrap(), &f32s(&r::add_forward(&a64, &b64)));
        let mut want = b64.clone();
        r::accumulate(&mut want, &a64);
        assert_bit_exact(&what("accumulate"), &acc.read_f32(&ctx).unwrap(), &f32s(&want));
        assert_bit_exact(&what("fill"), &filled.read_f32(&ctx).unwrap(), &vec![-2.5f32; n]);
    }
}

#[test]
fn relu_backward_matches_finite_differences() {
    let mut rng = testing::rng(8);
    // Keep points away from the kinks at 0 and 6.
    let x: Vec<f64> = testing::uniform(&mut rng, 40, -8.0, 8.0)
        .iter()
        .map(|&v| v as f64)
        .filter(|v| v.abs() > 0.01 && (v - 6.0).abs() > 0.01)
        .collect();
    let w: Vec<f64> = (0..x.len()).map(|i| ((i * 7 % 5) as f64) - 2.0).collect();
    for relu6 in [false, true] {
        let dx = r::relu_backward(&x, &w, relu6);
        let mut f = |x: &[f64]| r::relu_forward(x, relu6).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
        for (i, &d) in dx.iter().enumerate() {
            let fd = testing::finite_diff(&mut f, &x, i, 1e-4);
            assert!((fd - d).abs() <= testing::FINITE_DIFF_RTOL * (1.0 + fd.abs()), "relu6 {relu6} i {i}");
        }
        // add: d(a+b)/da = d/db = 1 (trivially the identity on dy).
        let mut g = |a: &[f64]| r::add_forward(a, &x).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
        let fd = testing::finite_diff(&mut g, &x, 3, 1e-4);
        assert!((fd - w[3]).abs() < 1e-6);
    }
}

#[test]
fn shape_errors_are_reported() {
    let ctx = testing::ctx();
    let a = GpuTensor::zeros(&ctx, &[3, 5], DType::F32).unwrap();
    let b = GpuTensor::zeros(&ctx, &[5, 3], DType::F32).unwrap();
    assert!(k::relu_forward(&ctx, &a, &b, Relu::Relu).is_err());
    assert!(k::relu_backward(&ctx, &a, &a.clone(), &b, Relu::Relu6).is_err());
    assert!(k::add_forward(&ctx, &a, &b, &a).is_err());
    assert!(k::accumulate(&ctx, &a, &b).is_err());
}
