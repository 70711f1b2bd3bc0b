//! `shaders/layernorm.wgsl` against `reference::layernorm` (f64): D from 1 to 300, row
//! counts straddling the 64-wide workgroups and the 32-row chunks of the dgamma/dbeta
//! reduction, rows with a large common offset; the reference backward against finite
//! differences; the backward's fixed-order reductions bit for bit across replays.

use wqat::gpu::{DType, GpuContext, GpuTensor};
use wqat::kernels::layernorm::{self as k, LnRows};
use wqat::reference::layernorm as r;
use wqat::testing::{self, assert_close_scaled, FP32_REDUCTION_RTOL};

/// y and dx against the f64 reference, scaled by the size of the terms that produced each
/// value (see `scale_*` below): f32 row sums of up to 300 terms in a tree, then a few
/// roundings per element. 2^-24 * (log2(300) + a few) ~ 1e-6; 4e-6 leaves room for the
/// mean/rstd errors feeding every element of a row.
const LN_RTOL: f32 = 4e-6;

fn up(ctx: &GpuContext, shape: &[usize], v: &[f32]) -> GpuTensor {
    GpuTensor::from_f32(ctx, shape, v).unwrap()
}
fn zeros(ctx: &GpuContext, shape: &[usize]) -> GpuTensor {
    GpuTensor::zeros(ctx, shape, DType::F32).unwrap()
}

/// Row values: uniform noise around a per-row offset (up to 50 standard deviations off 0,
/// where a one-pass E[x^2] - mean^2 variance would lose most of its bits).
fn rows_data(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, d: usize, offset: f32) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * d);
    for _ in 0..rows {
        let o = if offset > 0.0 { testing::uniform(rng, 1, -offset, offset)[0] } else { 0.0 };
        x.extend(testing::uniform(rng, d, -1.0, 1.0).iter().map(|v| v + o));
    }
    x
}

#[test]
fn layernorm_matches_reference_on_random_shapes() {
    let ctx = testing::ctx();
    let seed = 51;
    let mut rng = testing::rng(seed);
    // (D, R): D from the brief's list; R straddles 32-row chunks and 64-wide workgroups; the
    // ViT-ish 64 x 25 = 1600 and 64 x 17 rows of D = 64.
    let cases = [(1, 5), (64, 1600), (7, 33), (64, 1088), (100, 31), (300, 65), (64, 1), (13, 64), (300, 70), (1, 129)];
    for (case, &(d, rows)) in cases.iter().enumerate() {
        // Both row mappings on every adapter (the plain functions pick one by adapter).
        let mapping = if case % 4 < 2 { LnRows::Workgroup } else { LnRows::Invocation };
        let offset = if case % 2 == 0 { 30.0 } else { 0.0 };
        let eps = 1e-5f32;
        let x = rows_data(&mut rng, rows, d, offset);
        let gamma = testing::uniform(&mut rng, d, 0.5, 1.5);
        let beta = testing::uniform(&mut rng, d, -0.5, 0.5);
        let dy = testing::uniform(&mut rng, rows * d, -1.0, 1.0);
        // x as [R/?, ..., D]-agnostic: a 3-D tensor when rows split evenly, else [R, D].
        let xshape = if rows % 4 == 0 { vec![4, rows / 4, d] } else { vec![rows, d] };
        let (gx, gdy) = (up(&ctx, &xshape, &x), up(&ctx, &xshape, &dy));
        let (gg, gb) = (up(&ctx, &[d], &gamma), up(&ctx, &[d], &beta));
        let (y, stats, dx) = (zeros(&ctx, &[rows, d]), zeros(&ctx, &[rows, 2]), zeros(&ctx, &xshape));
        let (dgm, dbt) = (zeros(&ctx, &[d]), zeros(&ctx, &[d]));
        let mut ds = vec![k::layernorm_forward_with(&ctx, &gx, &gg, &gb, &y, &stats, eps, mapping).unwrap()];
        ds.extend(k::layernorm_backward_with(&ctx, &gx, &gg, &stats, &gdy, &dx, &dgm, &dbt, mapping).unwrap());
        ctx.submit(&ds.iter().collect::<Vec<_>>()).unwrap();
        let what = |s: &str| format!("{s} (seed {seed}, case {case}, D {d}, R {rows}, offset {offset}, {mapping:?})");

        let (wy, wstats) = r::forward(&x, &gamma, &beta, eps);
        let gstats = stats.read_f32(&ctx).unwrap();
        // mean: error relative to the row's |x| (offset included); rstd: relative.
        let mut mean_scale = vec![0f32; 2 * rows];
        for rr in 0..rows {
            let amax = x[rr * d..(rr + 1) * d].iter().fold(0f32, |m, v| m.max(v.abs()));
            mean_scale[2 * rr] = amax;
            mean_scale[2 * rr + 1] = wstats[2 * rr + 1];
        }
        assert_close_scaled(&what("stats"), &gstats, &wstats, &mean_scale, LN_RTOL);
        // y: (x - mean) * rstd * gamma + beta; its error follows |x| + |mean| (the f32
        // subtraction), not |x - mean|.
        let scale_y: Vec<f32> = (0..rows * d)
            .map(|i| {
                let (rr, c) = (i / d, i % d);
                (x[i].abs() + wstats[2 * rr].abs()) * wstats[2 * rr + 1] * gamma[c].abs() + beta[c].abs()
            })
            .collect();
        assert_close_scaled(&what("y"), &y.read_f32(&ctx).unwrap(), &wy, &scale_y, LN_RTOL);

        // Backward from the GPU's own stats (what it used), in f64.
        let (wdx, wdg, wdb) = r::backward(&x, &gamma, &gstats, &dy);
        let xhat_abs = |i: usize| {
            let rr = i / d;
            (x[i].abs() + gstats[2 * rr].abs()) * gstats[2 * rr + 1]
        };
        // dx = rstd (g - mean(g) - xhat mean(g xhat)): scale by rstd times the terms' sizes.
        let mut scale_dx = vec![0f32; rows * d];
        for rr in 0..rows {
            let row = rr * d..(rr + 1) * d;
            let mg: f32 = row.clone().map(|i| (gamma[i % d] * dy[i]).abs()).sum::<f32>() / d as f32;
            let mgx: f32 = row.clone().map(|i| (gamma[i % d] * dy[i]).abs() * xhat_abs(i)).sum::<f32>() / d as f32;
            for i in row {
                scale_dx[i] = gstats[2 * rr + 1] * ((gamma[i % d] * dy[i]).abs() + mg + xhat_abs(i) * mgx);
            }
        }
        assert_close_scaled(&what("dx"), &dx.read_f32(&ctx).unwrap(), &wdx, &scale_dx, LN_RTOL);
        // Column sums over R rows: the usual reduction yardstick.
        let mut sg = vec![0f32; d];
        let mut sb = vec![0f32; d];
        for i in 0..rows * d {
            sg[i % d] += (dy[i] * xhat_abs(i)).abs();
            sb[i % d] += dy[i].abs();
        }
        assert_close_scaled(&what("dgamma"), &dgm.read_f32(&ctx).unwrap(), &wdg, &sg, FP32_REDUCTION_RTOL);
        assert_close_scaled(&what("dbeta"), &dbt.read_f32(&ctx).unwrap(), &wdb, &sb, FP32_REDUCTION_RTOL);
    }
}

