//! `shaders/histogram.wgsl` against `reference::histogram`: counts exact, searched range
//! within RANGE_TOL_BINS bin widths, range growth re-binning, and the outlier behaviour.

use wqat::gpu::{DType, Dispatch, GpuTensor};
use wqat::kernels::histogram::{HistogramObserver, HEADER};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::reference::fake_quant::quantize_code;
use wqat::reference::histogram::{search, HistState};
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
