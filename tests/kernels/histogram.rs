//! `shaders/histogram.wgsl` against `reference::histogram`: counts exact, searched range
//! within RANGE_TOL_BINS bin widths, range growth re-binning, and the outlier behaviour;
//! the percentile and MSE range choices (`hist_percentile`, `hist_mse`) against
//! `reference::histogram::{percentile_range, mse_range}` on the GPU's own bins.

use wqat::gpu::{DType, Dispatch, GpuTensor};
use wqat::kernels::histogram::{HistogramObserver, RangeChoice, HEADER};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::reference::fake_quant::quantize_code;
use wqat::reference::histogram::{mse_candidate, mse_error, mse_range, percentile_range, search, HistState, MSE_GRID};
use wqat::testing;

/// The search's error estimate is summed in the same order on both sides, but a driver may
/// contract mul+add into fma; a flipped near-tie moves the range by about one bin.
const RANGE_TOL_BINS: f32 = 1.0;

fn qstate() -> Vec<f32> {
    let mut s = vec![0.0; QStateLayout::new(1).len()];
    s[QStateLayout::FQ_ENABLED] = 1.0;
    s[QStateLayout::OBS_ENABLED] = 1.0;
    s
}

fn run(ctx: &wqat::gpu::GpuContext, ds: &[Dispatch]) {
    let refs: Vec<&Dispatch> = ds.iter().collect();
    ctx.submit(&refs).unwrap();
}

/// Runs batches through GPU and reference; checks counts, range and chosen range each step.
fn check(seed: u64, batches: &[Vec<f32>], bins: usize, up: usize, spec: QuantSpec) -> (Vec<f32>, HistState) {
    let ctx = testing::ctx();
    let n = batches[0].len();
    let gx = GpuTensor::from_f32(&ctx, &[n], &batches[0]).unwrap();
    let qs = qstate();
    let gq = GpuTensor::from_f32(&ctx, &[qs.len()], &qs).unwrap();
    let obs = HistogramObserver::new(&ctx, spec, &gx, &gq, bins, up).unwrap();
    let mut want = HistState::new(bins, up);
    let l = QStateLayout::new(1);
    let mut got_q = qs;
    for (step, x) in batches.iter().enumerate() {
        gx.write(&ctx, x).unwrap();
        run(&ctx, obs.dispatches());
        let got = obs.state().read_f32(&ctx).unwrap();
        let prev = (want.v[0], want.v[1]);
        want.observe(x, true);
        let what = format!("seed {seed} step {step} bins {bins}");
        assert_eq!(&got[..2], &want.v[..2], "{what}: running range");
        if step > 0 && prev.0 != prev.1 {
            assert_eq!(got[5], 0.0, "{what}: expected a combine (re-bin), not a reset");
        }
        testing::assert_bit_exact(&format!("{what} counts"), &got[HEADER..], want.hist());
        // Continue from the GPU histogram so later steps compare like with like.
        want.v = got.clone();
        got_q = gq.read_f32(&ctx).unwrap();
        let (lo, hi) = search(want.hist(), got[0], got[1], &spec);
        let bw = (got[1] - got[0]) / bins as f32;
        let (glo, ghi) = (got_q[l.min()], got_q[l.max()]);
        assert!((glo - lo).abs() <= RANGE_TOL_BINS * bw * 1.001, "{what}: chosen min {glo} vs {lo}");
        assert!((ghi - hi).abs() <= RANGE_TOL_BINS * bw * 1.001, "{what}: chosen max {ghi} vs {hi}");
        let (s, _, z) = spec.qparams(glo, ghi);
        assert_eq!((got_q[l.scale()], got_q[l.zero_point()]), (s, z), "{what}: qparams");
    }
    (got_q, want)
}

#[test]
fn histogram_matches_reference_with_range_growth() {
    let mut rng = testing::rng(11);
    for (case, &(bins, up)) in [(2048usize, 128usize), (300, 16), (77, 8)].iter().enumerate() {
        let n = testing::size(&mut rng, 700, 3000);
        // Growing range: each batch reaches further out, on both sides.
        let batches: Vec<Vec<f32>> =
            (0..3).map(|b| testing::uniform(&mut rng, n, -1.0 - b as f32, 2.0 + 1.5 * b as f32)).collect();
        let spec =
            if case == 1 { QuantSpec { channel_axis: None, ..QuantSpec::weight(4) } } else { QuantSpec::activation(8) };
        let (_, st) = check(20 + case as u64, &batches, bins, up, spec);
        let total: f32 = st.hist().iter().sum();
        assert!((total - 3.0 * n as f32).abs() < 1e-2 * n as f32, "mass kept: {total} vs {}", 3 * n);
    }
}

