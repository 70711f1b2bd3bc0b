//! Learned step sizes (LSQ / LSQ+) in the compiled training step: the scale and zero-point
//! gradients of every quantizer against a CPU reference of the whole (small) graph, learned
//! scales feeding the forward (GPU logits = CPU reference graph logits), and a short run
//! whose converted int8 model uses the learned scales and agrees with fake-quant.

use std::path::PathBuf;
use wqat::engine::state::{lsq_scale_name, lsq_zero_name};
use wqat::engine::train::{Quiet, TrainConfig, Trainer};
use wqat::engine::{CompileOptions, Compiled, ModelState, QConfig, QuantizerKind, StepOptions};
use wqat::kernels::lsq::grad_scale;
use wqat::kernels::optim;
use wqat::model::{zoo, Act, Graph, Node, Op};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::reference::{fake_quant as rfq, lsq as rlsq};
use wqat::testing;

/// Scale gradients of the GPU against the f64 CPU reference, relative to the sum of
/// absolute terms: the forward values agree to f32 rounding (GEMM order), so `dy` differs
/// in its last bits, and a value within rounding of a code boundary could flip a code.
const LSQ_GRAD_RTOL: f32 = 1e-3;

fn step_opts(lr_mult: f32) -> StepOptions {
    StepOptions {
        optimizer: Default::default(),
        momentum: 0.9,
        weight_decay: 5e-4,
        clip_grad_norm: None,
        skip_nonfinite: true,
        lsq_lr_mult: lr_mult,
    }
}

fn qconfig(kind: QuantizerKind, wbits: u32, abits: u32) -> QConfig {
    QConfig { quantizer: kind, ..QConfig::new(wbits, abits).unwrap() }
}

/// Calibrates on the images already in `c.images`, then sets the learned parameters from
/// the calibrated states (what `wqat train` does at the end of PTQ).
fn calibrate(ctx: &wqat::gpu::GpuContext, state: &ModelState, c: &Compiled) {
    state.set_quant_flags(ctx, false, true, Some(true)).unwrap();
    ctx.submit_plan(&c.calibrate_plan()).unwrap();
    state.set_quant_flags(ctx, true, false, None).unwrap();
    ctx.submit_plan(&c.lsq_init_plan()).unwrap();
}

struct Quant {
    state: Vec<f32>,
    spec: QuantSpec,
}

impl Quant {
    fn read(ctx: &wqat::gpu::GpuContext, m: &ModelState, name: &str) -> Quant {
        let q = m.quantizer(name).unwrap_or_else(|| panic!("no quantizer {name}"));
        let spec = m.qconfig.spec_for_state(&m.nodes, q.spec.role, q.spec.channels);
        Quant { state: q.state.read_f32(ctx).unwrap(), spec }
    }
    fn channels(&self) -> usize {
        (self.state.len() - QStateLayout::HEADER) / 5
    }
    /// Fake-quant of `x` (`inner` values per channel run).
    fn fq(&self, x: &[f32], inner: usize) -> Vec<f32> {
        rfq::fake_quant_forward(
            x,
            &self.state,
            self.channels(),
            inner,
            self.spec.qmin() as f32,
            self.spec.qmax() as f32,
        )
    }
    fn mask(&self, x: &[f32], dy: &[f32], inner: usize) -> Vec<f32> {
        let (q0, q1) = (self.spec.qmin() as f32, self.spec.qmax() as f32);
        rfq::ste_backward(x, dy, &self.state, self.channels(), inner, q0, q1)
    }
    /// `(dscale, dzero, |dscale| terms, |dzero| terms)` with the gradient scale for `n`
    /// values per channel and sample.
    fn lsq(&self, x: &[f32], dy: &[f32], inner: usize, n: usize) -> [Vec<f32>; 4] {
        let (q0, q1) = (self.spec.qmin() as f32, self.spec.qmax() as f32);
        let gf = grad_scale(n, self.spec.qmax());
        let (a, b, c, d) = rlsq::lsq_grads(x, dy, &self.state, self.channels(), inner, q0, q1, gf);
        [a, b, c, d]
    }
}

