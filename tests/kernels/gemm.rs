//! `shaders/gemm.wgsl` against `reference::gemm` on shapes that straddle the tiles, every
//! fusion flag, three tilings; the STE mask bit for bit; linear-layer backward formulas
//! against finite differences; shape errors; `shaders/copy.wgsl`.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use wqat::gpu::{DType, GpuTensor};
use wqat::kernels::gemm::{self as k, GemmConfig, GemmExtras, GemmTile};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::reference::gemm::{self as r, GemmInputs};
use wqat::testing::{self, assert_bit_exact, assert_close_scaled, FINITE_DIFF_RTOL, FP32_REDUCTION_RTOL};

/// Odd tilings (no power of two where one is allowed) to catch index mistakes the default
/// tiles hide, through workgroup memory and direct.
const ODD_TILE: GemmTile = GemmTile { wg_x: 3, wg_y: 5, tm: 3, tn: 8, bk: 7, shared: true };
const ODD_DIRECT: GemmTile = GemmTile { wg_x: 5, wg_y: 3, tm: 5, tn: 4, bk: 1, shared: false };

/// A quantizer state over `channels` channels; `fq_off` clears its fake-quant flag.
fn qstate(rng: &mut ChaCha8Rng, spec: &QuantSpec, channels: usize, fq_off: bool) -> Vec<f32> {
    let scales = testing::uniform(rng, channels, 0.02, 0.3);
    let zps: Vec<f32> =
        (0..channels).map(|_| if spec.symmetric { 0.0 } else { rng.random_range(0..=spec.qmax()) as f32 }).collect();
    let mut s = QStateLayout::new(channels).build(&scales, &zps);
    if fq_off {
        s[QStateLayout::FQ_ENABLED] = 0.0;
    }
    s
}

fn random_spec(rng: &mut ChaCha8Rng) -> Option<QuantSpec> {
    let bits = rng.random_range(2..=8);
    match rng.random_range(0..4) {
        0 => None,
        1 => Some(QuantSpec::activation(bits)),
        2 => Some(QuantSpec::weight(bits)),
        _ => Some(QuantSpec { bits, signed: true, symmetric: false, channel_axis: None, full_range: false }),
    }
}

/// Runs one configuration on the GPU and compares it with the reference.
fn run_case(seed: u64, cfg: &GemmConfig) {
    let ctx = testing::ctx();
    let mut rng = testing::rng(seed);
    let (m, n, kk) = (cfg.m, cfg.n, cfg.k);
    let a = testing::uniform(&mut rng, m * kk, -1.0, 1.0);
    let b = testing::uniform(&mut rng, kk * n, -1.0, 1.0);
    let c0 = testing::uniform(&mut rng, m * n, -1.0, 1.0);
    let bias = testing::uniform(&mut rng, n, -1.0, 1.0);
    let src = testing::uniform(&mut rng, m * n, -2.0, 2.0);
    let off = rng.random_range(0..6) == 0;
    let qa = cfg.fq_a.map(|s| qstate(&mut rng, &s, if s.channel_axis.is_some() { cfg.a_rows() } else { 1 }, off));
    let qb = cfg.fq_b.map(|s| qstate(&mut rng, &s, if s.channel_axis.is_some() { cfg.b_rows() } else { 1 }, false));
    let mq = cfg.mask.map(|s| qstate(&mut rng, &s, if s.channel_axis.is_some() { m } else { 1 }, off));

    let up = |shape: &[usize], v: &[f32]| GpuTensor::from_f32(&ctx, shape, v).unwrap();
    let (ga, gb, gc) = (up(&[m * kk], &a), up(&[kk * n], &b), up(&[m, n], &c0));
    let gbias = cfg.bias.then(|| up(&[n], &bias));
    let gqa = qa.as_ref().map(|q| up(&[q.len()], q));
    let gqb = qb.as_ref().map(|q| up(&[q.len()], q));
    let gsrc = cfg.mask.map(|_| up(&[m, n], &src));
    let gmq = mq.as_ref().map(|q| up(&[q.len()], q));
    let extra = GemmExtras {
        bias: gbias.as_ref(),
        qa: gqa.as_ref(),
        qb: gqb.as_ref(),
        mask_src: gsrc.as_ref(),
        mask_state: gmq.as_ref(),
    };
    let d = k::gemm(&ctx, cfg, &ga, &gb, &gc, &extra).unwrap();
    ctx.submit(&[&d]).unwrap();
    let got = gc.read_f32(&ctx).unwrap();

    let inp = GemmInputs {
        bias: cfg.bias.then_some(&bias[..]),
        qa: qa.as_deref(),
        qb: qb.as_deref(),
        mask_src: cfg.mask.map(|_| &src[..]),
        mask_state: mq.as_deref(),
    };
    let want = r::gemm(cfg, &a, &b, &c0, &inp);
    let scale = r::abs_scale(cfg, &a, &b, &c0, &inp);
    assert_close_scaled(&format!("gemm seed {seed} {cfg:?}"), &got, &want, &scale, FP32_REDUCTION_RTOL);
}

