//! The pre-packed pair kernels ([`PackedConv`], [`PackedLinear`], the fast CPU executor of
//! whole models) against the scalar reference, bit for bit: packed layers reused across
//! calls and batch sizes, conv + 2x2 max pool fused, requantization at every shift and
//! extreme accumulators, whole models at batch 1 and > 1 (thread-count independence).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use wqat::convert::synthetic::{random_images, synthetic_checkpoint};
use wqat::infer::cpu::kernels::simd::hwc_to_nchw;
use wqat::infer::cpu::kernels::{self as int8, *};
use wqat::infer::*;
use wqat::testing::{self, assert_bit_exact};

/// The kernels that run the packed pair GEMM on this CPU.
fn pair_kernels() -> Vec<SimdKernel> {
    SimdKernel::available().into_iter().filter(|k| k.uses_pairs()).collect()
}

fn codes(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| if rng.random_bool(0.2) { [0u8, 255][rng.random_range(0..2)] } else { rng.random() }).collect()
}

fn weights(rng: &mut ChaCha8Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| if rng.random_bool(0.2) { [-128i8, 127][rng.random_range(0..2)] } else { rng.random() }).collect()
}

/// Requantization with any multiplier and shift in `[-31, 30]` (left shifts that saturate
/// included) and a random clamp range.
fn wild_requant(rng: &mut ChaCha8Rng, n: usize) -> Requant {
    let z = rng.random_range(0..=255);
    let (a, b) = (rng.random_range(0..=255), rng.random_range(0..=255));
    Requant {
        multiplier: (0..n)
            .map(|_| if rng.random_bool(0.1) { 0 } else { rng.random_range(1 << 30..=i32::MAX) })
            .collect(),
        shift: (0..n).map(|_| rng.random_range(-31..=30)).collect(),
        out_zero: z,
        act_min: a.min(b),
        act_max: a.max(b),
    }
}

fn bias(rng: &mut ChaCha8Rng, n: usize) -> Vec<i32> {
    (0..n).map(|_| if rng.random_bool(0.3) { rng.random() } else { rng.random_range(-100000..100000) }).collect()
}

#[test]
fn requant_every_shift_and_wrapping_accumulators() {
    let mut rng = testing::rng(11);
    for case in 0..60u64 {
        let (m, k, n) = (testing::size(&mut rng, 1, 9), testing::size(&mut rng, 1, 40), testing::size(&mut rng, 1, 35));
        let cfg = LinearConfig { m, k, n, x_zero: rng.random_range(0..=255) };
        let (x, w, b) = (codes(&mut rng, m * k), weights(&mut rng, n * k), bias(&mut rng, n));
        let rq = if case % 4 == 0 {
            // Shifts around 0 with tiny accumulators.
            Requant { shift: (0..n).map(|_| rng.random_range(-3..=3)).collect(), ..wild_requant(&mut rng, n) }
        } else {
            wild_requant(&mut rng, n)
        };
        let mut want = vec![0u8; m * n];
        int8::linear(CpuBackend::Scalar, &cfg, &x, &w, &b, &rq, &mut want).unwrap();
        for kern in pair_kernels() {
            let mut got = vec![0u8; m * n];
            int8::linear(CpuBackend::Kernel(kern), &cfg, &x, &w, &b, &rq, &mut got).unwrap();
            assert_bit_exact(&format!("linear {kern:?} case {case} {cfg:?}"), &got, &want);
        }
    }
}

/// Exact rounding ties, both directions: weights in {-1, 0, 1}, small biases and
/// multipliers with trailing zero bits (`M = 2^-j`, `3 * 2^-j`, `5 * 2^-j`) keep the outputs
/// inside the clamp range while many of them land exactly on a half.
#[test]
fn requant_ties_round_half_to_even() {
    let mut rng = testing::rng(12);
    for case in 0..20u64 {
        let (m, k, n) = (testing::size(&mut rng, 1, 9), testing::size(&mut rng, 1, 6), testing::size(&mut rng, 1, 35));
        let cfg = LinearConfig { m, k, n, x_zero: 128 };
        let x = codes(&mut rng, m * k);
        let w: Vec<i8> = (0..n * k).map(|_| rng.random_range(-1..=1)).collect();
        let b: Vec<i32> = (0..n).map(|_| rng.random_range(-50..=50)).collect();
        let multiplier = (0..n).map(|_| [1 << 30, 3 << 28, 5 << 27][rng.random_range(0..3)]).collect();
        let shift = (0..n).map(|_| rng.random_range(-4..=-1)).collect();
        let rq = Requant { multiplier, shift, out_zero: 128, act_min: 0, act_max: 255 };
        let mut want = vec![0u8; m * n];
        int8::linear(CpuBackend::Scalar, &cfg, &x, &w, &b, &rq, &mut want).unwrap();
        for kern in pair_kernels() {
            let mut got = vec![0u8; m * n];
            int8::linear(CpuBackend::Kernel(kern), &cfg, &x, &w, &b, &rq, &mut got).unwrap();
            assert_bit_exact(&format!("ties {kern:?} case {case} {cfg:?}"), &got, &want);
        }
    }
}

