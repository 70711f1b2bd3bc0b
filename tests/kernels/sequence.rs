//! `shaders/sequence.wgsl` against `reference::sequence`: token embedding (repeated and
//! invalid ids), patchify (round trip, patch-embedding Linear == strided conv), CLS token +
//! positions, token pooling (masks, an all-masked sample), key masks. Copies, permutations
//! and the embedding / CLS / position gradients are compared bit for bit (the kernels add the
//! same f32 terms in the same order as the reference); mean pooling with a tolerance.

use wqat::error::WqatError;
use wqat::gpu::{DType, GpuContext, GpuTensor};
use wqat::kernels::conv::Conv2dGeom;
use wqat::kernels::sequence::{self as k, PatchConfig, TokenPool};
use wqat::reference::conv as rc;
use wqat::reference::sequence as r;
use wqat::testing::{self, assert_bit_exact, assert_close, assert_close_scaled};

/// Mean pool: an f32 running sum of up to ~100 tokens (in token order) divided by the count,
/// against an f64 reference; measured against the sum of |terms| / count.
const POOL_RTOL: f32 = testing::FP32_REDUCTION_RTOL;
/// Mean-pool gradient `dout / count`: one f32 division (WGSL allows 2.5 ulp).
const POOL_BWD_RTOL: f32 = testing::FP32_ELEMENTWISE_RTOL;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
fn up(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, shape, v).unwrap()
}
/// A tensor full of NaN, so a kernel that skips an element it must overwrite shows.
fn garbage(ctx: &GpuContext, shape: &[usize]) -> GpuTensor {
    up(ctx, shape, &vec![f32::NAN; shape.iter().product()])
}
fn run(ctx: &GpuContext, ds: &[wqat::gpu::Dispatch]) {
    ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
}

/// Ids in `[0, vocab)` with repeats, plus (when `bad`) invalid ids and -0.0 (which is row 0).
fn token_ids(rng: &mut rand_chacha::ChaCha8Rng, n: usize, vocab: usize, bad: bool) -> Vec<f32> {
    let edge = [vocab as f32, vocab as f32 + 7.0, -1.0, 0.5, vocab as f32 - 0.5, 1e9, -0.0, f32::INFINITY];
    (0..n)
        .map(|i| {
            let id = testing::size(rng, 0, vocab - 1) as f32;
            if bad && i % 11 == 3 {
                edge[(i / 11) % edge.len()]
            } else {
                id
            }
        })
        .collect()
}

