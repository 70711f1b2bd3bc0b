//! CPU int8 backend: requantization arithmetic against i128 references, and every SIMD
//! kernel of this CPU bit-exact with the scalar reference on odd shapes and extreme values.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use wqat::infer::cpu::kernels::{self as int8, *};
use wqat::infer::requant::{
    activation_range, multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_rounded,
    rounding_divide_by_pot, saturating_rounding_doubling_high_mul,
};
use wqat::infer::weights::PackedWeights;
use wqat::infer::*;
use wqat::testing::{self, assert_bit_exact};

/// Relative error of `M0 * 2^(shift-31)` against `M` (M0 has 31 significant bits).
const MULTIPLIER_RTOL: f64 = 1.0 / (1u64 << 30) as f64;
/// Off-by-one allowed when a fixed-point result is compared with real arithmetic.
const FIXED_POINT_ATOL_CODES: i32 = 1;

fn backends() -> Vec<CpuBackend> {
    let mut v: Vec<CpuBackend> = SimdKernel::available().into_iter().map(CpuBackend::Kernel).collect();
    v.push(CpuBackend::Simd);
    eprintln!("SIMD kernels on this CPU: {:?}", SimdKernel::available());
    v
}

/// i128 reference of MultiplyByQuantizedMultiplier (saturating left shift, double rounding).
fn mbqm_ref(x: i32, m: i32, shift: i32) -> i32 {
    let l = shift.max(0);
    let r = (-shift).max(0);
    let v = ((x as i128) << l).clamp(i32::MIN as i128, i32::MAX as i128);
    let q: i128 = if v == i32::MIN as i128 && m == i32::MIN {
        i32::MAX as i128
    } else {
        let p = v * m as i128;
        let nudge: i128 = if p >= 0 { 1 << 30 } else { 1 - (1 << 30) };
        (p + nudge) / (1i128 << 31)
    };
    if r == 0 {
        return q as i32;
    }
    let mag = (q.abs() + (1i128 << (r - 1))) >> r;
    (if q < 0 { -mag } else { mag }) as i32
}

#[test]
fn quantize_multiplier_round_trip_and_edges() {
    let mut rng = testing::rng(1);
    for _ in 0..20000 {
        let m = 10f64.powf(rng.random_range(-9.0..4.0));
        let (m0, s) = quantize_multiplier(m).unwrap();
        if s == 0 && m0 == 0 {
            assert!(m < 2f64.powi(-31), "{m} flushed to zero");
            continue;
        }
        assert!((1 << 30..=i32::MAX).contains(&m0), "{m}: M0 {m0}");
        let back = m0 as f64 * 2f64.powi(s - 31);
        assert!((back - m).abs() <= m * MULTIPLIER_RTOL, "{m}: got {back}");
    }
    assert_eq!(quantize_multiplier(0.0).unwrap(), (0, 0));
    assert_eq!(quantize_multiplier(0.5).unwrap(), (1 << 30, 0));
    assert_eq!(quantize_multiplier(1.0).unwrap(), (1 << 30, 1));
    assert_eq!(quantize_multiplier(3.0).unwrap(), (3 << 29, 2));
    // Rounds up to 2^31: renormalized.
    assert_eq!(quantize_multiplier(1.0 - 1e-12).unwrap(), (1 << 30, 1));
    assert_eq!(quantize_multiplier(2f64.powi(-32)).unwrap(), (1 << 30, -31));
    assert_eq!(quantize_multiplier(2f64.powi(-33)).unwrap(), (0, 0));
    assert_eq!(quantize_multiplier(1e-300).unwrap(), (0, 0));
    assert_eq!(quantize_multiplier(f64::MIN_POSITIVE / 4.0).unwrap(), (0, 0));
    assert_eq!(quantize_multiplier(2f64.powi(40)).unwrap(), (i32::MAX, 30));
    assert!(quantize_multiplier(-1.0).is_err());
    assert!(quantize_multiplier(f64::NAN).is_err());
    assert!(quantize_multiplier(f64::INFINITY).is_err());
}

