//! `shaders/attention.wgsl` against `reference::attention`: forward (probs, out) and backward
//! (dqkv) on random shapes with and without key padding (all-masked rows included), the
//! fake-quant path with STE masks, finite differences of the f64 reference, bit-exact
//! determinism and shape errors.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use wqat::gpu::{DType, GpuContext, GpuTensor};
use wqat::kernels::attention::{self as k, AttentionConfig, AttentionQuant, QuantOperand};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::reference::attention::{self as r, RefAttentionQuant};
use wqat::reference::fake_quant;
use wqat::testing::{self, assert_bit_exact, assert_close, assert_close_scaled};

/// Softmax probabilities in [0, 1]: f32 scores (dot products of up to ~40 terms) and f32
/// `exp` (a few ULP on lavapipe) against the f64 reference; measured errors are ~1e-7.
const ATTN_PROBS_ATOL: f32 = 2e-6;
const ATTN_PROBS_RTOL: f32 = 1e-5;
/// Outputs and gradients are fixed-order f32 sums (up to T * dh terms, plus the softmax error
/// carried through), measured against each element's sum of absolute terms.
const ATTN_SUM_RTOL: f32 = 2e-5;

fn up(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, shape, v).unwrap()
}
fn zeros(ctx: &GpuContext, shape: &[usize]) -> GpuTensor {
    GpuTensor::zeros(ctx, shape, DType::F32).unwrap()
}

/// A key padding mask: per sample a random number of trailing padded keys, some samples
/// also with scattered padded keys; sample `all_masked` (if any) fully padded.
fn random_mask(rng: &mut ChaCha8Rng, cfg: &AttentionConfig, all_masked: Option<usize>) -> Vec<f32> {
    let t = cfg.tokens;
    let mut m = vec![0.0; cfg.batch * t];
    for b in 0..cfg.batch {
        let pad = rng.random_range(0..t);
        for j in t - pad..t {
            m[b * t + j] = 1.0;
        }
        if rng.random_bool(0.3) {
            for j in 0..t {
                if rng.random_bool(0.2) {
                    m[b * t + j] = 1.0;
                }
            }
        }
        if all_masked == Some(b) {
            m[b * t..(b + 1) * t].fill(1.0);
        }
    }
    m
}

/// Host-side quantizers of the tests: per-tensor states with ranges that clamp some values.
struct Quantizers {
    specs: [QuantSpec; 4],
    states: [Vec<f32>; 4],
}

impl Quantizers {
    /// q, k: signed symmetric (4..8 bits) clamping |x| > ~1.1; v: unsigned affine 8 bits
    /// with its zero point mid-range; probs: unsigned 8 bits clamping P > 3 / tokens (some
    /// probabilities of every row length clamp). `off` turns one state's fq flag off.
    fn new(rng: &mut ChaCha8Rng, tokens: usize, off: Option<usize>) -> Self {
        let l = QStateLayout::new(1);
        let sym = |bits: u32| QuantSpec { bits, signed: true, symmetric: true, channel_axis: None, full_range: false };
        let (qb, kb) = (rng.random_range(4..=8), rng.random_range(4..=8));
        let (q, kk) = (sym(qb), sym(kb));
        let specs = [q, kk, QuantSpec::activation(8), QuantSpec::activation(8)];
        let mut states = [
            l.build(&[1.1 / q.qmax() as f32], &[0.0]),
            l.build(&[1.2 / kk.qmax() as f32], &[0.0]),
            l.build(&[2.2 / 255.0], &[120.0]),
            l.build(&[(3.0 / tokens as f32).min(1.0) / 255.0], &[0.0]),
        ];
        if let Some(i) = off {
            states[i][QStateLayout::FQ_ENABLED] = 0.0;
        }
        Quantizers { specs, states }
    }
    fn gpu(&self, ctx: &GpuContext) -> Vec<GpuTensor> {
        self.states.iter().map(|s| up(ctx, &[s.len()], s)).collect()
    }
    fn reference(&self) -> RefAttentionQuant<'_> {
        let op = |i: usize| Some((&self.states[i][..], self.specs[i]));
        RefAttentionQuant { q: op(0), k: op(1), v: op(2), probs: op(3) }
    }
}