#[test]
fn layernorm_backward_is_bit_identical_across_replays() {
    let ctx = testing::ctx();
    let mut rng = testing::rng(52);
    let (rows, d) = (1600, 64);
    let x = rows_data(&mut rng, rows, d, 3.0);
    let gamma = testing::uniform(&mut rng, d, 0.5, 1.5);
    let dy = testing::uniform(&mut rng, rows * d, -1.0, 1.0);
    let (gx, gdy, gg) = (up(&ctx, &[rows, d], &x), up(&ctx, &[rows, d], &dy), up(&ctx, &[d], &gamma));
    let gb = zeros(&ctx, &[d]);
    let (y, stats, dx, dgm, dbt) = (
        zeros(&ctx, &[rows, d]),
        zeros(&ctx, &[rows, 2]),
        zeros(&ctx, &[rows, d]),
        zeros(&ctx, &[d]),
        zeros(&ctx, &[d]),
    );
    for mapping in [LnRows::Workgroup, LnRows::Invocation] {
        let mut ds = vec![k::layernorm_forward_with(&ctx, &gx, &gg, &gb, &y, &stats, 1e-5, mapping).unwrap()];
        ds.extend(k::layernorm_backward_with(&ctx, &gx, &gg, &stats, &gdy, &dx, &dgm, &dbt, mapping).unwrap());
        let refs: Vec<_> = ds.iter().collect();
        let mut first: Option<[Vec<u32>; 4]> = None;
        for rep in 0..3 {
            ctx.submit(&refs).unwrap();
            let got = [
                y.read_u32(&ctx).unwrap(),
                dx.read_u32(&ctx).unwrap(),
                dgm.read_u32(&ctx).unwrap(),
                dbt.read_u32(&ctx).unwrap(),
            ];
            match &first {
                None => first = Some(got),
                Some(f) => assert!(f == &got, "{mapping:?}: replay {rep} changed the bits of y/dx/dgamma/dbeta"),
            }
        }
    }
}

