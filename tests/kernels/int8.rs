//! `shaders/int8_gemm.wgsl` against the scalar int8 reference: outputs bit-exact on odd
//! shapes, extreme codes, long K and wrapping biases; the shader's 32-bit emulation of the
//! 64-bit fixed-point multiply against the CPU on edge values. Conv and linear run on one
//! context per kernel path of the adapter (see [`contexts`]): the register-blocked DIRECT
//! kernels, the one-word-per-invocation kernels with `dot4I8Packed`, and their `unpack4x*`
//! fallback, so every run checks all three.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, OnceLock};
use wqat::gpu::{DType, GpuContext, GpuOptions, GpuTensor};
use wqat::infer::gpu::gemm as k;
use wqat::infer::requant::{multiply_by_quantized_multiplier_rounded, requantize};
use wqat::infer::weights::PackedWeights;
use wqat::infer::{Activation, Conv2dConfig, LinearConfig, Requant};
use wqat::reference::int8 as r;
use wqat::testing::{self, assert_bit_exact};

/// One context per int8_gemm path this adapter has: the shared test context plus, for each
/// path it does not take, a context forcing it (`GpuOptions::conv_direct`, and
/// `disable_dot4` for the unpack fallback). A path is (DIRECT, dot4); DIRECT kernels always
/// unpack, and the dot4 path exists only where the adapter has `dot4I8Packed`.
pub(crate) fn contexts() -> Vec<Arc<GpuContext>> {
    static OTHERS: OnceLock<Vec<Arc<GpuContext>>> = OnceLock::new();
    let base = testing::ctx();
    let path = |c: &GpuContext| (c.conv_direct, c.use_dot4 && !c.conv_direct);
    let others = OTHERS.get_or_init(|| {
        let mut wanted = vec![(true, false), (false, false)];
        if base.summary.dot4_packed {
            wanted.push((false, true));
        }
        wanted
            .into_iter()
            .filter(|&p| p != path(&base))
            .map(|(direct, dot4)| {
                let opts = GpuOptions { conv_direct: Some(direct), disable_dot4: !dot4, ..GpuOptions::from_env() };
                let c = GpuContext::new(&opts).unwrap();
                assert_eq!(path(&c), (direct, dot4), "GpuOptions did not force the int8 path");
                c
            })
            .collect()
    });
    std::iter::once(base).chain(others.iter().cloned()).collect()
}

fn codes(rng: &mut ChaCha8Rng, n: usize, extreme: bool) -> Vec<u8> {
    (0..n).map(|_| if extreme { [0u8, 255][rng.random_range(0..2)] } else { rng.random() }).collect()
}
fn weights(rng: &mut ChaCha8Rng, n: usize, extreme: bool) -> Vec<i8> {
    weights_bits(rng, n, extreme, 8)
}
/// Codes of `bits`-bit weights: `[-127, 127]` at 8 bits, the full two's-complement range
/// below (the packed fields' extremes, -8 and 7 at 4 bits, included).
fn weights_bits(rng: &mut ChaCha8Rng, n: usize, extreme: bool, bits: u32) -> Vec<i8> {
    let (lo, hi) = if bits >= 8 { (-127, 127) } else { (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1) };
    (0..n).map(|_| if extreme { [lo, hi][rng.random_range(0..2)] } else { rng.random_range(lo..=hi) } as i8).collect()
}
/// The GPU layer of codes `w` of `bits` bits: 8 through the int8 constructor, below through
/// [`PackedWeights`] (kept packed on the GPU; its buffer size is checked).
fn gpu_layer(
    ctx: &GpuContext,
    w: &[i8],
    bits: u32,
    n: usize,
    kernel: [usize; 3],
    bias: &[i32],
    rq: &Requant,
) -> k::Int8Weights {
    if bits == 8 {
        return k::Int8Weights::new_conv(ctx, w, n, kernel, bias, rq).unwrap();
    }
    let p = PackedWeights::pack(w, bits).unwrap();
    let layer = k::Int8Weights::new_packed(ctx, &p, n, kernel, bias, rq).unwrap();
    check_packed_size(&layer, bits, n, kernel);
    layer
}
/// A packed layer's buffer: `n * words per channel` logical words, 2 (W3 / W4) or 4 (W2) to a
/// u32, padded to whole vec4s.
fn check_packed_size(layer: &k::Int8Weights, bits: u32, n: usize, [cin_g, kh, kw]: [usize; 3]) {
    let per = if bits <= 2 { 4 } else { 2 };
    let logical = n * cin_g * kh * kw.div_ceil(4);
    assert_eq!(layer.field_bits, 8 / per as u32, "{bits} bits");
    assert_eq!(layer.weight_bytes(), 4 * logical.div_ceil(per).div_ceil(4) * 4, "{bits} bits, n {n} {kw}");
}
fn requant(rng: &mut ChaCha8Rng, n: usize, typ: f64, act: Activation) -> Requant {
    let s_w: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..2.0) as f32).collect();
    Requant::from_scales(1.0, &s_w, (typ / 100.0) as f32, rng.random_range(0..=255), 8, act).unwrap()
}