/// Runs embedding forward and backward on the GPU; returns (out, dtable).
fn embedding_gpu(
    ctx: &GpuContext,
    ids: &[f32],
    table: &[f32],
    dout: &[f32],
    bt: (usize, usize),
    vd: (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let ((b, t), (v, d)) = (bt, vd);
    let (gids, gtab, gdout) = (up(ctx, &[b, t], ids), up(ctx, &[v, d], table), up(ctx, &[b, t, d], dout));
    let (out, dtab) = (garbage(ctx, &[b, t, d]), garbage(ctx, &[v, d]));
    run(
        ctx,
        &[
            k::embedding_forward(ctx, &gids, &gtab, &out).unwrap(),
            k::embedding_backward(ctx, &gids, &gdout, &dtab).unwrap(),
        ],
    );
    (out.read_f32(ctx).unwrap(), dtab.read_f32(ctx).unwrap())
}

#[test]
fn embedding_matches_reference_bit_for_bit() {
    let ctx = testing::ctx();
    let seed = 71;
    let mut rng = testing::rng(seed);
    // Random shapes straddling the 64-feature and 1024-id chunks, then the text encoder's
    // size (B*T = 1600, V = 258, D = 64: two id chunks, rows repeated ~6 times).
    let mut cases: Vec<(usize, usize, usize, usize)> = (0..8)
        .map(|_| {
            let (b, t) = (testing::size(&mut rng, 1, 4), testing::size(&mut rng, 1, 300));
            (b, t, testing::size(&mut rng, 1, 300), testing::size(&mut rng, 1, 140))
        })
        .collect();
    cases.push((16, 100, 258, 64));
    cases.push((3, 5, 1, 65));
    for (case, &(b, t, v, d)) in cases.iter().enumerate() {
        let ids = token_ids(&mut rng, b * t, v, case % 2 == 0);
        let table = testing::uniform(&mut rng, v * d, -1.0, 1.0);
        let dout = testing::uniform(&mut rng, b * t * d, -1.0, 1.0);
        let (out, dtab) = embedding_gpu(&ctx, &ids, &table, &dout, (b, t), (v, d));
        let what = |s: &str| format!("{s} seed {seed} case {case} B {b} T {t} V {v} D {d}");
        assert_bit_exact(&what("embedding out"), &out, &r::embedding_forward(&ids, &table, d));
        assert_bit_exact(&what("embedding dtable"), &dtab, &r::embedding_backward(&ids, &dout, v, d));
    }
}

#[test]
fn embedding_invalid_ids_write_zeros_and_no_gradient() {
    let ctx = testing::ctx();
    let (v, d) = (5, 3);
    let ids = [0.0, 5.0, 4.0, -1.0, 2.5, f32::NAN, f32::INFINITY, -f32::INFINITY, 4e9, 1.0, 4.0];
    let table: Vec<f32> = (0..v * d).map(|i| i as f32 + 1.0).collect();
    let dout: Vec<f32> = (0..ids.len() * d).map(|i| (i % 7) as f32 + 0.5).collect();
    let (out, dtab) = embedding_gpu(&ctx, &ids, &table, &dout, (1, ids.len()), (v, d));
    for (n, &id) in ids.iter().enumerate() {
        let row = &out[n * d..(n + 1) * d];
        match r::token_row(id, v) {
            Some(rw) => assert_eq!(row, &table[rw * d..(rw + 1) * d], "id {id}"),
            None => assert_eq!(row, &[0.0; 3], "invalid id {id} must embed as zeros"),
        }
    }
    assert_bit_exact("dtable with invalid ids", &dtab, &r::embedding_backward(&ids, &dout, v, d));
    // Rows 2 and 3 are never hit: zero gradient.
    assert_eq!(&dtab[2 * d..4 * d], &[0.0; 6]);
    assert!(k::check_token_ids(&ids, v).is_err());
    assert!(k::check_token_ids(&[0.0, 4.0, 3.0], v).is_ok());
}

fn patch_cfg(rng: &mut rand_chacha::ChaCha8Rng) -> PatchConfig {
    let patch = testing::size(rng, 1, 5);
    PatchConfig {
        batch: testing::size(rng, 1, 3),
        channels: testing::size(rng, 1, 4),
        height: patch * testing::size(rng, 1, 9),
        width: patch * testing::size(rng, 1, 11),
        patch,
    }
}

#[test]
fn patchify_round_trip_is_exact() {
    let ctx = testing::ctx();
    let seed = 72;
    let mut rng = testing::rng(seed);
    for case in 0..10 {
        let cfg = if case == 0 {
            PatchConfig { batch: 2, channels: 3, height: 32, width: 32, patch: 4 }
        } else {
            patch_cfg(&mut rng)
        };
        let x = testing::uniform(&mut rng, cfg.x_shape().iter().product(), -2.0, 2.0);
        let (gx, out, back) =
            (up(&ctx, &cfg.x_shape(), &x), garbage(&ctx, &cfg.out_shape()), garbage(&ctx, &cfg.x_shape()));
        run(
            &ctx,
            &[
                k::patchify_forward(&ctx, &cfg, &gx, &out).unwrap(),
                k::patchify_backward(&ctx, &cfg, &out, &back).unwrap(),
            ],
        );
        let what = |s: &str| format!("{s} seed {seed} case {case} {cfg:?}");
        let o = out.read_f32(&ctx).unwrap();
        assert_bit_exact(&what("patchify out"), &o, &r::patchify_forward(&cfg, &x));
        assert_bit_exact(&what("patchify round trip"), &back.read_f32(&ctx).unwrap(), &x);
        // The reference backward is the adjoint: <P x, g> == <x, P^T g> (exact: a permutation).
        let g = testing::uniform(&mut rng, o.len(), -1.0, 1.0);
        let pt = r::patchify_backward(&cfg, &f64s(&g));
        let lhs: f64 = f64s(&o).iter().zip(&g).map(|(a, &b)| a * b as f64).sum();
        let rhs: f64 = f64s(&x).iter().zip(&pt).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs()), "{}: {lhs} vs {rhs}", what("adjoint"));
    }
}

