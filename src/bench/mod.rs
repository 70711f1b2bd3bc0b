//! Kernel benchmarks shared by `cargo bench --bench kernels` and `wqat bench`.
//!
//! Every fused kernel is timed against its unfused equivalent on the same adapter, computing
//! the same values:
//! * forward kernels (`linear_fwd`, `conv_fwd`): the fused kernel fake-quantizes its operands
//!   as it loads them; unfused = `fake_quant_forward` passes writing quantized copies of the
//!   activations and the weights, then the plain kernel;
//! * backward kernels (`linear_dx`, `linear_dw`, `conv_dx`, `conv_dw`): the fused kernel
//!   fake-quantizes its quantized operand on load and multiplies by the STE mask in its
//!   epilogue; unfused = a fake-quant pass of that operand, the plain kernel into a scratch
//!   gradient, then a separate `ste_backward` masking pass.
//!
//! Extra rows: plain fp32 GEMM (`gemm_fp32`, `fused_ms == unfused_ms`, ratio 1), the adapter's
//! GEMM ceiling (`ceiling`: the fastest of the engine's GEMM and the `gemm_ceiling`
//! microkernel on in-cache squares, see [`Runner::ceiling`]) and
//! elementwise bandwidth (`fake_quant_bw`: fake-quant in `fused_ms`, the plain `copy_f32`
//! yardstick in `unfused_ms`, so `ratio` is the fraction of copy bandwidth reached).
//!
//! Timing ([`time_dispatches`]): warm-up submits first, then the median of `runs` samples.
//! Each sample records the unit `reps` times in one compute pass (one submit) to amortize
//! submit and poll overhead; `reps` is chosen from the warm-up time. With timestamp queries
//! (`ctx.has_timestamps`) a sample is the GPU time between the pass's begin and end
//! timestamps, otherwise the wall clock around submit + wait. Reported times are per unit.
//!
//! Every GFLOP/s row also reports its percentage of the ceiling: by medians
//! (`pct_of_ceiling`) and, on CPU adapters, by process CPU time (`pct_of_ceiling_cpu`: FLOPs
//! per CPU-second against the ceiling's, robust to other load on a shared machine).

pub mod timing;

pub use timing::{time_dispatches, time_units, Timing};

use crate::error::Result;
use crate::gpu::{DType, Dispatch, GpuContext, GpuTensor};
use crate::kernels::conv::{
    conv2d_backward_data, conv2d_backward_weight, conv2d_forward, Conv2dBackwardDataArgs, Conv2dBackwardWeightArgs,
    Conv2dForwardArgs, Conv2dGeom, QuantOperand, SteMask,
};
use crate::kernels::fake_quant::{fake_quant_forward, ste_backward};
use crate::kernels::gemm::{copy_f32, gemm, gemm_ceiling, gemm_unfused, GemmConfig, GemmExtras};
use crate::quant::{QStateLayout, QuantSpec};

/// What to run and how long to time it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// The reduced shape set (mnist layers, small squares): under a minute on lavapipe.
    pub quick: bool,
    /// Only rows whose `"name shape"` contains one of these comma-separated substrings.
    pub filter: Option<String>,
    /// Untimed submits before timing (at least one is always run to pick `reps`).
    pub warmup: usize,
    /// Timed samples; the median is reported.
    pub runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { quick: false, filter: None, warmup: 1, runs: 5 }
    }
}

impl BenchOptions {
    /// The quick set with 3 runs.
    pub fn quick() -> Self {
        BenchOptions { quick: true, filter: None, warmup: 1, runs: 3 }
    }
    /// Whether a row named `name` with `shape` passes the filter.
    pub fn wants(&self, name: &str, shape: &str) -> bool {
        match &self.filter {
            None => true,
            Some(f) => {
                let row = format!("{name} {shape}");
                f.split(',').map(str::trim).filter(|s| !s.is_empty()).any(|s| row.contains(s))
            }
        }
    }
    /// Seconds one timed sample should last (sets the repetitions per submit).
    fn sample_target_s(&self) -> f64 {
        if self.quick {
            0.01
        } else {
            0.03
        }
    }
}