fn assert_fd(what: &str, analytic: &[f64], x: &[f64], f: &mut dyn FnMut(&[f64]) -> f64) {
    for (i, &a) in analytic.iter().enumerate() {
        let fd = testing::finite_diff(f, x, i, 1e-5);
        assert!((fd - a).abs() <= testing::FINITE_DIFF_RTOL * (1.0 + fd.abs()), "{what}: i {i} fd {fd} analytic {a}");
    }
}

#[test]
fn layernorm_reference_backward_matches_finite_differences() {
    let mut rng = testing::rng(53);
    let f64s = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect::<Vec<f64>>();
    for (d, rows) in [(1, 3), (7, 3), (16, 2)] {
        let x = f64s(rows_data(&mut rng, rows, d, 2.0));
        let gamma = f64s(testing::uniform(&mut rng, d, 0.5, 1.5));
        let beta = f64s(testing::uniform(&mut rng, d, -0.5, 0.5));
        let w = f64s(testing::uniform(&mut rng, rows * d, -1.0, 1.0));
        let eps = 1e-5;
        let loss = |y: &[f64]| y.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
        let (_, stats) = r::forward_f64(&x, &gamma, &beta, eps);
        let (dx, dg, db) = r::backward_f64(&x, &gamma, &stats, &w);
        let wh = format!("D {d} R {rows} (seed 53)");
        assert_fd(&format!("{wh} dx"), &dx, &x, &mut |x| loss(&r::forward_f64(x, &gamma, &beta, eps).0));
        assert_fd(&format!("{wh} dgamma"), &dg, &gamma, &mut |g| loss(&r::forward_f64(&x, g, &beta, eps).0));
        assert_fd(&format!("{wh} dbeta"), &db, &beta, &mut |b| loss(&r::forward_f64(&x, &gamma, b, eps).0));
    }
}

#[test]
fn layernorm_shape_errors_are_reported() {
    let ctx = testing::ctx();
    let (rows, d) = (6, 5);
    let x = zeros(&ctx, &[2, 3, d]);
    let (g, b, y, st, dx) = (
        zeros(&ctx, &[d]),
        zeros(&ctx, &[d]),
        zeros(&ctx, &[rows, d]),
        zeros(&ctx, &[rows, 2]),
        zeros(&ctx, &[rows * d]),
    );
    let (dg, db) = (zeros(&ctx, &[d]), zeros(&ctx, &[d]));
    assert!(k::layernorm_forward(&ctx, &x, &g, &b, &y, &st, 1e-5).is_ok());
    assert!(k::layernorm_backward(&ctx, &x, &g, &st, &y, &dx, &dg, &db).is_ok());
    // gamma length not dividing x.
    let g4 = zeros(&ctx, &[4]);
    assert!(k::layernorm_forward(&ctx, &x, &g4, &g4, &y, &st, 1e-5).is_err());
    assert!(k::layernorm_backward(&ctx, &x, &g4, &st, &y, &dx, &g4, &g4).is_err());
    // stats of the wrong size.
    let st_bad = zeros(&ctx, &[rows]);
    assert!(k::layernorm_forward(&ctx, &x, &g, &b, &y, &st_bad, 1e-5).is_err());
    assert!(k::layernorm_backward(&ctx, &x, &g, &st_bad, &y, &dx, &dg, &db).is_err());
    // beta, y, dy, dx, dgamma, dbeta of the wrong size; a non-F32 tensor; bad eps.
    let d4 = zeros(&ctx, &[d - 1]);
    let short = zeros(&ctx, &[rows * d - 1]);
    assert!(k::layernorm_forward(&ctx, &x, &g, &d4, &y, &st, 1e-5).is_err());
    assert!(k::layernorm_forward(&ctx, &x, &g, &b, &short, &st, 1e-5).is_err());
    assert!(k::layernorm_backward(&ctx, &x, &g, &st, &short, &dx, &dg, &db).is_err());
    assert!(k::layernorm_backward(&ctx, &x, &g, &st, &y, &short, &dg, &db).is_err());
    assert!(k::layernorm_backward(&ctx, &x, &g, &st, &y, &dx, &d4, &db).is_err());
    assert!(k::layernorm_backward(&ctx, &x, &g, &st, &y, &dx, &dg, &d4).is_err());
    let xi = GpuTensor::zeros(&ctx, &[rows, d], DType::I32).unwrap();
    assert!(k::layernorm_forward(&ctx, &xi, &g, &b, &y, &st, 1e-5).is_err());
    for eps in [0.0, -1e-5, f32::NAN] {
        assert!(k::layernorm_forward(&ctx, &x, &g, &b, &y, &st, eps).is_err(), "eps {eps}");
    }
}