fn random_config(rng: &mut ChaCha8Rng, hi: usize, tile: Option<GemmTile>) -> GemmConfig {
    GemmConfig {
        m: testing::size(rng, 1, hi),
        n: testing::size(rng, 1, hi),
        k: testing::size(rng, 1, hi),
        trans_a: rng.random(),
        trans_b: rng.random(),
        fq_a: random_spec(rng),
        fq_b: random_spec(rng),
        bias: rng.random(),
        relu: rng.random(),
        accumulate: rng.random(),
        mask: random_spec(rng),
        tile,
    }
}

#[test]
fn gemm_matches_reference_on_random_shapes_and_flags() {
    let mut rng = testing::rng(7);
    for case in 0..8u64 {
        let tile = match case % 4 {
            0 => None,
            1 => Some(if testing::ctx().summary.device_type == "Cpu" { GemmTile::GPU } else { GemmTile::CPU }),
            2 => Some(ODD_TILE),
            _ => Some(ODD_DIRECT),
        };
        let cfg = random_config(&mut rng, 150, tile);
        run_case(1000 + case, &cfg);
    }
    // One larger problem with several K tiles and many workgroups.
    let cfg = GemmConfig { m: 300, n: 287, k: 301, ..random_config(&mut rng, 1, None) };
    run_case(2000, &cfg);
}

#[test]
fn per_channel_transposes_and_linear_configs_match_reference() {
    // Every transpose combination with per-row quantizers on A, B and the mask, through
    // workgroup memory and direct.
    let mut rng = testing::rng(11);
    let pc = Some(QuantSpec::weight(5));
    for (i, (ta, tb)) in [(false, false), (true, false), (false, true), (true, true)].into_iter().enumerate() {
        for tile in [GemmTile::CPU, GemmTile::GPU] {
            let (m, n, kk) =
                (testing::size(&mut rng, 60, 140), testing::size(&mut rng, 1, 70), testing::size(&mut rng, 1, 90));
            let cfg = GemmConfig {
                trans_a: ta,
                trans_b: tb,
                fq_a: pc,
                fq_b: pc,
                mask: pc,
                tile: Some(tile),
                ..GemmConfig::new(m, n, kk)
            };
            run_case(3000 + i as u64, &cfg);
        }
    }
    let (act, w) = (Some(QuantSpec::activation(8)), Some(QuantSpec::weight(4)));
    run_case(3100, &GemmConfig::linear_forward(33, 70, 65, act, w));
    run_case(3101, &GemmConfig { relu: true, ..GemmConfig::linear_forward(65, 17, 129, act, w) });
    run_case(3102, &GemmConfig::linear_backward_input(33, 70, 65, act, w));
    run_case(3103, &GemmConfig::linear_backward_weight(33, 70, 65, act, w));
    run_case(3104, &GemmConfig { accumulate: true, ..GemmConfig::linear_backward_weight(9, 130, 66, act, w) });
}

