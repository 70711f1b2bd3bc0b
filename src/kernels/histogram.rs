//! Host wrappers for `shaders/histogram.wgsl`: a histogram observer in the manner of
//! PyTorch's `HistogramObserver` (running range, re-binning on range growth, L2-minimizing
//! greedy range search), all on the GPU, followed by the `qparams` kernel. The range may
//! instead be chosen from the same bins as a central percentile (`hist_percentile`) or by
//! the least expected quantization MSE on a grid of clipping thresholds (`hist_mse`), see
//! [`RangeChoice`]; every observer step re-chooses it on the GPU (no readback).

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::kernels::observer::{check_state, minmax_partial, qparams};
use crate::quant::QuantSpec;

/// Header slots before the histogram in the histogram state buffer.
pub const HEADER: usize = 16;
/// PyTorch's default number of bins.
pub const DEFAULT_BINS: usize = 2048;
/// PyTorch's default upsample rate for re-binning.
pub const DEFAULT_UPSAMPLE: usize = 128;
/// PyTorch's greedy search step.
pub const SEARCH_STEP: f32 = 1e-5;

super::kernel_params! {
    pub(crate) struct Params for ["histogram"] {
        n: u32,
        bins: u32,
        up: u32,
        chunks: u32,
        dst_nbins: u32,
        grid: u32,
        symmetric: u32,
        signed_codes: u32,
        inv_bins: f32,
        inv_fine: f32,
        inv_up: f32,
        inv_dst: f32,
        step: f32,
        fraction: f32,
        qmin: f32,
        qmax: f32,
        inv_den: f32,
        _p: [f32; 3],
    }
}

/// How the histogram observer chooses its range from the bins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeChoice {
    /// PyTorch's greedy L2 search (`hist_search`).
    L2,
    /// The central `fraction` (percentile / 100, in (0.5, 1]) of the counts
    /// (`hist_percentile`, `reference::histogram::percentile_range`).
    Percentile { fraction: f32 },
    /// The least expected quantization MSE over `reference::histogram::MSE_GRID` clipping
    /// thresholds (`hist_mse`, `reference::histogram::mse_range`).
    Mse,
}

/// The dispatches of one histogram observer and the buffers they own.
pub struct HistogramObserver {
    dispatches: Vec<Dispatch>,
    state: GpuTensor,
    _scratch: Vec<GpuTensor>,
}

impl HistogramObserver {
    /// Observes `x` (any shape, per tensor only) into its own histogram state of `bins` bins
    /// and writes the searched range and qparams into the quantizer state `qstate` (1
    /// channel). `upsample` is the re-binning rate (PyTorch: 128). Respects `obs_on`.
    pub fn new(
        ctx: &GpuContext,
        spec: QuantSpec,
        x: &GpuTensor,
        qstate: &GpuTensor,
        bins: usize,
        upsample: usize,
    ) -> Result<HistogramObserver> {
        Self::with_range(ctx, spec, x, qstate, bins, upsample, RangeChoice::L2)
    }

    /// [`HistogramObserver::new`] with the range chosen by `choice`.
    pub fn with_range(
        ctx: &GpuContext,
        spec: QuantSpec,
        x: &GpuTensor,
        qstate: &GpuTensor,
        bins: usize,
        upsample: usize,
        choice: RangeChoice,
    ) -> Result<HistogramObserver> {
        spec.validate()?;
        if let RangeChoice::Percentile { fraction } = choice {
            if !(fraction > 0.5 && fraction <= 1.0) {
                return Err(WqatError::invalid(format!("percentile fraction {fraction} is outside (0.5, 1]")));
            }
        }
        if spec.channel_axis.is_some() {
            return Err(WqatError::invalid("the histogram observer is per tensor only"));
        }
        if !(2..=1 << 16).contains(&bins) || !(1..=1024).contains(&upsample) {
            return Err(WqatError::invalid(format!("histogram of {bins} bins, upsample {upsample}")));
        }
        if (bins * upsample) as u64 >= 1 << 24 {
            return Err(WqatError::invalid("bins * upsample must stay under 2^24"));
        }
        if x.dtype != DType::F32 {
            return Err(WqatError::shape("histogram observer input must be f32"));
        }
        check_state(qstate, 1)?;
        let (part, partials, chunks) = minmax_partial(ctx, x, 1, x.len())?;
        let state = GpuTensor::zeros(ctx, &[HEADER + bins], DType::F32)?;
        let tmp = GpuTensor::zeros(ctx, &[bins], DType::F32)?;
        let counts = GpuTensor::zeros(ctx, &[bins], DType::U32)?;
        let dst = (spec.qmax() - spec.qmin() + 1) as u32;
        let p = Params {
            n: x.len() as u32,
            bins: bins as u32,
            up: upsample as u32,
            chunks: chunks as u32,
            dst_nbins: dst,
            grid: crate::reference::histogram::MSE_GRID,
            symmetric: spec.symmetric as u32,
            signed_codes: spec.signed as u32,
            inv_bins: 1.0 / bins as f32,
            inv_fine: 1.0 / (bins * upsample) as f32,
            inv_up: 1.0 / upsample as f32,
            inv_dst: 1.0 / dst as f32,
            step: SEARCH_STEP,
            fraction: match choice {
                RangeChoice::Percentile { fraction } => fraction,
                _ => 1.0,
            },
            qmin: spec.qmin() as f32,
            qmax: spec.qmax() as f32,
            inv_den: spec.inv_scale_denominator(),
            _p: [0.0; 3],
        };
        let bufs = [&partials.buffer, &x.buffer, &state.buffer, &tmp.buffer, &counts.buffer, &qstate.buffer];
        let mk = |entry: &'static str, wg: [u32; 3]| {
            Dispatch::new(ctx, &PipelineKey::new("histogram", entry), bytemuck::bytes_of(&p), &bufs, wg)
        };
        let dispatches = vec![
            part,
            mk("hist_range", [1, 1, 1])?,
            mk("hist_rebin", grid_1d(bins, 256))?,
            mk("hist_accumulate", grid_1d(x.len(), 256))?,
            mk("hist_commit", grid_1d(bins, 256))?,
            match choice {
                RangeChoice::L2 => mk("hist_search", [1, 1, 1])?,
                RangeChoice::Percentile { .. } => mk("hist_percentile", [1, 1, 1])?,
                RangeChoice::Mse => mk("hist_mse", [1, 1, 1])?,
            },
            qparams(ctx, qstate, &spec, 1)?,
        ];
        Ok(HistogramObserver { dispatches, state, _scratch: vec![partials, tmp, counts] })
    }
    /// The dispatches in order.
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }
    /// The histogram state: `[cur_min, cur_max, new_min, new_max, live, reset, initialized,
    /// edge_lo, edge_hi, _ x7, hist[bins]]` (f32).
    pub fn state(&self) -> &GpuTensor {
        &self.state
    }
}