/// `y[b, o] = sum_i x[b, i] w[o, i]` in f64.
fn linear(x: &[f32], w: &[f32], batch: usize, inp: usize, out: usize) -> Vec<f32> {
    let mut y = vec![0f32; batch * out];
    for b in 0..batch {
        for o in 0..out {
            y[b * out + o] = (0..inp).map(|i| x[b * inp + i] as f64 * w[o * inp + i] as f64).sum::<f64>() as f32;
        }
    }
    y
}

/// flatten -> fc1 (ReLU) -> fc2, no biases: input, fc1 output and logits quantizers
/// (activations, per tensor) and two per-channel weight quantizers, all learned.
fn mlp() -> Graph {
    let nodes = vec![
        Node::new("flat", Op::Flatten),
        Node::new("fc1", Op::Linear { out_features: 7, bias: false, act: Act::Relu }),
        Node::new("fc2", Op::Linear { out_features: 5, bias: false, act: Act::None }),
    ];
    let g = Graph { name: "lsq-mlp".into(), input: [1, 3, 4], num_classes: 5, nodes };
    g.resolve().unwrap();
    g
}

/// The scale (and LSQ+ zero-point) gradients of one training step against the CPU
/// reference: forward with the reference fake-quant, softmax cross-entropy (mean), backward
/// with the STE, and every quantizer's LSQ reduction of the gradient wrt its fake-quantized
/// values (gradient scale `1/sqrt(n qmax)`, `n` = values per channel of one sample).
fn check_mlp_gradients(kind: QuantizerKind, per_tensor_fc1: bool) {
    let ctx = testing::ctx();
    let g = mlp();
    let (batch, inp, hid, out) = (6, 12, 7, 5);
    let mut q = qconfig(kind, 4, 4);
    if per_tensor_fc1 {
        q = q.with_layer(wqat::engine::LayerQConfig::parse("fc1=per-tensor").unwrap()).unwrap();
    }
    let state = ModelState::new(&ctx, &g, q, 7).unwrap();
    let opts = CompileOptions { batch, quant: true, train: true };
    let c = Compiled::new(&ctx, &state, &opts, Some(&step_opts(1.0))).unwrap();
    let mut rng = testing::rng(31);
    let x = testing::uniform(&mut rng, batch * inp, -1.0, 2.0);
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 3) % out as u32).collect();
    c.images.write(&ctx, &x).unwrap();
    c.labels.write(&ctx, &labels).unwrap();
    calibrate(&ctx, &state, &c);
    // lr 0: the step computes gradients and leaves every value where it is.
    optim::write_hyper(&ctx, &c.hyper, 0.0, 1).unwrap();
    ctx.submit_plan(&c.train_plan(true, false)).unwrap();

    let qx = Quant::read(&ctx, &state, "input.output_quant");
    let q1 = Quant::read(&ctx, &state, "fc1.output_quant");
    let q2 = Quant::read(&ctx, &state, "fc2.output_quant");
    let w1q = Quant::read(&ctx, &state, "fc1.weight_quant");
    let w2q = Quant::read(&ctx, &state, "fc2.weight_quant");
    let w1 = state.param("fc1.weight").unwrap().value.read_f32(&ctx).unwrap();
    let w2 = state.param("fc2.weight").unwrap().value.read_f32(&ctx).unwrap();
    // Forward.
    let xq = qx.fq(&x, 1);
    let (w1f, w2f) = (w1q.fq(&w1, inp), w2q.fq(&w2, hid));
    let h: Vec<f32> = linear(&xq, &w1f, batch, inp, hid).into_iter().map(|v| v.max(0.0)).collect();
    let hq = q1.fq(&h, 1);
    let logits = linear(&hq, &w2f, batch, hid, out);
    let lq = q2.fq(&logits, 1);
    // dL/d(lq): (softmax - onehot) / B.
    let mut dlq = vec![0f32; batch * out];
    for b in 0..batch {
        let row = &lq[b * out..(b + 1) * out];
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for k in 0..out {
            let onehot = (k == labels[b] as usize) as u32 as f64;
            dlq[b * out + k] = ((e[k] / sum - onehot) / batch as f64) as f32;
        }
    }
    // Backward.
    let dlogits = q2.mask(&logits, &dlq, 1);
    let mut dw2q = vec![0f32; out * hid];
    let mut dhq = vec![0f32; batch * hid];
    for o in 0..out {
        for j in 0..hid {
            dw2q[o * hid + j] =
                (0..batch).map(|b| dlogits[b * out + o] as f64 * hq[b * hid + j] as f64).sum::<f64>() as f32;
        }
    }
    for b in 0..batch {
        for j in 0..hid {
            dhq[b * hid + j] =
                (0..out).map(|o| dlogits[b * out + o] as f64 * w2f[o * hid + j] as f64).sum::<f64>() as f32;
        }
    }
    let dh: Vec<f32> = q1.mask(&h, &dhq, 1).iter().zip(&h).map(|(&d, &v)| if v > 0.0 { d } else { 0.0 }).collect();
    let mut dw1q = vec![0f32; hid * inp];
    let mut dxq = vec![0f32; batch * inp];
    for j in 0..hid {
        for i in 0..inp {
            dw1q[j * inp + i] = (0..batch).map(|b| dh[b * hid + j] as f64 * xq[b * inp + i] as f64).sum::<f64>() as f32;
        }
    }
    for b in 0..batch {
        for i in 0..inp {
            dxq[b * inp + i] = (0..hid).map(|j| dh[b * hid + j] as f64 * w1f[j * inp + i] as f64).sum::<f64>() as f32;
        }
    }
    let want = [
        ("input.output_quant", qx.lsq(&x, &dxq, 1, inp)),
        ("fc1.output_quant", q1.lsq(&h, &dhq, 1, hid)),
        ("fc2.output_quant", q2.lsq(&logits, &dlq, 1, out)),
        // Weights: n = values per channel (the whole tensor when per tensor).
        ("fc1.weight_quant", w1q.lsq(&w1, &dw1q, inp, w1.len() / w1q.channels())),
        ("fc2.weight_quant", w2q.lsq(&w2, &dw2q, hid, hid)),
    ];
    let mut zeros_checked = 0;
    for (name, [ds, dz, ads, adz]) in &want {
        let what = format!("{kind} {name}");
        let got = state.param(&lsq_scale_name(name)).unwrap().grad.as_ref().unwrap().read_f32(&ctx).unwrap();
        assert!(ds.iter().any(|&v| v != 0.0), "{what}: zero reference gradient");
        testing::assert_close_scaled(&format!("{what} dscale"), &got, ds, ads, LSQ_GRAD_RTOL);
        match state.param(&lsq_zero_name(name)) {
            Ok(p) => {
                let got = p.grad.as_ref().unwrap().read_f32(&ctx).unwrap();
                testing::assert_close_scaled(&format!("{what} dzero"), &got, dz, adz, LSQ_GRAD_RTOL);
                zeros_checked += 1;
            }
            Err(_) => assert!(kind != QuantizerKind::LsqPlus || name.contains("weight"), "{what}: no zero point"),
        }
    }
    // LSQ+ learns the zero points of the three affine activation quantizers.
    assert_eq!(zeros_checked, if kind == QuantizerKind::LsqPlus { 3 } else { 0 });
}

