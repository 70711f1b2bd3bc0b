//! Kernel benchmarks: fused vs unfused fake-quant / STE kernels on mnist-cnn and resnet20
//! layer shapes and square GEMMs, plain fp32 GEMM GFLOP/s and fake-quant bandwidth against a
//! copy (see `wqat::bench`, shared with `wqat bench`).
//!
//! `cargo bench --bench kernels`; flags after `--`: `--quick` (reduced shape set, under a
//! minute on lavapipe), `--filter a,b` (rows whose "name shape" contains a or b),
//! `--runs N`, `--warmup N`, `--json PATH` (also write the rows as JSON).

use wqat::bench::{describe, print_table, run_kernel_bench, BenchOptions};

fn main() -> wqat::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let mut opts = if args.iter().any(|a| a == "--quick") { BenchOptions::quick() } else { BenchOptions::default() };
    opts.filter = value("--filter");
    if let Some(n) = value("--runs").and_then(|v| v.parse().ok()) {
        opts.runs = n;
    }
    if let Some(n) = value("--warmup").and_then(|v| v.parse().ok()) {
        opts.warmup = n;
    }
    let ctx = wqat::testing::ctx();
    println!("{}", describe(&ctx, &opts));
    let results = run_kernel_bench(&ctx, &opts)?;
    print_table(&results);
    if let Some(path) = value("--json") {
        let json = serde_json::to_string_pretty(&results).map_err(|e| wqat::WqatError::invalid(e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| wqat::WqatError::io(&path, e))?;
    }
    Ok(())
}
