//! Kernel benchmarks: fp32 GEMM GFLOP/s (plain, fused fake-quant, unfused fake-quant + GEMM)
//! and fake-quant bandwidth against a plain copy on the same adapter.
//!
//! `cargo bench --bench kernels` (sizes 256, 512, 1024); flags after `--`:
//! `--quick` (256 and 512 only, fewer runs), `--big` (adds 2048), `--runs N` (timed runs).
//! Timing: warm-up runs, then the median of timed runs, each a submit of the recorded
//! dispatches followed by a wait (wall clock, so per-dispatch launch cost is included).
//! "best" columns use the fastest run: on a shared CPU (lavapipe) it is the kernel's own
//! speed, the median includes other processes' load.
//!
//! The helpers in [`timing`] are written to move into the library (for `wqat bench`) as is.

use std::time::Instant;
use wqat::gpu::{DType, Dispatch, GpuContext, GpuTensor};
use wqat::kernels::fake_quant::fake_quant_forward;
use wqat::kernels::gemm::{copy_f32, gemm, gemm_unfused, GemmConfig, GemmExtras, GemmTile};
use wqat::quant::{QStateLayout, QuantSpec};
use wqat::Result;

mod timing {
    use super::*;

    /// Median, minimum and maximum seconds of one timed unit.
    #[derive(Debug, Clone, Copy)]
    pub struct Timing {
        pub median_s: f64,
        pub min_s: f64,
        pub max_s: f64,
        pub runs: usize,
    }

    /// Times `dispatches` submitted as one command buffer and waited for: `warmup` untimed
    /// runs, then `runs` timed ones.
    pub fn time_dispatches(ctx: &GpuContext, dispatches: &[&Dispatch], warmup: usize, runs: usize) -> Result<Timing> {
        for _ in 0..warmup {
            ctx.submit(dispatches)?;
            ctx.wait()?;
        }
        let mut t = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            let start = Instant::now();
            ctx.submit(dispatches)?;
            ctx.wait()?;
            t.push(start.elapsed().as_secs_f64());
        }
        t.sort_by(|a, b| a.total_cmp(b));
        Ok(Timing { median_s: t[t.len() / 2], min_s: t[0], max_s: t[t.len() - 1], runs: t.len() })
    }

    /// A tensor of deterministic pseudo-random values in [-1, 1) (no RNG crate needed here).
    pub fn filled(ctx: &GpuContext, shape: &[usize], seed: u32) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(2654435761).max(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect();
        GpuTensor::from_f32(ctx, shape, &v)
    }

    /// A quantizer state tensor with fake-quant on: `channels` scales of `scale`, zero point `z`.
    pub fn qstate(ctx: &GpuContext, channels: usize, scale: f32, z: f32) -> Result<GpuTensor> {
        let s = QStateLayout::new(channels).build(&vec![scale; channels], &vec![z; channels]);
        GpuTensor::from_f32(ctx, &[s.len()], &s)
    }
}

use timing::{filled, qstate, time_dispatches, Timing};

struct Opts {
    sizes: Vec<usize>,
    runs: usize,
    elems: usize,
}

fn parse_args() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    let mut o = Opts { sizes: vec![256, 512, 1024], runs: 5, elems: 1 << 22 };
    if has("--quick") {
        o = Opts { sizes: vec![256, 512], runs: 3, elems: 1 << 20 };
    }
    if has("--big") {
        o.sizes.push(2048);
    }
    if let Some(i) = args.iter().position(|a| a == "--runs") {
        if let Some(n) = args.get(i + 1).and_then(|v| v.parse().ok()) {
            o.runs = n;
        }
    }
    o
}

fn row(name: &str, size: usize, t: &Timing, flops: f64) {
    println!(
        "{name:<34} {size:>5} {:>10.3} {:>10.3} {:>10.3} {:>4} {:>9.2} {:>9.2}",
        t.median_s * 1e3,
        t.min_s * 1e3,
        t.max_s * 1e3,
        t.runs,
        flops / t.median_s / 1e9,
        flops / t.min_s / 1e9
    );
}