#[test]
fn fixed_point_multiply_matches_i128_reference() {
    let mut rng = testing::rng(2);
    let edges = [i32::MIN, i32::MIN + 1, -65536, -1, 0, 1, 2, 3, 65535, i32::MAX - 1, i32::MAX];
    assert_eq!(saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN), i32::MAX);
    assert_eq!(rounding_divide_by_pot(5, 1), 3);
    assert_eq!(rounding_divide_by_pot(-5, 1), -3);
    assert_eq!(rounding_divide_by_pot(-7, 2), -2);
    assert_eq!(rounding_divide_by_pot(-6, 2), -2);
    assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
    assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
    for i in 0..200000 {
        let x = if i % 4 == 0 {
            edges[rng.random_range(0..edges.len())]
        } else {
            rng.random::<i32>() >> rng.random_range(0..31)
        };
        let m = match i % 5 {
            0 => edges[rng.random_range(0..edges.len())],
            1 => i32::MIN,
            _ => rng.random_range(1 << 30..=i32::MAX),
        };
        let shift = rng.random_range(-31..=30);
        assert_eq!(multiply_by_quantized_multiplier(x, m, shift), mbqm_ref(x, m, shift), "x {x} m {m} shift {shift}");
    }
}

/// The single-rounding requantization against an independent i128 formulation: the exact
/// rational `x * M0 / 2^k` rounded half to even via Euclidean division, saturated.
#[test]
fn rounded_multiplier_is_round_half_even_of_the_exact_product() {
    fn reference(x: i32, m0: i32, shift: i32) -> i32 {
        let k = (31 - shift).clamp(1, 62) as u32;
        let num = x as i128 * m0 as i128;
        let den = 1i128 << k;
        let q = num.div_euclid(den);
        let r = num.rem_euclid(den);
        let q = match (2 * r).cmp(&den) {
            std::cmp::Ordering::Greater => q + 1,
            std::cmp::Ordering::Equal => q + (q & 1),
            std::cmp::Ordering::Less => q,
        };
        q.clamp(-(i32::MAX as i128), i32::MAX as i128) as i32
    }
    // Ties: M = 1/4 (M0 = 2^30, shift -1): 2 -> 0.5 -> 0, 6 -> 1.5 -> 2, -2 -> 0, -6 -> -2.
    for (x, want) in [(2, 0), (6, 2), (-2, 0), (-6, -2), (3, 1), (-3, -1), (5, 1), (-5, -1)] {
        assert_eq!(multiply_by_quantized_multiplier_rounded(x, 1 << 30, -1), want, "x {x}");
    }
    // The case that motivated it: 62 * 0.0721593 = 4.474 rounds to 4 (TFLite's double rounding gives 5).
    assert_eq!(multiply_by_quantized_multiplier_rounded(62, 1239785207, -3), 4);
    assert_eq!(multiply_by_quantized_multiplier(62, 1239785207, -3), 5);
    let mut rng = testing::rng(77);
    let edges = [i32::MIN, i32::MIN + 1, -(1 << 30), -1, 0, 1, 1 << 30, i32::MAX - 1, i32::MAX];
    for i in 0..200000 {
        let x = if i % 4 == 0 { edges[i % edges.len()] } else { rng.random::<i32>() >> rng.random_range(0..31) };
        let m = match i % 5 {
            0 => edges[rng.random_range(4..edges.len())],
            1 => 1 << 30,
            _ => rng.random_range(1 << 30..=i32::MAX),
        };
        let shift = rng.random_range(-31..=30);
        let got = multiply_by_quantized_multiplier_rounded(x, m, shift);
        assert_eq!(got, reference(x, m, shift), "x {x} m {m} shift {shift}");
    }
}

#[test]
fn activation_ranges() {
    assert_eq!(activation_range(Activation::None, 8, 0.1, 7).unwrap(), (0, 255));
    assert_eq!(activation_range(Activation::Relu, 8, 0.1, 7).unwrap(), (7, 255));
    assert_eq!(activation_range(Activation::Relu6, 8, 0.1, 7).unwrap(), (7, 67));
    assert_eq!(activation_range(Activation::Relu6, 8, 0.01, 7).unwrap(), (7, 255));
    assert_eq!(activation_range(Activation::Relu6, 4, 0.5, 0).unwrap(), (0, 12));
    assert!(activation_range(Activation::None, 4, 0.1, 16).is_err());
    assert!(activation_range(Activation::None, 9, 0.1, 0).is_err());
    assert_eq!(quantize_bias(&[0.5, -0.25, 1e12], 0.5, &[0.5, 0.25, 1.0]).unwrap(), vec![2, -2, i32::MAX]);
    assert!(quantize_bias(&[0.5], 0.5, &[0.5, 0.25]).is_err());
}

