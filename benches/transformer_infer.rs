//! Inference throughput of the tiny transformers (`vit-tiny` on 28x28 images, `text-tiny` on
//! 24-token byte sequences), synthetic calibrated W8A8 checkpoints, batch 1 and 64: the
//! converted integer model on the CPU (scalar, SIMD) and GPU executors against the same
//! network in plain fp32 on the GPU (the training engine's evaluation plan, no fake-quant).
//!
//! `cargo bench --bench transformer_infer` (`-- --quick` for shorter runs). Each cell:
//! warm-up, then repeated forwards for the time budget; images (sequences) per second from
//! the median forward time. GPU times include the upload, one submit and the readback of
//! the predictions or logits, as `wqat eval` pays them.

use std::time::{Duration, Instant};
use wqat::convert;
use wqat::convert::synthetic::{random_inputs, synthetic_checkpoint};
use wqat::engine::{CompileOptions, Compiled, ModelState, QConfig};
use wqat::gpu::{GpuContext, GpuOptions};
use wqat::infer::CpuBackend;
use wqat::infer::Int8GpuModel;
use wqat::model::zoo;
use wqat::Result;

/// Median and best seconds of `f` over at least `budget` (after one warm-up call).
fn time(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    let mut t = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || t.len() < 3 {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok((t[t.len() / 2], t[0]))
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 500 } else { 3000 });
    let ctx = GpuContext::new(&GpuOptions::from_env())?;
    println!("transformer inference, W8A8; GPU: {} ({})", ctx.summary.name, ctx.summary.backend);
    println!("{:<34} {:>12} {:>12}", "images or sequences/s (median)", "batch 1", "batch 64");
    for (name, input, classes) in [("vit-tiny", [1, 28, 28], 10), ("text-tiny", [1, 1, 24], 6)] {
        let g = zoo::build(name, input, classes)?;
        let ck = synthetic_checkpoint(&g, 5, false)?;
        let model = convert::convert(&g, &ck)?;
        let mut rng = wqat::testing::rng(3);
        let batches = [1usize, 64];
        let inputs: Vec<Vec<f32>> = batches.iter().map(|&b| random_inputs(&g, &mut rng, b, false)).collect();
        // fp32 on the GPU: the engine's evaluation plan of the same weights, no fake-quant.
        let state = ModelState::from_params(&ctx, std::path::Path::new("synthetic"), &ck, &g, QConfig::new(8, 8)?)?;
        let fp32: Vec<Compiled> = batches
            .iter()
            .map(|&b| Compiled::new(&ctx, &state, &CompileOptions { batch: b, quant: false, train: false }, None))
            .collect::<Result<_>>()?;
        let gpu = Int8GpuModel::new(&ctx, &model, 64)?;
        let cpu = wqat::infer::Int8CpuModel::new(&model);
        let row = |label: &str, f: &mut dyn FnMut(usize) -> Result<()>| -> Result<()> {
            let mut cells = Vec::new();
            for (k, &b) in batches.iter().enumerate() {
                let (med, _) = time(budget, || f(k))?;
                cells.push(format!("{:>12.0}", b as f64 / med));
            }
            println!("{:<34} {}", format!("{name} {label}"), cells.join(" "));
            Ok(())
        };
        row("GPU fp32 (engine eval plan)", &mut |k| {
            let c = &fp32[k];
            c.images.write(&ctx, &inputs[k])?;
            ctx.submit_plan(&c.eval_plan())?;
            c.preds.read_u32(&ctx).map(|_| ())
        })?;
        row("GPU int8", &mut |k| gpu.forward(&inputs[k], batches[k]).map(|_| ()))?;
        row("CPU int8 SIMD", &mut |k| cpu.forward(&inputs[k], batches[k], CpuBackend::Simd).map(|_| ()))?;
        row("CPU int8 scalar", &mut |k| cpu.forward(&inputs[k], batches[k], CpuBackend::Scalar).map(|_| ()))?;
    }
    Ok(())
}
