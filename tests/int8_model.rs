//! Converted integer models against each other and against the fake-quant simulation:
//! random checkpoints of `mnist-cnn`, `mlp` and `resnet20` with BN statistics and
//! quantizers calibrated on the CPU fp32 reference (plus extreme values); GPU (dot4 and
//! unpack fallback), CPU SIMD and CPU scalar give identical codes at every node; integer
//! predictions agree with `fake_quant_forward` on >= 99% of random inputs and logits
//! within a few LSB; the file format round-trips and rejects garbage without panicking.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use wqat::convert::synthetic::{
    random_images, synthetic_checkpoint, synthetic_checkpoint_bits, synthetic_checkpoint_qconfig,
};
use wqat::convert::{self, synthetic};
use wqat::gpu::{GpuContext, GpuOptions};
use wqat::infer::{self, Int8CpuModel, Int8GpuModel, Int8Model, NodeValue};
use wqat::infer::{CpuBackend, SimdKernel};
use wqat::model::graph::{Graph, Op};
use wqat::model::zoo;
use wqat::quant::QStateLayout;
use wqat::reference::graph::fake_quant_forward;
use wqat::tensorfile::{HostTensor, TensorFile};
use wqat::testing::{self, assert_bit_exact};

/// Fraction of images whose integer prediction must equal the simulation's.
const MIN_AGREEMENT: f64 = 0.99;
/// Largest |integer logit - simulated logit| allowed, in output quantization steps, for
/// shallow models (mnist-cnn, mlp).
const MAX_LOGIT_LSB: f64 = 4.0;
/// The same for resnet20: 20 layers pass one-LSB rounding differences on and each layer
/// amplifies them (the local error of every layer stays within [`MAX_LOCAL_LSB`]).
const MAX_LOGIT_LSB_DEEP: f64 = 8.0;
/// The same for a model whose coarse (4-bit) activations feed 8-bit layers: one coarse step
/// is 16 fine ones.
const MAX_LOGIT_LSB_MIXED: f64 = 16.0;
/// Largest local error of any node (fed the simulation's own input codes), in LSB: the
/// integer and simulated roundings may differ by one code.
const MAX_LOCAL_LSB: f64 = 1.0;
/// Largest fraction of a node's codes that may differ locally: simulation and integer model
/// quantize the bias alike and round each output once, so only values within f32 error of
/// a tie differ (a few per million measured; TFLite's double rounding gave up to 5 %).
const MAX_LOCAL_MISMATCH_FRACTION: f64 = 1e-4;

fn images(rng: &mut ChaCha8Rng, n: usize, wide: bool) -> Vec<f32> {
    random_images(rng, n, wide)
}

/// A synthetic checkpoint with extreme values.
fn random_checkpoint(graph: &Graph, seed: u64) -> TensorFile {
    synthetic_checkpoint(graph, seed, true).unwrap()
}

/// A synthetic checkpoint, optionally without extreme values (a huge BN gain on one channel
/// of every layer makes a deep random network chaotic: one-LSB differences grow layer after
/// layer, which says nothing about the conversion).
fn checkpoint(graph: &Graph, seed: u64, extreme: bool) -> TensorFile {
    synthetic_checkpoint(graph, seed, extreme).unwrap()
}

fn codes(v: &NodeValue) -> &[u8] {
    match v {
        NodeValue::Codes(c) => c,
        NodeValue::Float(_) => panic!("expected codes"),
    }
}

fn nodot4_ctx() -> Arc<GpuContext> {
    GpuContext::new(&GpuOptions { disable_dot4: true, ..GpuOptions::from_env() }).unwrap()
}

/// Every node's codes equal on CPU scalar, every SIMD kernel, GPU (dot4 and fallback).
fn check_backends_agree(model: &Int8Model, x: &[f32], batch: usize, gpu: bool) {
    let scalar = Int8CpuModel::new(model).forward_traced(x, batch, CpuBackend::Scalar).unwrap();
    let want = scalar.activations.as_ref().unwrap();
    let mut runs: Vec<(String, wqat::infer::Int8Output)> = Vec::new();
    for k in SimdKernel::available() {
        runs.push((
            format!("{k:?}"),
            Int8CpuModel::new(model).forward_traced(x, batch, CpuBackend::Kernel(k)).unwrap(),
        ));
    }
    if gpu {
        for ctx in [testing::ctx(), nodot4_ctx()] {
            let g = Int8GpuModel::new(&ctx, model, batch + 3).unwrap();
            runs.push((format!("gpu dot4={}", ctx.use_dot4), g.forward_traced(x, batch).unwrap()));
            let plain = g.forward(x, batch).unwrap();
            assert_eq!(plain.logits, scalar.logits, "gpu forward logits");
        }
    }
    for (name, out) in &runs {
        let got = out.activations.as_ref().unwrap();
        for (i, r) in model.nodes().iter().enumerate() {
            assert_bit_exact(
                &format!("{} node {} ({name})", model.graph.name, r.node.name),
                codes(&got[i]),
                codes(&want[i]),
            );
        }
        assert_eq!(out.predictions, scalar.predictions, "{name} predictions");
        assert_eq!(out.logits, scalar.logits, "{name} logits");
    }
}