/// Random layer data: `extreme` draws x from {0, 255} and w from {-127, 127}.
fn codes(rng: &mut ChaCha8Rng, n: usize, extreme: bool, qmax: i32) -> Vec<u8> {
    (0..n)
        .map(|_| if extreme { [0, qmax][rng.random_range(0..2)] as u8 } else { rng.random_range(0..=qmax) as u8 })
        .collect()
}
fn weights(rng: &mut ChaCha8Rng, n: usize, extreme: bool, wmax: i32) -> Vec<i8> {
    (0..n)
        .map(
            |_| {
                if extreme {
                    [-wmax, wmax][rng.random_range(0..2)] as i8
                } else {
                    rng.random_range(-wmax..=wmax) as i8
                }
            },
        )
        .collect()
}
/// Requant mapping accumulators of typical size `typ` onto roughly +-128 codes.
fn requant(rng: &mut ChaCha8Rng, n: usize, typ: f64, act: Activation) -> Requant {
    let s_w: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..2.0) as f32).collect();
    let z_out = rng.random_range(0..=255);
    Requant::from_scales(1.0, &s_w, (typ / 100.0) as f32, z_out, 8, act).unwrap()
}

fn check_linear(seed: u64, m: usize, k: usize, n: usize, extreme: bool) {
    let mut rng = testing::rng(seed);
    let x_zero = if extreme { [0, 255, 128][rng.random_range(0..3)] } else { rng.random_range(0..=255) };
    let cfg = LinearConfig { m, k, n, x_zero };
    let x = codes(&mut rng, m * k, extreme, 255);
    let w = weights(&mut rng, n * k, extreme, 127);
    let mut bias: Vec<i32> = (0..n).map(|_| rng.random_range(-100000..100000)).collect();
    if seed.is_multiple_of(3) {
        bias[0] = i32::MAX;
        bias[n - 1] = i32::MIN;
    }
    let act = [Activation::None, Activation::Relu, Activation::Relu6][(seed % 3) as usize];
    let rq = requant(&mut rng, n, (k as f64).sqrt() * 10000.0, act);
    let mut want = vec![0u8; m * n];
    int8::linear(CpuBackend::Scalar, &cfg, &x, &w, &bias, &rq, &mut want).unwrap();
    for b in backends() {
        let mut got = vec![0u8; m * n];
        int8::linear(b, &cfg, &x, &w, &bias, &rq, &mut got).unwrap();
        assert_bit_exact(&format!("linear {b:?} seed {seed} {cfg:?} extreme {extreme}"), &got, &want);
    }
}

#[test]
fn linear_simd_matches_scalar_on_random_layers() {
    let mut rng = testing::rng(3);
    for case in 0..40u64 {
        let (m, k, n) =
            (testing::size(&mut rng, 1, 37), testing::size(&mut rng, 1, 300), testing::size(&mut rng, 1, 37));
        check_linear(100 + case, m, k, n, case % 2 == 1);
    }
    // Big enough to split over threads.
    check_linear(7, 130, 515, 67, false);
}

