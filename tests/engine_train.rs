//! End-to-end engine tests on the embedded digits data (small: a few hundred steps at most).

use std::path::PathBuf;
use wqat::engine::train::{LossPoint, Quiet, TrainConfig, Trainer};
use wqat::engine::{CompileOptions, Compiled, ModelState, ObserverKind, QConfig, StepOptions};
use wqat::kernels::optim;
use wqat::model::{zoo, Act, Graph, Node, Op};
use wqat::quant::QStateLayout;
use wqat::testing;

/// Relative tolerance of a golden loss on the adapter that recorded it.
const GOLDEN_RTOL: f32 = 1e-4;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wqat-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn small_config(name: &str) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        qat_epochs: 1,
        batch: 32,
        limit_train: Some(320),
        limit_test: Some(128),
        log_every: 2,
        calib_images: 64,
        lr: 0.05,
        qat_lr: 0.01,
        out: out_dir(name),
        ..TrainConfig::default()
    }
}

#[test]
fn fixed_seed_loss_goes_down_and_matches_golden_table() {
    let ctx = testing::ctx();
    let cfg = small_config("golden");
    let mut t = Trainer::new(ctx.clone(), cfg.clone(), None).unwrap();
    let report = t.run(&mut Quiet).unwrap();
    let losses: Vec<f32> = report.losses.iter().map(|p: &LossPoint| p.loss).collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    let first = losses[..3].iter().sum::<f32>() / 3.0;
    let fp32_points = report.losses.iter().filter(|p| p.phase == wqat::engine::Phase::Fp32).count();
    let last_fp32 = losses[fp32_points - 3..fp32_points].iter().sum::<f32>() / 3.0;
    assert!(last_fp32 < 0.5 * first, "loss went from {first} to {last_fp32}");
    assert!(report.fp32_acc.unwrap() > 0.8, "fp32 accuracy {:?}", report.fp32_acc);
    assert!(report.qat_acc.unwrap() > 0.8, "QAT accuracy {:?}", report.qat_acc);

    // Golden table per adapter: record with WQAT_BLESS=1, compared whenever this adapter has one.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/engine_digits_losses.json");
    let mut table: serde_json::Map<String, serde_json::Value> =
        std::fs::read_to_string(&path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
    let key = format!("{} / {}", ctx.summary.name, ctx.summary.driver_info);
    if std::env::var("WQAT_BLESS").is_ok() {
        table.insert(key, serde_json::json!(losses));
        std::fs::write(&path, serde_json::to_string_pretty(&table).unwrap()).unwrap();
        return;
    }
    match table.get(&key) {
        Some(v) => {
            let want: Vec<f32> = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(want.len(), losses.len(), "number of loss readings");
            for (k, (g, w)) in losses.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= GOLDEN_RTOL * w.abs().max(1e-3), "reading {k}: loss {g}, golden {w}");
            }
        }
        None => eprintln!("no golden losses for adapter {key:?}; record them with WQAT_BLESS=1"),
    }
    let _ = std::fs::remove_dir_all(&cfg.out);
}

fn step_opts() -> StepOptions {
    StepOptions {
        optimizer: Default::default(),
        momentum: 0.9,
        weight_decay: 0.0,
        clip_grad_norm: None,
        skip_nonfinite: true,
        lsq_lr_mult: 1.0,
    }
}

