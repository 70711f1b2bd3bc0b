//! Timing of recorded dispatches for the kernel benchmarks: warm-up, repetitions per submit,
//! interleaved samples, GPU timestamp queries or the wall clock, and process CPU time.

use crate::error::{Result, WqatError};
use crate::gpu::{Dispatch, GpuContext};
use std::time::Instant;

/// Median, minimum and maximum seconds of one unit (one repetition of the dispatches).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// Timed samples.
    pub runs: usize,
    /// Repetitions of the unit recorded per sample (one submit).
    pub reps: usize,
    /// Measured with GPU timestamp queries.
    pub timestamps: bool,
    /// Median process CPU seconds per unit (CPU adapters; see [`KernelResult::fused_cpu_ms`]).
    pub cpu_s: Option<f64>,
}

/// CPU time (ns) consumed so far by all threads of this process, from
/// `/proc/self/task/*/schedstat` (Linux); `None` elsewhere. On a CPU adapter (lavapipe runs
/// shaders on this process's threads) the CPU time of a sample measures the kernel's work
/// independently of other processes competing for the cores.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for e in std::fs::read_dir("/proc/self/task").ok()? {
        let path = e.ok()?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// Timestamp query set and its resolve/readback buffers (two queries: pass begin, pass end).
struct Stamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

impl Stamps {
    fn new(ctx: &GpuContext) -> Stamps {
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buf = |usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench timestamps"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Stamps {
            set,
            resolve: buf(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            read: buf(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        }
    }
}

/// Records `reps` repetitions of `dispatches` in one compute pass, submits and waits.
/// Returns the seconds taken: GPU time between pass timestamps when `stamps` is given, else
/// the wall clock around submit + wait.
fn run_once(ctx: &GpuContext, dispatches: &[&Dispatch], reps: usize, stamps: Option<&Stamps>) -> Result<f64> {
    let start = Instant::now();
    ctx.checked("bench submit", || {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        {
            let tw = stamps.map(|s| wgpu::ComputePassTimestampWrites {
                query_set: &s.set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes: tw });
            for _ in 0..reps.max(1) {
                for d in dispatches {
                    d.record(&mut pass);
                }
            }
        }
        if let Some(s) = stamps {
            enc.resolve_query_set(&s.set, 0..2, &s.resolve, 0);
            enc.copy_buffer_to_buffer(&s.resolve, 0, &s.read, 0, 16);
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    })?;
    ctx.wait()?;
    let wall = start.elapsed().as_secs_f64();
    let Some(s) = stamps else { return Ok(wall) };
    let slice = s.read.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    let err = |m: String| WqatError::Gpu { context: "bench timestamps".into(), message: m };
    rx.recv().map_err(|e| err(e.to_string()))?.map_err(|e| err(e.to_string()))?;
    let ticks = {
        let view = slice.get_mapped_range().map_err(|e| err(format!("{e:?}")))?;
        let t: &[u64] = bytemuck::cast_slice(&view);
        t[1].wrapping_sub(t[0])
    };
    s.read.unmap();
    let secs = ticks as f64 * ctx.queue.get_timestamp_period() as f64 * 1e-9;
    // A driver that writes no (or garbage) timestamps: fall back to the wall clock.
    Ok(if secs > 0.0 && secs <= wall * 1.5 { secs } else { wall })
}

/// Times `dispatches` (one unit): `warmup` untimed submits (at least one, which also picks
/// the repetitions per sample so that a sample lasts about `target_s`), then `runs` samples.
pub fn time_dispatches(
    ctx: &GpuContext,
    dispatches: &[&Dispatch],
    warmup: usize,
    runs: usize,
    target_s: f64,
) -> Result<Timing> {
    Ok(time_units(ctx, &[dispatches], warmup, runs, target_s)?[0])
}

/// Times several units against each other: as [`time_dispatches`] for each, but with their
/// samples interleaved (A B A B ...) so that load from other processes on a shared machine
/// (lavapipe runs on the CPU) falls on all of them alike and their ratios stay meaningful.
pub fn time_units(
    ctx: &GpuContext,
    units: &[&[&Dispatch]],
    warmup: usize,
    runs: usize,
    target_s: f64,
) -> Result<Vec<Timing>> {
    let stamps = ctx.has_timestamps.then(|| Stamps::new(ctx));
    let mut reps = Vec::with_capacity(units.len());
    for u in units {
        let mut first = f64::MAX;
        for _ in 0..warmup.max(1) {
            first = first.min(run_once(ctx, u, 1, stamps.as_ref())?);
        }
        reps.push(if first > 0.0 { (target_s / first).ceil().clamp(1.0, 64.0) as usize } else { 64 });
    }
    let cpu_adapter = ctx.summary.device_type == "Cpu";
    let mut samples = vec![Vec::with_capacity(runs.max(1)); units.len()];
    let mut cpu = vec![Vec::with_capacity(runs.max(1)); units.len()];
    for _ in 0..runs.max(1) {
        for (i, u) in units.iter().enumerate() {
            let c0 = if cpu_adapter { process_cpu_ns() } else { None };
            samples[i].push(run_once(ctx, u, reps[i], stamps.as_ref())? / reps[i] as f64);
            if let (Some(a), Some(b)) = (c0, c0.and_then(|_| process_cpu_ns())) {
                cpu[i].push(b.saturating_sub(a) as f64 * 1e-9 / reps[i] as f64);
            }
        }
    }
    Ok(samples
        .into_iter()
        .zip(reps)
        .zip(cpu)
        .map(|((mut t, reps), mut c)| {
            t.sort_by(|a, b| a.total_cmp(b));
            c.sort_by(|a, b| a.total_cmp(b));
            Timing {
                cpu_s: (c.len() == t.len()).then(|| c[c.len() / 2]),
                median_s: t[t.len() / 2],
                min_s: t[0],
                max_s: t[t.len() - 1],
                runs: t.len(),
                reps,
                timestamps: stamps.is_some(),
            }
        })
        .collect())
}