#[test]
fn ste_mask_is_exact() {
    // Small integers make every product and sum exact, so the masked result must match bit
    // for bit; the mask source has exact ties and values on both sides of the range.
    let ctx = testing::ctx();
    let mut rng = testing::rng(21);
    let (m, n, kk) = (37, 70, 9);
    let a: Vec<f32> = (0..m * kk).map(|_| rng.random_range(-3..=3) as f32).collect();
    let b: Vec<f32> = (0..kk * n).map(|_| rng.random_range(-3..=3) as f32).collect();
    for (i, spec) in [QuantSpec::activation(4), QuantSpec::weight(3)].into_iter().enumerate() {
        let ch = if spec.channel_axis.is_some() { m } else { 1 };
        let state = qstate(&mut rng, &spec, ch, false);
        let l = QStateLayout::new(ch);
        let src: Vec<f32> = (0..m * n)
            .map(|e| {
                let c = if ch == 1 { 0 } else { e / n };
                let code = rng.random_range(-20..=20) as f32 + if e % 2 == 0 { 0.5 } else { 0.0 };
                (code - state[l.zero_point() + c]) * state[l.scale() + c]
            })
            .collect();
        let cfg = GemmConfig { mask: Some(spec), ..GemmConfig::new(m, n, kk) };
        let (ga, gb) =
            (GpuTensor::from_f32(&ctx, &[m, kk], &a).unwrap(), GpuTensor::from_f32(&ctx, &[kk, n], &b).unwrap());
        let gc = GpuTensor::zeros(&ctx, &[m, n], DType::F32).unwrap();
        let gs = GpuTensor::from_f32(&ctx, &[m, n], &src).unwrap();
        let gq = GpuTensor::from_f32(&ctx, &[state.len()], &state).unwrap();
        let extra = GemmExtras { mask_src: Some(&gs), mask_state: Some(&gq), ..Default::default() };
        ctx.submit(&[&k::gemm(&ctx, &cfg, &ga, &gb, &gc, &extra).unwrap()]).unwrap();
        let inp = GemmInputs { mask_src: Some(&src), mask_state: Some(&state), ..Default::default() };
        let want = r::gemm(&cfg, &a, &b, &vec![0.0; m * n], &inp);
        let mask = r::ste_mask(&src, m, n, &spec, &state);
        assert!(mask.contains(&0.0) && mask.contains(&1.0), "case {i}: mask should have both values");
        assert_bit_exact(&format!("ste mask case {i}"), &gc.read_f32(&ctx).unwrap(), &want);
    }
}

#[test]
fn linear_backward_matches_finite_differences() {
    // y = x W^T + b, L = sum(y ⊙ G): dX = G W, dW = G^T x, with fake-quant off (masks off).
    let ctx = testing::ctx();
    let mut rng = testing::rng(31);
    let (batch, inp, out) = (5, 7, 6);
    let x = testing::uniform(&mut rng, batch * inp, -1.0, 1.0);
    let w = testing::uniform(&mut rng, out * inp, -1.0, 1.0);
    let bias = testing::uniform(&mut rng, out, -1.0, 1.0);
    let g = testing::uniform(&mut rng, batch * out, -1.0, 1.0);
    let fwd = GemmConfig::linear_forward(batch, inp, out, None, None);
    let loss = |x: &[f64], w: &[f64]| -> f64 {
        let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let ins = GemmInputs { bias: Some(&bias), ..Default::default() };
        let y = r::gemm(&fwd, &xf, &wf, &vec![0.0; batch * out], &ins);
        y.iter().zip(&g).map(|(&y, &g)| y as f64 * g as f64).sum()
    };
    let (x64, w64): (Vec<f64>, Vec<f64>) =
        (x.iter().map(|&v| v as f64).collect(), w.iter().map(|&v| v as f64).collect());
    // L is linear in each coordinate, so a large step only shrinks the f32 rounding error.
    let h = 0.5;
    let up = |shape: &[usize], v: &[f32]| GpuTensor::from_f32(&ctx, shape, v).unwrap();
    let (gx, gw, gg) = (up(&[batch, inp], &x), up(&[out, inp], &w), up(&[batch, out], &g));
    let dx = GpuTensor::zeros(&ctx, &[batch, inp], DType::F32).unwrap();
    let dw = GpuTensor::zeros(&ctx, &[out, inp], DType::F32).unwrap();
    let e = GemmExtras::default();
    let bx = k::gemm(&ctx, &GemmConfig::linear_backward_input(batch, inp, out, None, None), &gg, &gw, &dx, &e).unwrap();
    let bw =
        k::gemm(&ctx, &GemmConfig::linear_backward_weight(batch, inp, out, None, None), &gg, &gx, &dw, &e).unwrap();
    ctx.submit(&[&bx, &bw]).unwrap();
    let (dx, dw) = (dx.read_f32(&ctx).unwrap(), dw.read_f32(&ctx).unwrap());
    let check = |what: &str, got: &[f32], fd: &dyn Fn(usize) -> f64| {
        for (i, &gv) in got.iter().enumerate() {
            let want = fd(i);
            let err = (gv as f64 - want).abs();
            assert!(err <= FINITE_DIFF_RTOL * (1.0 + want.abs()), "{what}[{i}]: gpu {gv}, finite difference {want}");
        }
    };
    check("dX", &dx, &|i| testing::finite_diff(&mut |xp: &[f64]| loss(xp, &w64), &x64, i, h));
    check("dW", &dw, &|i| testing::finite_diff(&mut |wp: &[f64]| loss(&x64, wp), &w64, i, h));
}