fn scalar_conv(cfg: &Conv2dConfig, x: &[u8], w: &[i8], b: &[i32], rq: &Requant) -> Vec<u8> {
    let mut out = vec![0u8; cfg.out_len().unwrap()];
    int8::conv2d(CpuBackend::Scalar, cfg, x, w, b, rq, &mut out).unwrap();
    out
}

/// A random conv geometry (grouped, depthwise, single-channel, strided, padded, dilated).
fn random_conv(rng: &mut ChaCha8Rng, case: u64) -> Conv2dConfig {
    let groups = [1, 1, 2, 3][(case % 4) as usize];
    let (c_in, c_out, groups) = match case % 5 {
        4 => {
            let c = testing::size(rng, 1, 9);
            (c, c, c)
        }
        3 => (1, testing::size(rng, 1, 20), 1),
        _ => (groups * testing::size(rng, 1, 5), groups * testing::size(rng, 1, 19), groups),
    };
    let k = [testing::size(rng, 1, 3), testing::size(rng, 1, 3)];
    let dilation = [testing::size(rng, 1, 2), testing::size(rng, 1, 2)];
    let span = [dilation[0] * (k[0] - 1) + 1, dilation[1] * (k[1] - 1) + 1];
    Conv2dConfig {
        batch: testing::size(rng, 1, 3),
        c_in,
        h: testing::size(rng, span[0] + 1, 12),
        w: testing::size(rng, span[1] + 1, 12),
        c_out,
        kernel: k,
        stride: [testing::size(rng, 1, 2), testing::size(rng, 1, 2)],
        padding: [testing::size(rng, 0, 2), testing::size(rng, 0, 2)],
        dilation,
        groups,
        x_zero: rng.random_range(0..=255),
    }
}

#[test]
fn packed_conv_reused_and_fused_pool_equal_scalar() {
    let mut rng = testing::rng(12);
    for case in 0..50u64 {
        let cfg = random_conv(&mut rng, case);
        let (w, b) = (weights(&mut rng, cfg.c_out * cfg.k()), bias(&mut rng, cfg.c_out));
        let rq = if case % 2 == 0 {
            wild_requant(&mut rng, cfg.c_out)
        } else {
            let s_w: Vec<f32> = (0..cfg.c_out).map(|_| rng.random_range(0.5..2.0)).collect();
            Requant::from_scales(1.0, &s_w, (cfg.k() as f32).sqrt() * 100.0, 100, 8, Activation::Relu).unwrap()
        };
        let packed = PackedConv::new(&cfg, &w, &b, &rq).unwrap();
        let (oh, ow) = cfg.out_hw().unwrap();
        for kern in pair_kernels() {
            // One input buffer for every call: different inputs and batch sizes.
            let mut xp = Vec::new();
            for batch in [cfg.batch, cfg.batch + 2, cfg.batch] {
                let c = Conv2dConfig { batch, ..cfg };
                let x = codes(&mut rng, batch * c.c_in * c.h * c.w);
                let want = scalar_conv(&c, &x, &w, &b, &rq);
                packed.load_nchw(&x, batch, &mut xp).unwrap();
                let mut hwc = vec![0u8; want.len()];
                packed.run(kern, &xp, 0..packed.rows(batch), &mut hwc).unwrap();
                let mut got = vec![0u8; want.len()];
                hwc_to_nchw(&hwc, batch, c.c_out, oh * ow, &mut got);
                assert_bit_exact(&format!("packed conv {kern:?} case {case} {c:?}"), &got, &want);
                // Split into two row ranges (what the threads do).
                let rows = packed.rows(batch);
                let mid = rows / 3;
                let (lo, hi) = hwc.split_at_mut(mid * c.c_out);
                packed.run(kern, &xp, 0..mid, lo).unwrap();
                packed.run(kern, &xp, mid..rows, hi).unwrap();
                hwc_to_nchw(&hwc, batch, c.c_out, oh * ow, &mut got);
                assert_bit_exact(&format!("split conv {kern:?} case {case}"), &got, &want);
                if oh < 2 || ow < 2 {
                    continue;
                }
                let pool = PoolConfig {
                    batch,
                    channels: c.c_out,
                    h: oh,
                    w: ow,
                    kernel: [2, 2],
                    stride: [2, 2],
                    padding: [0, 0],
                };
                let mut pooled = vec![0u8; batch * c.c_out * (oh / 2) * (ow / 2)];
                int8::max_pool(CpuBackend::Scalar, &pool, &want, &mut pooled).unwrap();
                let mut phwc = vec![0u8; pooled.len()];
                packed.run_pool2(kern, &xp, 0..packed.pooled_rows(batch), &mut phwc).unwrap();
                let mut got = vec![0u8; pooled.len()];
                hwc_to_nchw(&phwc, batch, c.c_out, (oh / 2) * (ow / 2), &mut got);
                assert_bit_exact(&format!("conv+pool {kern:?} case {case} {c:?}"), &got, &pooled);
            }
        }
    }
}