fn gpu_quant<'a>(states: &'a [GpuTensor], q: &Quantizers) -> AttentionQuant<'a> {
    let op = |i: usize| Some(QuantOperand { state: &states[i], spec: q.specs[i] });
    AttentionQuant { q: op(0), k: op(1), v: op(2), probs: op(3) }
}

/// Runs forward and backward on the GPU in one submit: (probs, out, dqkv). `wg`: the
/// workgroup size of both kernels (default: the adapter's).
fn run_wg(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    qkv: &[f32],
    mask: Option<&[f32]>,
    quant: &AttentionQuant,
    dout: &[f32],
    wg: Option<usize>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let gqkv = up(ctx, &cfg.qkv_shape(), qkv);
    let gmask = mask.map(|m| up(ctx, &cfg.mask_shape(), m));
    let gdout = up(ctx, &cfg.out_shape(), dout);
    let (probs, out, dqkv) =
        (zeros(ctx, &cfg.probs_shape()), zeros(ctx, &cfg.out_shape()), zeros(ctx, &cfg.qkv_shape()));
    let m = gmask.as_ref();
    let (mut ds, bwd) = match wg {
        None => (
            k::attention_forward(ctx, cfg, &gqkv, m, quant, &probs, &out).unwrap(),
            k::attention_backward(ctx, cfg, &gqkv, m, quant, &probs, &gdout, &dqkv).unwrap(),
        ),
        Some(wg) => (
            k::attention_forward_wg(ctx, cfg, &gqkv, m, quant, &probs, &out, wg).unwrap(),
            k::attention_backward_wg(ctx, cfg, &gqkv, m, quant, &probs, &gdout, &dqkv, wg).unwrap(),
        ),
    };
    assert_eq!(ds.len(), 1, "forward is one dispatch");
    assert!(bwd.len() <= 2, "backward is at most two dispatches");
    ds.extend(bwd);
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
    (probs.read_f32(ctx).unwrap(), out.read_f32(ctx).unwrap(), dqkv.read_f32(ctx).unwrap())
}

fn run(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    qkv: &[f32],
    mask: Option<&[f32]>,
    quant: &AttentionQuant,
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    run_wg(ctx, cfg, qkv, mask, quant, dout, None)
}

/// Checks that rows whose keys are all masked have probs 0 and out 0 exactly.
fn check_all_masked(what: &str, cfg: &AttentionConfig, mask: &[f32], probs: &[f32], out: &[f32]) {
    let (t, d) = (cfg.tokens, cfg.d_model());
    for b in 0..cfg.batch {
        if mask[b * t..(b + 1) * t].iter().all(|&m| m != 0.0) {
            let prow = &probs[b * cfg.heads * t * t..(b + 1) * cfg.heads * t * t];
            assert!(prow.iter().all(|&p| p == 0.0), "{what}: all-masked sample {b} has nonzero probs");
            assert!(out[b * t * d..(b + 1) * t * d].iter().all(|&o| o == 0.0), "{what}: all-masked sample {b} out");
        }
    }
}