#[test]
fn requant_emulation_matches_cpu_on_edges() {
    let ctx = testing::ctx();
    eprintln!("use_dot4 = {}", ctx.use_dot4);
    let mut rng = testing::rng(1);
    let nch = 96;
    let mut multiplier: Vec<i32> = (0..nch).map(|_| rng.random_range(1 << 30..=i32::MAX)).collect();
    let mut shift: Vec<i32> = (0..nch).map(|_| rng.random_range(-31..=30)).collect();
    multiplier[..6].copy_from_slice(&[0, 1 << 30, i32::MAX, i32::MAX, 1 << 30, 1]);
    shift[..6].copy_from_slice(&[0, -31, 30, -31, 0, 0]);
    // Multipliers with trailing zero bits and small shifts: many exact halves (half to even).
    for c in 6..40 {
        multiplier[c] = [1 << 30, 3 << 28, 5 << 27][c % 3];
        shift[c] = -((c % 5) as i32);
    }
    let rq = Requant { multiplier, shift, out_zero: 17, act_min: 17, act_max: 200 };
    let mut bias = vec![0i32; nch];
    bias[nch - 1] = i32::MAX; // wraps with positive accumulators
    let layer = k::Int8Weights::new(&ctx, &vec![1i8; nch], nch, 1, &bias, &rq).unwrap();
    let edges = [i32::MIN, i32::MIN + 1, -(1 << 30), -3, -2, -1, 0, 1, 2, 3, 1 << 30, i32::MAX - 1, i32::MAX];
    let n = 20000;
    let acc: Vec<i32> = (0..n)
        .map(|i| if i % 3 == 0 { edges[i % edges.len()] } else { rng.random::<i32>() >> rng.random_range(0..31) })
        .collect();
    let chan: Vec<u32> = (0..n).map(|i| ((i * 7 + i / 13) % nch) as u32).collect();
    let gacc = GpuTensor::from_i32(&ctx, &[n], &acc).unwrap();
    let gch = GpuTensor::from_u32(&ctx, &[n], &chan).unwrap();
    for raw in [true, false] {
        let gout = GpuTensor::zeros(&ctx, &[n], DType::U32).unwrap();
        let d = k::int8_requant_probe(&ctx, &gacc, &gch, &layer, raw, &gout).unwrap();
        ctx.submit(&[&d]).unwrap();
        let got = gout.read_i32(&ctx).unwrap();
        let want: Vec<i32> = (0..n)
            .map(|i| {
                let c = chan[i] as usize;
                let a = acc[i].wrapping_add(bias[c]);
                if raw {
                    multiply_by_quantized_multiplier_rounded(a, rq.multiplier[c], rq.shift[c])
                } else {
                    requantize(a, rq.multiplier[c], rq.shift[c], rq.out_zero, rq.act_min, rq.act_max)
                }
            })
            .collect();
        assert_bit_exact(&format!("requant probe raw {raw}"), &got, &want);
    }
}

fn check_linear(seed: u64, cfg: LinearConfig, extreme: bool) {
    check_linear_bits(seed, cfg, extreme, 8)
}

