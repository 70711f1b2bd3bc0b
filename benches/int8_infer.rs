//! Integer inference throughput of a converted `mnist-cnn` (synthetic calibrated
//! checkpoint): images/s at batch 1 and 64 on the CPU scalar and SIMD executors, the GPU
//! int8 executor (dot4 path and unpack fallback), and for comparison the same network in
//! plain fp32 on the GPU (the training engine's conv / gemm / pool kernels, no fake-quant)
//! and the CPU fake-quant reference.
//!
//! `cargo bench --bench int8_infer` (flags after `--`: `--quick` for shorter runs).
//! Each cell: warm-up, then repeated forwards for at least the time budget; images/s from
//! the median forward time (best in parentheses). GPU times include the upload of the
//! images, one submit and the readback of the logits (what `wqat infer` pays). The last
//! rows give the GPU target directly: int8 and fp32 forwards interleaved, the ratio of their
//! median wall times and of their CPU time (all threads, lavapipe's workers included), which
//! stays meaningful when other processes compete for the cores.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wqat::convert;
use wqat::convert::synthetic::{random_images, synthetic_checkpoint};
use wqat::gpu::{DType, Dispatch, GpuContext, GpuOptions, GpuTensor};
use wqat::infer::{self, Int8GpuModel, Int8Model, LayerKind};
use wqat::infer::{CpuBackend, SimdKernel};
use wqat::kernels::conv::{conv2d_forward, Conv2dForwardArgs, Conv2dGeom};
use wqat::kernels::gemm::{gemm, GemmConfig, GemmExtras};
use wqat::kernels::pool::{maxpool_forward, PoolSpec};
use wqat::model::checkpoint::{effective_params, GraphQuant};
use wqat::model::zoo;
use wqat::reference::graph::fake_quant_forward;
use wqat::Result;