/// One benchmark row. `ratio = unfused_ms / fused_ms` (> 1: the fused kernel wins).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelResult {
    /// `linear_fwd`, `linear_dx`, `linear_dw`, `conv_fwd`, `conv_dx`, `conv_dw`,
    /// `gemm_fp32` or `fake_quant_bw`.
    pub name: String,
    /// Layer and shape, e.g. `mnist.fc1 64x1568->128` or `resnet20.conv32 128x32x16x16 k3s1`.
    pub shape: String,
    /// Median milliseconds of the fused kernel (of the measured kernel for extra rows).
    pub fused_ms: f64,
    /// Median milliseconds of the unfused dispatch sequence (the yardstick for extra rows).
    pub unfused_ms: f64,
    /// `unfused_ms / fused_ms`.
    pub ratio: f64,
    /// GFLOP/s of the fused kernel (0 for bandwidth rows).
    pub gflops: f64,
    /// GFLOP/s of the unfused sequence (0 for bandwidth rows).
    pub unfused_gflops: f64,
    /// GB/s (one f32 read and one write per element) for bandwidth rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// Fastest sample of the fused kernel (on a shared CPU adapter, the kernel's own speed).
    pub fused_min_ms: f64,
    /// Fastest sample of the unfused sequence.
    pub unfused_min_ms: f64,
    /// `"timestamp"` (GPU timestamp queries) or `"wall"` (wall clock around submit + wait).
    pub timing: String,
    /// CPU adapters (lavapipe) on Linux: median CPU time all threads of the process spent per
    /// fused unit (the shader's work, whatever else loads the machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused_cpu_ms: Option<f64>,
    /// As `fused_cpu_ms` for the unfused sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfused_cpu_ms: Option<f64>,
    /// `gflops` as a percentage of the ceiling row's GFLOP/s (GFLOP/s rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pct_of_ceiling: Option<f64>,
    /// FLOPs per CPU-second of the fused kernel as a percentage of the ceiling's (CPU adapters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pct_of_ceiling_cpu: Option<f64>,
}

impl KernelResult {
    /// GFLOP per CPU-second of the fused kernel (`gflops` scaled by wall over CPU time).
    pub fn cpu_gflops(&self) -> Option<f64> {
        self.fused_cpu_ms.filter(|c| *c > 0.0 && self.gflops > 0.0).map(|c| self.gflops * self.fused_ms / c)
    }
}

/// A tensor of deterministic pseudo-random values in [-1, 1).
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

/// A quantizer state with fake-quant on: `channels` scales of `scale`, zero point `z`.
pub fn qstate(ctx: &GpuContext, channels: usize, scale: f32, z: f32) -> Result<GpuTensor> {
    let s = QStateLayout::new(channels).build(&vec![scale; channels], &vec![z; channels]);
    GpuTensor::from_f32(ctx, &[s.len()], &s)
}

/// The activation quantizer state used throughout: 8-bit affine over [-1, 1).
fn act_state(ctx: &GpuContext) -> Result<GpuTensor> {
    qstate(ctx, 1, 2.0 / 255.0, 128.0)
}

/// The weight quantizer state: 8-bit symmetric per channel over [-1, 1].
fn weight_state(ctx: &GpuContext, channels: usize) -> Result<GpuTensor> {
    qstate(ctx, channels, 1.0 / 127.0, 0.0)
}

fn zeros(ctx: &GpuContext, shape: &[usize]) -> Result<GpuTensor> {
    GpuTensor::zeros(ctx, shape, DType::F32)
}

/// Views `t` with another shape (same buffer).
fn view(t: &GpuTensor, shape: &[usize]) -> GpuTensor {
    GpuTensor { shape: shape.to_vec(), ..t.clone() }
}

/// Accumulates rows, timing each pair.
struct Runner<'a> {
    ctx: &'a GpuContext,
    opts: &'a BenchOptions,
    out: Vec<KernelResult>,
}