/// Integer predictions vs the simulation, and logits within a few LSB.
fn check_against_simulation(
    graph: &Graph,
    ck: &TensorFile,
    model: &Int8Model,
    x: &[f32],
    batch: usize,
    max_logit_lsb: f64,
    min_margin_lsb: f64,
) {
    let sim = fake_quant_forward(graph, ck, x, batch).unwrap();
    let out = Int8CpuModel::new(model).forward(x, batch, CpuBackend::Simd).unwrap();
    let classes = graph.num_classes;
    let sim_pred = wqat::infer::cpu::argmax_rows(&sim, classes);
    let q = model.layers.last().unwrap().out.quant().unwrap();
    // Images whose simulated top-1 logit leads the runner-up by more than `min_margin_lsb`
    // steps (all images when 0): at low bit widths many logits tie on the coarse grid, and
    // a one-step difference decides the argmax.
    let margin = |row: &[f32]| {
        let mut v = row.to_vec();
        v.sort_by(|a, b| b.total_cmp(a));
        ((v[0] - v[1]) / q.scale) as f64
    };
    let counted: Vec<usize> =
        (0..batch).filter(|&i| margin(&sim[i * classes..(i + 1) * classes]) >= min_margin_lsb).collect();
    let agree = counted.iter().filter(|&&i| sim_pred[i] == out.predictions[i]).count();
    let frac = agree as f64 / counted.len().max(1) as f64;
    eprintln!("{}: {} of {batch} images have a margin >= {min_margin_lsb} LSB", graph.name, counted.len());
    let batch_counted = counted.len();
    let max_lsb = sim.iter().zip(&out.logits).map(|(a, b)| ((a - b) / q.scale).abs() as f64).fold(0.0, f64::max);
    let report = infer::layer_report(graph, ck, model, x, batch).unwrap();
    for d in &report {
        eprintln!(
            "{:>24}: max {:.3} LSB, mean {:.5} LSB, {} / {} codes differ; local: max {:.3} LSB, {} differ",
            d.node, d.max_abs_lsb, d.mean_abs_lsb, d.mismatched, d.total, d.local_max_abs_lsb, d.local_mismatched
        );
    }
    for d in &report {
        assert!(d.local_max_abs_lsb <= MAX_LOCAL_LSB + 1e-3, "{}: local error {} LSB", d.node, d.local_max_abs_lsb);
        let frac = d.local_mismatched as f64 / d.total.max(1) as f64;
        // Average pools round the exact mean of codes in both models: no tie is left to
        // float error, so every code agrees (exact ties are common: 1 in 64 windows of 8x8).
        let pool =
            graph.nodes.iter().any(|n| n.name == d.node && matches!(n.op, Op::AvgPool { .. } | Op::GlobalAvgPool));
        let bound = if pool { 0.0 } else { MAX_LOCAL_MISMATCH_FRACTION };
        assert!(frac <= bound, "{}: {} of {} codes differ locally", d.node, d.local_mismatched, d.total);
    }
    eprintln!("{}: agreement {agree}/{batch_counted}, max logit diff {max_lsb} LSB", graph.name);
    // (With coarse logits few images may have the margin; agreement then says nothing.)
    if batch_counted >= 20 {
        assert!(frac >= MIN_AGREEMENT, "{}: predictions agree on {agree}/{batch_counted}", graph.name);
    }
    assert!(max_lsb <= max_logit_lsb, "{}: logits differ by {max_lsb} LSB", graph.name);
}

#[test]
fn mnist_cnn_bit_exact_and_agrees_with_simulation() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let ck = random_checkpoint(&g, 11);
    let model = convert::convert(&g, &ck).unwrap();
    assert!(model.layers.iter().all(|l| !matches!(l.kind, infer::LayerKind::Float(_))));
    let mut rng = testing::rng(12);
    let b = 7;
    check_backends_agree(&model, &images(&mut rng, b * 784, true), b, true);
    let n = 300;
    check_against_simulation(&g, &ck, &model, &images(&mut rng, n * 784, true), n, MAX_LOGIT_LSB, 0.0);
}

#[test]
fn low_bit_widths_bit_exact_and_agree_with_simulation() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    for (wb, ab) in [(4, 6), (2, 3), (8, 4)] {
        let ck = synthetic_checkpoint_bits(&g, 15 + wb as u64, true, wb, ab).unwrap();
        let model = convert::convert(&g, &ck).unwrap();
        for l in &model.layers {
            if let infer::LayerKind::Int(il) = &l.kind {
                let qmax = (1i32 << (wb - 1)) - 1;
                assert!(il.weight.iter().all(|w| (w as i32).abs() <= qmax));
                assert!(il.requant.act_max < (1 << ab));
            }
        }
        let mut rng = testing::rng(16);
        let b = 5;
        check_backends_agree(&model, &images(&mut rng, b * 784, true), b, true);
        let n = 200;
        check_against_simulation(&g, &ck, &model, &images(&mut rng, n * 784, true), n, MAX_LOGIT_LSB, 3.0);
    }
}

/// Per-layer QConfig: each layer converts with its own bit widths and weight granularity,
/// the int8 file keeps them, and the backends stay bit-exact and agree with the simulation.
#[test]
fn per_layer_qconfig_converts_bit_exact() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let mut q = wqat::engine::QConfig::new(4, 4).unwrap();
    for l in ["input=a8", "conv1=w8,a6", "conv2=w3,per-tensor", "fc1=a8", "fc2=w6,a8"] {
        q = q.with_layer(wqat::engine::LayerQConfig::parse(l).unwrap()).unwrap();
    }
    let ck = synthetic_checkpoint_qconfig(&g, 41, false, &q).unwrap();
    let model = convert::convert(&g, &ck).unwrap();
    let want = [("conv1", 127, 6), ("conv2", 3, 4), ("fc1", 7, 8), ("fc2", 31, 8)];
    for (name, wmax, abits) in want {
        let i = g.nodes.iter().position(|n| n.name == name).unwrap();
        let l = &model.layers[i];
        let infer::LayerKind::Int(il) = &l.kind else { panic!("{name} not integer") };
        assert!(il.weight.iter().all(|w| (w as i32).abs() <= wmax), "{name} weights beyond {wmax}");
        assert_eq!(l.out.quant().unwrap().bits, abits, "{name}");
        assert!(il.requant.act_max < (1 << abits), "{name} clamp");
        let scales: std::collections::BTreeSet<u32> = il.weight_scale.iter().map(|s| s.to_bits()).collect();
        assert_eq!(scales.len() == 1, name == "conv2", "{name}: {} weight scales", scales.len());
    }
    assert_eq!(model.input.quant().unwrap().bits, 8);
    // The file keeps the per-layer settings; a changed one is rejected on load.
    let tf = model.to_tensor_file().unwrap();
    let back = Int8Model::from_tensor_file(std::path::Path::new("m"), &tf).unwrap();
    assert_eq!(back, model);
    let mut bad = tf.clone();
    let mut q2 = q.clone();
    q2.layers[1].act_bits = Some(5);
    bad.metadata.insert("qconfig".into(), serde_json::to_string(&q2).unwrap());
    let e = Int8Model::from_tensor_file(std::path::Path::new("m"), &bad).unwrap_err().to_string();
    assert!(e.contains("conv1"), "{e}");
    let mut rng = testing::rng(42);
    let b = 5;
    check_backends_agree(&model, &images(&mut rng, b * 784, true), b, true);
    let n = 200;
    // A 1-LSB flip of a 4-bit conv2 code is 16 steps of fc1's 8-bit grid, so downstream
    // logits may move by more than MAX_LOGIT_LSB; every layer's local error stays <= 1 LSB.
    check_against_simulation(&g, &ck, &model, &images(&mut rng, n * 784, false), n, MAX_LOGIT_LSB_MIXED, 3.0);
}