#[test]
fn patchify_then_linear_equals_strided_conv() {
    let ctx = testing::ctx();
    let seed = 73;
    let mut rng = testing::rng(seed);
    for case in 0..4 {
        let cfg = patch_cfg(&mut rng);
        let dm = testing::size(&mut rng, 1, 9);
        let (f, t) = (cfg.features(), cfg.tokens());
        let x = testing::uniform(&mut rng, cfg.x_shape().iter().product(), -1.0, 1.0);
        let w = testing::uniform(&mut rng, dm * f, -1.0, 1.0); // PyTorch conv weight [Dm, C, P, P]
        let bias = testing::uniform(&mut rng, dm, -0.5, 0.5);
        let (gx, out) = (up(&ctx, &cfg.x_shape(), &x), garbage(&ctx, &cfg.out_shape()));
        run(&ctx, &[k::patchify_forward(&ctx, &cfg, &gx, &out).unwrap()]);
        let tokens = f64s(&out.read_f32(&ctx).unwrap());
        let (w64, b64) = (f64s(&w), f64s(&bias));
        // Linear with the conv weight flattened to [Dm, C*P*P], bias added first (as the conv
        // reference does), features in order: the same f64 sum as the conv reference.
        let mut lin = vec![0.0; cfg.batch * t * dm];
        for bt in 0..cfg.batch * t {
            for o in 0..dm {
                let mut acc = b64[o];
                for j in 0..f {
                    acc += w64[o * f + j] * tokens[bt * f + j];
                }
                lin[bt * dm + o] = acc;
            }
        }
        let conv =
            Conv2dGeom::new(cfg.batch, cfg.channels, cfg.height, cfg.width, dm, cfg.patch).with_stride(cfg.patch);
        let (y, _) = rc::conv2d_forward_f64(&conv, &f64s(&x), &w64, Some(&b64));
        // conv y [B, Dm, H/P, W/P] -> [B, T, Dm] with t = py*(W/P) + px.
        let mut want = vec![0.0; lin.len()];
        for b in 0..cfg.batch {
            for o in 0..dm {
                for tt in 0..t {
                    want[(b * t + tt) * dm + o] = y[(b * dm + o) * t + tt];
                }
            }
        }
        assert_bit_exact(&format!("patch linear vs conv seed {seed} case {case} {cfg:?} Dm {dm}"), &lin, &want);
    }
}

#[test]
fn cls_pos_matches_reference_bit_for_bit() {
    let ctx = testing::ctx();
    let seed = 74;
    let mut rng = testing::rng(seed);
    for case in 0..10 {
        let with_cls = case % 2 == 0;
        let (b, t, d) =
            (testing::size(&mut rng, 1, 9), testing::size(&mut rng, 1, 40), testing::size(&mut rng, 1, 300));
        let tp = t + with_cls as usize;
        let x = testing::uniform(&mut rng, b * t * d, -1.0, 1.0);
        let cls = testing::uniform(&mut rng, d, -1.0, 1.0);
        let pos = testing::uniform(&mut rng, tp * d, -1.0, 1.0);
        let dout = testing::uniform(&mut rng, b * tp * d, -1.0, 1.0);
        // PyTorch-shaped parameters on odd cases: [1, 1, D] and [1, T', D].
        let (cls_shape, pos_shape) =
            if case % 4 == 0 { (vec![1, 1, d], vec![1, tp, d]) } else { (vec![d], vec![tp, d]) };
        let (gx, gcls, gpos, gdout) = (
            up(&ctx, &[b, t, d], &x),
            up(&ctx, &cls_shape, &cls),
            up(&ctx, &pos_shape, &pos),
            up(&ctx, &[b, tp, d], &dout),
        );
        let (out, dx, dcls, dpos) =
            (garbage(&ctx, &[b, tp, d]), garbage(&ctx, &[b, t, d]), garbage(&ctx, &[d]), garbage(&ctx, &pos_shape));
        let mut ds = vec![k::cls_pos_forward(&ctx, &gx, with_cls.then_some(&gcls), &gpos, &out).unwrap()];
        ds.extend(k::cls_pos_backward(&ctx, &gdout, &dx, with_cls.then_some(&dcls), &dpos).unwrap());
        run(&ctx, &ds);
        let what = |s: &str| format!("{s} seed {seed} case {case} B {b} T {t} D {d} cls {with_cls}");
        let cls_ref = with_cls.then_some(&cls[..]);
        assert_bit_exact(
            &what("cls_pos out"),
            &out.read_f32(&ctx).unwrap(),
            &r::cls_pos_forward(&x, cls_ref, &pos, b, d),
        );
        let (wdx, wdcls, wdpos) = r::cls_pos_backward(&dout, with_cls, b, d);
        assert_bit_exact(&what("dx"), &dx.read_f32(&ctx).unwrap(), &wdx);
        assert_bit_exact(&what("dpos"), &dpos.read_f32(&ctx).unwrap(), &wdpos);
        if let Some(wc) = wdcls {
            assert_bit_exact(&what("dcls"), &dcls.read_f32(&ctx).unwrap(), &wc);
        }
    }
}