impl Runner<'_> {
    fn time(&self, ds: &[Dispatch]) -> Result<Timing> {
        let refs: Vec<&Dispatch> = ds.iter().collect();
        time_dispatches(self.ctx, &refs, self.opts.warmup, self.opts.runs, self.opts.sample_target_s())
    }

    /// Times units against each other (interleaved samples).
    fn time_all(&self, units: &[&[Dispatch]]) -> Result<Vec<Timing>> {
        let refs: Vec<Vec<&Dispatch>> = units.iter().map(|u| u.iter().collect()).collect();
        let units: Vec<&[&Dispatch]> = refs.iter().map(|u| u.as_slice()).collect();
        time_units(self.ctx, &units, self.opts.warmup, self.opts.runs, self.opts.sample_target_s())
    }

    fn pair(&mut self, name: &str, shape: &str, flops: f64, fused: &[Dispatch], unfused: &[Dispatch]) -> Result<()> {
        let t = self.time_all(&[fused, unfused])?;
        let (f, u) = (t[0], t[1]);
        let gf = |t: &Timing| flops / t.median_s / 1e9;
        self.out.push(KernelResult {
            name: name.into(),
            shape: shape.into(),
            fused_ms: f.median_s * 1e3,
            unfused_ms: u.median_s * 1e3,
            ratio: u.median_s / f.median_s,
            gflops: gf(&f),
            unfused_gflops: gf(&u),
            gbps: None,
            fused_min_ms: f.min_s * 1e3,
            unfused_min_ms: u.min_s * 1e3,
            timing: timing_name(&f).into(),
            fused_cpu_ms: f.cpu_s.map(|c| c * 1e3),
            unfused_cpu_ms: u.cpu_s.map(|c| c * 1e3),
            pct_of_ceiling: None,
            pct_of_ceiling_cpu: None,
        });
        Ok(())
    }

    /// Linear layer `[batch, inp] -> [batch, out]`: forward, input and weight gradients.
    fn linear(&mut self, layer: &str, batch: usize, inp: usize, out: usize, backward: bool) -> Result<()> {
        let shape = format!("{layer} {batch}x{inp}->{out}");
        let names: &[&str] = if backward { &["linear_fwd", "linear_dx", "linear_dw"] } else { &["linear_fwd"] };
        if !names.iter().any(|n| self.opts.wants(n, &shape)) {
            return Ok(());
        }
        let ctx = self.ctx;
        let (act, wspec) = (QuantSpec::activation(8), QuantSpec::weight(8));
        let x = filled(ctx, &[batch, inp], 1)?;
        let w = filled(ctx, &[out, inp], 2)?;
        let bias = filled(ctx, &[out], 3)?;
        let dy = filled(ctx, &[batch, out], 4)?;
        let y = zeros(ctx, &[batch, out])?;
        let (xq, wq) = (zeros(ctx, &[batch, inp])?, zeros(ctx, &[out, inp])?);
        let (dx, dw) = (zeros(ctx, &[batch, inp])?, zeros(ctx, &[out, inp])?);
        let (dx_raw, dw_raw) = (zeros(ctx, &[batch, inp])?, zeros(ctx, &[out, inp])?);
        let qx = act_state(ctx)?;
        let qw = weight_state(ctx, out)?;
        let flops = GemmConfig::new(batch, out, inp).flops();

        if self.opts.wants("linear_fwd", &shape) {
            let cfg = GemmConfig::linear_forward(batch, inp, out, Some(act), Some(wspec));
            let ex = GemmExtras { bias: Some(&bias), qa: Some(&qx), qb: Some(&qw), ..Default::default() };
            let fused = [gemm(ctx, &cfg, &x, &w, &y, &ex)?];
            let unfused = gemm_unfused(ctx, &cfg, &x, &w, &y, &ex, [Some(&xq), Some(&wq)])?;
            self.pair("linear_fwd", &shape, flops, &fused, &unfused)?;
        }
        if backward && self.opts.wants("linear_dx", &shape) {
            // dX = (dY FQ(W)) ⊙ STE(x).
            let cfg = GemmConfig::linear_backward_input(batch, inp, out, Some(act), Some(wspec));
            let ex = GemmExtras { qb: Some(&qw), mask_src: Some(&x), mask_state: Some(&qx), ..Default::default() };
            let fused = [gemm(ctx, &cfg, &dy, &w, &dx, &ex)?];
            let plain = GemmConfig { fq_b: None, mask: None, ..cfg };
            let unfused = [
                fake_quant_forward(ctx, &w, &qw, &wq, &wspec)?,
                gemm(ctx, &plain, &dy, &wq, &dx_raw, &GemmExtras::default())?,
                ste_backward(ctx, &x, &qx, &dx_raw, &dx, &act)?,
            ];
            self.pair("linear_dx", &shape, flops, &fused, &unfused)?;
        }
        if backward && self.opts.wants("linear_dw", &shape) {
            // dW = (dY^T FQ(x)) ⊙ STE(W).
            let cfg = GemmConfig::linear_backward_weight(batch, inp, out, Some(act), Some(wspec));
            let ex = GemmExtras { qb: Some(&qx), mask_src: Some(&w), mask_state: Some(&qw), ..Default::default() };
            let fused = [gemm(ctx, &cfg, &dy, &x, &dw, &ex)?];
            let plain = GemmConfig { fq_b: None, mask: None, ..cfg };
            let unfused = [
                fake_quant_forward(ctx, &x, &qx, &xq, &act)?,
                gemm(ctx, &plain, &dy, &xq, &dw_raw, &GemmExtras::default())?,
                ste_backward(ctx, &w, &qw, &dw_raw, &dw, &wspec)?,
            ];
            self.pair("linear_dw", &shape, flops, &fused, &unfused)?;
        }
        Ok(())
    }

    /// A conv layer: forward, data and weight gradients.
    fn conv(&mut self, layer: &str, cfg: &Conv2dGeom) -> Result<()> {
        let shape =
            format!("{layer} {}x{}x{}x{}->{} k{}s{}", cfg.n, cfg.c_in, cfg.h, cfg.w, cfg.c_out, cfg.kh, cfg.stride.0);
        if !["conv_fwd", "conv_dx", "conv_dw"].iter().any(|n| self.opts.wants(n, &shape)) {
            return Ok(());
        }
        let ctx = self.ctx;
        let (act, wspec) = (QuantSpec::activation(8), QuantSpec::weight(8));
        let (xs, ws, ys) = (cfg.x_shape(), cfg.w_shape(), cfg.y_shape());
        let x = filled(ctx, &xs, 1)?;
        let w = filled(ctx, &ws, 2)?;
        let bias = filled(ctx, &[cfg.c_out], 3)?;
        let dy = filled(ctx, &ys, 4)?;
        let y = zeros(ctx, &ys)?;
        let (xq, wq) = (zeros(ctx, &xs)?, zeros(ctx, &ws)?);
        let (dx, dw) = (zeros(ctx, &xs)?, zeros(ctx, &ws)?);
        let (dx_raw, dw_raw) = (zeros(ctx, &xs)?, zeros(ctx, &ws)?);
        let qx = act_state(ctx)?;
        let qw = weight_state(ctx, cfg.c_out)?;
        let xo = QuantOperand { state: &qx, spec: act };
        let wo = QuantOperand { state: &qw, spec: wspec };
        let flops = cfg.flops();

        if self.opts.wants("conv_fwd", &shape) {
            let args = Conv2dForwardArgs {
                x: &x,
                w: &w,
                bias: Some(&bias),
                x_quant: Some(xo),
                w_quant: Some(wo),
                relu: false,
                y: &y,
            };
            let fused = [conv2d_forward(ctx, cfg, &args)?];
            let plain = Conv2dForwardArgs { x: &xq, w: &wq, x_quant: None, w_quant: None, ..args };
            let unfused = [
                fake_quant_forward(ctx, &x, &qx, &xq, &act)?,
                fake_quant_forward(ctx, &w, &qw, &wq, &wspec)?,
                conv2d_forward(ctx, cfg, &plain)?,
            ];
            self.pair("conv_fwd", &shape, flops, &fused, &unfused)?;
        }
        if self.opts.wants("conv_dx", &shape) {
            let args = Conv2dBackwardDataArgs {
                dy: &dy,
                w: &w,
                w_quant: Some(wo),
                x_mask: Some(SteMask { values: &x, state: &qx, spec: act }),
                accumulate: false,
                dx: &dx,
            };
            let fused = [conv2d_backward_data(ctx, cfg, &args)?];
            let plain = Conv2dBackwardDataArgs { w: &wq, w_quant: None, x_mask: None, dx: &dx_raw, ..args };
            let unfused = [
                fake_quant_forward(ctx, &w, &qw, &wq, &wspec)?,
                conv2d_backward_data(ctx, cfg, &plain)?,
                ste_backward(ctx, &x, &qx, &dx_raw, &dx, &act)?,
            ];
            self.pair("conv_dx", &shape, flops, &fused, &unfused)?;
        }
        if self.opts.wants("conv_dw", &shape) {
            let args = Conv2dBackwardWeightArgs {
                x: &x,
                x_quant: Some(xo),
                dy: &dy,
                w_mask: Some(SteMask { values: &w, state: &qw, spec: wspec }),
                dw: &dw,
            };
            let fused = conv2d_backward_weight(ctx, cfg, &args)?;
            let plain = Conv2dBackwardWeightArgs { x: &xq, x_quant: None, w_mask: None, dw: &dw_raw, ..args };
            let plain = conv2d_backward_weight(ctx, cfg, &plain)?;
            let unfused = [
                fake_quant_forward(ctx, &x, &qx, &xq, &act)?,
                plain.partial.clone(),
                plain.reduce.clone(),
                ste_backward(ctx, &w, &qw, &dw_raw, &dw, &wspec)?,
            ];
            self.pair("conv_dw", &shape, flops, &[fused.partial.clone(), fused.reduce.clone()], &unfused)?;
        }
        Ok(())
    }

    /// Plain fp32 `C = A B` of a square size with the adapter's default tile.
    fn gemm_fp32(&mut self, n: usize) -> Result<()> {
        let shape = format!("{n}x{n}x{n}");
        if !self.opts.wants("gemm_fp32", &shape) {
            return Ok(());
        }
        let ctx = self.ctx;
        let (a, b, c) = (filled(ctx, &[n, n], 1)?, filled(ctx, &[n, n], 2)?, zeros(ctx, &[n, n])?);
        let cfg = GemmConfig::new(n, n, n);
        let t = self.time(&[gemm(ctx, &cfg, &a, &b, &c, &GemmExtras::default())?])?;
        let gf = cfg.flops() / t.median_s / 1e9;
        self.out.push(single_kernel_row("gemm_fp32", shape, gf, &t));
        Ok(())
    }

    /// The adapter's GEMM ceiling: plain fp32 GEMMs on in-cache squares (256^3, and 512^3
    /// unless quick), each with the engine's `gemm` (its default tile for the adapter) and the
    /// `gemm_ceiling` microkernel (`shaders/gemm_ceiling.wgsl`); the fastest by median is the
    /// row, its `shape` naming the winner. Returns the row and the best FLOPs per CPU-second
    /// of any candidate (CPU adapters), the yardstick of `pct_of_ceiling_cpu`.
    fn ceiling(&self) -> Result<(KernelResult, Option<f64>)> {
        let ctx = self.ctx;
        let sizes: &[usize] = if self.opts.quick { &[256] } else { &[256, 512] };
        let mut best: Option<KernelResult> = None;
        let mut best_cpu: Option<f64> = None;
        for &n in sizes {
            let (a, b, c) = (filled(ctx, &[n, n], 1)?, filled(ctx, &[n, n], 2)?, zeros(ctx, &[n, n])?);
            let engine = [gemm(ctx, &GemmConfig::new(n, n, n), &a, &b, &c, &GemmExtras::default())?];
            let micro = [gemm_ceiling(ctx, &a, &b, &c)?];
            let t = self.time_all(&[&engine, &micro])?;
            let flops = 2.0 * (n * n * n) as f64;
            for (name, t) in [("gemm", t[0]), ("gemm_ceiling", t[1])] {
                let gf = flops / t.median_s / 1e9;
                if let Some(c) = t.cpu_s.filter(|c| *c > 0.0) {
                    best_cpu = Some(best_cpu.unwrap_or(0.0).max(flops / c / 1e9));
                }
                if best.as_ref().is_none_or(|b| gf > b.gflops) {
                    best = Some(single_kernel_row("ceiling", format!("{name} {n}x{n}x{n}"), gf, &t));
                }
            }
        }
        Ok((best.expect("at least one ceiling candidate"), best_cpu))
    }

    /// Fake-quant forward (per tensor, and per channel over `[1024, elems/1024]`) against
    /// `copy_f32` of the same number of elements.
    fn fake_quant_bw(&mut self, elems: usize) -> Result<()> {
        let rows = 1024;
        let cases =
            [("per-tensor", format!("{elems} per-tensor")), ("per-channel", format!("{elems} per-channel{rows}"))];
        if !cases.iter().any(|(_, s)| self.opts.wants("fake_quant_bw", s)) {
            return Ok(());
        }
        let ctx = self.ctx;
        let x = filled(ctx, &[elems], 4)?;
        let out = zeros(ctx, &[elems])?;
        let copy = self.time(&[copy_f32(ctx, &x, &out)?])?;
        let bytes = 8.0 * elems as f64;
        for (kind, shape) in cases {
            if !self.opts.wants("fake_quant_bw", &shape) {
                continue;
            }
            let d = if kind == "per-tensor" {
                fake_quant_forward(ctx, &x, &act_state(ctx)?, &out, &QuantSpec::activation(8))?
            } else {
                let s = [rows, elems / rows];
                fake_quant_forward(
                    ctx,
                    &view(&x, &s),
                    &weight_state(ctx, rows)?,
                    &view(&out, &s),
                    &QuantSpec::weight(8),
                )?
            };
            let t = self.time(&[d])?;
            self.out.push(KernelResult {
                name: "fake_quant_bw".into(),
                shape,
                fused_ms: t.median_s * 1e3,
                unfused_ms: copy.median_s * 1e3,
                ratio: copy.median_s / t.median_s,
                gflops: 0.0,
                unfused_gflops: 0.0,
                gbps: Some(bytes / t.median_s / 1e9),
                fused_min_ms: t.min_s * 1e3,
                unfused_min_ms: copy.min_s * 1e3,
                timing: timing_name(&t).into(),
                fused_cpu_ms: t.cpu_s.map(|c| c * 1e3),
                unfused_cpu_ms: copy.cpu_s.map(|c| c * 1e3),
                pct_of_ceiling: None,
                pct_of_ceiling_cpu: None,
            });
        }
        Ok(())
    }
}

