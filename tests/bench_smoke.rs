//! `wqat::bench::run_kernel_bench` on tiny shapes with one run: every row is well formed
//! (correctness only; no timing is asserted).

use wqat::bench::{run_kernel_bench, BenchOptions, KernelResult};

#[test]
fn kernel_bench_rows_are_finite_and_positive() {
    let ctx = wqat::testing::ctx();
    let opts =
        BenchOptions { quick: true, filter: Some("mnist.fc2,mnist.conv1,gemm_fp32 256x".into()), warmup: 0, runs: 1 };
    let rows = run_kernel_bench(&ctx, &opts).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    for want in ["linear_fwd", "linear_dx", "linear_dw", "conv_fwd", "conv_dx", "conv_dw", "gemm_fp32"] {
        assert!(names.contains(&want), "no {want} row in {names:?}");
    }
    assert!(rows.iter().all(|r| opts.wants(&r.name, &r.shape)), "filter not applied");
    for r in &rows {
        let vals = [r.fused_ms, r.unfused_ms, r.ratio, r.gflops, r.unfused_gflops, r.fused_min_ms, r.unfused_min_ms];
        assert!(vals.iter().all(|v| v.is_finite() && *v > 0.0), "{r:?}");
        assert!(!r.shape.is_empty() && (r.timing == "timestamp" || r.timing == "wall"), "{r:?}");
    }
    // The JSON rows carry the required keys and read back.
    let json = serde_json::to_value(&rows).unwrap();
    for key in ["name", "shape", "fused_ms", "unfused_ms", "ratio"] {
        assert!(json[0].get(key).is_some(), "key {key} missing in {}", json[0]);
    }
    let back: Vec<KernelResult> = serde_json::from_value(json).unwrap();
    assert_eq!(back.len(), rows.len());
}

#[test]
fn bandwidth_rows_report_gb_per_s() {
    let ctx = wqat::testing::ctx();
    let opts = BenchOptions { quick: true, filter: Some("fake_quant_bw".into()), warmup: 0, runs: 1 };
    let rows = run_kernel_bench(&ctx, &opts).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        let g = r.gbps.expect("bandwidth row without GB/s");
        assert!(g.is_finite() && g > 0.0 && r.ratio.is_finite() && r.ratio > 0.0, "{r:?}");
    }
}