/// User + system CPU seconds of this process, threads that exited included (Linux
/// `/proc/self/stat`, clock ticks of 10 ms); `None` elsewhere.
fn process_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU nanoseconds run so far by the live threads of this process (Linux
/// `/proc/self/task/*/schedstat`, nanosecond resolution; lavapipe's worker threads are
/// long-lived, so a forward's GPU work is counted); `None` elsewhere.
fn threads_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for e in std::fs::read_dir("/proc/self/task").ok()? {
        let s = std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// GPU int8 against GPU fp32 at one batch size, calls interleaved so that a change of load
/// hits both alike: (median wall ratio fp32/int8, CPU-time ratio fp32/int8).
fn interleaved_ratio(
    budget: Duration,
    mut int8: impl FnMut() -> Result<()>,
    mut fp32: impl FnMut() -> Result<()>,
) -> Result<(f64, Option<f64>)> {
    int8()?;
    fp32()?;
    let (mut ti, mut tf) = (Vec::new(), Vec::new());
    let (mut ci, mut cf) = (Some(0u64), Some(0u64));
    let start = Instant::now();
    let run = |f: &mut dyn FnMut() -> Result<()>, t: &mut Vec<f64>, c: &mut Option<u64>| -> Result<()> {
        let c0 = threads_cpu_ns();
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
        *c = c.zip(c0.zip(threads_cpu_ns())).map(|(acc, (a, b))| acc + b.saturating_sub(a));
        Ok(())
    };
    while ti.len() < 5 || (start.elapsed() < budget * 4 && ti.len() < 1000) {
        run(&mut int8, &mut ti, &mut ci)?;
        run(&mut fp32, &mut tf, &mut cf)?;
    }
    let med = |t: &mut Vec<f64>| {
        t.sort_by(|a, b| a.total_cmp(b));
        t[t.len() / 2]
    };
    let cpu = ci.zip(cf).filter(|(i, _)| *i > 0).map(|(i, f)| f as f64 / i as f64);
    Ok((med(&mut tf) / med(&mut ti), cpu))
}

/// Median and best seconds of `f` over repeated calls for about `budget`, and the CPU
/// seconds per call (all threads; robust to other processes competing for the cores).
fn time(budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, Option<f64>)> {
    f()?;
    let cpu0 = process_cpu_s();
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 3 || (start.elapsed() < budget && t.len() < 2000) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    let cpu = cpu0.zip(process_cpu_s()).map(|(a, b)| (b - a) / t.len() as f64);
    t.sort_by(|a, b| a.total_cmp(b));
    Ok((t[t.len() / 2], t[0], cpu))
}

/// Plain fp32 mnist-cnn on the GPU with the engine's kernels: conv+bias+ReLU, max pool,
/// conv+bias+ReLU, max pool, linear+bias+ReLU, linear+bias.
struct Fp32Gpu {
    dispatches: Vec<Dispatch>,
    x: GpuTensor,
    logits: GpuTensor,
}

impl Fp32Gpu {
    fn new(ctx: &GpuContext, graph: &wqat::model::Graph, ck: &wqat::tensorfile::TensorFile, b: usize) -> Result<Self> {
        let gq = GraphQuant::new(graph, ck)?;
        let p = |i: usize| -> Result<(GpuTensor, GpuTensor)> {
            let (w, bias) = effective_params(&gq, ck, i)?;
            let n = bias.len();
            Ok((GpuTensor::from_f32(ctx, &[n, w.len() / n], &w)?, GpuTensor::from_f32(ctx, &[n], &bias)?))
        };
        let t = |s: &[usize]| GpuTensor::zeros(ctx, s, DType::F32);
        let x = t(&[b, 1, 28, 28])?;
        let (w1, b1) = p(0)?;
        let (w2, b2) = p(2)?;
        let (w3, b3) = p(5)?;
        let (w4, b4) = p(6)?;
        let w1 = GpuTensor { shape: vec![16, 1, 3, 3], ..w1 };
        let w2 = GpuTensor { shape: vec![32, 16, 3, 3], ..w2 };
        let (y1, p1, y2, p2) = (t(&[b, 16, 28, 28])?, t(&[b, 16, 14, 14])?, t(&[b, 32, 14, 14])?, t(&[b, 32, 7, 7])?);
        let a1 = GpuTensor::zeros(ctx, &[b, 16, 14, 14], DType::U32)?;
        let a2 = GpuTensor::zeros(ctx, &[b, 32, 7, 7], DType::U32)?;
        let (h, logits) = (t(&[b, 128])?, t(&[b, 10])?);
        let spec = PoolSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) };
        let conv = |cfg: Conv2dGeom, x: &GpuTensor, w: &GpuTensor, bias: &GpuTensor, y: &GpuTensor| {
            conv2d_forward(
                ctx,
                &cfg,
                &Conv2dForwardArgs { x, w, bias: Some(bias), x_quant: None, w_quant: None, relu: true, y },
            )
        };
        let flat = GpuTensor { shape: vec![b, 1568], ..p2.clone() };
        let lin = |k: usize, n: usize, relu: bool, x: &GpuTensor, w: &GpuTensor, bias: &GpuTensor, y: &GpuTensor| {
            let cfg = GemmConfig { relu, ..GemmConfig::linear_forward(b, k, n, None, None) };
            gemm(ctx, &cfg, x, w, y, &GemmExtras { bias: Some(bias), ..Default::default() })
        };
        let dispatches = vec![
            conv(Conv2dGeom::new(b, 1, 28, 28, 16, 3).with_padding(1), &x, &w1, &b1, &y1)?,
            maxpool_forward(ctx, &y1, &p1, &a1, &spec)?,
            conv(Conv2dGeom::new(b, 16, 14, 14, 32, 3).with_padding(1), &p1, &w2, &b2, &y2)?,
            maxpool_forward(ctx, &y2, &p2, &a2, &spec)?,
            lin(1568, 128, true, &flat, &w3, &b3, &h)?,
            lin(128, 10, false, &h, &w4, &b4, &logits)?,
        ];
        Ok(Fp32Gpu { dispatches, x, logits })
    }
    fn forward(&self, ctx: &GpuContext, images: &[f32]) -> Result<Vec<f32>> {
        self.x.write(ctx, images)?;
        let refs: Vec<&Dispatch> = self.dispatches.iter().collect();
        ctx.submit(&refs)?;
        self.logits.read_f32(ctx)
    }
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 500 } else { 3000 });
    let g = zoo::build("mnist-cnn", [1, 28, 28], 10)?;
    let ck = synthetic_checkpoint(&g, 7, false)?;
    let model: Int8Model = convert::convert(&g, &ck)?;
    let cpu = infer::Int8CpuModel::new(&model);
    assert!(model.layers.iter().all(|l| !matches!(l.kind, LayerKind::Float(_))));
    let ctx = GpuContext::new(&GpuOptions::from_env())?;
    let ctx_nodot: Arc<GpuContext> = GpuContext::new(&GpuOptions { disable_dot4: true, ..GpuOptions::from_env() })?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "int8 inference, mnist-cnn (1x28x28, 1.2 M MAC/image); CPU: {cpus} threads, SIMD kernel {:?}; GPU: {} ({}), dot4 available: {}",
        SimdKernel::best(),
        ctx.summary.name,
        ctx.summary.backend,
        ctx.use_dot4
    );
    let mut rng = wqat::testing::rng(1);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let batches = [1usize, 64];
    let images: Vec<Vec<f32>> = batches.iter().map(|&b| random_images(&mut rng, b * 784, false)).collect();
    let mut add = |name: &str, f: &mut dyn FnMut(usize, &[f32]) -> Result<()>| -> Result<()> {
        let (mut cells, mut cpu_cells) = (Vec::new(), Vec::new());
        for (bi, &b) in batches.iter().enumerate() {
            let (med, best, cpu) = time(budget, || f(b, &images[bi]))?;
            cells.push(format!("{:>9.0} ({:>7.0})", b as f64 / med, b as f64 / best));
            if name.starts_with("CPU int8") {
                cpu_cells.push(cpu.map_or("-".to_string(), |c| format!("{:.0}", b as f64 / c)));
            }
        }
        if !cpu_cells.is_empty() {
            cells.push(format!("  per CPU-second: {}", cpu_cells.join(" / ")));
        }
        println!("{name:<32} {}", cells.join("  "));
        rows.push((name.to_string(), cells));
        Ok(())
    };
    println!("{:<32} {:>19}  {:>19}", "images/s: median (best)", "batch 1", "batch 64");
    println!("(CPU int8 rows also give images per CPU-second of all threads, batch 1 / 64: the rate the cores deliver when other processes compete for them)");
    add("CPU int8 scalar", &mut |b, x| cpu.forward(x, b, CpuBackend::Scalar).map(|_| ()))?;
    add(&format!("CPU int8 SIMD ({:?})", SimdKernel::best()), &mut |b, x| {
        cpu.forward(x, b, CpuBackend::Simd).map(|_| ())
    })?;
    // On CPU adapters (`conv_direct`) the conv / linear layers whose shapes fit take the
    // register-blocked DIRECT path, which always unpacks: the "dot4" row then uses
    // dot4I8Packed only in the layers that fall back to the per-word kernel. Say so.
    let dot4_label = if ctx.conv_direct { "GPU int8 DIRECT (dot4 elsewhere)" } else { "GPU int8 dot4" };
    if ctx.conv_direct {
        println!("(CPU adapter: conv/linear layers that fit run the DIRECT unpack path; dot4I8Packed serves only the others)");
    }
    for (label, c) in [(dot4_label, &ctx), ("GPU int8 unpack fallback", &ctx_nodot)] {
        if std::ptr::eq(c, &ctx) && !c.use_dot4 {
            println!("{label:<32} (dot4 not available on this adapter)");
            continue;
        }
        let gm = Int8GpuModel::new(c, &model, 64)?;
        add(label, &mut |b, x| gm.forward(x, b).map(|_| ()))?;
    }
    let fp = [Fp32Gpu::new(&ctx, &g, &ck, 1)?, Fp32Gpu::new(&ctx, &g, &ck, 64)?];
    add("GPU fp32 (engine kernels)", &mut |b, x| fp[usize::from(b != 1)].forward(&ctx, x).map(|_| ()))?;
    add("CPU fake-quant reference (f64)", &mut |b, x| fake_quant_forward(&g, &ck, x, b).map(|_| ()))?;
    // The GPU target (int8 >= 2x fp32 on the same adapter), measured interleaved.
    let best_ctx = if ctx.use_dot4 { &ctx } else { &ctx_nodot };
    let gm = Int8GpuModel::new(best_ctx, &model, 64)?;
    for (bi, &b) in batches.iter().enumerate() {
        let fpm = &fp[usize::from(b != 1)];
        let (wall, cpu) = interleaved_ratio(
            budget,
            || gm.forward(&images[bi], b).map(|_| ()),
            || fpm.forward(&ctx, &images[bi]).map(|_| ()),
        )?;
        let cpu = cpu.map_or("-".to_string(), |c| format!("{c:.2}x"));
        println!(
            "GPU int8 speed-up over GPU fp32, batch {b:>2}, interleaved: wall {wall:.2}x (median), CPU time {cpu}"
        );
    }
    // Sanity: the fp32 GPU network predicts like the fake-quant simulation on most images.
    let sim = fake_quant_forward(&g, &ck, &images[1], 64)?;
    let gpu32 = fp[1].forward(&ctx, &images[1])?;
    let agree = infer::cpu::argmax_rows(&sim, 10)
        .iter()
        .zip(infer::cpu::argmax_rows(&gpu32, 10))
        .filter(|(a, b)| **a == *b)
        .count();
    println!("(fp32 GPU vs fake-quant predictions agree on {agree}/64 images)");
    Ok(())
}