fn check_linear_bits(seed: u64, cfg: LinearConfig, extreme: bool, bits: u32) {
    let mut rng = testing::rng(seed);
    let x = codes(&mut rng, cfg.m * cfg.k, extreme);
    let w = weights_bits(&mut rng, cfg.n * cfg.k, extreme, bits);
    let mut bias: Vec<i32> = (0..cfg.n).map(|_| rng.random_range(-100000..100000)).collect();
    if seed.is_multiple_of(3) {
        bias[0] = i32::MAX;
        bias[cfg.n - 1] = i32::MIN;
    }
    let act = [Activation::None, Activation::Relu, Activation::Relu6][(seed % 3) as usize];
    let rq = requant(&mut rng, cfg.n, (cfg.k as f64).sqrt() * 10000.0, act);
    let mut want = vec![0u8; cfg.m * cfg.n];
    r::linear(&cfg, &x, &w, &bias, &rq, &mut want).unwrap();
    for ctx in contexts() {
        let layer = gpu_layer(&ctx, &w, bits, cfg.n, [1, 1, cfg.k], &bias, &rq);
        let gx = k::upload_u8(&ctx, &[cfg.m, cfg.k], &x).unwrap();
        let gout = GpuTensor::zeros(&ctx, &[cfg.m, cfg.n], DType::I8x4).unwrap();
        let d = k::int8_linear(&ctx, &cfg, &gx, &layer, &gout).unwrap();
        ctx.submit(&[&d]).unwrap();
        let direct = k::linear_takes_direct(&ctx, &cfg);
        let what = format!("int8_linear W{bits} seed {seed} direct {direct} dot4 {} {cfg:?}", ctx.use_dot4);
        assert_bit_exact(&what, &k::read_u8(&ctx, &gout).unwrap(), &want);
    }
}

#[test]
fn linear_matches_reference() {
    let mut rng = testing::rng(2);
    for case in 0..16u64 {
        let cfg = LinearConfig {
            m: testing::size(&mut rng, 1, 19),
            k: testing::size(&mut rng, 1, 150),
            n: testing::size(&mut rng, 1, 23),
            x_zero: if case % 4 == 1 { 255 } else { rng.random_range(0..=255) },
        };
        check_linear(10 + case, cfg, case % 2 == 1);
    }
    // Long K with x = 255 / w = +-127: the accumulator nears 2^31 and the bias wraps it.
    check_linear(30, LinearConfig { m: 2, k: 16411, n: 3, x_zero: 0 }, true);
    check_linear(31, LinearConfig { m: 3, k: 16411, n: 8, x_zero: 0 }, true);
    // DIRECT-eligible (n % 4 == 0) with partial row and channel blocks, aligned and odd k.
    for (i, &(m, k, n)) in [(1, 1568, 128), (5, 37, 12), (7, 16, 4), (9, 129, 20), (66, 9, 36)].iter().enumerate() {
        check_linear(40 + i as u64, LinearConfig { m, k, n, x_zero: 3 + 50 * i as i32 }, i % 2 == 1);
    }
}

/// Packed W2 / W3 / W4 weights (read packed by the shader) on every kernel path: odd k (a
/// stored u32 holds words of two channel rows), partial channel blocks, DIRECT-eligible n.
#[test]
fn packed_linear_matches_reference() {
    let mut rng = testing::rng(6);
    for bits in [2, 3, 4] {
        for case in 0..6u64 {
            let cfg = LinearConfig {
                m: testing::size(&mut rng, 1, 19),
                k: testing::size(&mut rng, 1, 150),
                n: testing::size(&mut rng, 1, 23),
                x_zero: if case % 4 == 1 { 255 } else { rng.random_range(0..=255) },
            };
            check_linear_bits(200 + 10 * bits as u64 + case, cfg, case % 2 == 1, bits);
        }
        for (i, &(m, k, n)) in [(5, 37, 12), (9, 129, 20), (66, 9, 36), (3, 1, 5), (2, 16411, 3)].iter().enumerate() {
            check_linear_bits(
                250 + 10 * bits as u64 + i as u64,
                LinearConfig { m, k, n, x_zero: 3 + 50 * i as i32 },
                i % 2 == 1,
                bits,
            );
        }
    }
}