/// One GPU-vs-reference case: forward against the reference forward, backward against the
/// reference backward fed with the kernel's probs (so fake-quant codes of P agree bit for bit).
/// Returns how many probabilities the probs quantizer clamps (0 without one).
fn check_case(
    ctx: &GpuContext,
    cfg: &AttentionConfig,
    mask: Option<&[f32]>,
    quant: Option<&Quantizers>,
    what: &str,
    rng: &mut ChaCha8Rng,
    wg: Option<usize>,
) -> usize {
    let n = cfg.qkv_shape().iter().product();
    let qkv = testing::uniform(rng, n, -1.5, 1.5);
    let dout = testing::uniform(rng, cfg.out_shape().iter().product(), -1.0, 1.0);
    let states = quant.map(|q| q.gpu(ctx));
    let gq = match (quant, &states) {
        (Some(q), Some(s)) => gpu_quant(s, q),
        _ => AttentionQuant::default(),
    };
    let rq = quant.map(|q| q.reference()).unwrap_or_default();
    let (probs, out, dqkv) = run_wg(ctx, cfg, &qkv, mask, &gq, &dout, wg);
    assert!(probs.iter().chain(&out).chain(&dqkv).all(|v| v.is_finite()), "{what}: non-finite output");

    let (want_p, want_out) = r::forward(cfg, &qkv, mask, &rq);
    assert_close(&format!("{what}: probs"), &probs, &want_p, ATTN_PROBS_RTOL, ATTN_PROBS_ATOL);
    // out from the kernel's probs (with a probs quantizer the codes must see the same P);
    // in fp32 mode also against the reference's own probs.
    let (out_k, abs_k) = r::output(cfg, &qkv, mask, &rq, &probs);
    assert_close_scaled(&format!("{what}: out"), &out, &out_k, &abs_k, ATTN_SUM_RTOL);
    if quant.is_none() {
        let (_, abs) = r::output(cfg, &qkv, mask, &rq, &want_p);
        assert_close_scaled(&format!("{what}: out vs reference probs"), &out, &want_out, &abs, ATTN_SUM_RTOL);
    }
    if let Some(m) = mask {
        check_all_masked(what, cfg, m, &probs, &out);
    }

    let want_d = r::backward(cfg, &qkv, mask, &rq, &probs, &dout);
    let abs_d = r::backward_abs(cfg, &qkv, mask, &rq, &probs, &dout);
    assert_close_scaled(&format!("{what}: dqkv"), &dqkv, &want_d, &abs_d, ATTN_SUM_RTOL);
    quant.map_or(0, |q| {
        let (st, spec) = (&q.states[3], q.specs[3]);
        let ones = vec![1.0; probs.len()];
        let ste = fake_quant::ste_backward(&probs, &ones, st, 1, 1, spec.qmin() as f32, spec.qmax() as f32);
        ste.iter().filter(|&&m| m == 0.0).count()
    })
}

fn random_cfg(rng: &mut ChaCha8Rng) -> AttentionConfig {
    AttentionConfig::new(
        testing::size(rng, 1, 3),
        testing::size(rng, 1, 40),
        testing::size(rng, 1, 4),
        testing::size(rng, 1, 33),
    )
}

#[test]
fn attention_fp32_matches_reference_on_random_shapes() {
    let ctx = testing::ctx();
    let seed = 7001;
    let mut rng = testing::rng(seed);
    let mut cfgs: Vec<AttentionConfig> = (0..10).map(|_| random_cfg(&mut rng)).collect();
    // Edges: one token, long sequences past the backward workgroup (64 / 128), wide heads.
    cfgs.extend([
        AttentionConfig::new(2, 1, 3, 5),
        AttentionConfig::new(1, 70, 2, 40),
        AttentionConfig::new(2, 33, 1, 16),
        AttentionConfig::new(3, 17, 4, 16),
    ]);
    for (case, cfg) in cfgs.iter().enumerate() {
        for masked in [false, true] {
            let mask = masked.then(|| {
                let all = (cfg.batch > 1 || case % 2 == 0).then_some(case % cfg.batch);
                random_mask(&mut rng, cfg, all)
            });
            let what = format!("seed {seed} case {case} {cfg:?} mask {masked}");
            check_case(&ctx, cfg, mask.as_deref(), None, &what, &mut rng, None);
        }
    }
}