/// Full-range weights (`[-2^(b-1), 2^(b-1)-1]`, PyTorch's symmetric qint8): the most
/// negative code occurs (-128 at 8 bits, -8 at 4), the file keeps and checks the range, and
/// every backend stays bit-exact and agrees with the simulation.
#[test]
fn full_range_weights_convert_bit_exact() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    for bits in [8u32, 4] {
        let mut q = wqat::engine::QConfig::new(bits, 8).unwrap();
        q.weight.full_range = true;
        let ck = synthetic_checkpoint_qconfig(&g, 50 + bits as u64, true, &q).unwrap();
        let model = convert::convert(&g, &ck).unwrap();
        let qmin = -(1i32 << (bits - 1));
        let mut seen_min = false;
        for l in &model.layers {
            if let infer::LayerKind::Int(il) = &l.kind {
                assert!(il.weight.iter().all(|w| (qmin..=-qmin - 1).contains(&(w as i32))), "{bits} bits");
                seen_min |= il.weight.iter().any(|w| w as i32 == qmin);
            }
        }
        assert!(seen_min, "no weight reaches {qmin}");
        let tf = model.to_tensor_file().unwrap();
        assert_eq!(Int8Model::from_tensor_file(std::path::Path::new("m"), &tf).unwrap(), model);
        // The same codes under the narrow range are rejected on load.
        let mut narrow = tf.clone();
        narrow
            .metadata
            .insert("qconfig".into(), serde_json::to_string(&wqat::engine::QConfig::new(bits, 8).unwrap()).unwrap());
        assert!(Int8Model::from_tensor_file(std::path::Path::new("m"), &narrow).is_err());
        let mut rng = testing::rng(51);
        let b = 5;
        check_backends_agree(&model, &images(&mut rng, b * 784, true), b, true);
        let n = 200;
        check_against_simulation(&g, &ck, &model, &images(&mut rng, n * 784, false), n, MAX_LOGIT_LSB, 3.0);
    }
}

#[test]
fn mlp_bit_exact_and_agrees_with_simulation() {
    let g = zoo::build("mlp", [1, 8, 8], 10).unwrap();
    let ck = random_checkpoint(&g, 21);
    let model = convert::convert(&g, &ck).unwrap();
    let mut rng = testing::rng(22);
    let b = 13;
    check_backends_agree(&model, &images(&mut rng, b * 64, true), b, true);
    let n = 1000;
    check_against_simulation(&g, &ck, &model, &images(&mut rng, n * 64, true), n, MAX_LOGIT_LSB, 0.0);
}

#[test]
fn resnet20_bit_exact_and_agrees_with_simulation() {
    let g = zoo::build("resnet20", [3, 32, 32], 10).unwrap();
    let ck = random_checkpoint(&g, 31);
    let model = convert::convert(&g, &ck).unwrap();
    let mut rng = testing::rng(32);
    let b = 3;
    check_backends_agree(&model, &images(&mut rng, b * 3072, true), b, true);
    let ck = checkpoint(&g, 33, false);
    let model = convert::convert(&g, &ck).unwrap();
    let n = 100;
    check_against_simulation(&g, &ck, &model, &images(&mut rng, n * 3072, false), n, MAX_LOGIT_LSB_DEEP, 0.0);
}

/// A W4A4 ResNet-20 end to end: every pooled code equal to the simulation's (a PTQ W4A4
/// ResNet-20 once had 0.45 % of them one step apart; the tie cases themselves are pinned by
/// `int8_cpu::simulated_avg_pool_rounds_ties_like_the_integer_pool`, since this random
/// network's pooled sums rarely fall on the float-sensitive ties).
#[test]
fn resnet20_w4a4_global_pool_bit_exact_with_simulation() {
    let g = zoo::build("resnet20", [3, 32, 32], 10).unwrap();
    let ck = synthetic_checkpoint_bits(&g, 34, false, 4, 4).unwrap();
    let model = convert::convert(&g, &ck).unwrap();
    let mut rng = testing::rng(35);
    let n = 40;
    let x = images(&mut rng, n * 3072, false);
    let report = infer::layer_report(&g, &ck, &model, &x, n).unwrap();
    let pool = report.iter().find(|d| d.node == "avgpool").expect("resnet20 has a global pool named avgpool");
    assert!(pool.total >= 40 * 64, "{} pooled codes", pool.total);
    assert_eq!(pool.local_mismatched, 0, "global pool: {} of {} codes differ", pool.local_mismatched, pool.total);
    check_backends_agree(&model, &x[..3 * 3072], 3, true);
    check_against_simulation(&g, &ck, &model, &x, n, MAX_LOGIT_LSB_DEEP * 2.0, 3.0);
}

#[test]
fn fp32_first_and_last_layers_run_on_cpu_and_gpu() {
    let mut g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    g.nodes[0].fp32 = true;
    let last = g.nodes.len() - 1;
    g.nodes[last].fp32 = true;
    let ck = random_checkpoint(&g, 41);
    let model = convert::convert(&g, &ck).unwrap();
    assert!(matches!(model.layers[0].kind, infer::LayerKind::Float(_)));
    assert!(matches!(model.layers[last].kind, infer::LayerKind::Float(_)));
    assert!(matches!(model.layers[2].kind, infer::LayerKind::Int(_)));
    let mut rng = testing::rng(42);
    let n = 100;
    let x = images(&mut rng, n * 784, false);
    let a = Int8CpuModel::new(&model).forward(&x, n, CpuBackend::Scalar).unwrap();
    let b = Int8CpuModel::new(&model).forward(&x, n, CpuBackend::Simd).unwrap();
    assert_eq!(a, b);
    let sim = fake_quant_forward(&g, &ck, &x, n).unwrap();
    let sim_pred = infer::cpu::argmax_rows(&sim, 10);
    let agree = sim_pred.iter().zip(&a.predictions).filter(|(p, q)| p == q).count();
    assert!(agree as f64 >= MIN_AGREEMENT * n as f64, "agreement {agree}/{n}");
    check_gpu_close_to_cpu(&model, &x[..9 * 784], 9);
    // Round trip keeps the f32 layers.
    let tf = model.to_tensor_file().unwrap();
    let back = Int8Model::from_tensor_file(std::path::Path::new("mem"), &tf).unwrap();
    assert_eq!(back, model);
}

#[test]
fn disabled_quantizer_runs_that_layer_in_f32() {
    let g = zoo::build("mlp", [1, 8, 8], 10).unwrap();
    let mut ck = random_checkpoint(&g, 51);
    let name = "fc1.output_quant";
    if let wqat::tensorfile::HostData::F32(v) = &mut ck.tensors.get_mut(name).unwrap().data {
        v[QStateLayout::FQ_ENABLED] = 0.0;
    }
    let model = convert::convert(&g, &ck).unwrap();
    assert!(matches!(model.layers[1].kind, infer::LayerKind::Float(_)));
    assert!(matches!(model.layers[2].kind, infer::LayerKind::Float(_)));
    let mut rng = testing::rng(52);
    let n = 200;
    let x = images(&mut rng, n * 64, false);
    let out = Int8CpuModel::new(&model).forward(&x, n, CpuBackend::Simd).unwrap();
    let sim = fake_quant_forward(&g, &ck, &x, n).unwrap();
    let sim_pred = infer::cpu::argmax_rows(&sim, 10);
    let agree = sim_pred.iter().zip(&out.predictions).filter(|(p, q)| p == q).count();
    assert!(agree as f64 >= MIN_AGREEMENT * n as f64, "agreement {agree}/{n}");
    check_gpu_close_to_cpu(&model, &x[..11 * 64], 11);
}