/// `int8_linear_f32` (the f32 epilogue of a transformer's integer linear layers) against
/// `int8::linear_acc` + `infer::cpu::dequantize_acc`, bit for bit, on every kernel path.
fn check_linear_f32(seed: u64, cfg: LinearConfig, extreme: bool) {
    check_linear_f32_bits(seed, cfg, extreme, 8)
}

fn check_linear_f32_bits(seed: u64, cfg: LinearConfig, extreme: bool, bits: u32) {
    let mut rng = testing::rng(seed);
    let x = codes(&mut rng, cfg.m * cfg.k, extreme);
    let w = weights_bits(&mut rng, cfg.n * cfg.k, extreme, bits);
    let mut bias: Vec<i32> = (0..cfg.n).map(|_| rng.random_range(-100000..100000)).collect();
    if seed.is_multiple_of(3) {
        bias[0] = i32::MAX;
        bias[cfg.n - 1] = i32::MIN;
    }
    let s_in: f32 = rng.random_range(0.001..0.1);
    let s_w: Vec<f32> = (0..cfg.n).map(|_| rng.random_range(1e-4..1e-2)).collect();
    let mut acc = vec![0i32; cfg.m * cfg.n];
    wqat::infer::cpu::kernels::linear_acc(wqat::infer::CpuBackend::Scalar, &cfg, &x, &w, &bias, &mut acc).unwrap();
    let want: Vec<u32> = wqat::infer::cpu::dequantize_acc(&acc, s_in, &s_w).iter().map(|v| v.to_bits()).collect();
    let scale: Vec<f32> = s_w.iter().map(|&sw| s_in * sw).collect();
    for ctx in contexts() {
        let layer = if bits == 8 {
            k::Int8Weights::new_dequant(&ctx, &w, cfg.n, cfg.k, &bias, &scale).unwrap()
        } else {
            let p = PackedWeights::pack(&w, bits).unwrap();
            let layer = k::Int8Weights::new_dequant_packed(&ctx, &p, cfg.n, cfg.k, &bias, &scale).unwrap();
            check_packed_size(&layer, bits, cfg.n, [1, 1, cfg.k]);
            layer
        };
        let gx = k::upload_u8(&ctx, &[cfg.m, cfg.k], &x).unwrap();
        let gout = GpuTensor::zeros(&ctx, &[cfg.m, cfg.n], DType::F32).unwrap();
        let d = k::int8_linear_f32(&ctx, &cfg, &gx, &layer, &gout).unwrap();
        ctx.submit(&[&d]).unwrap();
        let direct = k::linear_takes_direct(&ctx, &cfg);
        let what = format!("int8_linear_f32 W{bits} seed {seed} direct {direct} dot4 {} {cfg:?}", ctx.use_dot4);
        assert_bit_exact(&what, &gout.read_u32(&ctx).unwrap(), &want);
    }
}

#[test]
fn linear_f32_matches_reference() {
    let mut rng = testing::rng(4);
    for case in 0..8u64 {
        let cfg = LinearConfig {
            m: testing::size(&mut rng, 1, 19),
            k: testing::size(&mut rng, 1, 150),
            n: testing::size(&mut rng, 1, 23),
            x_zero: if case % 4 == 1 { 255 } else { rng.random_range(0..=255) },
        };
        check_linear_f32(60 + case, cfg, case % 2 == 1);
    }
    // Accumulators past 2^24 (rounded by the conversion to f32) and DIRECT-eligible shapes:
    // a transformer's tokens x features.
    check_linear_f32(70, LinearConfig { m: 3, k: 16411, n: 8, x_zero: 0 }, true);
    for (i, &(m, k, n)) in [(68, 64, 192), (5, 37, 12), (17, 128, 64)].iter().enumerate() {
        check_linear_f32(71 + i as u64, LinearConfig { m, k, n, x_zero: 7 + 60 * i as i32 }, i % 2 == 1);
    }
}

#[test]
fn packed_linear_f32_matches_reference() {
    for (i, bits) in [2u32, 3, 4].into_iter().enumerate() {
        for (j, &(m, k, n)) in [(7, 37, 12), (3, 65, 9), (17, 128, 64)].iter().enumerate() {
            let seed = 300 + 10 * i as u64 + j as u64;
            check_linear_f32_bits(seed, LinearConfig { m, k, n, x_zero: 11 + 70 * j as i32 }, j == 1, bits);
        }
    }
}