/// A row of one kernel timed alone (no unfused counterpart: ratio 1, both sides the same).
fn single_kernel_row(name: &str, shape: String, gflops: f64, t: &Timing) -> KernelResult {
    KernelResult {
        name: name.into(),
        shape,
        fused_ms: t.median_s * 1e3,
        unfused_ms: t.median_s * 1e3,
        ratio: 1.0,
        gflops,
        unfused_gflops: gflops,
        gbps: None,
        fused_min_ms: t.min_s * 1e3,
        unfused_min_ms: t.min_s * 1e3,
        timing: timing_name(t).into(),
        fused_cpu_ms: t.cpu_s.map(|c| c * 1e3),
        unfused_cpu_ms: t.cpu_s.map(|c| c * 1e3),
        pct_of_ceiling: None,
        pct_of_ceiling_cpu: None,
    }
}

fn timing_name(t: &Timing) -> &'static str {
    if t.timestamps {
        "timestamp"
    } else {
        "wall"
    }
}

/// mnist-cnn at batch 64: conv1 1->16 and conv2 16->32 (3x3, pad 1), fc1 1568->128, fc2 128->10.
fn mnist_convs() -> Vec<(&'static str, Conv2dGeom)> {
    vec![
        ("mnist.conv1", Conv2dGeom::new(64, 1, 28, 28, 16, 3).with_padding(1)),
        ("mnist.conv2", Conv2dGeom::new(64, 16, 14, 14, 32, 3).with_padding(1)),
    ]
}