/// A [B, T] key mask with random padding, sample 1 fully masked when `all_masked`.
fn key_mask(rng: &mut rand_chacha::ChaCha8Rng, b: usize, t: usize, all_masked: bool) -> Vec<f32> {
    let mut m: Vec<f32> = (0..b * t).map(|_| if testing::size(rng, 0, 2) == 0 { 1.0 } else { 0.0 }).collect();
    if all_masked && b > 1 {
        m[t..2 * t].fill(1.0);
    }
    m
}

#[test]
fn token_pool_matches_reference() {
    let ctx = testing::ctx();
    let seed = 75;
    let mut rng = testing::rng(seed);
    for case in 0..8 {
        let (b, t, d) =
            (testing::size(&mut rng, 2, 6), testing::size(&mut rng, 1, 100), testing::size(&mut rng, 1, 300));
        let x = testing::uniform(&mut rng, b * t * d, -2.0, 2.0);
        let dout = testing::uniform(&mut rng, b * d, -1.0, 1.0);
        let mask = key_mask(&mut rng, b, t, case % 2 == 0);
        let (gx, gdout, gmask) = (up(&ctx, &[b, t, d], &x), up(&ctx, &[b, d], &dout), up(&ctx, &[b, t], &mask));
        for mode in [TokenPool::Cls, TokenPool::Mean] {
            for masked in [false, true] {
                let gm = masked.then_some(&gmask);
                let (out, dx) = (garbage(&ctx, &[b, d]), garbage(&ctx, &[b, t, d]));
                run(
                    &ctx,
                    &[
                        k::token_pool_forward(&ctx, mode, &gx, gm, &out).unwrap(),
                        k::token_pool_backward(&ctx, mode, gm, &gdout, &dx).unwrap(),
                    ],
                );
                let what = |s: &str| format!("{s} seed {seed} case {case} B {b} T {t} D {d} {mode:?} masked {masked}");
                let m = masked.then_some(&mask[..]);
                let want = r::token_pool_forward(mode, &f64s(&x), m, b, t, d);
                let absx: Vec<f64> = x.iter().map(|v| v.abs() as f64).collect();
                let scale = f32s(&r::token_pool_forward(mode, &absx, m, b, t, d));
                let got = out.read_f32(&ctx).unwrap();
                assert_close_scaled(&what("pool out"), &got, &f32s(&want), &scale, POOL_RTOL);
                let wdx = f32s(&r::token_pool_backward(mode, m, &f64s(&dout), b, t, d));
                assert_close(&what("pool dx"), &dx.read_f32(&ctx).unwrap(), &wdx, POOL_BWD_RTOL, 0.0);
                if masked && mode == TokenPool::Mean && case % 2 == 0 {
                    assert_eq!(&got[d..2 * d], &vec![0.0; d][..], "{}", what("all-masked sample pools to 0"));
                }
            }
        }
    }
}

#[test]
fn key_mask_from_ids_marks_padding() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(76);
    let (b, t, pad) = (3, 77, 0u32);
    let ids = token_ids(&mut rng, b * t, 4, false);
    let gids = up(&ctx, &[b, t], &ids);
    let mask = garbage(&ctx, &[b, t]);
    run(&ctx, &[k::key_mask_from_ids(&ctx, &gids, pad, &mask).unwrap()]);
    let want = r::key_mask_from_ids(&ids, pad);
    assert!(want.contains(&1.0) && want.contains(&0.0));
    assert_bit_exact("key mask seed 76", &mask.read_f32(&ctx).unwrap(), &want);
}