#[test]
fn linear_layers_chain_on_gpu() {
    // The packed output of one layer is the next layer's input, no host round trip.
    let mut rng = testing::rng(3);
    let (m, k0, k1, k2) = (5, 13, 7, 9);
    let x = codes(&mut rng, m * k0, false);
    let (w1, w2) = (weights(&mut rng, k1 * k0, false), weights(&mut rng, k2 * k1, false));
    let (b1, b2) = (vec![100i32; k1], vec![-50i32; k2]);
    let rq1 = requant(&mut rng, k1, 4000.0, Activation::Relu);
    let rq2 = requant(&mut rng, k2, 4000.0, Activation::None);
    let c1 = LinearConfig { m, k: k0, n: k1, x_zero: 9 };
    let c2 = LinearConfig { m, k: k1, n: k2, x_zero: rq1.out_zero };
    let mut h = vec![0u8; m * k1];
    let mut want = vec![0u8; m * k2];
    r::linear(&c1, &x, &w1, &b1, &rq1, &mut h).unwrap();
    r::linear(&c2, &h, &w2, &b2, &rq2, &mut want).unwrap();
    for ctx in contexts() {
        let l1 = k::Int8Weights::new(&ctx, &w1, k1, k0, &b1, &rq1).unwrap();
        let l2 = k::Int8Weights::new(&ctx, &w2, k2, k1, &b2, &rq2).unwrap();
        let gx = k::upload_u8(&ctx, &[m, k0], &x).unwrap();
        let gh = GpuTensor::zeros(&ctx, &[m, k1], DType::I8x4).unwrap();
        let gy = GpuTensor::zeros(&ctx, &[m, k2], DType::I8x4).unwrap();
        let d1 = k::int8_linear(&ctx, &c1, &gx, &l1, &gh).unwrap();
        let d2 = k::int8_linear(&ctx, &c2, &gh, &l2, &gy).unwrap();
        ctx.submit(&[&d1, &d2]).unwrap();
        assert_bit_exact(
            &format!("chained int8 linear dot4 {} direct {}", ctx.use_dot4, ctx.conv_direct),
            &k::read_u8(&ctx, &gy).unwrap(),
            &want,
        );
    }
}

fn random_conv(rng: &mut ChaCha8Rng, case: u64) -> Conv2dConfig {
    let depthwise = case % 5 == 4;
    let groups = [1, 1, 2, 3][(case % 4) as usize];
    let (c_in, c_out, groups) = if depthwise {
        let c = testing::size(rng, 1, 9);
        (c, c, c)
    } else {
        (groups * testing::size(rng, 1, 5), groups * testing::size(rng, 1, 6), groups)
    };
    let kernel = [testing::size(rng, 1, 3), testing::size(rng, 1, 3)];
    let dilation = [testing::size(rng, 1, 2), testing::size(rng, 1, 2)];
    Conv2dConfig {
        batch: testing::size(rng, 1, 3),
        c_in,
        h: testing::size(rng, dilation[0] * (kernel[0] - 1) + 1, 11),
        w: testing::size(rng, dilation[1] * (kernel[1] - 1) + 1, 11),
        c_out,
        kernel,
        stride: [testing::size(rng, 1, 2), testing::size(rng, 1, 2)],
        padding: [testing::size(rng, 0, 2), testing::size(rng, 0, 2)],
        dilation,
        groups,
        x_zero: rng.random_range(0..=255),
    }
}

fn check_conv(rng: &mut ChaCha8Rng, case: u64, cfg: Conv2dConfig) {
    check_conv_bits(rng, case, cfg, 8)
}