/// resnet20 at batch 128: the 3x3 convs of each stage and the stride-2 transitions.
fn resnet_convs() -> Vec<(&'static str, Conv2dGeom)> {
    vec![
        ("resnet20.conv16", Conv2dGeom::new(128, 16, 32, 32, 16, 3).with_padding(1)),
        ("resnet20.down32", Conv2dGeom::new(128, 16, 32, 32, 32, 3).with_padding(1).with_stride(2)),
        ("resnet20.conv32", Conv2dGeom::new(128, 32, 16, 16, 32, 3).with_padding(1)),
        ("resnet20.down64", Conv2dGeom::new(128, 32, 16, 16, 64, 3).with_padding(1).with_stride(2)),
        ("resnet20.conv64", Conv2dGeom::new(128, 64, 8, 8, 64, 3).with_padding(1)),
    ]
}

/// Runs the kernel benchmarks selected by `opts` and returns one row per measurement.
pub fn run_kernel_bench(ctx: &GpuContext, opts: &BenchOptions) -> Result<Vec<KernelResult>> {
    let mut r = Runner { ctx, opts, out: Vec::new() };
    for (layer, cfg) in mnist_convs() {
        r.conv(layer, &cfg)?;
    }
    r.linear("mnist.fc1", 64, 1568, 128, true)?;
    r.linear("mnist.fc2", 64, 128, 10, true)?;
    if !opts.quick {
        for (layer, cfg) in resnet_convs() {
            r.conv(layer, &cfg)?;
        }
        r.linear("resnet20.fc", 128, 64, 10, true)?;
    }
    let squares: &[usize] = if opts.quick { &[256, 512] } else { &[256, 512, 1024, 2048] };
    for &n in squares {
        r.linear("square", n, n, n, false)?;
    }
    let plain: &[usize] = if opts.quick { &[256, 512] } else { &[256, 512, 1024] };
    for &n in plain {
        r.gemm_fp32(n)?;
    }
    r.fake_quant_bw(if opts.quick { 1 << 20 } else { 1 << 22 })?;
    // The ceiling, measured when a GFLOP/s row needs it or the filter asks for its row.
    let mut rows = std::mem::take(&mut r.out);
    if rows.iter().any(|x| x.gflops > 0.0) || opts.wants("ceiling", "") {
        let (mut ceiling, ceiling_cpu) = r.ceiling()?;
        let top = ceiling.gflops.max(f64::MIN_POSITIVE);
        for x in rows.iter_mut().chain(std::iter::once(&mut ceiling)).filter(|x| x.gflops > 0.0) {
            x.pct_of_ceiling = Some(100.0 * x.gflops / top);
            x.pct_of_ceiling_cpu = x.cpu_gflops().zip(ceiling_cpu).map(|(g, c)| 100.0 * g / c);
        }
        if opts.wants(&ceiling.name, &ceiling.shape) {
            rows.insert(0, ceiling);
        }
    }
    Ok(rows)
}