#[test]
fn outliers_give_a_narrower_range_with_lower_error() {
    let mut rng = testing::rng(5);
    // Post-ReLU-like bulk in [0, 2) plus two far outliers.
    let n = 8000;
    let mut x = testing::uniform(&mut rng, n, 0.0, 2.0);
    x[7] = 30.0;
    x[99] = 25.0;
    // At 4 bits the bulk's rounding error outweighs clipping the two outliers (at 8 bits
    // the L2 criterion rightly keeps a couple of lone outliers).
    let spec = QuantSpec::activation(4);
    let (q, _) = check(5, &[x.clone()], 2048, 128, spec);
    let l = QStateLayout::new(1);
    let (lo, hi) = (q[l.min()], q[l.max()]);
    assert!(lo >= 0.0 && hi < 0.5 * 30.0, "chosen range [{lo}, {hi}] not narrower than [0, 30]");
    let l2 = |lo: f32, hi: f32| {
        let (s, inv, z) = spec.qparams(lo, hi);
        x.iter()
            .map(|&v| {
                let d = ((quantize_code(v, inv, z, 0.0, 15.0) - z) * s - v) as f64;
                d * d
            })
            .sum::<f64>()
    };
    let (e_hist, e_mm) = (l2(lo, hi), l2(0.0, 30.0));
    assert!(e_hist < e_mm, "histogram range error {e_hist} not below min/max error {e_mm}");
}

#[test]
fn frozen_and_bad_inputs() {
    let ctx = testing::ctx();
    let x = [1.0f32, 2.0, 3.0];
    let gx = GpuTensor::from_f32(&ctx, &[3], &x).unwrap();
    let mut qs = qstate();
    qs[QStateLayout::OBS_ENABLED] = 0.0;
    let gq = GpuTensor::from_f32(&ctx, &[qs.len()], &qs).unwrap();
    let spec = QuantSpec::activation(8);
    let obs = HistogramObserver::new(&ctx, spec, &gx, &gq, 64, 4).unwrap();
    run(&ctx, obs.dispatches());
    assert_eq!(gq.read_f32(&ctx).unwrap(), qs);
    assert!(obs.state().read_f32(&ctx).unwrap()[HEADER..].iter().all(|&c| c == 0.0));
    assert!(HistogramObserver::new(&ctx, QuantSpec::weight(8), &gx, &gq, 64, 4).is_err());
    assert!(HistogramObserver::new(&ctx, spec, &gx, &gq, 1, 4).is_err());
    let bad = GpuTensor::zeros(&ctx, &[10], DType::F32).unwrap();
    assert!(HistogramObserver::new(&ctx, spec, &gx, &bad, 64, 4).is_err());
}

#[test]
fn constant_batch_then_growth() {
    let spec = QuantSpec::activation(8);
    let batches = vec![vec![0.5f32; 300], (0..300).map(|i| i as f32 * 0.01 - 1.0).collect()];
    check(77, &batches, 128, 8, spec);
}

