//! Host wrappers for `shaders/observer.wgsl`: min/max observers (per tensor or per channel
//! along any axis, two-stage reduction) and the `qparams` kernel, with no host round trip.

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::quant::{channel_geometry, QStateLayout, QuantSpec};

/// How a batch's min/max is folded into the state's running range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObserverMode {
    /// `min = min(old, new)`, `max = max(old, new)` once initialized, else the batch's range.
    MinMax,
    /// `min = old + c * (new - old)` once initialized, else the batch's range.
    MovingAverage { c: f32 },
}

/// Elements reduced by one workgroup of `minmax_partial` (256 threads x 16).
pub const CHUNK_LEN: usize = 4096;

super::kernel_params! {
    pub(crate) struct Params for ["observer"] {
        pub channels: u32,
        pub inner: u32,
        pub per_channel: u32,
        pub chunks: u32,
        pub chunk_len: u32,
        pub mode: u32,
        pub symmetric: u32,
        pub signed_codes: u32,
        pub ema_c: f32,
        pub qmin: f32,
        pub qmax: f32,
        pub inv_den: f32,
    }
}

impl Params {
    fn new(spec: &QuantSpec, channels: usize) -> Params {
        Params {
            channels: channels as u32,
            inner: 1,
            per_channel: 0,
            chunks: 0,
            chunk_len: CHUNK_LEN as u32,
            mode: 0,
            symmetric: spec.symmetric as u32,
            signed_codes: spec.signed as u32,
            ema_c: 0.0,
            qmin: spec.qmin() as f32,
            qmax: spec.qmax() as f32,
            inv_den: spec.inv_scale_denominator(),
        }
    }
}

/// Checks that `state` is a quantizer state for `channels` channels.
pub fn check_state(state: &GpuTensor, channels: usize) -> Result<()> {
    let want = QStateLayout::new(channels).len();
    if state.len() != want || state.dtype != DType::F32 {
        return Err(WqatError::shape(format!(
            "quantizer state has {} slots ({:?}), {channels} channels need {want} f32",
            state.len(),
            state.dtype
        )));
    }
    Ok(())
}

/// The first stage alone: `minmax_partial` over `x` with the given channel geometry,
/// writing `2 * channels * chunks` (min, max) pairs into the returned scratch. Returns the
/// dispatch, the scratch and `chunks` (used by the histogram observer).
pub fn minmax_partial(
    ctx: &GpuContext,
    x: &GpuTensor,
    channels: usize,
    inner: usize,
) -> Result<(Dispatch, GpuTensor, usize)> {
    if x.is_empty() || channels == 0 || !x.len().is_multiple_of(channels) || x.len() > u32::MAX as usize / 2 {
        return Err(WqatError::shape(format!("minmax_partial of {:?} over {channels} channels", x.shape)));
    }
    let per_channel = x.len() / channels;
    let chunks = per_channel.div_ceil(CHUNK_LEN);
    let mut p = Params::new(&QuantSpec::activation(8), channels);
    p.inner = inner as u32;
    p.per_channel = per_channel as u32;
    p.chunks = chunks as u32;
    let scratch = GpuTensor::zeros(ctx, &[2 * channels * chunks], DType::F32)?;
    let d = Dispatch::new(
        ctx,
        &PipelineKey::new("observer", "minmax_partial"),
        bytemuck::bytes_of(&p),
        &[&x.buffer, &scratch.buffer],
        grid_1d(channels * chunks, 1),
    )?;
    Ok((d, scratch, chunks))
}

/// Two dispatches updating the state's min/max from `x` per `mode` (no-op while the
/// state's `obs_on` flag is 0), plus the scratch buffer of partial (min, max) pairs they use.
/// The `initialized` flag they read is set by the [`qparams`] pass that follows them.
pub fn minmax_dispatches(
    ctx: &GpuContext,
    x: &GpuTensor,
    state: &GpuTensor,
    spec: &QuantSpec,
    mode: ObserverMode,
) -> Result<(Vec<Dispatch>, GpuTensor)> {
    spec.validate()?;
    if x.is_empty() || x.dtype != DType::F32 {
        return Err(WqatError::shape(format!("observer input must be non-empty f32, got {:?} {:?}", x.shape, x.dtype)));
    }
    let (channels, inner) = channel_geometry(&x.shape, spec.channel_axis)?;
    if channels == 0 {
        return Err(WqatError::shape(format!("observer input {:?} has zero channels", x.shape)));
    }
    check_state(state, channels)?;
    if x.len() > u32::MAX as usize / 2 {
        return Err(WqatError::Limit(format!("observer input of {} elements", x.len())));
    }
    let per_channel = x.len() / channels;
    let chunks = per_channel.div_ceil(CHUNK_LEN);
    let mut p = Params::new(spec, channels);
    p.inner = inner as u32;
    p.per_channel = per_channel as u32;
    p.chunks = chunks as u32;
    match mode {
        ObserverMode::MinMax => p.mode = 0,
        ObserverMode::MovingAverage { c } => {
            if !(c.is_finite() && c > 0.0 && c <= 1.0) {
                return Err(WqatError::invalid(format!("moving-average constant {c} is outside (0, 1]")));
            }
            p.mode = 1;
            p.ema_c = c;
        }
    }
    let scratch = GpuTensor::zeros(ctx, &[2 * channels * chunks], DType::F32)?;
    let params = bytemuck::bytes_of(&p);
    let part = Dispatch::new(
        ctx,
        &PipelineKey::new("observer", "minmax_partial"),
        params,
        &[&x.buffer, &scratch.buffer],
        grid_1d(channels * chunks, 1),
    )?;
    let fin = Dispatch::new(
        ctx,
        &PipelineKey::new("observer", "minmax_final"),
        params,
        &[&scratch.buffer, &state.buffer],
        grid_1d(channels, 1),
    )?;
    Ok((vec![part, fin], scratch))
}