#[test]
fn shape_and_flag_errors_are_reported() {
    let ctx = testing::ctx();
    let z = |shape: &[usize]| GpuTensor::zeros(&ctx, shape, DType::F32).unwrap();
    let (a, b, c) = (z(&[4, 3]), z(&[3, 5]), z(&[4, 5]));
    let cfg = GemmConfig::new(4, 5, 3);
    let e = GemmExtras::default();
    assert!(k::gemm(&ctx, &cfg, &a, &b, &c, &e).is_ok());
    assert!(k::gemm(&ctx, &GemmConfig::new(4, 5, 4), &a, &b, &c, &e).is_err());
    assert!(k::gemm(&ctx, &cfg, &a, &b, &z(&[4, 4]), &e).is_err());
    assert!(k::gemm(&ctx, &GemmConfig::new(0, 5, 3), &a, &b, &c, &e).is_err());
    // Flags and buffers must agree.
    assert!(k::gemm(&ctx, &GemmConfig { bias: true, ..cfg }, &a, &b, &c, &e).is_err());
    let bias = z(&[5]);
    assert!(k::gemm(&ctx, &cfg, &a, &b, &c, &GemmExtras { bias: Some(&bias), ..e }).is_err());
    assert!(k::gemm(&ctx, &GemmConfig { bias: true, ..cfg }, &a, &b, &c, &GemmExtras { bias: Some(&z(&[4])), ..e })
        .is_err());
    // Quantizer states of the wrong length, a bad channel axis, a bad bit width.
    let spec = QuantSpec::weight(4);
    let q4 = z(&[QStateLayout::new(4).len()]);
    let ok = GemmConfig { fq_a: Some(spec), ..cfg };
    assert!(k::gemm(&ctx, &ok, &a, &b, &c, &GemmExtras { qa: Some(&q4), ..e }).is_ok());
    assert!(k::gemm(&ctx, &GemmConfig { trans_a: true, ..ok }, &a, &b, &c, &GemmExtras { qa: Some(&q4), ..e }).is_err());
    let bad_axis = GemmConfig { fq_a: Some(QuantSpec { channel_axis: Some(1), ..spec }), ..cfg };
    assert!(k::gemm(&ctx, &bad_axis, &a, &b, &c, &GemmExtras { qa: Some(&q4), ..e }).is_err());
    let bad_bits = GemmConfig { fq_a: Some(QuantSpec { bits: 1, ..spec }), ..cfg };
    assert!(k::gemm(&ctx, &bad_bits, &a, &b, &c, &GemmExtras { qa: Some(&q4), ..e }).is_err());
    let mask = GemmConfig { mask: Some(QuantSpec::activation(8)), ..cfg };
    let q1 = z(&[QStateLayout::new(1).len()]);
    assert!(k::gemm(&ctx, &mask, &a, &b, &c, &GemmExtras { mask_state: Some(&q1), ..e }).is_err());
    let bad_src = GemmExtras { mask_src: Some(&a), mask_state: Some(&q1), ..e };
    assert!(k::gemm(&ctx, &mask, &a, &b, &c, &bad_src).is_err());
    // Tiles over the shader's arrays.
    let big = GemmTile { wg_x: 16, wg_y: 16, tm: 8, tn: 8, bk: 16, shared: true };
    assert!(k::gemm(&ctx, &GemmConfig { tile: Some(big), ..cfg }, &a, &b, &c, &e).is_err());
    let zero = GemmTile { tm: 0, ..GemmTile::CPU };
    assert!(k::gemm(&ctx, &GemmConfig { tile: Some(zero), ..cfg }, &a, &b, &c, &e).is_err());
    let zero = GemmTile { tn: 5, ..GemmTile::CPU };
    assert!(k::gemm(&ctx, &GemmConfig { tile: Some(zero), ..cfg }, &a, &b, &c, &e).is_err());
}