#[test]
fn attention_fake_quant_matches_reference() {
    let ctx = testing::ctx();
    let seed = 7002;
    let mut rng = testing::rng(seed);
    let mut clamped = 0;
    for case in 0..8usize {
        let cfg = if case == 0 { AttentionConfig::new(2, 1, 2, 3) } else { random_cfg(&mut rng) };
        // Cases 4..8 turn one quantizer's fq flag off (it must be the identity).
        let off = (case >= 4).then(|| case - 4);
        let q = Quantizers::new(&mut rng, cfg.tokens, off);
        let mask = (case % 2 == 1).then(|| random_mask(&mut rng, &cfg, Some(0)));
        let what = format!("seed {seed} case {case} {cfg:?} quant off {off:?}");
        clamped += check_case(&ctx, &cfg, mask.as_deref(), Some(&q), &what, &mut rng, None);
    }
    assert!(clamped > 0, "seed {seed}: the probs quantizer clamps some probabilities");
}

#[test]
fn attention_gpu_workgroup_size_matches_reference() {
    // 64 invocations, what real GPUs get: on lavapipe that is eight 8-wide vectors per
    // workgroup, so the backward's barriers between phases are exercised; T past 64 makes
    // lanes loop. fp32 and fake-quant, with padding.
    let ctx = testing::ctx();
    let seed = 7007;
    let mut rng = testing::rng(seed);
    let cfgs = [
        AttentionConfig::new(2, 70, 2, 20),
        AttentionConfig::new(3, 25, 4, 16),
        AttentionConfig::new(2, 1, 1, 3),
        AttentionConfig::new(1, 64, 1, 33),
    ];
    for (case, cfg) in cfgs.iter().enumerate() {
        let q = Quantizers::new(&mut rng, cfg.tokens, None);
        let quant = (case % 2 == 1).then_some(&q);
        let mask = (case != 2).then(|| random_mask(&mut rng, cfg, (cfg.batch > 1).then_some(0)));
        let what = format!("seed {seed} case {case} {cfg:?} wg 64 quant {}", quant.is_some());
        check_case(&ctx, cfg, mask.as_deref(), quant, &what, &mut rng, Some(64));
    }
}

#[test]
fn attention_state_off_is_fp32() {
    // Every quantizer present with its fq flag 0: the same bits as no quantizers at all.
    let ctx = testing::ctx();
    let mut rng = testing::rng(7003);
    let cfg = AttentionConfig::new(2, 13, 2, 7);
    let mut q = Quantizers::new(&mut rng, cfg.tokens, None);
    for s in &mut q.states {
        s[QStateLayout::FQ_ENABLED] = 0.0;
    }
    let qkv = testing::uniform(&mut rng, cfg.qkv_shape().iter().product(), -1.5, 1.5);
    let dout = testing::uniform(&mut rng, cfg.out_shape().iter().product(), -1.0, 1.0);
    let mask = random_mask(&mut rng, &cfg, None);
    let states = q.gpu(&ctx);
    let a = run(&ctx, &cfg, &qkv, Some(&mask), &gpu_quant(&states, &q), &dout);
    let b = run(&ctx, &cfg, &qkv, Some(&mask), &AttentionQuant::default(), &dout);
    assert_bit_exact("probs", &a.0, &b.0);
    assert_bit_exact("out", &a.1, &b.1);
    assert_bit_exact("dqkv", &a.2, &b.2);
}