#[test]
fn frozen_observers_keep_scales_while_weights_train() {
    let ctx = testing::ctx();
    let g = zoo::build("mnist-cnn", [1, 8, 8], 10).unwrap();
    let qconfig = QConfig { observer: ObserverKind::MovingAverage { c: 0.1 }, ..QConfig::new(8, 8).unwrap() };
    let state = ModelState::new(&ctx, &g, qconfig, 5).unwrap();
    let opts = CompileOptions { batch: 16, quant: true, train: true };
    let c = Compiled::new(&ctx, &state, &opts, Some(&step_opts())).unwrap();
    let mut rng = testing::rng(1);
    let labels: Vec<u32> = (0..16).map(|i| i % 10).collect();
    c.labels.write(&ctx, &labels).unwrap();
    optim::write_hyper(&ctx, &c.hyper, 0.05, 1).unwrap();
    state.set_quant_flags(&ctx, true, true, Some(true)).unwrap();
    let read_states = || state.quantizers.iter().map(|q| q.state.read_f32(&ctx).unwrap()).collect::<Vec<Vec<f32>>>();
    let run = |plan: &wqat::gpu::Plan, rng: &mut rand_chacha::ChaCha8Rng| {
        for _ in 0..3 {
            c.images.write(&ctx, &testing::uniform(rng, 16 * 64, -1.0, 2.0)).unwrap();
            ctx.submit_plan(plan).unwrap();
        }
    };
    run(&c.train_plan(true, false), &mut rng);
    let observed = read_states();
    run(&c.train_plan(true, false), &mut rng);
    let observed2 = read_states();
    assert!(observed.iter().zip(&observed2).any(|(a, b)| a != b), "live observers should move the ranges");
    // Freeze: observer flags off and observers out of the plan.
    state.set_quant_flags(&ctx, true, false, None).unwrap();
    let w_before = state.param("fc1.weight").unwrap().value.read_f32(&ctx).unwrap();
    run(&c.train_plan(false, false), &mut rng);
    let frozen = read_states();
    for (q, (a, b)) in state.quantizers.iter().zip(observed2.iter().zip(&frozen)) {
        let l = QStateLayout::new(q.spec.channels);
        assert_eq!(a[l.scale()..], b[l.scale()..], "{} changed while frozen", q.spec.name);
    }
    let w_after = state.param("fc1.weight").unwrap().value.read_f32(&ctx).unwrap();
    assert_ne!(w_before, w_after, "weights should keep training");
    // Even with the observer dispatches in the plan, obs_on = 0 keeps the ranges.
    run(&c.train_plan(true, false), &mut rng);
    let frozen2 = read_states();
    for (q, (a, b)) in state.quantizers.iter().zip(frozen.iter().zip(&frozen2)) {
        let l = QStateLayout::new(q.spec.channels);
        assert_eq!(a[l.scale()..], b[l.scale()..], "{} changed with obs_on = 0", q.spec.name);
    }
}

/// BN folding: the fake-quant evaluation of a conv-BN-ReLU block equals the folded conv
/// `relu(conv(FQ(x), FQ(w * sf)) + Q(beta - mean * sf))` computed on the CPU, with the
/// bias `Q(b)` on the integer model's `s_x * s_w` grid.
#[test]
fn conv_bn_fake_quant_eval_equals_folded_conv() {
    use wqat::reference::conv::conv2d_forward_f64;
    use wqat::reference::fake_quant::fake_quant_forward as fq;
    let ctx = testing::ctx();
    let conv = Op::Conv {
        out_channels: 5,
        kernel: 3,
        stride: 1,
        padding: 1,
        dilation: 1,
        groups: 1,
        bias: false,
        bn: true,
        act: Act::Relu,
    };
    let nodes = vec![
        Node::new("conv", conv).bn("bn"),
        Node::new("flatten", Op::Flatten),
        Node::new("fc", Op::Linear { out_features: 3, bias: true, act: Act::None }),
    ];
    let g = Graph { name: "convbn".into(), input: [3, 7, 7], num_classes: 3, nodes };
    let qconfig = QConfig { observer: ObserverKind::MinMax, ..QConfig::new(8, 8).unwrap() };
    let state = ModelState::new(&ctx, &g, qconfig, 9).unwrap();
    let mut rng = testing::rng(4);
    let (gamma, beta) = (testing::uniform(&mut rng, 5, 0.5, 1.5), testing::uniform(&mut rng, 5, -0.3, 0.3));
    let (mean, var) = (testing::uniform(&mut rng, 5, -0.2, 0.2), testing::uniform(&mut rng, 5, 0.5, 2.0));
    for (n, v) in [("bn.weight", &gamma), ("bn.bias", &beta), ("bn.running_mean", &mean), ("bn.running_var", &var)] {
        state.param(n).unwrap().value.write(&ctx, v).unwrap();
    }
    let batch = 3;
    let opts = CompileOptions { batch, quant: true, train: false };
    let c = Compiled::new(&ctx, &state, &opts, None).unwrap();
    let x = testing::uniform(&mut rng, batch * 3 * 49, -1.0, 1.0);
    c.images.write(&ctx, &x).unwrap();
    // Calibrate (observers on, fake-quant off), then evaluate with fake-quant on.
    state.set_quant_flags(&ctx, false, true, Some(true)).unwrap();
    ctx.submit_plan(&c.calibrate_plan()).unwrap();
    state.set_quant_flags(&ctx, true, false, None).unwrap();
    ctx.submit_plan(&c.eval_plan()).unwrap();
    let got = c.outputs[0].read_f32(&ctx).unwrap();

    let qs = |n: &str| state.quantizer(n).unwrap().state.read_f32(&ctx).unwrap();
    let (qin, qw) = (qs("input.output_quant"), qs("conv.weight_quant"));
    let w = state.param("conv.weight").unwrap().value.read_f32(&ctx).unwrap();
    let sf: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + 1e-5).sqrt()).collect();
    let w_fold: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * sf[i / 27]).collect();
    let xq = fq(&x, &qin, 1, x.len(), 0.0, 255.0);
    let wq = fq(&w_fold, &qw, 5, 27, -127.0, 127.0);
    let cfg = wqat::kernels::conv::Conv2dGeom::new(batch, 3, 7, 7, 5, 3).with_padding(1);
    let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (y, _) = conv2d_forward_f64(&cfg, &to64(&xq), &to64(&wq), None);
    // The folded bias, quantized on the s_x * s_w grid as the integer model stores it.
    let b_eff: Vec<f32> = (0..5).map(|c| beta[c] - mean[c] * sf[c]).collect();
    let b_q = wqat::reference::bias_quant::quantize_bias(&b_eff, &qin, &qw);
    let want: Vec<f32> = y
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / 49) % 5;
            (v as f32 + b_q[ch]).max(0.0)
        })
        .collect();
    testing::assert_close("conv-bn block", &got, &want, 1e-4, 1e-5);
}