/// `(channels, inner)` of an observed tensor, checked against the state.
fn observed_geometry(x: &GpuTensor, state: &GpuTensor, spec: &QuantSpec) -> Result<(usize, usize)> {
    spec.validate()?;
    if x.is_empty() || x.dtype != DType::F32 {
        return Err(WqatError::shape(format!("observer input must be non-empty f32, got {:?} {:?}", x.shape, x.dtype)));
    }
    let (channels, inner) = channel_geometry(&x.shape, spec.channel_axis)?;
    if channels == 0 {
        return Err(WqatError::shape(format!("observer input {:?} has zero channels", x.shape)));
    }
    check_state(state, channels)?;
    Ok((channels, inner))
}

/// `minmax_final` then [`qparams`] in one single-workgroup dispatch (same results): the
/// `(min, max)` pairs of `partials` (`channels * chunks` of them, channel-major) folded into
/// the state per `mode`, then scale, inv_scale and zero point; a no-op while `obs_on` is 0;
/// sets `initialized`.
pub fn final_qparams(
    ctx: &GpuContext,
    partials: &GpuTensor,
    chunks: usize,
    state: &GpuTensor,
    spec: &QuantSpec,
    channels: usize,
    mode: ObserverMode,
) -> Result<Dispatch> {
    spec.validate()?;
    if channels == 0 || chunks == 0 {
        return Err(WqatError::shape(format!("observer over {channels} channels of {chunks} chunks")));
    }
    check_state(state, channels)?;
    if partials.len() != 2 * channels * chunks || partials.dtype != DType::F32 {
        return Err(WqatError::shape(format!(
            "observer partials hold {} values, {channels} channels x {chunks} chunks need {}",
            partials.len(),
            2 * channels * chunks
        )));
    }
    let mut p = Params::new(spec, channels);
    p.chunks = chunks as u32;
    match mode {
        ObserverMode::MinMax => p.mode = 0,
        ObserverMode::MovingAverage { c } => {
            if !(c.is_finite() && c > 0.0 && c <= 1.0) {
                return Err(WqatError::invalid(format!("moving-average constant {c} is outside (0, 1]")));
            }
            p.mode = 1;
            p.ema_c = c;
        }
    }
    Dispatch::new(
        ctx,
        &PipelineKey::new("observer", "minmax_final_qparams"),
        bytemuck::bytes_of(&p),
        &[&partials.buffer, &state.buffer],
        [1, 1, 1],
    )
}

/// Scale, inv_scale and zero point of every channel from the state's min/max per `spec`
/// (see [`QuantSpec::qparams`]); skipped while `obs_on` is 0; sets `initialized`.
pub fn qparams(ctx: &GpuContext, state: &GpuTensor, spec: &QuantSpec, channels: usize) -> Result<Dispatch> {
    spec.validate()?;
    if channels == 0 {
        return Err(WqatError::shape("qparams for zero channels"));
    }
    check_state(state, channels)?;
    let p = Params::new(spec, channels);
    let groups = channels.div_ceil(64);
    if groups > ctx.limits.max_compute_workgroups_per_dimension as usize {
        return Err(WqatError::Limit(format!("qparams for {channels} channels")));
    }
    Dispatch::new(
        ctx,
        &PipelineKey::new("observer", "qparams"),
        bytemuck::bytes_of(&p),
        &[&state.buffer],
        [groups as u32, 1, 1],
    )
}

/// "Observe + qparams" for one quantizer: the ordered dispatches and the scratch they own.
pub struct Observer {
    dispatches: Vec<Dispatch>,
    _scratch: GpuTensor,
}

impl Observer {
    /// Builds the min/max reduction of `x` into `state` per `mode`, then `qparams`.
    pub fn new(
        ctx: &GpuContext,
        spec: QuantSpec,
        mode: ObserverMode,
        x: &GpuTensor,
        state: &GpuTensor,
    ) -> Result<Observer> {
        let (channels, inner) = observed_geometry(x, state, &spec)?;
        let (part, scratch, chunks) = minmax_partial(ctx, x, channels, inner)?;
        let fin = final_qparams(ctx, &scratch, chunks, state, &spec, channels, mode)?;
        Ok(Observer { dispatches: vec![part, fin], _scratch: scratch })
    }

    /// The second stage alone, for a tensor whose producer already wrote the first:
    /// `partials` holds `(min, max)` pairs of `channels * chunks` chunks, chunk `k` of channel
    /// `c` at `2 (c chunks + k)` (`batchnorm::bn_forward`, `bn_fold::fold_forward_obs`).
    pub fn from_partials(
        ctx: &GpuContext,
        spec: QuantSpec,
        mode: ObserverMode,
        partials: &GpuTensor,
        chunks: usize,
        state: &GpuTensor,
        channels: usize,
    ) -> Result<Observer> {
        let fin = final_qparams(ctx, partials, chunks, state, &spec, channels, mode)?;
        Ok(Observer { dispatches: vec![fin], _scratch: partials.clone() })
    }
    /// The dispatches in order (partial reduction unless fused into the producer, then the
    /// final reduction with the qparams).
    pub fn dispatches(&self) -> &[Dispatch] {
        &self.dispatches
    }
}