fn check_conv_bits(rng: &mut ChaCha8Rng, case: u64, cfg: Conv2dConfig, bits: u32) {
    let extreme = case % 3 == 2;
    let x = codes(rng, cfg.batch * cfg.c_in * cfg.h * cfg.w, extreme);
    let w = weights_bits(rng, cfg.c_out * cfg.k(), extreme, bits);
    let bias: Vec<i32> = (0..cfg.c_out).map(|_| rng.random_range(-50000..50000)).collect();
    let act = [Activation::None, Activation::Relu, Activation::Relu6][(case % 3) as usize];
    let rq = requant(rng, cfg.c_out, (cfg.k() as f64).sqrt() * 10000.0, act);
    let n = cfg.out_len().unwrap();
    let mut want = vec![0u8; n];
    r::conv2d(&cfg, &x, &w, &bias, &rq, &mut want).unwrap();
    for ctx in contexts() {
        let kernel = [cfg.cin_g(), cfg.kernel[0], cfg.kernel[1]];
        let layer = gpu_layer(&ctx, &w, bits, cfg.c_out, kernel, &bias, &rq);
        let gx = k::upload_u8(&ctx, &[cfg.batch, cfg.c_in, cfg.h, cfg.w], &x).unwrap();
        let gout = GpuTensor::zeros(&ctx, &[n], DType::I8x4).unwrap();
        let d = k::int8_conv2d(&ctx, &cfg, &gx, &layer, &gout).unwrap();
        ctx.submit(&[&d]).unwrap();
        let direct = k::conv_takes_direct(&ctx, &cfg);
        let what = format!("int8_conv2d W{bits} case {case} direct {direct} dot4 {} {cfg:?}", ctx.use_dot4);
        assert_bit_exact(&what, &k::read_u8(&ctx, &gout).unwrap(), &want);
    }
}

#[test]
fn conv2d_matches_reference() {
    let mut rng = testing::rng(4);
    for case in 0..24u64 {
        let cfg = random_conv(&mut rng, case);
        check_conv(&mut rng, case, cfg);
    }
}

/// Packed W2 / W3 / W4 conv weights on every kernel path: random shapes (groups,
/// depthwise, dilation, kernel rows of one word) and DIRECT-eligible ones (kernel rows of
/// two words, partial channel blocks, odd word counts per channel so a stored u32 holds
/// words of two channels).
#[test]
fn packed_conv2d_matches_reference() {
    let mut rng = testing::rng(7);
    let base = Conv2dConfig {
        batch: 2,
        c_in: 3,
        h: 6,
        w: 6,
        c_out: 5,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
        x_zero: 77,
    };
    let direct = [
        base,
        Conv2dConfig { c_in: 2, c_out: 13, kernel: [3, 6], dilation: [2, 1], padding: [2, 3], h: 6, w: 5, ..base },
        Conv2dConfig { c_in: 6, c_out: 9, groups: 3, stride: [2, 1], h: 9, w: 12, ..base },
        Conv2dConfig { c_in: 8, c_out: 6, groups: 2, h: 5, w: 4, x_zero: 255, ..base },
        Conv2dConfig { batch: 1, c_in: 1, h: 28, w: 28, c_out: 16, x_zero: 0, ..base },
    ];
    for bits in [2u32, 3, 4] {
        for case in 0..8u64 {
            let cfg = random_conv(&mut rng, case);
            check_conv_bits(&mut rng, 400 + 10 * bits as u64 + case, cfg, bits);
        }
        for (i, cfg) in direct.into_iter().enumerate() {
            check_conv_bits(&mut rng, 500 + 10 * bits as u64 + i as u64, cfg, bits);
        }
    }
}

/// A W4 layer's GPU weights take half the bytes of the same layer at W8, W2 a quarter.
#[test]
fn packed_weights_memory() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(8);
    let (n, kernel) = (32, [16, 5, 5]);
    let w = weights_bits(&mut rng, n * 400, false, 2);
    let rq = requant(&mut rng, n, 1000.0, Activation::None);
    let bias = vec![0; n];
    let w8 = k::Int8Weights::new_conv(&ctx, &w, n, kernel, &bias, &rq).unwrap().weight_bytes();
    let size = |bits| {
        let p = PackedWeights::pack(&w, bits).unwrap();
        k::Int8Weights::new_packed(&ctx, &p, n, kernel, &bias, &rq).unwrap().weight_bytes()
    };
    assert_eq!(w8, n * 16 * 5 * 2 * 4);
    assert_eq!(size(8), w8);
    assert_eq!(size(4), w8 / 2);
    assert_eq!(size(3), w8 / 2);
    assert_eq!(size(2), w8 / 4);
}