/// Models with f32 layers: the GPU runs those with the engine's fp32 kernels, whose sums are
/// ordered differently from the CPU's, so codes may differ by one step (never more than
/// [`MAX_F32_LAYER_LSB`] here) and f32 values by float rounding.
fn check_gpu_close_to_cpu(model: &Int8Model, x: &[f32], batch: usize) {
    const MAX_F32_LAYER_LSB: i32 = 1;
    let cpu = Int8CpuModel::new(model).forward_traced(x, batch, CpuBackend::Simd).unwrap();
    for ctx in [testing::ctx(), nodot4_ctx()] {
        let g = Int8GpuModel::new(&ctx, model, batch).unwrap();
        let gpu = g.forward_traced(x, batch).unwrap();
        let plain = g.forward(x, batch).unwrap();
        assert_eq!(plain.logits, gpu.logits);
        for (i, r) in model.nodes().iter().enumerate() {
            let (a, b) = (&gpu.activations.as_ref().unwrap()[i], &cpu.activations.as_ref().unwrap()[i]);
            match (a, b) {
                (NodeValue::Codes(a), NodeValue::Codes(b)) => {
                    let worst = a.iter().zip(b).map(|(&p, &q)| (p as i32 - q as i32).abs()).max().unwrap();
                    assert!(worst <= MAX_F32_LAYER_LSB, "node {}: codes differ by {worst}", r.node.name);
                }
                (NodeValue::Float(a), NodeValue::Float(b)) => {
                    testing::assert_close(&format!("node {}", r.node.name), a, b, 1e-4, 1e-4);
                }
                _ => panic!("node {}: representations differ", r.node.name),
            }
        }
        assert_eq!(gpu.predictions, cpu.predictions);
    }
}

#[test]
fn resnet20_with_f32_add_and_pool() {
    let g = zoo::build("resnet20", [3, 32, 32], 10).unwrap();
    let mut ck = checkpoint(&g, 91, false);
    for name in ["layer1.0.add.output_quant", "layer3.2.add.output_quant"] {
        if let wqat::tensorfile::HostData::F32(v) = &mut ck.tensors.get_mut(name).unwrap().data {
            v[QStateLayout::FQ_ENABLED] = 0.0;
        }
    }
    let model = convert::convert(&g, &ck).unwrap();
    let kind = |n: &str| &model.layers[model.nodes().iter().position(|r| r.node.name == n).unwrap()].kind;
    assert!(matches!(kind("layer1.0.add"), infer::LayerKind::Add(None)));
    assert!(matches!(kind("layer1.1.conv1"), infer::LayerKind::Float(_)));
    assert!(matches!(kind("layer1.1.add"), infer::LayerKind::Add(None)));
    assert!(matches!(kind("layer1.1.conv2"), infer::LayerKind::Int(_)));
    assert!(matches!(kind("avgpool"), infer::LayerKind::AvgPool(None)));
    assert!(matches!(kind("fc"), infer::LayerKind::Float(_)));
    let mut rng = testing::rng(92);
    let n = 4;
    let x = images(&mut rng, n * 3072, false);
    check_gpu_close_to_cpu(&model, &x, n);
    let sim = fake_quant_forward(&g, &ck, &x, n).unwrap();
    let out = Int8CpuModel::new(&model).forward(&x, n, CpuBackend::Simd).unwrap();
    assert_eq!(infer::cpu::argmax_rows(&sim, 10), out.predictions);
}

