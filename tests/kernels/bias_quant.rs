//! `shaders/bias_quant.wgsl` against `reference::bias_quant`, bit for bit: channel counts that
//! do not divide the workgroup, per-tensor and per-channel weight scales, BN and plain bias
//! modes, flags off (pass-through), biases far beyond the i32 code range (clamped).

use rand::Rng;
use wqat::gpu::{DType, GpuTensor};
use wqat::kernels::bias_quant::{self as k, BnTerms};
use wqat::quant::QStateLayout;
use wqat::reference::bias_quant as r;
use wqat::testing::{self, assert_bit_exact};

const BN_EPS: f32 = 1e-5;

fn state(rng: &mut rand_chacha::ChaCha8Rng, channels: usize, on: bool) -> Vec<f32> {
    let scales: Vec<f32> = (0..channels).map(|_| 10f32.powf(rng.random_range(-4.0..-1.0))).collect();
    let mut s = QStateLayout::new(channels).build(&scales, &vec![0.0; channels]);
    s[QStateLayout::FQ_ENABLED] = on as u8 as f32;
    s
}

#[test]
fn bias_quant_matches_reference() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(5);
    for (case, &c) in [1usize, 7, 63, 65, 130, 1000].iter().enumerate() {
        for per_channel in [false, true] {
            for bn in [false, true] {
                for on in [true, false] {
                    let what = format!("case {case} c {c} per_channel {per_channel} bn {bn} on {on}");
                    let mut bias = testing::uniform(&mut rng, c, -2.0, 2.0);
                    if c > 3 {
                        bias[1] = 3.0e9; // beyond i32 codes at any scale here: clamped
                        bias[2] = 0.0;
                    }
                    let gamma = testing::uniform(&mut rng, c, 0.2, 2.0);
                    let mean = testing::uniform(&mut rng, c, -1.0, 1.0);
                    let var = testing::uniform(&mut rng, c, 1e-4, 3.0);
                    let xs = state(&mut rng, 1, true);
                    let ws = state(&mut rng, if per_channel { c } else { 1 }, on);
                    let up = |v: &[f32]| GpuTensor::from_f32(&ctx, &[v.len()], v).unwrap();
                    let (gb, gg, gm, gv, gx, gw) = (up(&bias), up(&gamma), up(&mean), up(&var), up(&xs), up(&ws));
                    let out = GpuTensor::zeros(&ctx, &[c], DType::F32).unwrap();
                    let terms = BnTerms { gamma: &gg, running_mean: &gm, running_var: &gv, eps: BN_EPS };
                    let d = k::quantize_bias(&ctx, &gb, bn.then_some(terms), &gx, &gw, &out).unwrap();
                    ctx.submit(&[&d]).unwrap();
                    let want = if bn {
                        r::quantize_bn_beta(&bias, &gamma, &mean, &var, BN_EPS, &xs, &ws)
                    } else {
                        r::quantize_bias(&bias, &xs, &ws)
                    };
                    let got = out.read_f32(&ctx).unwrap();
                    assert_bit_exact(&what, &got, &want);
                    if !on {
                        assert_bit_exact(&format!("{what} pass-through"), &got, &bias);
                    } else if !bn {
                        // Every result is an integer multiple of s_x * s_w within half a step.
                        for i in 0..c {
                            let step = xs[4] * ws[4 + if per_channel { i } else { 0 }];
                            let code = got[i] as f64 / step as f64;
                            // (Below 1e5 codes the f32 inverse product is exact enough to resolve the grid.)
                            if bias[i].abs() / step < 1e5 {
                                assert!(
                                    (code - code.round()).abs() < 1e-3 + 1e-7 * code.abs(),
                                    "{what}: {i} not on the grid"
                                );
                                assert!(
                                    (got[i] - bias[i]).abs() <= 0.5 * step + 1e-6 * bias[i].abs(),
                                    "{what}: {i} moved: {} -> {} step {step}",
                                    bias[i],
                                    got[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let ctx = testing::ctx();
    let z = |n: usize| GpuTensor::zeros(&ctx, &[n], DType::F32).unwrap();
    let (b, out, xs, ws) = (z(5), z(5), z(QStateLayout::new(1).len()), z(QStateLayout::new(5).len()));
    assert!(k::quantize_bias(&ctx, &b, None, &xs, &ws, &out).is_ok());
    assert!(k::quantize_bias(&ctx, &b, None, &xs, &ws, &z(4)).is_err());
    assert!(k::quantize_bias(&ctx, &b, None, &ws, &ws, &out).is_err(), "per-channel input state");
    assert!(k::quantize_bias(&ctx, &b, None, &xs, &z(QStateLayout::new(3).len()), &out).is_err());
    assert!(k::quantize_bias(&ctx, &b, None, &xs, &z(7), &out).is_err(), "not a state");
    let g = z(4);
    let t = BnTerms { gamma: &g, running_mean: &b, running_var: &b, eps: 1e-5 };
    assert!(k::quantize_bias(&ctx, &b, Some(t), &xs, &ws, &out).is_err());
    let t = BnTerms { gamma: &b, running_mean: &b, running_var: &b, eps: 0.0 };
    assert!(k::quantize_bias(&ctx, &b, Some(t), &xs, &ws, &out).is_err());
}