#[test]
fn attention_reference_backward_matches_finite_differences() {
    // L = sum(out * w); fp32 mode, all in f64.
    let mut rng = testing::rng(7004);
    for (case, cfg) in
        [AttentionConfig::new(2, 5, 2, 3), AttentionConfig::new(1, 4, 1, 6), AttentionConfig::new(2, 1, 1, 2)]
            .iter()
            .enumerate()
    {
        let qkv: Vec<f64> =
            testing::uniform(&mut rng, cfg.qkv_shape().iter().product(), -1.5, 1.5).iter().map(|&x| x as f64).collect();
        let w: Vec<f64> =
            testing::uniform(&mut rng, cfg.out_shape().iter().product(), -1.0, 1.0).iter().map(|&x| x as f64).collect();
        let mask = (case == 0).then(|| {
            let mut m = vec![0.0f32; cfg.batch * cfg.tokens];
            m[3] = 1.0; // sample 0: key 3 padded
            m[cfg.tokens..].fill(1.0); // sample 1: every key padded
            m
        });
        let q = RefAttentionQuant::default();
        let (p, _) = r::forward_f64(cfg, &qkv, mask.as_deref(), &q);
        let grad = r::backward_f64(cfg, &qkv, mask.as_deref(), &q, &p, &w);
        let mut loss = |x: &[f64]| -> f64 {
            let (_, out) = r::forward_f64(cfg, x, mask.as_deref(), &q);
            out.iter().zip(&w).map(|(o, w)| o * w).sum()
        };
        for (i, g) in grad.iter().enumerate() {
            let fd = testing::finite_diff(&mut loss, &qkv, i, 1e-5);
            let tol = testing::FINITE_DIFF_RTOL * (1.0 + fd.abs());
            assert!((g - fd).abs() <= tol, "case {case} {cfg:?}: dqkv[{i}] = {g}, finite difference {fd}");
        }
    }
}

#[test]
fn attention_reference_ste_is_the_gradient_at_the_quantized_point() {
    // With q, k, v quantizers (no probs quantizer) the STE backward is the fp32 backward at
    // FQ(qkv), times the masks of the unclamped codes: an independent check of the STE path.
    let mut rng = testing::rng(7005);
    let cfg = AttentionConfig::new(2, 9, 2, 5);
    let q = Quantizers::new(&mut rng, cfg.tokens, None);
    let rq = RefAttentionQuant { probs: None, ..q.reference() };
    let qkv = testing::uniform(&mut rng, cfg.qkv_shape().iter().product(), -1.5, 1.5);
    let dout = testing::uniform(&mut rng, cfg.out_shape().iter().product(), -1.0, 1.0);
    let mask = random_mask(&mut rng, &cfg, None);
    let (p, _) = r::forward(&cfg, &qkv, Some(&mask), &rq);
    let got = r::backward(&cfg, &qkv, Some(&mask), &rq, &p, &dout);

    let dm = cfg.d_model();
    let part = |i: usize| (i % (3 * dm)) / dm;
    let (mut xq, mut ste) = (qkv.clone(), vec![1.0f32; qkv.len()]);
    let mut clamped = 0;
    for i in 0..qkv.len() {
        let st = &q.states[part(i)];
        let spec = q.specs[part(i)];
        let (qmin, qmax) = (spec.qmin() as f32, spec.qmax() as f32);
        xq[i] = fake_quant::fake_quant_forward(&qkv[i..i + 1], st, 1, 1, qmin, qmax)[0];
        ste[i] = fake_quant::ste_backward(&qkv[i..i + 1], &[1.0], st, 1, 1, qmin, qmax)[0];
        clamped += (ste[i] == 0.0) as usize;
    }
    assert!(clamped > 0, "the test quantizers clamp some values");
    let none = RefAttentionQuant::default();
    let (pq, _) = r::forward(&cfg, &xq, Some(&mask), &none);
    assert_close("probs at FQ(qkv)", &p, &pq, 1e-6, 1e-7);
    let at_q = r::backward(&cfg, &xq, Some(&mask), &none, &p, &dout);
    let want: Vec<f32> = at_q.iter().zip(&ste).map(|(g, m)| g * m).collect();
    assert_close("STE dqkv", &got, &want, 1e-6, 1e-7);
}

