//! Training-throughput measurement (`wqat bench --train`) and a per-dispatch profile of a
//! compiled step (`cargo run --release --example profile_step -- MODEL BATCH qat|fp32`). Random data, the real compiled step, warm-up
//! first, medians of several runs.

use super::compile::{CompileOptions, Compiled, StepOptions};
use super::config::QConfig;
use super::state::ModelState;
use crate::error::Result;
use crate::gpu::{GpuContext, Plan};
use crate::kernels::optim;
use crate::model::zoo;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// Images/s of fp32 and QAT training steps of one model.
#[derive(Debug, Clone, Serialize)]
pub struct TrainThroughput {
    pub model: String,
    pub batch: usize,
    pub fp32_images_per_s: f64,
    pub qat_images_per_s: f64,
    pub fp32_ms_per_step: f64,
    pub qat_ms_per_step: f64,
    /// QAT step time over fp32 step time.
    pub qat_over_fp32: f64,
    pub dispatches_fp32: usize,
    pub dispatches_qat: usize,
    /// Dispatches of one training step, fp32 and QAT (what a real GPU pays in launches).
    pub dispatches_per_step: PerPhase,
    /// Bytes of the storage buffers every dispatch of a step binds, summed (an upper bound
    /// of the bytes read and written: a buffer counts once per dispatch that binds it).
    pub bytes_per_step: PerPhase,
}

/// One number for each phase of a step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerPhase {
    pub fp32: u64,
    pub qat: u64,
}

/// The input shape and classes the benchmark uses for a zoo model.
pub fn bench_input(model: &str) -> ([usize; 3], usize) {
    match model {
        "resnet20" | "resnet18" => ([3, 32, 32], 10),
        "mlp" => ([1, 8, 8], 10),
        // Byte sequences of the words task: 24 tokens, six languages.
        "text-tiny" => ([1, 1, 24], 6),
        _ => ([1, 28, 28], 10),
    }
}

/// A compiled training step of `model` on random data.
pub struct BenchStep {
    pub compiled: Compiled,
    pub plan: Plan,
    images: Vec<f32>,
    state: ModelState,
}

impl BenchStep {
    /// Compiles `model` for `batch` with fake-quant (`quant`) or plain fp32 kernels.
    pub fn new(ctx: &GpuContext, model: &str, batch: usize, quant: bool) -> Result<BenchStep> {
        let (input, classes) = bench_input(model);
        let g = zoo::build(model, input, classes)?;
        let state = ModelState::new(ctx, &g, QConfig::new(8, 8)?, 1)?;
        let opts = CompileOptions { batch, quant, train: true };
        let step = StepOptions {
            optimizer: Default::default(),
            momentum: 0.9,
            weight_decay: 5e-4,
            clip_grad_norm: None,
            skip_nonfinite: true,
            lsq_lr_mult: 1.0,
        };
        let compiled = Compiled::new(ctx, &state, &opts, Some(&step))?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let n = batch * input.iter().product::<usize>();
        let images: Vec<f32> = if model == "text-tiny" {
            // Token ids: CLS, bytes, then padding from a random length on.
            let len = input[2];
            (0..batch)
                .flat_map(|_| {
                    let used = rng.random_range(3..len);
                    let row: Vec<f32> = (0..len)
                        .map(|k| match k {
                            0 => 256.0,
                            k if k < used => rng.random_range(97..123) as f32,
                            _ => 257.0,
                        })
                        .collect();
                    row
                })
                .collect()
        } else {
            (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
        };
        let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..classes as u32)).collect();
        compiled.labels.write(ctx, &labels)?;
        optim::write_hyper(ctx, &compiled.hyper, 1e-3, 1)?;
        state.set_quant_flags(ctx, quant, quant, Some(true))?;
        let plan = compiled.train_plan(quant, false);
        Ok(BenchStep { compiled, plan, images, state })
    }

    /// Runs `steps` steps (upload + submit each) and waits; returns seconds.
    pub fn run(&self, ctx: &GpuContext, steps: usize) -> Result<f64> {
        let t = Instant::now();
        for _ in 0..steps {
            self.compiled.images.write(ctx, &self.images)?;
            ctx.submit_plan(&self.plan)?;
        }
        ctx.wait()?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// The model state (for inspection).
    pub fn state(&self) -> &ModelState {
        &self.state
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Median seconds per step over `runs` runs of `steps` steps after `warmup` steps.
pub fn time_step(ctx: &GpuContext, s: &BenchStep, warmup: usize, runs: usize, steps: usize) -> Result<f64> {
    s.run(ctx, warmup)?;
    let mut t = Vec::new();
    for _ in 0..runs.max(1) {
        t.push(s.run(ctx, steps.max(1))? / steps.max(1) as f64);
    }
    Ok(median(t))
}

/// fp32 and QAT training throughput of `model` at `batch`. The two are interleaved run by
/// run so load changes on the machine hit both alike.
pub fn measure_train(
    ctx: &GpuContext,
    model: &str,
    batch: usize,
    warmup: usize,
    runs: usize,
    steps: usize,
) -> Result<TrainThroughput> {
    let fp32 = BenchStep::new(ctx, model, batch, false)?;
    let qat = BenchStep::new(ctx, model, batch, true)?;
    fp32.run(ctx, warmup)?;
    qat.run(ctx, warmup)?;
    let (mut tf, mut tq) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        tf.push(fp32.run(ctx, steps.max(1))? / steps.max(1) as f64);
        tq.push(qat.run(ctx, steps.max(1))? / steps.max(1) as f64);
    }
    let (sf, sq) = (median(tf), median(tq));
    Ok(TrainThroughput {
        model: model.to_string(),
        batch,
        fp32_images_per_s: batch as f64 / sf,
        qat_images_per_s: batch as f64 / sq,
        fp32_ms_per_step: sf * 1e3,
        qat_ms_per_step: sq * 1e3,
        qat_over_fp32: sq / sf,
        dispatches_fp32: fp32.plan.dispatches.len(),
        dispatches_qat: qat.plan.dispatches.len(),
        dispatches_per_step: PerPhase {
            fp32: fp32.plan.dispatches.len() as u64,
            qat: qat.plan.dispatches.len() as u64,
        },
        bytes_per_step: PerPhase {
            fp32: fp32.plan.dispatches.iter().map(|d| d.bound_bytes).sum(),
            qat: qat.plan.dispatches.iter().map(|d| d.bound_bytes).sum(),
        },
    })
}

/// One dispatch's share of a step.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchTime {
    pub index: usize,
    pub label: String,
    pub ms: f64,
}

/// Times every dispatch of `plan` alone (its own submit and wait; median of `runs`), in
/// plan order. Includes per-submit overhead, so the sum exceeds a one-submit step.
pub fn profile_plan(ctx: &GpuContext, plan: &Plan, runs: usize) -> Result<Vec<DispatchTime>> {
    ctx.submit_plan(plan)?;
    ctx.wait()?;
    let mut out = Vec::new();
    for (i, d) in plan.dispatches.iter().enumerate() {
        let mut t = Vec::new();
        for _ in 0..runs.max(1) {
            let s = Instant::now();
            ctx.submit(&[d])?;
            ctx.wait()?;
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
        out.push(DispatchTime { index: i, label: d.label.clone(), ms: median(t) });
    }
    Ok(out)
}
