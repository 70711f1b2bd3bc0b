//! Per-dispatch profile of a compiled training step:
//! `cargo run --release --example profile_step -- mnist-cnn 64 qat`.
use wqat::engine::throughput::{profile_plan, BenchStep};
use wqat::gpu::{GpuContext, GpuOptions};

fn main() -> wqat::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).map(String::as_str).unwrap_or("mnist-cnn");
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let quant = args.get(3).map(String::as_str) != Some("fp32");
    let ctx = GpuContext::new(&GpuOptions::from_env())?;
    let s = BenchStep::new(&ctx, model, batch, quant)?;
    let t = s.run(&ctx, 5)? / 5.0;
    println!("{model} batch {batch} {}: {:.2} ms/step one submit", if quant { "QAT" } else { "fp32" }, t * 1e3);
    let mut prof = profile_plan(&ctx, &s.plan, 5)?;
    let total: f64 = prof.iter().map(|p| p.ms).sum();
    prof.sort_by(|a, b| b.ms.partial_cmp(&a.ms).unwrap());
    println!("{} dispatches, {:.2} ms when submitted one by one", prof.len(), total);
    for p in prof.iter().take(25).chain(prof.iter().rev().take(5)) {
        println!("{:>8.3} ms  #{:<3} {}", p.ms, p.index, p.label);
    }
    Ok(())
}