#[test]
fn packed_linear_with_permuted_columns_equals_scalar() {
    let mut rng = testing::rng(13);
    for case in 0..30u64 {
        let [c, h, w] = [testing::size(&mut rng, 1, 9), testing::size(&mut rng, 1, 5), testing::size(&mut rng, 1, 5)];
        let (k, n, m) = (c * h * w, testing::size(&mut rng, 1, 40), testing::size(&mut rng, 1, 11));
        let cfg = LinearConfig { m, k, n, x_zero: rng.random_range(0..=255) };
        let (x, wt, b, rq) =
            (codes(&mut rng, m * k), weights(&mut rng, n * k), bias(&mut rng, n), wild_requant(&mut rng, n));
        let mut want = vec![0u8; m * n];
        int8::linear(CpuBackend::Scalar, &cfg, &x, &wt, &b, &rq, &mut want).unwrap();
        // The same rows stored channels last, read through the column permutation.
        let mut xh = vec![0u8; m * k];
        int8::nhwc::nchw_to_hwc(&x, m, c, h * w, &mut xh);
        let packed = PackedLinear::new(k, n, cfg.x_zero, &wt, &b, &rq, |i| (i % c) * h * w + i / c).unwrap();
        let mut xp = Vec::new();
        for kern in pair_kernels() {
            for _ in 0..2 {
                packed.load(&xh, m, &mut xp).unwrap();
                let mut got = vec![0u8; m * n];
                packed.run(kern, &xp, 0..m, &mut got).unwrap();
                assert_bit_exact(&format!("permuted linear {kern:?} case {case}"), &got, &want);
            }
        }
    }
}

#[test]
fn whole_models_fast_path_equals_scalar_at_every_batch() {
    for (name, input) in [("mnist-cnn", [1, 28, 28]), ("mlp", [1, 8, 8]), ("resnet20", [3, 32, 32])] {
        let g = wqat::model::zoo::build(name, input, 10).unwrap();
        let model = wqat::convert::convert(&g, &synthetic_checkpoint(&g, 5, true).unwrap()).unwrap();
        let sample: usize = input.iter().product();
        let mut rng = testing::rng(14);
        let big = if name == "resnet20" { 9 } else { 67 };
        let x = random_images(&mut rng, big * sample, true);
        let cpu = Int8CpuModel::new(&model);
        let want = cpu.forward(&x, big, CpuBackend::Scalar).unwrap();
        for kern in pair_kernels() {
            let be = CpuBackend::Kernel(kern);
            // Twice (packed cache and scratch reused), a batch of one in between.
            for _ in 0..2 {
                let got = cpu.forward(&x, big, be).unwrap();
                assert_eq!(got.logits, want.logits, "{name} {kern:?} batch {big}");
                let one = cpu.forward(&x[sample..2 * sample], 1, be).unwrap();
                assert_eq!(one.logits, want.logits[10..20], "{name} {kern:?} batch 1");
            }
            let three = cpu.forward(&x[..3 * sample], 3, be).unwrap();
            assert_eq!(three.logits, want.logits[..30], "{name} {kern:?} batch 3");
            // Traced (unfused) nodes equal the scalar's.
            let t = cpu.forward_traced(&x[..2 * sample], 2, be).unwrap();
            let s = cpu.forward_traced(&x[..2 * sample], 2, CpuBackend::Scalar).unwrap();
            assert_eq!(t.activations, s.activations, "{name} {kern:?} traced");
        }
    }
}

#[test]
#[ignore = "manual profile: WQAT_PROFILE_SECS=10 cargo test --release --test int8_packed -- --ignored mnist_forward_loop"]
fn mnist_forward_loop() {
    let g = wqat::model::zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let model = wqat::convert::convert(&g, &synthetic_checkpoint(&g, 7, false).unwrap()).unwrap();
    let secs: f64 = std::env::var("WQAT_PROFILE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let batch: usize = std::env::var("WQAT_PROFILE_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let x = random_images(&mut testing::rng(1), batch * 784, false);
    let cpu = Int8CpuModel::new(&model);
    let start = std::time::Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        cpu.forward(&x, batch, CpuBackend::Simd).unwrap();
        n += batch;
    }
    eprintln!("{:.0} images/s (batch {batch})", n as f64 / start.elapsed().as_secs_f64());
}