fn bench_gemm(ctx: &GpuContext, size: usize, runs: usize) -> Result<()> {
    let n = size;
    let warm = 1;
    let runs = if n >= 2048 { runs.min(3) } else { runs };
    // A linear layer y = x W^T + b with x [n, n], W [n, n].
    let x = filled(ctx, &[n, n], 1)?;
    let w = filled(ctx, &[n, n], 2)?;
    let bias = filled(ctx, &[n], 3)?;
    let y = GpuTensor::zeros(ctx, &[n, n], DType::F32)?;
    let (act, wspec) = (QuantSpec::activation(8), QuantSpec::weight(8));
    let qx = qstate(ctx, 1, 2.0 / 255.0, 128.0)?;
    let qw = qstate(ctx, n, 1.0 / 127.0, 0.0)?;
    let flops = GemmConfig::new(n, n, n).flops();
    let plain = |tile: GemmTile, trans_b: bool| GemmConfig { tile: Some(tile), trans_b, ..GemmConfig::new(n, n, n) };
    let none = GemmExtras::default();

    let variants: [(&str, GemmTile, bool); 4] = [
        ("NN direct 8x16 thr, 8x8 reg", GemmTile::CPU, false),
        ("NT direct 8x16 thr, 8x8 reg", GemmTile::CPU, true),
        ("NN shared 8x8 thr, 8x8 reg, bk 16", GemmTile { wg_y: 8, shared: true, ..GemmTile::CPU }, false),
        ("NN shared 16x16 thr, 4x4 reg, bk16", GemmTile::GPU, false),
    ];
    for (name, tile, tb) in variants {
        let d = gemm(ctx, &plain(tile, tb), &x, &w, &y, &none)?;
        row(name, n, &time_dispatches(ctx, &[&d], warm, runs)?, flops);
    }

    let tile = GemmTile::for_context(ctx);
    let fwd = GemmConfig { tile: Some(tile), ..GemmConfig::linear_forward(n, n, n, Some(act), Some(wspec)) };
    let ex = GemmExtras { bias: Some(&bias), qa: Some(&qx), qb: Some(&qw), ..Default::default() };
    let d = gemm(ctx, &fwd, &x, &w, &y, &ex)?;
    row("linear fwd, fused FQ(x),FQ(W)+bias", n, &time_dispatches(ctx, &[&d], warm, runs)?, flops);

    // Unfused: fake-quant both operands into scratch, then a plain GEMM with bias.
    let xq = GpuTensor::zeros(ctx, &[n, n], DType::F32)?;
    let wq = GpuTensor::zeros(ctx, &[n, n], DType::F32)?;
    let ex = GemmExtras { bias: Some(&bias), qa: Some(&qx), qb: Some(&qw), ..Default::default() };
    let ds = gemm_unfused(ctx, &fwd, &x, &w, &y, &ex, [Some(&xq), Some(&wq)])?;
    let refs: Vec<&Dispatch> = ds.iter().collect();
    row("linear fwd, unfused FQ,FQ,GEMM", n, &time_dispatches(ctx, &refs, warm, runs)?, flops);

    // Backward: dX = (dY FQ(W)) ⊙ STE(x), dW = (dY^T FQ(x)) ⊙ STE(W).
    let bx = GemmConfig { tile: Some(tile), ..GemmConfig::linear_backward_input(n, n, n, Some(act), Some(wspec)) };
    let ex = GemmExtras { qb: Some(&qw), mask_src: Some(&x), mask_state: Some(&qx), ..Default::default() };
    let d = gemm(ctx, &bx, &y, &w, &xq, &ex)?;
    row("linear dX, fused FQ(W)+STE(x)", n, &time_dispatches(ctx, &[&d], warm, runs)?, flops);
    let bw = GemmConfig { tile: Some(tile), ..GemmConfig::linear_backward_weight(n, n, n, Some(act), Some(wspec)) };
    let ex = GemmExtras { qb: Some(&qx), mask_src: Some(&w), mask_state: Some(&qw), ..Default::default() };
    let d = gemm(ctx, &bw, &y, &x, &wq, &ex)?;
    row("linear dW, fused FQ(x)+STE(W)", n, &time_dispatches(ctx, &[&d], warm, runs)?, flops);
    Ok(())
}

fn bench_fake_quant(ctx: &GpuContext, elems: usize, runs: usize) -> Result<()> {
    let x = filled(ctx, &[elems], 4)?;
    let out = GpuTensor::zeros(ctx, &[elems], DType::F32)?;
    let bytes = 8.0 * elems as f64; // one f32 read + one f32 write per element
    let copy = copy_f32(ctx, &x, &out)?;
    let tc = time_dispatches(ctx, &[&copy], 2, runs)?;
    let q1 = qstate(ctx, 1, 2.0 / 255.0, 128.0)?;
    let fq = fake_quant_forward(ctx, &x, &q1, &out, &QuantSpec::activation(8))?;
    let tq = time_dispatches(ctx, &[&fq], 2, runs)?;
    let rows = 1024;
    let x2 = GpuTensor { shape: vec![rows, elems / rows], ..x.clone() };
    let out2 = GpuTensor { shape: vec![rows, elems / rows], ..out.clone() };
    let qc = qstate(ctx, rows, 1.0 / 127.0, 0.0)?;
    let fqc = fake_quant_forward(ctx, &x2, &qc, &out2, &QuantSpec::weight(8))?;
    let tqc = time_dispatches(ctx, &[&fqc], 2, runs)?;
    let gbs = |t: &Timing| bytes / t.median_s / 1e9;
    let best = |t: &Timing| bytes / t.min_s / 1e9;
    println!(
        "\n{:<34} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "elementwise (f32)", "elements", "median ms", "GB/s", "vs copy", "best", "vs copy"
    );
    for (name, t) in [("copy_f32", &tc), ("fake_quant per-tensor", &tq), ("fake_quant per-channel (1024)", &tqc)] {
        println!(
            "{name:<34} {elems:>9} {:>10.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            t.median_s * 1e3,
            gbs(t),
            gbs(t) / gbs(&tc),
            best(t),
            best(t) / best(&tc)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let opts = parse_args();
    let ctx = wqat::testing::ctx();
    println!(
        "adapter: {} ({}, {}), subgroups {}, timing: wall clock, warm-up then median of {} runs",
        ctx.summary.name, ctx.summary.backend, ctx.summary.device_type, ctx.use_subgroups, opts.runs
    );
    println!(
        "\n{:<34} {:>5} {:>10} {:>10} {:>10} {:>4} {:>9} {:>9}",
        "gemm (fp32, M=N=K)", "size", "median ms", "min ms", "max ms", "runs", "GFLOP/s", "best"
    );
    for &s in &opts.sizes {
        bench_gemm(&ctx, s, opts.runs)?;
    }
    bench_fake_quant(&ctx, opts.elems, opts.runs.max(5))?;
    Ok(())
}