/// Shapes the DIRECT conv takes (oh * ow % 4 == 0, dilation_w 1): padding on every side,
/// kernel rows of 1..6 taps (one or two words), strides, height dilation, groups, c_in / groups
/// a multiple of 4 or not, and
/// channel counts that leave partial 8-channel blocks, output words that cross rows.
#[test]
fn conv2d_direct_shapes_match_reference() {
    let mut rng = testing::rng(5);
    let base = Conv2dConfig {
        batch: 2,
        c_in: 3,
        h: 6,
        w: 6,
        c_out: 5,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
        x_zero: 77,
    };
    let cases = [
        base,
        Conv2dConfig { batch: 3, c_in: 16, h: 14, w: 14, c_out: 32, x_zero: 0, ..base },
        Conv2dConfig { batch: 1, c_in: 1, h: 28, w: 28, c_out: 16, x_zero: 255, ..base },
        Conv2dConfig { c_in: 4, c_out: 11, kernel: [2, 5], padding: [2, 2], h: 5, w: 9, ..base },
        Conv2dConfig { c_in: 6, c_out: 9, groups: 3, stride: [2, 1], h: 9, w: 12, ..base },
        Conv2dConfig { c_in: 2, c_out: 13, kernel: [3, 6], dilation: [2, 1], padding: [2, 3], h: 6, w: 5, ..base },
        Conv2dConfig { c_in: 8, c_out: 8, groups: 8, h: 6, w: 6, stride: [1, 2], padding: [0, 0], ..base },
        Conv2dConfig { c_in: 5, c_out: 17, kernel: [1, 1], padding: [0, 0], h: 3, w: 4, ..base },
        // c_in / groups % 4 == 0: weights of four input channels per vec4 load.
        Conv2dConfig { c_in: 8, c_out: 6, groups: 2, h: 5, w: 4, ..base },
        Conv2dConfig {
            batch: 1,
            c_in: 12,
            c_out: 19,
            kernel: [2, 5],
            padding: [0, 2],
            h: 5,
            w: 7,
            x_zero: 255,
            ..base
        },
    ];
    for (i, cfg) in cases.into_iter().enumerate() {
        let (oh, ow) = cfg.out_hw().unwrap();
        assert!((oh * ow) % 4 == 0, "case {i} is not DIRECT-eligible: {cfg:?}");
        check_conv(&mut rng, 100 + i as u64, cfg);
    }
}