#[test]
fn attention_is_deterministic() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(7006);
    let cfg = AttentionConfig::new(3, 25, 4, 16);
    let qkv = testing::uniform(&mut rng, cfg.qkv_shape().iter().product(), -1.5, 1.5);
    let dout = testing::uniform(&mut rng, cfg.out_shape().iter().product(), -1.0, 1.0);
    let mask = random_mask(&mut rng, &cfg, None);
    let q = Quantizers::new(&mut rng, cfg.tokens, None);
    let states = q.gpu(&ctx);
    for quant in [AttentionQuant::default(), gpu_quant(&states, &q)] {
        let a = run(&ctx, &cfg, &qkv, Some(&mask), &quant, &dout);
        let b = run(&ctx, &cfg, &qkv, Some(&mask), &quant, &dout);
        assert_bit_exact("probs", &a.0, &b.0);
        assert_bit_exact("out", &a.1, &b.1);
        assert_bit_exact("dqkv", &a.2, &b.2);
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let ctx = testing::ctx();
    let cfg = AttentionConfig::new(2, 5, 2, 4);
    let qkv = zeros(&ctx, &cfg.qkv_shape());
    let probs = zeros(&ctx, &cfg.probs_shape());
    let out = zeros(&ctx, &cfg.out_shape());
    let dout = zeros(&ctx, &cfg.out_shape());
    let dqkv = zeros(&ctx, &cfg.qkv_shape());
    let none = AttentionQuant::default();
    let fwd = |cfg: &AttentionConfig,
               qkv: &GpuTensor,
               m: Option<&GpuTensor>,
               q: &AttentionQuant,
               p: &GpuTensor,
               o: &GpuTensor| { k::attention_forward(&ctx, cfg, qkv, m, q, p, o).map(|_| ()) };
    fwd(&cfg, &qkv, None, &none, &probs, &out).unwrap();
    let bad_qkv = zeros(&ctx, &[2, 5, 8]);
    assert!(fwd(&cfg, &bad_qkv, None, &none, &probs, &out).is_err(), "qkv [B, T, D]");
    let bad_probs = zeros(&ctx, &[2, 2, 5, 4]);
    assert!(fwd(&cfg, &qkv, None, &none, &bad_probs, &out).is_err(), "probs shape");
    assert!(fwd(&cfg, &qkv, None, &none, &probs, &dqkv).is_err(), "out shape");
    let bad_mask = zeros(&ctx, &[2, 4]);
    assert!(fwd(&cfg, &qkv, Some(&bad_mask), &none, &probs, &out).is_err(), "mask shape");
    assert!(fwd(&AttentionConfig::new(2, 0, 2, 4), &qkv, None, &none, &probs, &out).is_err(), "zero tokens");
    let state = zeros(&ctx, &[QStateLayout::new(1).len()]);
    let per_channel = QuantOperand { state: &state, spec: QuantSpec::weight(8) };
    assert!(
        fwd(&cfg, &qkv, None, &AttentionQuant { k: Some(per_channel), ..none }, &probs, &out).is_err(),
        "per channel"
    );
    let short = zeros(&ctx, &[QStateLayout::new(2).len()]);
    let bad_state = QuantOperand { state: &short, spec: QuantSpec::activation(8) };
    assert!(fwd(&cfg, &qkv, None, &AttentionQuant { v: Some(bad_state), ..none }, &probs, &out).is_err(), "state len");
    let bits = QuantOperand { state: &state, spec: QuantSpec::activation(9) };
    assert!(fwd(&cfg, &qkv, None, &AttentionQuant { probs: Some(bits), ..none }, &probs, &out).is_err(), "9 bits");
    assert!(fwd(&cfg, &qkv, None, &none, &probs, &probs).is_err(), "out with the probs shape");

    k::attention_backward(&ctx, &cfg, &qkv, None, &none, &probs, &dout, &dqkv).unwrap();
    assert!(k::attention_backward(&ctx, &cfg, &qkv, None, &none, &probs, &dout, &out).is_err(), "dqkv shape");
    assert!(k::attention_backward(&ctx, &cfg, &qkv, None, &none, &probs, &dqkv, &dqkv).is_err(), "dout shape");
    assert!(k::attention_backward(&ctx, &cfg, &qkv, None, &none, &probs, &dout, &qkv).is_err(), "dqkv aliases qkv");
}