/// With 8-bit quantizers, calibrated then frozen observers and running BN statistics, the
/// compiled GPU evaluation's logits equal the CPU fake-quant reference of the same graph.
fn logits_match_reference(model: &str, input: [usize; 3], batch: usize, max_off_fraction: f32) {
    logits_match_reference_with(model, input, batch, max_off_fraction, QConfig::new(8, 8).unwrap());
}

fn logits_match_reference_with(model: &str, input: [usize; 3], batch: usize, max_off_fraction: f32, q: QConfig) {
    let ctx = testing::ctx();
    let mut g = zoo::build(model, input, 10).unwrap();
    q.check_layers(&g).unwrap();
    // `fp32` and `matmul` settings mark graph nodes, as `wqat train` does.
    q.apply_fp32(&mut g);
    let state = ModelState::new(&ctx, &g, q, 21).unwrap();
    let mut rng = testing::rng(8);
    // Non-trivial BN statistics.
    for p in &state.params {
        let n = p.value.len();
        let v = match p.spec.kind {
            wqat::model::params::ParamKind::BnGamma | wqat::model::params::ParamKind::BnRunningVar => {
                testing::uniform(&mut rng, n, 0.5, 1.5)
            }
            wqat::model::params::ParamKind::BnBeta | wqat::model::params::ParamKind::BnRunningMean => {
                testing::uniform(&mut rng, n, -0.2, 0.2)
            }
            _ => continue,
        };
        p.value.write(&ctx, &v).unwrap();
    }
    let opts = CompileOptions { batch, quant: true, train: false };
    let c = Compiled::new(&ctx, &state, &opts, None).unwrap();
    let x = if model == "text-tiny" {
        // Byte ids after CLS (256), padded with PAD (257) from a random length on.
        let len = input[2];
        let mut x = Vec::new();
        for _ in 0..batch {
            let used = testing::size(&mut rng, 1, len - 1);
            x.push(256.0);
            x.extend((0..len - 1).map(|k| if k < used { testing::size(&mut rng, 0, 255) as f32 } else { 257.0 }));
        }
        x
    } else {
        testing::uniform(&mut rng, batch * input.iter().product::<usize>(), -1.5, 1.5)
    };
    c.images.write(&ctx, &x).unwrap();
    state.set_quant_flags(&ctx, false, true, Some(true)).unwrap();
    ctx.submit_plan(&c.calibrate_plan()).unwrap();
    state.set_quant_flags(&ctx, true, false, None).unwrap();
    ctx.submit_plan(&c.eval_plan()).unwrap();
    let got = c.logits.read_f32(&ctx).unwrap();
    let ckpt = state.to_checkpoint(&ctx, &[]).unwrap();
    let all = wqat::reference::graph::fake_quant_forward_all(&g, &ckpt, &x, batch).unwrap();
    // Every quantized output holds at most 2^bits distinct values (its layer's bit width).
    let nodes = g.resolve().unwrap();
    for (i, r) in nodes.iter().enumerate() {
        if !wqat::model::params::has_output_quant(&nodes, i) {
            continue;
        }
        let bits = state.qconfig.activation_spec(&r.node.name).bits;
        let distinct = all.nodes[i].iter().map(|v| v.to_bits()).collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct <= 1 << bits, "{}: {distinct} values at {bits} bits", r.node.name);
    }
    let want = all.nodes.last().unwrap().clone();
    // Both sides fake-quantize every activation: a value within float rounding of a code
    // boundary may land one code apart, so compare in units of the logits' scale.
    let last = &g.nodes.last().unwrap().name;
    let lsb = ckpt.tensors[&format!("{last}.output_quant")].as_f32("q").unwrap()[4];
    let mut off = 0;
    for (g, w) in got.iter().zip(&want) {
        let d = ((g - w) / lsb).abs();
        assert!(d <= 2.01, "logit differs by {d} LSB: {g} vs {w}");
        off += (d > 0.5) as usize;
    }
    eprintln!("{model}: {off} of {} logits one code apart", got.len());
    assert!(off as f32 <= max_off_fraction * got.len() as f32, "{off} of {} logits differ by a code", got.len());
}