fn check_fd(what: &str, analytic: &[f64], x: &[f64], f: &mut dyn FnMut(&[f64]) -> f64) {
    assert_eq!(analytic.len(), x.len(), "{what}: gradient length");
    for (i, &a) in analytic.iter().enumerate() {
        let fd = testing::finite_diff(f, x, i, 1e-5);
        assert!((fd - a).abs() <= testing::FINITE_DIFF_RTOL * (1.0 + fd.abs()), "{what}: i {i} fd {fd} analytic {a}");
    }
}

#[test]
fn references_match_finite_differences() {
    let mut rng = testing::rng(77);
    let rand = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| f64s(&testing::uniform(rng, n, -1.0, 1.0));
    let (b, t, d) = (3, 4, 5);
    // Mean pool with a mask (sample 1 fully masked) and without.
    let x = rand(&mut rng, b * t * d);
    let wout = rand(&mut rng, b * d);
    let mask = key_mask(&mut rng, b, t, true);
    for m in [None, Some(&mask[..])] {
        let dx = r::token_pool_backward(TokenPool::Mean, m, &wout, b, t, d);
        let mut loss = |x: &[f64]| -> f64 {
            r::token_pool_forward(TokenPool::Mean, x, m, b, t, d).iter().zip(&wout).map(|(a, w)| a * w).sum()
        };
        check_fd(&format!("mean pool dx masked {}", m.is_some()), &dx, &x, &mut loss);
    }
    // CLS token + positions: dx, dcls, dpos.
    let tp = t + 1;
    let (cls, pos, wt) = (rand(&mut rng, d), rand(&mut rng, tp * d), rand(&mut rng, b * tp * d));
    let loss = |o: Vec<f64>| -> f64 { o.iter().zip(&wt).map(|(a, w)| a * w).sum() };
    let (dx, dcls, dpos) = r::cls_pos_backward(&wt, true, b, d);
    check_fd("cls_pos dx", &dx, &x, &mut |x| loss(r::cls_pos_forward(x, Some(&cls), &pos, b, d)));
    check_fd("cls_pos dcls", &dcls.unwrap(), &cls, &mut |c| loss(r::cls_pos_forward(&x, Some(c), &pos, b, d)));
    check_fd("cls_pos dpos", &dpos, &pos, &mut |p| loss(r::cls_pos_forward(&x, Some(&cls), p, b, d)));
    // Embedding: gradient of the table, with repeated and invalid ids.
    let (v, ids) = (4, [1.0, 3.0, 1.0, 7.0, 0.0, 1.0, -1.0]);
    let table = rand(&mut rng, v * d);
    let wt = rand(&mut rng, ids.len() * d);
    let dtable = r::embedding_backward(&ids, &wt, v, d);
    check_fd("embedding dtable", &dtable, &table, &mut |tb| {
        r::embedding_forward(&ids, tb, d).iter().zip(&wt).map(|(a, w)| a * w).sum()
    });
}

#[test]
fn kernels_are_deterministic() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(78);
    let (b, t, v, d) = (16, 100, 258, 64);
    let ids = token_ids(&mut rng, b * t, v, false);
    let table = testing::uniform(&mut rng, v * d, -1.0, 1.0);
    let dout = testing::uniform(&mut rng, b * t * d, -1.0, 1.0);
    let mask = key_mask(&mut rng, b, t, true);
    let (gids, gdout, gmask) = (up(&ctx, &[b, t], &ids), up(&ctx, &[b, t, d], &dout), up(&ctx, &[b, t], &mask));
    let gdpool = up(&ctx, &[b, d], &table[..b * d]);
    let runs: Vec<Vec<Vec<f32>>> = (0..2)
        .map(|_| {
            let (dtab, dx, dpos, dcls) =
                (garbage(&ctx, &[v, d]), garbage(&ctx, &[b, t - 1, d]), garbage(&ctx, &[t, d]), garbage(&ctx, &[d]));
            let (pool, dxp) = (garbage(&ctx, &[b, d]), garbage(&ctx, &[b, t, d]));
            let mut ds = vec![
                k::embedding_backward(&ctx, &gids, &gdout, &dtab).unwrap(),
                k::token_pool_forward(&ctx, TokenPool::Mean, &gdout, Some(&gmask), &pool).unwrap(),
                k::token_pool_backward(&ctx, TokenPool::Mean, Some(&gmask), &gdpool, &dxp).unwrap(),
            ];
            ds.extend(k::cls_pos_backward(&ctx, &gdout, &dx, Some(&dcls), &dpos).unwrap());
            run(&ctx, &ds);
            [dtab, dx, dpos, dcls, pool, dxp].iter().map(|g| g.read_f32(&ctx).unwrap()).collect()
        })
        .collect();
    for (i, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        let (ba, bb): (Vec<u32>, Vec<u32>) =
            (a.iter().map(|x| x.to_bits()).collect(), b.iter().map(|x| x.to_bits()).collect());
        assert_bit_exact(&format!("run-to-run output {i}"), &ba, &bb);
    }
}