#[test]
fn bad_shapes_are_errors() {
    let ctx = testing::ctx();
    let rq = Requant { multiplier: vec![1 << 30; 3], shift: vec![0; 3], out_zero: 0, act_min: 0, act_max: 255 };
    let layer = k::Int8Weights::new(&ctx, &[1i8; 6], 3, 2, &[0; 3], &rq).unwrap();
    assert!(k::Int8Weights::new(&ctx, &[1i8; 5], 3, 2, &[0; 3], &rq).is_err());
    assert!(k::Int8Weights::new(&ctx, &[1i8; 6], 3, 2, &[0; 2], &rq).is_err());
    assert!(k::Int8Weights::new_conv(&ctx, &[1i8; 6], 3, [1, 0, 2], &[0; 3], &rq).is_err());
    assert!(k::Int8Weights::new_conv(&ctx, &[1i8; 6], 3, [1, 1, 3], &[0; 3], &rq).is_err());
    // Conv weights packed for another kernel width are refused.
    let conv = Conv2dConfig {
        batch: 1,
        c_in: 1,
        h: 2,
        w: 2,
        c_out: 3,
        kernel: [1, 2],
        stride: [1, 1],
        padding: [0, 0],
        dilation: [1, 1],
        groups: 1,
        x_zero: 0,
    };
    let cx = k::upload_u8(&ctx, &[1, 1, 2, 2], &[1; 4]).unwrap();
    let cout = GpuTensor::zeros(&ctx, &[6], DType::I8x4).unwrap();
    let rows2 = k::Int8Weights::new_conv(&ctx, &[1i8; 6], 3, [1, 1, 2], &[0; 3], &rq).unwrap();
    assert!(k::int8_conv2d(&ctx, &conv, &cx, &rows2, &cout).is_ok());
    let rows1 = k::Int8Weights::new_conv(&ctx, &[1i8; 6], 3, [1, 2, 1], &[0; 3], &rq).unwrap();
    assert!(k::int8_conv2d(&ctx, &conv, &cx, &rows1, &cout).is_err());
    let x = k::upload_u8(&ctx, &[4, 2], &[1; 8]).unwrap();
    let out = GpuTensor::zeros(&ctx, &[4, 3], DType::I8x4).unwrap();
    let cfg = LinearConfig { m: 4, k: 2, n: 3, x_zero: 0 };
    assert!(k::int8_linear(&ctx, &cfg, &x, &layer, &out).is_ok());
    assert!(k::int8_linear(&ctx, &cfg, &x, &rows1, &out).is_err());
    assert!(k::int8_linear(&ctx, &LinearConfig { m: 3, ..cfg }, &x, &layer, &out).is_err());
    assert!(k::int8_linear(&ctx, &LinearConfig { k: 3, ..cfg }, &x, &layer, &out).is_err());
    assert!(k::int8_linear(&ctx, &LinearConfig { x_zero: -1, ..cfg }, &x, &layer, &out).is_err());
    let f32_out = GpuTensor::zeros(&ctx, &[4, 3], DType::F32).unwrap();
    assert!(k::int8_linear(&ctx, &cfg, &x, &layer, &f32_out).is_err());
    let deq = k::Int8Weights::new_dequant(&ctx, &[1i8; 6], 3, 2, &[0; 3], &[0.5; 3]).unwrap();
    assert!(k::int8_linear_f32(&ctx, &cfg, &x, &deq, &f32_out).is_ok());
    assert!(k::int8_linear_f32(&ctx, &cfg, &x, &deq, &out).is_err());
    assert!(k::int8_linear_f32(&ctx, &LinearConfig { m: 3, ..cfg }, &x, &deq, &f32_out).is_err());
    assert!(k::Int8Weights::new_dequant(&ctx, &[1i8; 6], 3, 2, &[0; 3], &[0.5; 2]).is_err());
    assert!(k::Int8Weights::new_dequant(&ctx, &[1i8; 6], 3, 2, &[0; 3], &[0.5, f32::NAN, 1.0]).is_err());
    assert!(k::upload_u8(&ctx, &[3], &[1; 4]).is_err());
    assert_eq!(k::unpack_u8(&k::pack_u8(&[1, 2, 3, 4, 5]), 5), vec![1, 2, 3, 4, 5]);
}

#[test]
#[ignore = "manual throughput measurement: cargo test --test kernels int8::linear_throughput -- --ignored --nocapture"]
fn linear_throughput() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(9);
    let cfg = LinearConfig { m: 256, k: 1152, n: 256, x_zero: 3 };
    let x = codes(&mut rng, cfg.m * cfg.k, false);
    let w = weights(&mut rng, cfg.n * cfg.k, false);
    let rq = requant(&mut rng, cfg.n, 300000.0, Activation::None);
    let layer = k::Int8Weights::new(&ctx, &w, cfg.n, cfg.k, &vec![0; cfg.n], &rq).unwrap();
    let gx = k::upload_u8(&ctx, &[cfg.m, cfg.k], &x).unwrap();
    let gout = GpuTensor::zeros(&ctx, &[cfg.m, cfg.n], DType::I8x4).unwrap();
    let d = k::int8_linear(&ctx, &cfg, &gx, &layer, &gout).unwrap();
    ctx.submit(&[&d]).unwrap();
    ctx.wait().unwrap();
    let reps = 5;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        ctx.submit(&[&d]).unwrap();
    }
    ctx.wait().unwrap();
    let s = t.elapsed().as_secs_f64() / reps as f64;
    let ops = 2.0 * (cfg.m * cfg.k * cfg.n) as f64;
    eprintln!("{} dot4 {}: {:.2} ms per GEMM, {:.2} GOP/s", ctx.summary.name, ctx.use_dot4, s * 1e3, ops / s / 1e9);
}