/// Per-layer QConfig: mixed bit widths, per-tensor and per-channel weights and different
/// observers in one model; the GPU and the CPU reference resolve every quantizer alike.
#[test]
fn mixed_precision_logits_equal_cpu_reference() {
    let mut q = QConfig::new(4, 4).unwrap();
    for l in ["input=a8", "conv1=w8,a6", "conv2=w3,per-tensor,observer=ema:0.5", "fc1=w5,a3", "fc2=w6,a8"] {
        q = q.with_layer(wqat::engine::LayerQConfig::parse(l).unwrap()).unwrap();
    }
    logits_match_reference_with("mnist-cnn", [1, 12, 12], 6, 0.1, q);
}

#[test]
fn qat_logits_equal_cpu_reference_mnist_cnn() {
    logits_match_reference("mnist-cnn", [1, 12, 12], 6, 0.02);
}

#[test]
fn qat_logits_equal_cpu_reference_resnet20() {
    // 20 quantized layers: a float-rounding flip at a code boundary early on can move a
    // logit by a code; the bound says such flips stay rare and small.
    logits_match_reference("resnet20", [3, 8, 8], 8, 0.2);
}

#[test]
fn qat_logits_equal_cpu_reference_vit_tiny() {
    logits_match_reference("vit-tiny", [1, 28, 28], 5, 0.2);
}

#[test]
fn qat_logits_equal_cpu_reference_text_tiny() {
    logits_match_reference("text-tiny", [1, 1, 24], 6, 0.2);
}