#[test]
fn save_load_round_trip_and_garbage_never_panics() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let ck = random_checkpoint(&g, 61);
    let model = convert::convert(&g, &ck).unwrap();
    let dir = std::env::temp_dir().join(format!("wqat-int8-test-{}", std::process::id()));
    let path = dir.join("m.int8.safetensors");
    model.save(&path).unwrap();
    let back = Int8Model::load(&path).unwrap();
    assert_eq!(back, model);
    assert_eq!(back.class_names().len(), 10);
    assert_eq!(back.input_shape(), [1, 28, 28]);
    assert_eq!(back.num_classes(), 10);
    let mut rng = testing::rng(62);
    let x = images(&mut rng, 5 * 784, false);
    assert_eq!(
        Int8CpuModel::new(&back).forward(&x, 5, CpuBackend::Simd).unwrap(),
        Int8CpuModel::new(&model).forward(&x, 5, CpuBackend::Simd).unwrap()
    );

    let bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
    let p = std::path::Path::new("garbled");
    // Truncation anywhere: always an error.
    for cut in (0..bytes.len()).step_by(bytes.len() / 397 + 1).chain([bytes.len() - 1, 7, 8, header]) {
        assert!(Int8Model::from_bytes(p, &bytes[..cut]).is_err(), "truncated at {cut} loaded");
    }
    // Garbled bytes: never a panic; in the header almost always an error; a model that
    // still loads must run.
    let mut header_ok = 0;
    let mut tries = 0;
    for i in 0..3000 {
        let mut b = bytes.clone();
        let at = if i % 2 == 0 { rng.random_range(0..header) } else { rng.random_range(0..b.len()) };
        b[at] = match i % 3 {
            0 => rng.random(),
            1 => b[at] ^ (1 << rng.random_range(0..8)),
            _ => b"0123456789-e.,{}[]\":"[rng.random_range(0..20)],
        };
        if let Ok(m) = Int8Model::from_bytes(p, &b) {
            let _ = Int8CpuModel::new(&m).forward(&x[..784], 1, CpuBackend::Scalar);
            if at < header {
                header_ok += 1;
            }
        }
        tries += usize::from(at < header);
    }
    eprintln!("garbled headers that still loaded: {header_ok}/{tries}");
    // Wrong format / version.
    let mut tf = model.to_tensor_file().unwrap();
    tf.metadata.insert("version".into(), "3".into());
    assert!(Int8Model::from_bytes(p, &tf.to_bytes().unwrap()).is_err());
    let mut tf = model.to_tensor_file().unwrap();
    tf.metadata.insert("format".into(), "wqat-checkpoint".into());
    assert!(Int8Model::from_bytes(p, &tf.to_bytes().unwrap()).is_err());
    // Out-of-range values.
    let mut tf = model.to_tensor_file().unwrap();
    if let wqat::tensorfile::HostData::I32(v) = &mut tf.tensors.get_mut("conv1.requant").unwrap().data {
        v[1] = 40;
    }
    assert!(Int8Model::from_bytes(p, &tf.to_bytes().unwrap()).is_err());
    let mut tf = model.to_tensor_file().unwrap();
    tf.insert("junk", HostTensor::f32(&[1], vec![0.0]));
    assert!(Int8Model::from_bytes(p, &tf.to_bytes().unwrap()).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Packed sub-8-bit weights: W2 / W3 / W4 models store 4 / 2 / 2 codes per byte in memory
/// and on disk (version 2, `weight_packed`), round-trip through the file, run bit-exact on
/// every backend (CPU scalar, every SIMD kernel, GPU dot4 and fallback); a version-1 file
/// (one i8 code per byte) loads into the same packed model; short, long, badly padded or
/// out-of-range packed tensors are format errors naming the tensor.
#[test]
fn packed_sub8bit_weights_round_trip_and_run_bit_exact() {
    use wqat::infer::weights::packed_len;
    use wqat::tensorfile::HostData;
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let dir = std::env::temp_dir().join(format!("wqat-int8-packed-{}", std::process::id()));
    let p = std::path::Path::new("packed");
    for wb in [2u32, 3, 4] {
        let ck = synthetic_checkpoint_bits(&g, 70 + wb as u64, true, wb, 6).unwrap();
        let model = convert::convert(&g, &ck).unwrap();
        let (packed, int8, _) = model.weight_bytes();
        let per = if wb == 2 { 4 } else { 2 };
        assert!(packed * per >= int8 && packed * per < int8 + 4 * per, "W{wb}: {packed} bytes for {int8} codes");
        for l in &model.layers {
            if let infer::LayerKind::Int(il) = &l.kind {
                assert!(il.weight.is_packed() && il.weight.bits() == wb);
                assert_eq!(il.weight.data().len(), packed_len(wb, il.weight.len()));
            }
        }
        let path = dir.join(format!("w{wb}.int8.safetensors"));
        model.save(&path).unwrap();
        let back = Int8Model::load(&path).unwrap();
        assert_eq!(back, model, "W{wb} file round trip");
        let tf = model.to_tensor_file().unwrap();
        assert_eq!(tf.metadata["version"], "2");
        assert!(!tf.tensors.contains_key("conv1.weight_q") && tf.tensors.contains_key("conv1.weight_packed"));
        // The same model as a version-1 file (one code per byte) is larger and loads packed.
        let mut v1 = tf.clone();
        v1.metadata.insert("version".into(), "1".into());
        for (i, r) in model.nodes().iter().enumerate() {
            if let infer::LayerKind::Int(il) = &model.layers[i].kind {
                let n = &r.node.name;
                assert!(v1.tensors.remove(&format!("{n}.weight_packed")).is_some());
                let wshape = match r.node.op {
                    Op::Conv { out_channels, kernel, groups, .. } => {
                        vec![out_channels, r.in_shapes[0][0] / groups, kernel, kernel]
                    }
                    _ => vec![r.out_channels(), r.in_features()],
                };
                v1.insert(
                    format!("{n}.weight_q"),
                    HostTensor { shape: wshape, data: HostData::I8(il.weight.codes().into_owned()) },
                );
            }
        }
        let v1_bytes = v1.to_bytes().unwrap();
        let file_len = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(file_len + int8 - packed <= v1_bytes.len() + 64, "W{wb}: {file_len} vs v1 {}", v1_bytes.len());
        assert_eq!(Int8Model::from_bytes(p, &v1_bytes).unwrap(), model, "W{wb}: version-1 file");
        // Every backend, bit for bit, on the loaded model.
        let mut rng = testing::rng(71);
        let b = 4;
        check_backends_agree(&back, &images(&mut rng, b * 784, true), b, true);
        // Corrupt packed tensors.
        let corrupt = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut t = tf.clone();
            let HostTensor { data: HostData::U8(d), shape } = t.tensors.get_mut("conv2.weight_packed").unwrap() else {
                panic!("u8")
            };
            f(d);
            *shape = vec![d.len()];
            Int8Model::from_bytes(p, &t.to_bytes().unwrap()).unwrap_err().to_string()
        };
        for e in [
            corrupt(&|d| {
                d.pop();
            }),
            corrupt(&|d| d.push(0)),
        ] {
            assert!(e.contains("conv2.weight_packed") && e.contains("expected"), "{e}");
        }
        if wb == 3 {
            // 7 is a valid nibble but not a 3-bit code.
            let e = corrupt(&|d| d[0] = 0x77);
            assert!(e.contains("conv2.weight_packed") && e.contains("outside"), "{e}");
        }
        let mut t = tf.clone();
        let HostTensor { data: HostData::U8(d), .. } = t.tensors.remove("conv2.weight_packed").unwrap() else {
            panic!("u8")
        };
        t.insert("conv2.weight_packed", HostTensor { shape: vec![d.len()], data: HostData::I8(vec![0; d.len()]) });
        assert!(Int8Model::from_bytes(p, &t.to_bytes().unwrap()).is_err(), "i8 packed tensor");
    }
    // 8-bit weights stay one code per byte and version 1.
    let model = convert::convert(&g, &random_checkpoint(&g, 72)).unwrap();
    let tf = model.to_tensor_file().unwrap();
    assert_eq!(tf.metadata["version"], "1");
    assert!(tf.tensors.contains_key("conv1.weight_q"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whole W4A4 / W3A3 / W2A2 mnist-cnn models, their weights packed on the GPU too, on every
/// int8 GEMM path of the adapter (the default context: DIRECT on CPU adapters; and forced
/// one-word kernels with dot4I8Packed and with the unpack fallback): codes of every node and
/// logits equal to the CPU scalar ones; the GPU weight buffers of the W4 model half the
/// W8 model's (W2 a quarter), up to the vec4 padding of each layer.
#[test]
fn packed_models_on_every_gpu_path_equal_scalar() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let mut ctxs = vec![testing::ctx()];
    for disable_dot4 in [false, true] {
        let opts = GpuOptions { conv_direct: Some(false), disable_dot4, ..GpuOptions::from_env() };
        ctxs.push(GpuContext::new(&opts).unwrap());
    }
    let layers = g.nodes.iter().filter(|n| matches!(n.op, Op::Conv { .. } | Op::Linear { .. })).count();
    let w8 = convert::convert(&g, &synthetic_checkpoint_bits(&g, 90, true, 8, 8).unwrap()).unwrap();
    let w8_bytes = Int8GpuModel::new(&testing::ctx(), &w8, 1).unwrap().weight_bytes();
    for (wb, ab) in [(4u32, 4u32), (3, 3), (2, 2)] {
        let ck = synthetic_checkpoint_bits(&g, 90 + wb as u64, true, wb, ab).unwrap();
        let model = convert::convert(&g, &ck).unwrap();
        let mut rng = testing::rng(91);
        let b = 3;
        let x = images(&mut rng, b * 784, true);
        let scalar = Int8CpuModel::new(&model).forward_traced(&x, b, CpuBackend::Scalar).unwrap();
        let want = scalar.activations.as_ref().unwrap();
        for ctx in &ctxs {
            let gm = Int8GpuModel::new(ctx, &model, b).unwrap();
            let what = format!("W{wb}A{ab} direct {} dot4 {}", ctx.conv_direct, ctx.use_dot4);
            let per = if wb == 2 { 4 } else { 2 };
            let bytes = gm.weight_bytes();
            eprintln!("{what}: GPU weights {bytes} bytes (W8: {w8_bytes})");
            assert!(
                bytes * per >= w8_bytes && bytes <= w8_bytes / per + 16 * layers,
                "{what}: {bytes} vs W8 {w8_bytes}"
            );
            assert_eq!(gm.forward(&x, b).unwrap().logits, scalar.logits, "{what} logits");
            let got = gm.forward_traced(&x, b).unwrap();
            for (i, r) in model.nodes().iter().enumerate() {
                let got = got.activations.as_ref().unwrap();
                assert_bit_exact(&format!("{what} node {}", r.node.name), codes(&got[i]), codes(&want[i]));
            }
        }
    }
}

/// A W4 transformer (integer linears with an f32 epilogue): packed, round trip, CPU backends
/// bit for bit, GPU against the CPU as in the unpacked case.
#[test]
fn packed_w4_transformer_runs_on_every_backend() {
    let g = zoo::build("text-tiny", [1, 1, 12], 6).unwrap();
    let ck = synthetic_checkpoint_bits(&g, 81, false, 4, 8).unwrap();
    let model = convert::convert(&g, &ck).unwrap();
    let packed = model
        .layers
        .iter()
        .filter(|l| matches!(&l.kind, infer::LayerKind::IntFloat(il) if il.weight.is_packed()))
        .count();
    assert!(packed > 0, "no packed f32-epilogue linear");
    let back = Int8Model::from_tensor_file(std::path::Path::new("m"), &model.to_tensor_file().unwrap()).unwrap();
    assert_eq!(back, model);
    let mut rng = testing::rng(82);
    check_cpu_backends_agree_any_domain(&back, &synthetic::random_inputs(&g, &mut rng, 4, false), 4);
    let n = 200;
    check_gpu_transformer(&back, &synthetic::random_inputs(&g, &mut rng, n, false), n);
}

#[test]
fn preprocess_image_file_resizes_and_normalizes() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let model = convert::convert(&g, &random_checkpoint(&g, 71)).unwrap();
    let dir = std::env::temp_dir().join(format!("wqat-int8-img-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("digit.png");
    let img = image::RgbImage::from_fn(56, 40, |x, _| image::Rgb([if x < 28 { 255 } else { 0 }, 0, 0]));
    img.save(&path).unwrap();
    let x = infer::preprocess_image_file(&path, &model).unwrap();
    assert_eq!(x.len(), 784);
    let n = model.normalization();
    let black = (0.0 - n.mean[0]) / n.std[0];
    assert!((x[27] - black).abs() < 1e-6, "right half is black: {}", x[27]);
    assert!(x[0] > black, "left half is red, brighter than black in luma");
    let out = Int8CpuModel::new(&model).forward(&x, 1, CpuBackend::Simd).unwrap();
    assert_eq!(out.predictions.len(), 1);
    assert!(infer::preprocess_image_file(&dir.join("missing.png"), &model).is_err());
    std::fs::write(dir.join("bad.png"), b"not an image").unwrap();
    assert!(infer::preprocess_image_file(&dir.join("bad.png"), &model).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn evaluate_on_every_backend() {
    let g = zoo::build("mlp", [1, 8, 8], 10).unwrap();
    let model = convert::convert(&g, &random_checkpoint(&g, 81)).unwrap();
    let mut rng = testing::rng(82);
    let n = 37;
    let x = images(&mut rng, n * 64, false);
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
    let split = wqat::data::Split::new(x, labels, 64).unwrap();
    let backends = [infer::Backend::CpuScalar, infer::Backend::Cpu, infer::Backend::Gpu(testing::ctx())];
    let results: Vec<_> = backends.iter().map(|b| infer::evaluate(&model, b, &split, 8).unwrap()).collect();
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
    assert_eq!(results[0].total, n);
}

/// Every node's output equal on CPU scalar and every SIMD kernel (codes bit for bit, f32
/// values bit for bit: the integer layers' accumulators are exact and the f32 ops are the
/// same code on every backend).
fn check_cpu_backends_agree_any_domain(model: &Int8Model, x: &[f32], batch: usize) {
    let scalar = Int8CpuModel::new(model).forward_traced(x, batch, CpuBackend::Scalar).unwrap();
    let want = scalar.activations.as_ref().unwrap();
    for k in SimdKernel::available() {
        let out = Int8CpuModel::new(model).forward_traced(x, batch, CpuBackend::Kernel(k)).unwrap();
        let got = out.activations.as_ref().unwrap();
        for (i, r) in model.nodes().iter().enumerate() {
            let what = format!("{} node {} ({k:?})", model.graph.name, r.node.name);
            match (&got[i], &want[i]) {
                (NodeValue::Codes(a), NodeValue::Codes(b)) => assert_bit_exact(&what, a, b),
                (NodeValue::Float(a), NodeValue::Float(b)) => {
                    assert!(a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()), "{what}: f32 values differ")
                }
                _ => panic!("{what}: codes on one backend, f32 on the other"),
            }
        }
        assert_eq!(out.logits, scalar.logits, "{k:?} logits");
    }
}

/// Fraction of a node's codes that may differ by one step between the GPU and the CPU
/// scalar executor when both are fed the same input (GPU node outputs fed to the CPU's
/// `run_node`) and the node computes in f32 with kernels that round differently: LayerNorm
/// and attention (the GPU sums in another order, its `exp` is not libm's) and GELU (an f32
/// erf fit within a few ulp of libm). Only values within that f32 error of a rounding tie
/// flip: with ~1e-6 relative error and ~256 steps per tensor, a few codes per hundred
/// thousand (measured on lavapipe: at most 1.4e-5, 3 of 217,600 codes of a `vit-tiny`
/// attention output; 6.5e-6 with the register-blocked attention kernel; GELU none).
const MAX_F32_OP_CODE_FRACTION: f64 = 1e-3;
/// F32 outputs of those nodes (none in the zoo's transformers; kept for fp32 settings):
/// relative error of a reduction over a token.
const F32_OP_RTOL: f32 = 1e-4;
/// Fraction of a node's codes that may differ end to end between GPU and CPU: the local
/// one-step flips above, carried through the later layers and growing with depth (measured
/// on lavapipe: at most 4.1e-3 inside the encoder and 7.5e-3 = 9 of 1,200 `text-tiny`
/// logits; up to 1.5e-2 with the first attention kernel).
const MAX_GPU_CODE_FRACTION_END_TO_END: f64 = 5e-2;

/// GPU (dot4 and unpack fallback) against the CPU scalar executor on a transformer, node by
/// node with the GPU's own inputs: integer layers bit for bit, the f32 pre-activations of
/// integer layers with an f32 epilogue bit for bit, exact f32 ops (embedding, CLS +
/// positions, CLS pool, patchify, residual adds) bit for bit, and LayerNorm / attention /
/// GELU within one step on at most [`MAX_F32_OP_CODE_FRACTION`] of their codes; end to end,
/// predictions agree on >= [`MIN_AGREEMENT`] of the samples.
fn check_gpu_transformer(model: &Int8Model, x: &[f32], batch: usize) {
    use infer::LayerKind as K;
    use wqat::model::graph::{Act, TokenPoolMode, INPUT};
    let name = &model.graph.name;
    let cpu = Int8CpuModel::new(model).forward_traced(x, batch, CpuBackend::Scalar).unwrap();
    let cpu_acts = cpu.activations.as_ref().unwrap();
    let key_mask = model.key_mask(x);
    let input = match model.input {
        infer::Domain::Codes(q) => NodeValue::Codes(x.iter().map(|&v| q.quantize(v)).collect()),
        infer::Domain::Float => NodeValue::Float(x.to_vec()),
    };
    for ctx in [testing::ctx(), nodot4_ctx()] {
        let tag = format!("{name} gpu dot4={}", ctx.use_dot4);
        let g = Int8GpuModel::new(&ctx, model, batch).unwrap();
        let gpu = g.forward_traced(x, batch).unwrap();
        let acts = gpu.activations.as_ref().unwrap();
        for (i, r) in model.nodes().iter().enumerate() {
            let what = format!("{tag} node {}", r.node.name);
            let get = |j: usize| if j == INPUT { &input } else { &acts[j] };
            let a = get(r.inputs[0]);
            let b = r.inputs.get(1).map(|&j| get(j));
            let local = model.run_node(i, a, b, batch, CpuBackend::Scalar, key_mask.as_deref()).unwrap();
            let layer = &model.layers[i];
            if let K::IntFloat(l) = &layer.kind {
                let pre = g.read_pre_activation(i, batch).unwrap().unwrap();
                let qi = model.domain_of(r.inputs[0]).quant().unwrap();
                let (m, n) = (batch * r.rows_per_sample(), r.out_channels());
                let cfg = wqat::infer::LinearConfig { m, k: r.in_features(), n, x_zero: qi.zero };
                let mut acc = vec![0i32; m * n];
                wqat::infer::cpu::kernels::linear_acc(
                    CpuBackend::Scalar,
                    &cfg,
                    codes(a),
                    &l.weight.codes(),
                    &l.bias,
                    &mut acc,
                )
                .unwrap();
                let want = infer::cpu::dequantize_acc(&acc, qi.scale, &l.weight_scale);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
                assert_bit_exact(&format!("{what} pre-activation"), &bits(&pre), &bits(&want));
            }
            let exact = match (&layer.kind, &r.node.op) {
                (K::IntFloat(_), Op::Linear { act, .. }) => *act != Act::Gelu,
                (K::Seq(infer::SeqLayer::TokenPool), Op::TokenPool { mode }) => *mode == TokenPoolMode::Cls,
                (K::Seq(infer::SeqLayer::LayerNorm { .. } | infer::SeqLayer::Attention { .. }), _) => false,
                // Integer layers, patchify, embedding, CLS + positions, f32 residual adds.
                _ => true,
            };
            let (differ, total) = match (&acts[i], &local) {
                (NodeValue::Codes(got), NodeValue::Codes(want)) => {
                    if exact {
                        assert_bit_exact(&what, got, want);
                    }
                    let worst = got.iter().zip(want).map(|(&p, &q)| (p as i32 - q as i32).abs()).max().unwrap_or(0);
                    assert!(worst <= 1, "{what}: codes differ by {worst} fed the same input");
                    (got.iter().zip(want).filter(|(p, q)| p != q).count(), got.len())
                }
                (NodeValue::Float(got), NodeValue::Float(want)) => {
                    if exact {
                        assert!(got.iter().zip(want).all(|(p, q)| p.to_bits() == q.to_bits()), "{what}: f32 differ");
                    } else {
                        testing::assert_close(&what, got, want, F32_OP_RTOL, F32_OP_RTOL);
                    }
                    (0, got.len())
                }
                _ => panic!("{what}: codes on one side, f32 on the other"),
            };
            let frac = differ as f64 / total.max(1) as f64;
            // End to end: the GPU's own chain against the CPU's.
            let e2e = match (&acts[i], &cpu_acts[i]) {
                (NodeValue::Codes(p), NodeValue::Codes(q)) => {
                    p.iter().zip(q).filter(|(a, b)| a != b).count() as f64 / p.len().max(1) as f64
                }
                _ => 0.0,
            };
            let kind = match &layer.kind {
                K::Int(_) => "int",
                K::IntFloat(_) => "int, f32 epilogue",
                K::Seq(_) | K::Float(_) => "f32",
                _ => "other",
            };
            let out = if layer.out.quant().is_some() { "codes" } else { "f32" };
            eprintln!(
                "{what} ({kind} -> {out}): local {differ}/{total} codes differ ({frac:.1e}), end to end {e2e:.1e}"
            );
            assert!(frac <= MAX_F32_OP_CODE_FRACTION, "{what}: {differ} of {total} codes differ locally");
            assert!(e2e <= MAX_GPU_CODE_FRACTION_END_TO_END, "{what}: {e2e} of the codes differ end to end");
        }
        let agree = gpu.predictions.iter().zip(&cpu.predictions).filter(|(p, q)| p == q).count();
        eprintln!("{tag}: predictions agree on {agree}/{batch}");
        assert!(agree as f64 >= MIN_AGREEMENT * batch as f64, "{tag}: predictions agree on {agree}/{batch}");
        let plain = g.forward(x, batch).unwrap();
        assert_eq!(plain.logits, gpu.logits, "{tag}: forward and forward_traced");
        // Another batch size records another plan over the same buffers.
        let small = g.forward(&x[..3 * x.len() / batch], 3).unwrap();
        assert_eq!(small.logits[..], plain.logits[..small.logits.len()], "{tag}: batch of 3");
    }
}

/// The tiny transformers convert: every Linear an integer GEMM (requantized, or with an
/// f32 epilogue where LayerNorm, attention, GELU or a residual sum follows), the rest f32;
/// CPU backends agree bit for bit; predictions agree with the fake-quant simulation; the
/// file round-trips; the GPU executor agrees with the CPU ([`check_gpu_transformer`]).
#[test]
fn transformers_convert_bit_exact_and_agree_with_simulation() {
    for (name, input, matmul) in
        [("vit-tiny", [1, 8, 8], false), ("text-tiny", [1, 1, 12], false), ("text-tiny", [1, 1, 12], true)]
    {
        let mut g = zoo::build(name, input, 6).unwrap();
        // With `matmul`, the attention quantizes q, k, v and its softmax output; the same
        // case quantizes the embedding table (`int`).
        for n in &mut g.nodes {
            match &mut n.op {
                Op::Attention { quantize_matmul, .. } => *quantize_matmul = matmul,
                Op::Embedding { quantize_weight, .. } => *quantize_weight = matmul,
                _ => {}
            }
        }
        let ck = checkpoint(&g, 31, false);
        let model = convert::convert(&g, &ck).unwrap();
        let ints = model
            .layers
            .iter()
            .filter(|l| matches!(l.kind, infer::LayerKind::Int(_) | infer::LayerKind::IntFloat(_)))
            .count();
        let linears = g.nodes.iter().filter(|n| matches!(n.op, Op::Linear { .. })).count();
        assert_eq!(ints, linears, "{name}: every linear converts to an integer layer");
        let mut rng = testing::rng(33);
        let b = 5;
        check_cpu_backends_agree_any_domain(&model, &synthetic::random_inputs(&g, &mut rng, b, false), b);
        let n = 200;
        let x = synthetic::random_inputs(&g, &mut rng, n, false);
        // f32 ops between the integer layers: the integer model and the simulation agree to
        // f32 rounding, so an occasional code flips; the logits stay within a few steps.
        check_against_simulation(&g, &ck, &model, &x, n, 4.0, 2.0);
        let back = Int8Model::from_tensor_file(std::path::Path::new("m"), &model.to_tensor_file().unwrap()).unwrap();
        assert_eq!(back, model, "{name}: file round trip");
        let n = 200;
        check_gpu_transformer(&model, &synthetic::random_inputs(&g, &mut rng, n, false), n);
        // Token ids outside the vocabulary are refused, as on the CPU.
        if name == "text-tiny" {
            let mut bad = synthetic::random_inputs(&g, &mut rng, 1, false);
            bad[0] = 1e6;
            assert!(Int8GpuModel::new(&testing::ctx(), &model, 1).unwrap().forward(&bad, 1).is_err());
            assert!(Int8CpuModel::new(&model).forward(&bad, 1, CpuBackend::Scalar).is_err());
        }
    }
}

/// Manual measurement of a W4A4 mnist-cnn: weight memory per backend and forward times
/// (batch 64, median of interleaved runs; CPU seconds of the process alongside, robust to
/// other load). `cargo test --test int8_model packed_w4_memory_and_speed -- --ignored --nocapture`
#[test]
#[ignore = "manual measurement: cargo test --test int8_model packed_w4_memory_and_speed -- --ignored --nocapture"]
fn packed_w4_memory_and_speed() {
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
    let model = convert::convert(&g, &synthetic_checkpoint_bits(&g, 94, false, 4, 4).unwrap()).unwrap();
    let b = 64;
    let x = images(&mut testing::rng(95), b * 784, false);
    let mut ctxs = vec![testing::ctx()];
    for disable_dot4 in [false, true] {
        let opts = GpuOptions { conv_direct: Some(false), disable_dot4, ..GpuOptions::from_env() };
        ctxs.push(GpuContext::new(&opts).unwrap());
    }
    let gpus: Vec<(String, Int8GpuModel)> = ctxs
        .iter()
        .map(|c| {
            (format!("gpu direct {} dot4 {}", c.conv_direct, c.use_dot4), Int8GpuModel::new(c, &model, b).unwrap())
        })
        .collect();
    let cpu = Int8CpuModel::new(&model);
    let want = cpu.forward(&x, b, CpuBackend::Scalar).unwrap().logits;
    type Run<'a> = (String, Box<dyn Fn() -> Vec<f32> + 'a>);
    let mut runs: Vec<Run<'_>> = Vec::new();
    runs.push(("cpu scalar".into(), Box::new(|| cpu.forward(&x, b, CpuBackend::Scalar).unwrap().logits)));
    runs.push(("cpu simd".into(), Box::new(|| cpu.forward(&x, b, CpuBackend::Simd).unwrap().logits)));
    for (name, gm) in &gpus {
        runs.push((name.clone(), Box::new(|| gm.forward(&x, b).unwrap().logits)));
    }
    let cpu_s = || {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let f: Vec<f64> =
            s.rsplit(')').next().unwrap_or("").split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
        (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
    };
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut cpu_t = vec![0.0; runs.len()];
    for (name, f) in &runs {
        assert_eq!(f(), want, "{name}");
    }
    let reps = 7;
    for _ in 0..reps {
        for (i, (_, f)) in runs.iter().enumerate() {
            let (t, c) = (std::time::Instant::now(), cpu_s());
            f();
            wall[i].push(t.elapsed().as_secs_f64());
            cpu_t[i] += cpu_s() - c;
        }
    }
    for (i, (name, _)) in runs.iter().enumerate() {
        wall[i].sort_by(f64::total_cmp);
        eprintln!(
            "{name:>28}: median {:8.2} ms / batch {b} ({:7.0} img/s), CPU {:6.1} ms per forward",
            wall[i][reps / 2] * 1e3,
            b as f64 / wall[i][reps / 2],
            cpu_t[i] / reps as f64 * 1e3
        );
    }
    let (packed, int8, _) = model.weight_bytes();
    eprintln!("model (host): packed weights {packed} bytes, {int8} codes"); // MEM
    for (name, gm) in &gpus {
        eprintln!("{name}: GPU weight buffers {} bytes", gm.weight_bytes()); // MEM
    }
    eprintln!("cpu fast path panels: {:?} bytes", cpu.fast_weight_bytes()); // MEM
}