#[test]
fn packed_bad_input_is_an_error() {
    let cfg = Conv2dConfig {
        batch: 1,
        c_in: 2,
        h: 5,
        w: 5,
        c_out: 3,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
        x_zero: 3,
    };
    let rq = Requant { multiplier: vec![1 << 30; 3], shift: vec![-8; 3], out_zero: 0, act_min: 0, act_max: 255 };
    assert!(PackedConv::new(&cfg, &[0; 5], &[0; 3], &rq).is_err());
    assert!(PackedConv::new(&cfg, &[0; 54], &[0; 2], &rq).is_err());
    let p = PackedConv::new(&cfg, &[1; 54], &[0; 3], &rq).unwrap();
    let mut xp = Vec::new();
    assert!(p.load_nchw(&[0; 49], 1, &mut xp).is_err());
    assert!(p.load_hwc(&[0; 51], 1, &mut xp).is_err());
    p.load_hwc(&[0; 100], 2, &mut xp).unwrap();
    for kern in pair_kernels() {
        // Rows past the loaded batch or an output too short: errors, no out-of-bounds access.
        assert!(p.run(kern, &xp, 0..p.rows(3), &mut [0; 75 * 3]).is_err());
        assert!(p.run(kern, &xp, 0..p.rows(2), &mut [0; 10]).is_err());
        assert!(p.run_pool2(kern, &xp, 0..p.pooled_rows(2), &mut [0; 5]).is_err());
    }
    let rq2 = Requant { multiplier: vec![1 << 30; 2], shift: vec![0; 2], ..rq };
    let l = PackedLinear::new(4, 2, 0, &[1; 8], &[0; 2], &rq2, |m| m).unwrap();
    assert!(l.load(&[0; 7], 2, &mut xp).is_err());
    assert!(PackedLinear::new(4, 2, 0, &[1; 7], &[0; 2], &rq2, |m| m).is_err());
    assert!(PackedLinear::new(4, 2, 0, &[1; 8], &[0; 2], &rq2, |m| m + 1).is_err());
}

/// The packed layers of mnist-cnn alone, one thread, microseconds per image.
#[test]
#[ignore = "manual: cargo test --release --test int8_packed -- --ignored --nocapture mnist_layer_throughput"]
fn mnist_layer_throughput() {
    let rq =
        |n: usize| Requant { multiplier: vec![1 << 30; n], shift: vec![-10; n], out_zero: 0, act_min: 0, act_max: 255 };
    let b = 8;
    for (cin, hw, cout) in [(1usize, 28usize, 16usize), (16, 14, 32)] {
        let cfg = Conv2dConfig {
            batch: b,
            c_in: cin,
            h: hw,
            w: hw,
            c_out: cout,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
            x_zero: 3,
        };
        let p = PackedConv::new(&cfg, &vec![1i8; cout * cin * 9], &vec![0; cout], &rq(cout)).unwrap();
        let x = vec![7u8; b * cin * hw * hw];
        let mut xp = Vec::new();
        let mut out = vec![0u8; p.pooled_rows(b) * cout];
        let mut out2 = vec![0u8; p.rows(b) * cout];
        let reps = 2000;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            p.load_hwc(&x, b, &mut xp).unwrap();
        }
        let tl = t.elapsed().as_secs_f64() / (reps * b) as f64 * 1e6;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            p.run_pool2(SimdKernel::best(), &xp, 0..p.pooled_rows(b), &mut out).unwrap();
        }
        let tp = t.elapsed().as_secs_f64() / (reps * b) as f64 * 1e6;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            p.run(SimdKernel::best(), &xp, 0..p.rows(b), &mut out2).unwrap();
        }
        let tr = t.elapsed().as_secs_f64() / (reps * b) as f64 * 1e6;
        eprintln!("conv {cin}->{cout} {hw}: load {tl:.2} us/img, pooled {tp:.2}, unpooled {tr:.2}");
    }
    let l = PackedLinear::new(1568, 128, 3, &vec![1i8; 1568 * 128], &vec![0; 128], &rq(128), |m| m).unwrap();
    let x = vec![7u8; b * 1568];
    let mut xp = Vec::new();
    let mut out = vec![0u8; b * 128];
    l.load(&x, b, &mut xp).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..1000 {
        l.run(SimdKernel::best(), &xp, 0..b, &mut out).unwrap();
    }
    eprintln!("fc1 b8: {:.2} us/img", t.elapsed().as_secs_f64() / (1000 * b) as f64 * 1e6);
    let t = std::time::Instant::now();
    for _ in 0..1000 {
        l.run(SimdKernel::best(), &xp, 0..1, &mut out).unwrap();
    }
    eprintln!("fc1 b1: {:.2} us/img", t.elapsed().as_secs_f64() / 1000.0 * 1e6);
}