/// `--val-split`: a fixed share of the training images is held out, the run trains on the
/// rest and reports every stage on both splits.
#[test]
fn validation_split_is_held_out_and_reported() {
    let ctx = testing::ctx();
    let cfg =
        TrainConfig { epochs: 1, qat_epochs: 1, limit_train: None, val_split: Some(0.25), ..small_config("val-split") };
    let mut t = Trainer::new(ctx, cfg.clone(), None).unwrap();
    let report = t.run(&mut Quiet).unwrap();
    let val = report.val.as_ref().expect("validation report");
    // The embedded digits: 1438 training images, a quarter held out.
    assert_eq!(val.images, 360);
    assert_eq!(report.train_images, 1438 - 360);
    for (stage, acc) in [("fp32", val.fp32_acc), ("PTQ", val.ptq_acc), ("QAT", val.qat_acc), ("int8", val.int8_acc)] {
        let a = acc.unwrap_or_else(|| panic!("{stage}: no validation accuracy"));
        assert!(a > 0.5 && a <= 1.0, "{stage}: validation accuracy {a}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["val"]["images"], 360);
    // The choice is fixed: the same split whatever the seed.
    let ds = wqat::data::Dataset::digits().unwrap();
    let a = ds.train.split_off_validation(0.25, wqat::engine::train::VAL_SPLIT_SEED).unwrap();
    let b = ds.train.split_off_validation(0.25, wqat::engine::train::VAL_SPLIT_SEED).unwrap();
    assert_eq!(a.1, b.1);
    assert_eq!(a.0.len() + a.1.len(), ds.train.len());
    assert!(ds.train.split_off_validation(0.0, 1).is_err() && ds.train.split_off_validation(1.0, 1).is_err());
    let _ = std::fs::remove_dir_all(&cfg.out);
}

/// Quantized attention matmul inputs (`matmul`): q, k, v through the QKV output quantizer,
/// the softmax output through its own; GPU = CPU reference, and the quantizers exist.
#[test]
fn attention_matmul_quantization_equals_cpu_reference() {
    let q = QConfig::new(8, 8)
        .unwrap()
        .with_layer(wqat::engine::LayerQConfig::parse("blocks.*.attn.core=matmul").unwrap())
        .unwrap();
    let mut g = zoo::build("vit-tiny", [1, 28, 28], 10).unwrap();
    q.apply_fp32(&mut g);
    let names: Vec<String> = q.quantizer_specs(&g).unwrap().into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"blocks.0.attn.core.probs_quant".to_string()), "{names:?}");
    assert!(names.contains(&"blocks.0.attn.qkv.output_quant".to_string()), "{names:?}");
    logits_match_reference_with("vit-tiny", [1, 28, 28], 5, 0.2, q.clone());
    logits_match_reference_with("text-tiny", [1, 1, 24], 6, 0.2, q.clone());
    // And a 4-bit quantized embedding table (`int`).
    let q = q.with_layer(wqat::engine::LayerQConfig::parse("embed_tokens=int,w4").unwrap()).unwrap();
    logits_match_reference_with("text-tiny", [1, 1, 24], 6, 0.2, q);
}

/// `--bit-schedule 8,4` (conv1 pinned at 8 bits): the stage boundary falls at the documented
/// step, the final model is 4-bit (codes within ±7, scales max|w|/7), conv1 is not stepped,
/// and the int8 model agrees with fake-quant.
#[test]
fn bit_schedule_steps_down_to_the_final_bits() {
    use wqat::engine::bit_schedule::{BitSchedule, StageRanges};
    let ctx = testing::ctx();
    let cfg = TrainConfig {
        weight_bits: 4,
        bit_schedule: Some(BitSchedule::parse("8,4").unwrap()),
        layer_qconfig: vec![wqat::engine::LayerQConfig::parse("conv1=w8").unwrap()],
        ..small_config("bit-schedule")
    };
    let mut t = Trainer::new(ctx.clone(), cfg.clone(), None).unwrap();
    let r = t.run(&mut Quiet).unwrap();
    // 320 images / 32 = 10 steps per epoch, 2 fp32 epochs, 10 QAT steps: stage 1 at QAT step
    // floor(1 * 10 / 2) = 5 (global step 25).
    let got: Vec<(usize, u32, u32, u64, u64, StageRanges)> =
        r.bit_stages.iter().map(|s| (s.stage, s.weight_bits, s.act_bits, s.qat_step, s.step, s.ranges)).collect();
    assert_eq!(got, [(0, 8, 8, 0, 20, StageRanges::Recalibrated), (1, 4, 8, 5, 25, StageRanges::Recalibrated)]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["bit_stages"][1]["qat_step"], 5, "{json}");
    assert_eq!(t.state.qconfig.weight.bits, 4);
    assert!(r.agreement.unwrap() >= 0.99, "int8 agreement {:?}", r.agreement);
    assert!(r.qat_acc.unwrap() > 0.8, "QAT accuracy {:?}", r.qat_acc);

    let m = wqat::infer::Int8Model::load(&cfg.out.join(wqat::engine::train::INT8_FILE)).unwrap();
    let qat = wqat::tensorfile::TensorFile::load(&cfg.out.join("qat.safetensors")).unwrap();
    for (name, wmax) in [("conv1", 127i32), ("conv2", 7), ("fc1", 7), ("fc2", 7)] {
        let i = m.graph.nodes.iter().position(|x| x.name == name).unwrap();
        let wqat::infer::LayerKind::Int(il) = &m.layers[i].kind else { panic!("{name} is not an integer layer") };
        // The weight quantizer's stored range (of the BN-folded weights where BN follows).
        let qname = wqat::model::params::weight_quant_name(name);
        let st = qat.tensors[&qname].as_f32(&qname).unwrap();
        let l = QStateLayout::new(il.weight_scale.len());
        let per = il.weight.len() / il.weight_scale.len();
        let all = il.weight.codes();
        for (c, codes) in all.chunks(per).enumerate() {
            let distinct = codes.iter().collect::<std::collections::BTreeSet<_>>().len();
            assert!(codes.iter().all(|&q| (q as i32).abs() <= wmax), "{name}[{c}]: codes outside ±{wmax}");
            assert!(distinct <= (2 * wmax + 1) as usize, "{name}[{c}]: {distinct} codes");
            // The scale is the final bits': max|w| / qmax of the observed range.
            let amax = st[l.min() + c].abs().max(st[l.max() + c].abs());
            let ratio = il.weight_scale[c] * wmax as f32 / amax;
            assert!((ratio - 1.0).abs() < 1e-5, "{name}[{c}]: scale {} for max|w| {amax}", il.weight_scale[c]);
        }
        if name == "conv1" {
            assert!(il.weight.iter().any(|q| (q as i32).abs() > 7), "conv1 was stepped down");
        }
    }
    let _ = std::fs::remove_dir_all(&cfg.out);
}