#[test]
fn linear_long_k_extremes_no_saturation() {
    // x = 255 and w = +-127 everywhere: every u8*i8 pair sum is +-64770, which
    // `maddubs` would saturate to +-32767. K = 65793 is the longest K whose product sum
    // (255 * 127 * K = 2130706305) still fits i32; the bias then wraps it.
    for (seed, k) in [(1u64, 5000usize), (2, 65793)] {
        let (m, n) = (3, 5);
        let cfg = LinearConfig { m, k, n, x_zero: 0 };
        let x = vec![255u8; m * k];
        let mut w = vec![127i8; n * k];
        for v in w[k..2 * k].iter_mut() {
            *v = -127;
        }
        for (i, v) in w[2 * k..3 * k].iter_mut().enumerate() {
            *v = if i % 2 == 0 { 127 } else { -127 };
        }
        let bias = vec![0, 0, 0, i32::MAX, i32::MIN];
        let rq = Requant { multiplier: vec![1 << 30; n], shift: vec![-20; n], out_zero: 128, act_min: 0, act_max: 255 };
        let mut want = vec![0u8; m * n];
        int8::linear(CpuBackend::Scalar, &cfg, &x, &w, &bias, &rq, &mut want).unwrap();
        let full = 255i64 * 127 * k as i64;
        let expect0 = (128 + (full as f64 / 2f64.powi(21)).round() as i64).clamp(0, 255) as u8;
        assert_eq!(want[0], expect0, "seed {seed}");
        for b in backends() {
            let mut got = vec![0u8; m * n];
            int8::linear(b, &cfg, &x, &w, &bias, &rq, &mut got).unwrap();
            assert_bit_exact(&format!("long K {k} {b:?}"), &got, &want);
        }
        // A zero point of 255 makes every (x - z) zero: outputs are bias only.
        let cfg = LinearConfig { x_zero: 255, ..cfg };
        let mut got = vec![0u8; m * n];
        int8::linear(CpuBackend::Simd, &cfg, &x, &w, &bias, &rq, &mut got).unwrap();
        assert_eq!(&got[..3], &[128, 128, 128]);
    }
}

fn check_conv(seed: u64, cfg: Conv2dConfig, extreme: bool) {
    let mut rng = testing::rng(seed);
    let x = codes(&mut rng, cfg.batch * cfg.c_in * cfg.h * cfg.w, extreme, 255);
    let w = weights(&mut rng, cfg.c_out * cfg.k(), extreme, 127);
    let bias: Vec<i32> = (0..cfg.c_out).map(|_| rng.random_range(-50000..50000)).collect();
    let act = [Activation::None, Activation::Relu, Activation::Relu6][(seed % 3) as usize];
    let rq = requant(&mut rng, cfg.c_out, (cfg.k() as f64).sqrt() * 10000.0, act);
    let n = cfg.out_len().unwrap();
    let mut want = vec![0u8; n];
    int8::conv2d(CpuBackend::Scalar, &cfg, &x, &w, &bias, &rq, &mut want).unwrap();
    for b in backends() {
        let mut got = vec![0u8; n];
        int8::conv2d(b, &cfg, &x, &w, &bias, &rq, &mut got).unwrap();
        assert_bit_exact(&format!("conv {b:?} seed {seed} {cfg:?}"), &got, &want);
    }
}

/// A random conv geometry: plain, grouped or depthwise, strided, padded, dilated.
pub fn random_conv(rng: &mut ChaCha8Rng, case: u64) -> Conv2dConfig {
    let groups = [1, 1, 2, 3][(case % 4) as usize];
    let depthwise = case % 5 == 4;
    let (c_in, c_out, groups) = if depthwise {
        let c = testing::size(rng, 1, 9);
        (c, c, c)
    } else {
        (groups * testing::size(rng, 1, 5), groups * testing::size(rng, 1, 6), groups)
    };
    let k = [testing::size(rng, 1, 3), testing::size(rng, 1, 3)];
    let dilation = [testing::size(rng, 1, 2), testing::size(rng, 1, 2)];
    let padding = [testing::size(rng, 0, 2), testing::size(rng, 0, 2)];
    let span = [dilation[0] * (k[0] - 1) + 1, dilation[1] * (k[1] - 1) + 1];
    Conv2dConfig {
        batch: testing::size(rng, 1, 3),
        c_in,
        h: testing::size(rng, span[0], 11),
        w: testing::size(rng, span[1], 11),
        c_out,
        kernel: k,
        stride: [testing::size(rng, 1, 2), testing::size(rng, 1, 2)],
        padding,
        dilation,
        groups,
        x_zero: rng.random_range(0..=255),
    }
}

#[test]
fn conv_simd_matches_scalar_on_random_layers() {
    let mut rng = testing::rng(4);
    for case in 0..40u64 {
        let cfg = random_conv(&mut rng, case);
        check_conv(200 + case, cfg, case % 3 == 2);
    }
}