#[test]
fn lsq_gradients_match_cpu_reference() {
    check_mlp_gradients(QuantizerKind::Lsq, false);
    check_mlp_gradients(QuantizerKind::Lsq, true);
}

#[test]
fn lsq_plus_gradients_match_cpu_reference() {
    check_mlp_gradients(QuantizerKind::LsqPlus, false);
}

/// A few SGD steps with learned scales on mnist-cnn (conv+BN folding, max pool carrying a
/// quantizer, linear layers): the scales move, every state holds its clamped parameter
/// (zero point rounded), and the GPU evaluation's logits equal the CPU reference graph's,
/// which reads the learned scales from the checkpoint.
fn check_trained_logits(kind: QuantizerKind) {
    let ctx = testing::ctx();
    let g = zoo::build("mnist-cnn", [1, 12, 12], 10).unwrap();
    let state = ModelState::new(&ctx, &g, qconfig(kind, 4, 4), 21).unwrap();
    let batch = 8;
    let opts = CompileOptions { batch, quant: true, train: true };
    let c = Compiled::new(&ctx, &state, &opts, Some(&step_opts(2.0))).unwrap();
    let mut rng = testing::rng(9);
    let images = |rng: &mut rand_chacha::ChaCha8Rng| testing::uniform(rng, batch * 144, -1.5, 1.5);
    c.images.write(&ctx, &images(&mut rng)).unwrap();
    calibrate(&ctx, &state, &c);
    let learned: Vec<_> = state.params.iter().filter(|p| p.spec.kind.is_quantizer_param()).collect();
    let before: Vec<Vec<f32>> = learned.iter().map(|p| p.value.read_f32(&ctx).unwrap()).collect();
    let labels: Vec<u32> = (0..batch as u32).collect();
    c.labels.write(&ctx, &labels).unwrap();
    for step in 1..=4 {
        c.images.write(&ctx, &images(&mut rng)).unwrap();
        optim::write_hyper(&ctx, &c.hyper, 0.05, step).unwrap();
        ctx.submit_plan(&c.train_plan(true, false)).unwrap();
    }
    let after: Vec<Vec<f32>> = learned.iter().map(|p| p.value.read_f32(&ctx).unwrap()).collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(moved * 2 > learned.len(), "{kind}: only {moved} of {} learned tensors moved", learned.len());
    // The states hold the parameters: scale, 1/scale, round(zero point).
    for q in &state.quantizers {
        let Ok(p) = state.param(&lsq_scale_name(&q.spec.name)) else { continue };
        let s = p.value.read_f32(&ctx).unwrap();
        let v = q.state.read_f32(&ctx).unwrap();
        let l = QStateLayout::new(q.spec.channels);
        assert_eq!(&v[l.scale()..l.scale() + s.len()], &s[..], "{} scale", q.spec.name);
        assert!(s.iter().all(|&x| x > 0.0));
        if let Ok(z) = state.param(&lsq_zero_name(&q.spec.name)) {
            let z = z.value.read_f32(&ctx).unwrap();
            let spec = state.qconfig.spec_for_state(&state.nodes, q.spec.role, q.spec.channels);
            let want: Vec<f32> =
                z.iter().map(|v| v.round_ties_even().clamp(spec.qmin() as f32, spec.qmax() as f32)).collect();
            assert_eq!(&v[l.zero_point()..l.zero_point() + z.len()], &want[..], "{} zero point", q.spec.name);
        }
    }
    // Evaluation (running BN statistics) against the CPU reference graph.
    let eval = Compiled::new(&ctx, &state, &CompileOptions { batch, quant: true, train: false }, None).unwrap();
    let x = images(&mut rng);
    eval.images.write(&ctx, &x).unwrap();
    ctx.submit_plan(&eval.eval_plan()).unwrap();
    let got = eval.logits.read_f32(&ctx).unwrap();
    let ckpt = state.to_checkpoint(&ctx, &[]).unwrap();
    let want = wqat::reference::graph::fake_quant_forward(&g, &ckpt, &x, batch).unwrap();
    let lsb = ckpt.tensors["fc2.output_quant"].as_f32("q").unwrap()[4];
    let mut off = 0;
    for (a, b) in got.iter().zip(&want) {
        let d = ((a - b) / lsb).abs();
        assert!(d <= 2.01, "{kind}: logit differs by {d} LSB: {a} vs {b}");
        off += (d > 0.5) as usize;
    }
    assert!(off * 10 <= got.len(), "{kind}: {off} of {} logits differ by a code", got.len());
    // A checkpoint round trip keeps the learned parameters and their optimizer state.
    let path = std::env::temp_dir().join(format!("wqat-lsq-ckpt-{kind}-{}.safetensors", std::process::id()));
    ckpt.save(&path).unwrap();
    let loaded = wqat::tensorfile::TensorFile::load(&path).unwrap();
    let back = ModelState::from_checkpoint(&ctx, &path, &loaded, Some(&g)).unwrap();
    for p in learned {
        let q = back.param(&p.spec.name).unwrap();
        assert_eq!(q.value.read_f32(&ctx).unwrap(), p.value.read_f32(&ctx).unwrap(), "{}", p.spec.name);
        let (m0, m1) = (p.momentum.as_ref().unwrap(), q.momentum.as_ref().unwrap());
        assert_eq!(m1.read_f32(&ctx).unwrap(), m0.read_f32(&ctx).unwrap(), "{} momentum", p.spec.name);
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn lsq_trained_logits_equal_cpu_reference() {
    check_trained_logits(QuantizerKind::Lsq);
}

#[test]
fn lsq_plus_trained_logits_equal_cpu_reference() {
    check_trained_logits(QuantizerKind::LsqPlus);
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wqat-test-lsq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `wqat train --quantizer lsq+` on the digits at W4A4 with a per-layer override: the
/// converted int8 model carries the learned scales and agrees with fake-quant.
#[test]
fn lsq_run_converts_with_learned_scales() {
    let ctx = testing::ctx();
    let cfg = TrainConfig {
        epochs: 2,
        qat_epochs: 1,
        batch: 32,
        limit_train: Some(320),
        limit_test: Some(256),
        log_every: 5,
        calib_images: 64,
        lr: 0.05,
        qat_lr: 0.01,
        weight_bits: 4,
        act_bits: 4,
        quantizer: QuantizerKind::LsqPlus,
        lsq_lr_mult: 2.0,
        layer_qconfig: vec![wqat::engine::LayerQConfig::parse("fc2=quantizer=observer").unwrap()],
        out: out_dir("run"),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(ctx, cfg.clone(), None).unwrap();
    let report = t.run(&mut Quiet).unwrap();
    let agreement = report.agreement.unwrap();
    assert!(agreement >= 0.99, "agreement {agreement}");
    assert!(report.qat_acc.unwrap() > 0.6, "QAT accuracy {:?}", report.qat_acc);
    let load = |f: &str| wqat::tensorfile::TensorFile::load(&cfg.out.join(f)).unwrap();
    let (ptq, qat) = (load("ptq.safetensors"), load("qat.safetensors"));
    // Learned: fc1's weight scale moved from its calibrated value; fc2 kept its observer.
    let f32s = |f: &wqat::tensorfile::TensorFile, n: &str| f.tensors[n].as_f32(n).unwrap().to_vec();
    assert_ne!(f32s(&ptq, "fc1.weight_quant.scale"), f32s(&qat, "fc1.weight_quant.scale"));
    assert!(qat.tensors.contains_key("fc1.output_quant.zero_point"));
    assert!(!qat.tensors.contains_key("fc2.weight_quant.scale"));
    // The int8 model's weight scales are the learned ones.
    let m = wqat::infer::Int8Model::load(&cfg.out.join(wqat::engine::train::INT8_FILE)).unwrap();
    let k = m.graph.nodes.iter().position(|n| n.name == "fc1").unwrap();
    let wqat::infer::LayerKind::Int(il) = &m.layers[k].kind else { panic!("fc1 is not an integer layer") };
    assert_eq!(il.weight_scale, f32s(&qat, "fc1.weight_quant.scale"));
    let _ = std::fs::remove_dir_all(&cfg.out);
}