#[test]
fn copy_is_exact() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(41);
    let x = testing::uniform(&mut rng, 1027, -5.0, 5.0);
    let gx = GpuTensor::from_f32(&ctx, &[1027], &x).unwrap();
    let go = GpuTensor::zeros(&ctx, &[1027], DType::F32).unwrap();
    ctx.submit(&[&k::copy_f32(&ctx, &gx, &go).unwrap()]).unwrap();
    assert_bit_exact("copy_f32", &go.read_f32(&ctx).unwrap(), &x);
    assert!(k::copy_f32(&ctx, &gx, &GpuTensor::zeros(&ctx, &[3], DType::F32).unwrap()).is_err());
}

#[test]
fn unfused_path_matches_fused_bit_for_bit() {
    // Same fake-quant values, same tile, same summation order: identical results.
    let ctx = testing::ctx();
    let mut rng = testing::rng(51);
    let (m, n, kk) = (70, 45, 83);
    let (sa, sb) = (QuantSpec::activation(6), QuantSpec::weight(4));
    for (ta, tb) in [(false, true), (true, false)] {
        let cfg = GemmConfig { trans_a: ta, trans_b: tb, fq_a: Some(sa), fq_b: Some(sb), ..GemmConfig::new(m, n, kk) };
        let up = |v: &[f32]| GpuTensor::from_f32(&ctx, &[v.len()], v).unwrap();
        let a = up(&testing::uniform(&mut rng, m * kk, -1.0, 1.0));
        let b = up(&testing::uniform(&mut rng, kk * n, -1.0, 1.0));
        let qa = up(&qstate(&mut rng, &sa, 1, false));
        let qb = up(&qstate(&mut rng, &sb, cfg.b_rows(), false));
        let z = |len: usize| GpuTensor::zeros(&ctx, &[len], DType::F32).unwrap();
        let (c1, c2, s1, s2) = (z(m * n), z(m * n), z(m * kk), z(kk * n));
        let extra = GemmExtras { qa: Some(&qa), qb: Some(&qb), ..Default::default() };
        let fused = k::gemm(&ctx, &cfg, &a, &b, &c1, &extra).unwrap();
        let unfused = k::gemm_unfused(&ctx, &cfg, &a, &b, &c2, &extra, [Some(&s1), Some(&s2)]).unwrap();
        assert_eq!(unfused.len(), 3);
        let mut all = vec![&fused];
        all.extend(unfused.iter());
        ctx.submit(&all).unwrap();
        assert_bit_exact(
            &format!("unfused vs fused {ta} {tb}"),
            &c2.read_f32(&ctx).unwrap(),
            &c1.read_f32(&ctx).unwrap(),
        );
        assert!(k::gemm_unfused(&ctx, &cfg, &a, &b, &c2, &extra, [None, Some(&s2)]).is_err());
    }
}