/// Packed W2 / W3 / W4 weights through the `_packed` entry points (the scalar kernels read
/// them packed, one channel row unpacked at a time; SIMD from a transient int8 copy) equal
/// the int8 scalar kernels on the same codes: odd k (rows start mid-byte), conv groups,
/// depthwise, dilation, the full two's-complement range (-8 at 4 bits).
#[test]
fn packed_weights_match_int8_on_every_backend() {
    let mut rng = testing::rng(9);
    let all = || std::iter::once(CpuBackend::Scalar).chain(backends());
    for bits in [2u32, 3, 4] {
        let lo = -(1i32 << (bits - 1));
        let wcodes = |rng: &mut ChaCha8Rng, n: usize, extreme: bool| -> Vec<i8> {
            let hi = -lo - 1;
            (0..n)
                .map(|_| if extreme { [lo, hi][rng.random_range(0..2)] } else { rng.random_range(lo..=hi) } as i8)
                .collect()
        };
        for case in 0..8u64 {
            let extreme = case % 2 == 1;
            let (m, k, n) =
                (testing::size(&mut rng, 1, 9), testing::size(&mut rng, 1, 77), testing::size(&mut rng, 1, 21));
            let cfg = LinearConfig { m, k, n, x_zero: rng.random_range(0..=255) };
            let x = codes(&mut rng, m * k, extreme, 255);
            let w = wcodes(&mut rng, n * k, extreme);
            let p = PackedWeights::pack(&w, bits).unwrap();
            let bias: Vec<i32> = (0..n).map(|_| rng.random_range(-100000..100000)).collect();
            let rq = requant(&mut rng, n, (k as f64).sqrt() * 300.0, Activation::None);
            let mut want = vec![0u8; m * n];
            int8::linear(CpuBackend::Scalar, &cfg, &x, &w, &bias, &rq, &mut want).unwrap();
            let mut want_acc = vec![0i32; m * n];
            int8::linear_acc(CpuBackend::Scalar, &cfg, &x, &w, &bias, &mut want_acc).unwrap();
            for b in all() {
                let mut got = vec![0u8; m * n];
                int8::linear_packed(b, &cfg, &x, &p, &bias, &rq, &mut got).unwrap();
                assert_bit_exact(&format!("packed W{bits} linear {b:?} case {case} {cfg:?}"), &got, &want);
                let mut acc = vec![0i32; m * n];
                int8::linear_acc_packed(b, &cfg, &x, &p, &bias, &mut acc).unwrap();
                assert_bit_exact(&format!("packed W{bits} linear_acc {b:?} case {case}"), &acc, &want_acc);
            }
            let cfg = random_conv(&mut rng, case);
            let x = codes(&mut rng, cfg.batch * cfg.c_in * cfg.h * cfg.w, extreme, 255);
            let w = wcodes(&mut rng, cfg.c_out * cfg.k(), extreme);
            let p = PackedWeights::pack(&w, bits).unwrap();
            let bias: Vec<i32> = (0..cfg.c_out).map(|_| rng.random_range(-50000..50000)).collect();
            let rq = requant(&mut rng, cfg.c_out, (cfg.k() as f64).sqrt() * 300.0, Activation::Relu);
            let n = cfg.out_len().unwrap();
            let mut want = vec![0u8; n];
            int8::conv2d(CpuBackend::Scalar, &cfg, &x, &w, &bias, &rq, &mut want).unwrap();
            for b in all() {
                let mut got = vec![0u8; n];
                int8::conv2d_packed(b, &cfg, &x, &p, &bias, &rq, &mut got).unwrap();
                assert_bit_exact(&format!("packed W{bits} conv {b:?} case {case} {cfg:?}"), &got, &want);
            }
        }
    }
    // A packed layer of the wrong length is a shape error, not a panic.
    let p = PackedWeights::pack(&[1, -2, 3], 4).unwrap();
    let cfg = LinearConfig { m: 1, k: 2, n: 2, x_zero: 0 };
    let rq = Requant { multiplier: vec![1 << 30; 2], shift: vec![0; 2], out_zero: 0, act_min: 0, act_max: 255 };
    assert!(int8::linear_packed(CpuBackend::Scalar, &cfg, &[1, 2], &p, &[0, 0], &rq, &mut [0; 2]).is_err());
}