fn is_shape<T>(r: wqat::error::Result<T>) -> bool {
    matches!(r, Err(WqatError::Shape(_)))
}

#[test]
fn shape_errors_are_errors() {
    let ctx = testing::ctx();
    let z = |s: &[usize]| GpuTensor::zeros(&ctx, s, DType::F32).unwrap();
    // Embedding: 3-D table, out not [B, T, D], dtable D mismatch, u32 ids.
    assert!(is_shape(k::embedding_forward(&ctx, &z(&[2, 3]), &z(&[4, 5, 1]), &z(&[2, 3, 5]))));
    assert!(is_shape(k::embedding_forward(&ctx, &z(&[2, 3]), &z(&[4, 5]), &z(&[3, 2, 5]))));
    assert!(is_shape(k::embedding_backward(&ctx, &z(&[2, 3]), &z(&[2, 3, 5]), &z(&[4, 6]))));
    let uids = GpuTensor::zeros(&ctx, &[2, 3], DType::U32).unwrap();
    assert!(is_shape(k::embedding_forward(&ctx, &uids, &z(&[4, 5]), &z(&[2, 3, 5]))));
    // Patchify: H not a multiple of P, wrong out.
    let bad = PatchConfig { batch: 1, channels: 2, height: 6, width: 8, patch: 4 };
    assert!(is_shape(k::patchify_forward(&ctx, &bad, &z(&[1, 2, 6, 8]), &z(&[1, 2, 32]))));
    let cfg = PatchConfig { height: 8, ..bad };
    assert!(is_shape(k::patchify_forward(&ctx, &cfg, &z(&[1, 2, 8, 8]), &z(&[1, 4, 31]))));
    assert!(is_shape(k::patchify_backward(&ctx, &cfg, &z(&[1, 4, 32]), &z(&[1, 2, 8, 9]))));
    // CLS/positions: pos without the CLS row, cls of the wrong width, dx token count.
    let x = z(&[2, 3, 4]);
    assert!(is_shape(k::cls_pos_forward(&ctx, &x, Some(&z(&[4])), &z(&[3, 4]), &z(&[2, 4, 4]))));
    assert!(is_shape(k::cls_pos_forward(&ctx, &x, Some(&z(&[5])), &z(&[4, 4]), &z(&[2, 4, 4]))));
    assert!(is_shape(k::cls_pos_forward(&ctx, &x, None, &z(&[2, 3, 4]), &z(&[2, 3, 4]))));
    assert!(is_shape(k::cls_pos_backward(&ctx, &z(&[2, 4, 4]), &x, None, &z(&[4, 4]))));
    assert!(is_shape(k::cls_pos_backward(&ctx, &z(&[2, 1, 4]), &z(&[2, 1, 4]), Some(&z(&[4])), &z(&[1, 4]))));
    // Pool: out not [B, D], mask not [B, T].
    assert!(is_shape(k::token_pool_forward(&ctx, TokenPool::Mean, &x, None, &z(&[2, 3]))));
    assert!(is_shape(k::token_pool_forward(&ctx, TokenPool::Mean, &x, Some(&z(&[2, 4])), &z(&[2, 4]))));
    assert!(is_shape(k::token_pool_backward(&ctx, TokenPool::Cls, None, &z(&[2, 4]), &z(&[2, 3]))));
    // Key mask: mask shape.
    assert!(is_shape(k::key_mask_from_ids(&ctx, &z(&[2, 3]), 0, &z(&[3, 2]))));
    assert!(matches!(
        k::key_mask_from_ids(&ctx, &z(&[2, 3]), 1 << 24, &z(&[2, 3])),
        Err(WqatError::InvalidArgument(_))
    ));
}