/// `--auto-bits`: the run scans each layer of its fp32 model on the validation split, picks
/// per-layer weight bits within the budget, trains and converts with them, and records the
/// choice in the run config, `metrics.json`, the checkpoints' QConfig and `auto_bits.json`.
#[test]
fn auto_bits_scans_chooses_and_trains_with_the_choice() {
    use wqat::engine::run::AutoBits;
    use wqat::engine::sensitivity::{Budget, Rest, ScanOptions};
    let ctx = testing::ctx();
    let auto = AutoBits { budget: Budget::AvgBits(5.0), candidates: vec![8, 4, 2], scan_images: 200, choice: None };
    let cfg = TrainConfig {
        epochs: 1,
        qat_epochs: 1,
        val_split: Some(0.2),
        auto_bits: Some(auto),
        ..small_config("auto-bits")
    };
    let mut t = Trainer::new(ctx.clone(), cfg.clone(), None).unwrap();
    let report = t.run(&mut Quiet).unwrap();
    let choice = report.config.auto_bits.as_ref().and_then(|a| a.choice.clone()).expect("a choice");
    assert!(choice.average_bits <= 5.0 + 1e-9, "average {}", choice.average_bits);
    assert_eq!(choice.bits.len(), 4, "mnist-cnn has four quantized layers: {:?}", choice.bits);
    assert!(choice.bits.iter().any(|(_, b)| *b < 8), "{:?}", choice.bits);
    // The trained model carries the chosen bits.
    let path = cfg.out.join("qat.safetensors");
    let f = wqat::tensorfile::TensorFile::load(&path).unwrap();
    let q = QConfig::from_metadata(&f, &path).unwrap();
    for (layer, bits) in &choice.bits {
        assert_eq!(q.weight_spec(layer).bits, *bits, "{layer}");
    }
    assert!(report.agreement.unwrap() >= 0.99, "agreement {:?}", report.agreement);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg.out.join("auto_bits.json")).unwrap()).unwrap();
    assert_eq!(json["scan"]["split"], "validation");
    assert_eq!(json["scan"]["points"].as_array().unwrap().len(), 4 * 3);

    // The scan itself: every layer is hurt more at 2 bits than at 8 (it would not be if the
    // per-layer override were ignored), and --auto-bits without --val-split is refused.
    let fp32 = cfg.out.join("fp32.safetensors");
    let scan_cfg = TrainConfig { epochs: 0, qat_epochs: 0, init: Some(fp32), auto_bits: None, ..cfg.clone() };
    let mut s = Trainer::new(ctx.clone(), scan_cfg, None).unwrap();
    let r = s.sensitivity(&ScanOptions { bits: vec![8, 2], rest: Rest::Fp32, images: 200 }, &mut |_| {}).unwrap();
    assert_eq!(r.images, 200);
    for l in &r.layers {
        let at = |b: u32| r.points.iter().find(|p| p.layer == l.name && p.bits == b).unwrap();
        assert!(at(2).logit_noise > at(8).logit_noise, "{}: w2 {:?} vs w8 {:?}", l.name, at(2), at(8));
    }
    let bad = TrainConfig { val_split: None, ..cfg.clone() };
    let e = Trainer::new(ctx, bad, None).err().expect("needs a validation split").to_string();
    assert!(e.contains("--val-split"), "{e}");
    let _ = std::fs::remove_dir_all(&cfg.out);
}