#[test]
fn conv_1x1_equals_linear_per_pixel() {
    let mut rng = testing::rng(5);
    let cfg = Conv2dConfig {
        batch: 1,
        c_in: 7,
        h: 3,
        w: 5,
        c_out: 6,
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 1,
        x_zero: 77,
    };
    let x = codes(&mut rng, 7 * 15, false, 255);
    let w = weights(&mut rng, 6 * 7, false, 127);
    let bias: Vec<i32> = (0..6).map(|_| rng.random_range(-5000..5000)).collect();
    let rq = requant(&mut rng, 6, 3000.0, Activation::None);
    let mut conv = vec![0u8; 6 * 15];
    int8::conv2d(CpuBackend::Scalar, &cfg, &x, &w, &bias, &rq, &mut conv).unwrap();
    let xt: Vec<u8> = (0..15).flat_map(|p| (0..7).map(move |c| (c, p))).map(|(c, p)| x[c * 15 + p]).collect();
    let mut lin = vec![0u8; 15 * 6];
    int8::linear(CpuBackend::Scalar, &LinearConfig { m: 15, k: 7, n: 6, x_zero: 77 }, &xt, &w, &bias, &rq, &mut lin)
        .unwrap();
    let lin_t: Vec<u8> = (0..6).flat_map(|c| (0..15).map(move |p| (c, p))).map(|(c, p)| lin[p * 6 + c]).collect();
    assert_eq!(conv, lin_t);
}