/// Batches through the percentile or MSE observer; after each, the GPU's range against the
/// reference choice on the GPU's own histogram (the bins themselves are checked above).
fn check_choice(seed: u64, batches: &[Vec<f32>], bins: usize, spec: QuantSpec, choice: RangeChoice) -> Vec<f32> {
    let ctx = testing::ctx();
    let n = batches[0].len();
    let gx = GpuTensor::from_f32(&ctx, &[n], &batches[0]).unwrap();
    let qs = qstate();
    let gq = GpuTensor::from_f32(&ctx, &[qs.len()], &qs).unwrap();
    let obs = HistogramObserver::with_range(&ctx, spec, &gx, &gq, bins, 16, choice).unwrap();
    let l = QStateLayout::new(1);
    let mut got_q = qs;
    for (step, x) in batches.iter().enumerate() {
        gx.write(&ctx, x).unwrap();
        run(&ctx, obs.dispatches());
        let h = obs.state().read_f32(&ctx).unwrap();
        got_q = gq.read_f32(&ctx).unwrap();
        let (mn, mx, hist) = (h[0], h[1], &h[HEADER..]);
        let (glo, ghi) = (got_q[l.min()], got_q[l.max()]);
        let what = format!("seed {seed} step {step} bins {bins} {choice:?}");
        match choice {
            RangeChoice::Percentile { fraction } => {
                // Same serial f32 sums on both sides: the same bins.
                let (lo, hi) = percentile_range(hist, mn, mx, fraction);
                assert_eq!((glo, ghi), (lo, hi), "{what}");
            }
            RangeChoice::Mse => {
                // The GPU's choice is a grid candidate whose reference error is the least one
                // (a driver's fma contraction may flip a near-tie: 1e-5 relative).
                let ((lo, hi), k) = mse_range(hist, mn, mx, &spec);
                let kg = (1..=MSE_GRID).find(|&j| mse_candidate(mn, mx, j) == (glo, ghi));
                let Some(kg) = kg else { panic!("{what}: GPU range [{glo}, {ghi}] is no grid candidate") };
                let (eg, er) = (mse_error(hist, mn, mx, glo, ghi, &spec), mse_error(hist, mn, mx, lo, hi, &spec));
                assert!(eg <= er * (1.0 + 1e-5), "{what}: GPU k {kg} error {eg} vs reference k {k} error {er}");
            }
            RangeChoice::L2 => unreachable!(),
        }
        let (s, _, z) = spec.qparams(glo, ghi);
        assert_eq!((got_q[l.scale()], got_q[l.zero_point()]), (s, z), "{what}: qparams");
    }
    got_q
}

#[test]
fn percentile_matches_reference_and_clips_outliers() {
    let mut rng = testing::rng(31);
    for (case, &bins) in [2048usize, 300, 77].iter().enumerate() {
        let n = testing::size(&mut rng, 700, 3000);
        let batches: Vec<Vec<f32>> = (0..3)
            .map(|b| {
                let mut x = testing::uniform(&mut rng, n, -1.0 - b as f32, 2.0 + b as f32);
                x[3] = 40.0 + b as f32; // far outliers on both sides
                x[5] = -30.0;
                x
            })
            .collect();
        let spec = QuantSpec::activation(if case == 1 { 4 } else { 8 });
        let q = check_choice(40 + case as u64, &batches, bins, spec, RangeChoice::Percentile { fraction: 0.999 });
        let l = QStateLayout::new(1);
        assert!(q[l.max()] < 10.0 && q[l.min()] > -10.0, "case {case}: outliers kept: {:?}", &q[l.min()..]);
        check_choice(50 + case as u64, &batches, bins, spec, RangeChoice::Percentile { fraction: 1.0 });
    }
}

#[test]
fn mse_matches_reference() {
    let mut rng = testing::rng(32);
    for (case, &(bins, bits)) in [(2048usize, 8u32), (300, 4), (77, 8)].iter().enumerate() {
        let n = testing::size(&mut rng, 700, 3000);
        let batches: Vec<Vec<f32>> = (0..2)
            .map(|b| {
                // ReLU-like: a third exact zeros, a decaying bulk, one far outlier.
                let u = testing::uniform(&mut rng, n, 0.0, 1.0);
                let mut x: Vec<f32> = u.iter().map(|&v| if v < 0.33 { 0.0 } else { -(1.0 - v).ln() }).collect();
                x[1] = 20.0 + 5.0 * b as f32;
                x
            })
            .collect();
        check_choice(60 + case as u64, &batches, bins, QuantSpec::activation(bits), RangeChoice::Mse);
    }
    // Signed symmetric codes take the same path (a per-layer spec may ask for them).
    let x = testing::uniform(&mut rng, 1000, -3.0, 1.0);
    check_choice(70, &[x], 256, QuantSpec { channel_axis: None, ..QuantSpec::weight(4) }, RangeChoice::Mse);
}

#[test]
fn bad_percentile_is_an_error() {
    let ctx = testing::ctx();
    let gx = GpuTensor::from_f32(&ctx, &[3], &[1.0, 2.0, 3.0]).unwrap();
    let gq = GpuTensor::from_f32(&ctx, &[qstate().len()], &qstate()).unwrap();
    for f in [1.2f32, 0.5, f32::NAN] {
        let r = HistogramObserver::with_range(
            &ctx,
            QuantSpec::activation(8),
            &gx,
            &gq,
            64,
            4,
            RangeChoice::Percentile { fraction: f },
        );
        assert!(r.is_err(), "{f}");
    }
}