/// Prints the results as a table: median times, GFLOP/s (GB/s for bandwidth rows), the ratio,
/// the fastest fused sample with the ratio of fastest samples ("best": on a shared CPU
/// adapter, the kernels' own speed without other processes' load), the CPU-time ratio, and
/// the percentage of the ceiling by medians ("% ceil") and by CPU time ("cpu %").
pub fn print_table(results: &[KernelResult]) {
    println!(
        "{:<14} {:<38} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7}",
        "kernel",
        "shape",
        "fused ms",
        "unfused ms",
        "ratio",
        "GFLOP/s",
        "unf GF/s",
        "best ms",
        "best r",
        "cpu r",
        "% ceil",
        "cpu %"
    );
    for r in results {
        let (a, b) = match r.gbps {
            Some(g) => (format!("{g:.2} GB/s"), String::new()),
            None => (format!("{:.2}", r.gflops), format!("{:.2}", r.unfused_gflops)),
        };
        let pct = |p: Option<f64>| p.map(|p| format!("{p:.0}%")).unwrap_or_default();
        println!(
            "{:<14} {:<38} {:>10.3} {:>10.3} {:>6.2}x {:>9} {:>9} {:>9.3} {:>6.2}x {:>7} {:>7} {:>7}",
            r.name,
            r.shape,
            r.fused_ms,
            r.unfused_ms,
            r.ratio,
            a,
            b,
            r.fused_min_ms,
            r.unfused_min_ms / r.fused_min_ms,
            match (r.fused_cpu_ms, r.unfused_cpu_ms) {
                (Some(f), Some(u)) => format!("{:.2}x", u / f),
                _ => String::new(),
            },
            pct(r.pct_of_ceiling),
            pct(r.pct_of_ceiling_cpu)
        );
    }
}

/// A one-line description of the adapter and the timing method, for report headers.
pub fn describe(ctx: &GpuContext, opts: &BenchOptions) -> String {
    format!(
        "adapter: {} ({}, {}), dot4 {}, timing: {}, warm-up {} then median of {} runs",
        ctx.summary.name,
        ctx.summary.backend,
        ctx.summary.device_type,
        ctx.use_dot4,
        if ctx.has_timestamps { "GPU timestamps" } else { "wall clock" },
        opts.warmup.max(1),
        opts.runs.max(1)
    )
}