#[test]
fn pools_and_add() {
    let mut rng = testing::rng(6);
    for case in 0..20u64 {
        let kernel = [testing::size(&mut rng, 1, 3), testing::size(&mut rng, 1, 3)];
        let cfg = PoolConfig {
            batch: testing::size(&mut rng, 1, 2),
            channels: testing::size(&mut rng, 1, 4),
            h: testing::size(&mut rng, 3, 9),
            w: testing::size(&mut rng, 3, 9),
            kernel,
            stride: [testing::size(&mut rng, 1, 2), testing::size(&mut rng, 1, 2)],
            padding: [rng.random_range(0..kernel[0]), rng.random_range(0..kernel[1])],
        };
        let (oh, ow) = cfg.out_hw().unwrap();
        let x = codes(&mut rng, cfg.batch * cfg.channels * cfg.h * cfg.w, case % 4 == 0, 255);
        let n = cfg.batch * cfg.channels * oh * ow;
        let (mut mx, mut avg) = (vec![0u8; n], vec![0u8; n]);
        let rq = AvgRequant::same_scale(rng.random_range(0..=255));
        int8::max_pool(CpuBackend::Simd, &cfg, &x, &mut mx).unwrap();
        int8::avg_pool(CpuBackend::Simd, &cfg, &rq, &x, &mut avg).unwrap();
        for bc in 0..cfg.batch * cfg.channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut sum, mut cnt) = (0u8, 0i64, 0i64);
                    for ky in 0..kernel[0] {
                        for kx in 0..kernel[1] {
                            let iy = (oy * cfg.stride[0] + ky) as isize - cfg.padding[0] as isize;
                            let ix = (ox * cfg.stride[1] + kx) as isize - cfg.padding[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < cfg.h && (ix as usize) < cfg.w {
                                let v = x[bc * cfg.h * cfg.w + iy as usize * cfg.w + ix as usize];
                                best = best.max(v);
                                sum += v as i64;
                                cnt += 1;
                            }
                        }
                    }
                    let o = (bc * oh + oy) * ow + ox;
                    assert_eq!(mx[o], best, "max pool case {case} at {o}");
                    // Divisor kh * kw (padding counts as zero-valued), the exact mean rounded
                    // half to even: what the simulation computes.
                    let window = (kernel[0] * kernel[1]) as f64;
                    let mean = rq.out_zero + ((sum - cnt * rq.in_zero as i64) as f64 / window).round_ties_even() as i32;
                    assert_eq!(avg[o] as i32, mean.clamp(0, 255), "avg pool case {case} at {o}");
                }
            }
        }
        // Global average pool: one output per plane.
        let mut g = vec![0u8; cfg.batch * cfg.channels];
        int8::global_avg_pool(CpuBackend::Simd, &cfg, &rq, &x, &mut g).unwrap();
        let hw = cfg.h * cfg.w;
        for (bc, &v) in g.iter().enumerate() {
            let sum = x[bc * hw..(bc + 1) * hw].iter().map(|&v| v as i64 - rq.in_zero as i64).sum::<i64>();
            let mean = rq.out_zero + (sum as f64 / hw as f64).round_ties_even() as i32;
            assert_eq!(v as i32, mean, "global pool plane {bc}");
        }
    }
    // Residual add against real arithmetic.
    for case in 0..50 {
        let (sa, sb, so) =
            (rng.random_range(0.01..0.2f32), rng.random_range(0.01..0.2f32), rng.random_range(0.02..0.3f32));
        let (za, zb, zo) = (rng.random_range(0..=255), rng.random_range(0..=255), rng.random_range(0..=255));
        let act = [Activation::None, Activation::Relu][case % 2];
        let cfg = AddConfig::new(sa, za, sb, zb, so, zo, 8, act).unwrap();
        let a = codes(&mut rng, 257, case % 5 == 0, 255);
        let b = codes(&mut rng, 257, case % 5 == 0, 255);
        let mut out = vec![0u8; 257];
        int8::add(CpuBackend::Simd, &cfg, &a, &b, &mut out).unwrap();
        for i in 0..257 {
            let real = (sa as f64 * (a[i] as i32 - za) as f64 + sb as f64 * (b[i] as i32 - zb) as f64) / so as f64;
            let want = (real.round() as i64 + zo as i64).clamp(cfg.act_min as i64, 255) as i32;
            assert!(
                (out[i] as i32 - want).abs() <= FIXED_POINT_ATOL_CODES,
                "add case {case} {i}: {} vs {want}",
                out[i]
            );
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let rq = Requant { multiplier: vec![1 << 30; 2], shift: vec![0; 2], out_zero: 0, act_min: 0, act_max: 255 };
    let cfg = LinearConfig { m: 2, k: 3, n: 2, x_zero: 0 };
    let (x, w, b) = (vec![0u8; 6], vec![0i8; 6], vec![0i32; 2]);
    let mut out = vec![0u8; 4];
    for be in [CpuBackend::Scalar, CpuBackend::Simd] {
        assert!(int8::linear(be, &cfg, &x, &w, &b, &rq, &mut out).is_ok());
        assert!(int8::linear(be, &cfg, &x[..5], &w, &b, &rq, &mut out).is_err());
        assert!(int8::linear(be, &LinearConfig { m: 0, ..cfg }, &[], &w, &b, &rq, &mut []).is_err());
        assert!(int8::linear(be, &LinearConfig { x_zero: 256, ..cfg }, &x, &w, &b, &rq, &mut out).is_err());
        let bad = Requant { out_zero: 300, ..rq.clone() };
        assert!(int8::linear(be, &cfg, &x, &w, &b, &bad, &mut out).is_err());
    }
    let conv = Conv2dConfig {
        batch: 1,
        c_in: 3,
        h: 2,
        w: 2,
        c_out: 2,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 1,
        x_zero: 0,
    };
    assert!(conv.out_hw().is_err());
    assert!(Conv2dConfig { groups: 2, padding: [1, 1], ..conv }.validate(12, 27, 2, 8).is_err());
    let pool = PoolConfig { batch: 1, channels: 1, h: 2, w: 2, kernel: [2, 2], stride: [1, 1], padding: [2, 0] };
    assert!(int8::max_pool(CpuBackend::Simd, &pool, &[0; 4], &mut [0; 16]).is_err());
    let cfg = AddConfig::new(0.1, 0, 0.1, 0, 0.1, 0, 8, Activation::None).unwrap();
    assert!(int8::add(CpuBackend::Simd, &cfg, &[0; 3], &[0; 4], &mut [0; 3]).is_err());
    let missing = SimdKernel::available();
    for k in [SimdKernel::Avx2, SimdKernel::Avx512Vnni, SimdKernel::Neon, SimdKernel::NeonDot] {
        if !missing.contains(&k) {
            assert!(int8::linear(CpuBackend::Kernel(k), &cfg_lin(), &x, &w, &b, &rq, &mut out).is_err());
        }
    }
}

fn cfg_lin() -> LinearConfig {
    LinearConfig { m: 2, k: 3, n: 2, x_zero: 0 }
}

#[test]
#[ignore = "manual throughput measurement: cargo test --release --test int8_cpu -- --ignored --nocapture"]
fn gemm_throughput() {
    let mut rng = testing::rng(9);
    let (m, k, n) = (256, 1152, 256);
    let cfg = LinearConfig { m, k, n, x_zero: 3 };
    let x = codes(&mut rng, m * k, false, 255);
    let w = weights(&mut rng, n * k, false, 127);
    let bias = vec![0i32; n];
    let rq = requant(&mut rng, n, 300000.0, Activation::None);
    let mut out = vec![0u8; m * n];
    let mut bs = vec![CpuBackend::Scalar];
    bs.extend(backends());
    for b in bs {
        let reps = if b == CpuBackend::Scalar { 2 } else { 10 };
        let t = std::time::Instant::now();
        for _ in 0..reps {
            int8::linear(b, &cfg, &x, &w, &bias, &rq, &mut out).unwrap();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        eprintln!("{b:?}: {:.2} ms per {m}x{k}x{n} GEMM, {:.1} GOP/s", s * 1e3, 2.0 * (m * k * n) as f64 / s / 1e9);
    }
}

/// The simulation's average pool of fake-quantized values (`reference::graph::pool_codes`,
/// which the GPU training kernels mirror) equals the integer global pool bit for bit at 4-bit
/// codes, where exact ties (a sum of 64 codes = 32 mod 64) are frequent. The float mean
/// followed by fake-quant, which the simulation used before, rounds some of those ties the
/// other way: the test shows it would fail.
#[test]
fn simulated_avg_pool_rounds_ties_like_the_integer_pool() {
    use wqat::model::checkpoint::QState;
    use wqat::quant::{QStateLayout, QuantSpec};
    use wqat::reference::graph::{global_avg_f32, pool_codes};
    let mut rng = testing::rng(41);
    let (planes, hw) = (4000, 64);
    let (mut ties, mut float_wrong) = (0, 0);
    for case in 0..4 {
        let scale = rng.random_range(0.01f32..0.5);
        let zero = [0, 3, 8, 15][case];
        let raw = QStateLayout::exact(scale, 1.0 / scale, zero as f32);
        let q = QState::from_raw("pool input", &raw, QuantSpec::activation(4)).unwrap();
        let codes: Vec<u8> = (0..planes * hw).map(|_| rng.random_range(0..16u8)).collect();
        let x: Vec<f32> = codes.iter().map(|&c| (c as f32 - zero as f32) * scale).collect();
        let sim = pool_codes(&q, &x, |v| global_avg_f32(v, planes, hw));
        let cfg =
            PoolConfig { batch: 1, channels: planes, h: 8, w: 8, kernel: [8, 8], stride: [1, 1], padding: [0, 0] };
        let mut out = vec![0u8; planes];
        int8::global_avg_pool(CpuBackend::Scalar, &cfg, &AvgRequant::same_scale(zero), &codes, &mut out).unwrap();
        let int: Vec<f32> = out.iter().map(|&c| (c as f32 - zero as f32) * scale).collect();
        assert_bit_exact(&format!("pool case {case} scale {scale}"), &sim, &int);
        let mut old = global_avg_f32(&x, planes, hw);
        q.fake_quant(&mut old, 1);
        for p in 0..planes {
            let t: i32 = codes[p * hw..][..hw].iter().map(|&c| c as i32 - zero).sum();
            ties += usize::from(t.rem_euclid(64) == 32);
            float_wrong += usize::from(old[p] != int[p]);
        }
    }
    assert!(ties > 100, "{ties} ties");
    assert!(float_wrong > 0, "the float mean + fake-quant agreed on all {ties} ties: this test shows nothing");
    eprintln!("{ties} ties; the float mean + fake-quant rounds {float_wrong} of them the other way");
}
