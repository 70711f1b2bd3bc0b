//! Host wrappers for the conv kernels: 2-D convolution (NCHW, weights
//! `[Cout, Cin/groups, KH, KW]`) as implicit GEMMs with fused fake-quant and STE masks.
//!
//! * `shaders/conv.wgsl`: forward, `y = conv(FQ(x), FQ(w)) + bias`, optional ReLU.
//! * `shaders/conv_backward.wgsl`: backward data, `dx (+)= conv_transpose(dy, FQ(w)) * STE(x)`.
//! * `shaders/conv_wgrad.wgsl` + `conv_wgrad_reduce.wgsl`: backward weight with split-K,
//!   `dw = correlate(FQ(x), dy) * STE(w)`.
//! * `shaders/conv_bias_grad.wgsl`: `db = sum over n, oh, ow of dy`.
//!
//! x is fake-quantized per tensor (activation quantizer), w per output channel (weight
//! quantizer, axis 0); each is optional and a state whose `fq_on` flag is 0 passes through.

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::quant::{QStateLayout, QuantSpec};

/// Geometry of one 2-D convolution. `stride`, `padding`, `dilation` are (h, w).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Conv2dGeom {
    /// A `k x k` convolution with stride 1, no padding, dilation 1, one group.
    pub fn new(n: usize, c_in: usize, h: usize, w: usize, c_out: usize, k: usize) -> Self {
        Conv2dGeom { n, c_in, h, w, c_out, kh: k, kw: k, stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
    pub fn with_stride(self, s: usize) -> Self {
        Conv2dGeom { stride: (s, s), ..self }
    }
    pub fn with_padding(self, p: usize) -> Self {
        Conv2dGeom { padding: (p, p), ..self }
    }
    pub fn with_dilation(self, d: usize) -> Self {
        Conv2dGeom { dilation: (d, d), ..self }
    }
    pub fn with_groups(self, g: usize) -> Self {
        Conv2dGeom { groups: g, ..self }
    }

    /// Output (OH, OW) = (H + 2P - D(K-1) - 1) / S + 1; (0, 0) where the kernel does not fit
    /// (`validate` rejects that).
    pub fn out_size(&self) -> (usize, usize) {
        let one = |i: usize, p: usize, d: usize, k: usize, s: usize| {
            let span = d * (k.max(1) - 1) + 1;
            if s == 0 || i + 2 * p < span {
                0
            } else {
                (i + 2 * p - span) / s + 1
            }
        };
        (
            one(self.h, self.padding.0, self.dilation.0, self.kh, self.stride.0),
            one(self.w, self.padding.1, self.dilation.1, self.kw, self.stride.1),
        )
    }

    /// Checks the geometry: every size, stride, dilation and group count positive, channels
    /// divisible by groups, the dilated kernel fitting the padded input, and every tensor
    /// small enough for 32-bit indexing.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.n, self.c_in, self.h, self.w, self.c_out, self.kh, self.kw, self.groups];
        let steps = [self.stride.0, self.stride.1, self.dilation.0, self.dilation.1];
        if sizes.contains(&0) || steps.contains(&0) {
            return Err(WqatError::shape(format!("conv2d: zero size, stride, dilation or groups in {self:?}")));
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return Err(WqatError::shape(format!(
                "conv2d: groups {} must divide c_in {} and c_out {}",
                self.groups, self.c_in, self.c_out
            )));
        }
        let (oh, ow) = self.out_size();
        if oh == 0 || ow == 0 {
            return Err(WqatError::shape(format!(
                "conv2d: the dilated kernel does not fit the padded input in {self:?}"
            )));
        }
        let biggest = [self.x_len(), self.y_len(), self.w_len()].into_iter().max().unwrap_or(0);
        let flat = [self.h * self.w + 2 * (self.padding.0 + self.padding.1), self.c_in * self.kh * self.kw];
        if biggest > i32::MAX as usize || flat.iter().any(|&f| f > i32::MAX as usize) {
            return Err(WqatError::Limit(format!("conv2d: tensors of {self:?} exceed 32-bit indexing")));
        }
        Ok(())
    }

    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    pub fn w_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in / self.groups.max(1), self.kh, self.kw]
    }
    pub fn y_shape(&self) -> [usize; 4] {
        let (oh, ow) = self.out_size();
        [self.n, self.c_out, oh, ow]
    }
    fn x_len(&self) -> usize {
        self.x_shape().iter().product()
    }
    fn w_len(&self) -> usize {
        self.w_shape().iter().product()
    }
    fn y_len(&self) -> usize {
        self.y_shape().iter().product()
    }
    /// Floating-point operations of the forward pass (2 per multiply-add); backward data and
    /// backward weight cost the same.
    pub fn flops(&self) -> f64 {
        2.0 * self.y_len() as f64 * (self.c_in / self.groups.max(1) * self.kh * self.kw) as f64
    }
}

/// A fake-quantized operand: its quantizer state buffer and spec.
#[derive(Debug, Clone, Copy)]
pub struct QuantOperand<'a> {
    pub state: &'a GpuTensor,
    pub spec: QuantSpec,
}

/// A straight-through-estimator mask `[qmin <= round(v * inv_s) + z <= qmax]` computed
/// from the forward input `values` of a quantizer.
#[derive(Debug, Clone, Copy)]
pub struct SteMask<'a> {
    pub values: &'a GpuTensor,
    pub state: &'a GpuTensor,
    pub spec: QuantSpec,
}

/// Arguments of [`conv2d_forward`].
#[derive(Debug, Clone, Copy)]
pub struct Conv2dForwardArgs<'a> {
    /// `[N, Cin, H, W]`.
    pub x: &'a GpuTensor,
    /// `[Cout, Cin/groups, KH, KW]`.
    pub w: &'a GpuTensor,
    /// `[Cout]`, optional.
    pub bias: Option<&'a GpuTensor>,
    /// Per-tensor fake-quant of x (activation quantizer, 1 channel).
    pub x_quant: Option<QuantOperand<'a>>,
    /// Per-output-channel fake-quant of w (weight quantizer, Cout channels, axis 0).
    pub w_quant: Option<QuantOperand<'a>>,
    pub relu: bool,
    /// `[N, Cout, OH, OW]`, written.
    pub y: &'a GpuTensor,
}

/// Arguments of [`conv2d_backward_data`].
#[derive(Debug, Clone, Copy)]
pub struct Conv2dBackwardDataArgs<'a> {
    /// `[N, Cout, OH, OW]`.
    pub dy: &'a GpuTensor,
    /// `[Cout, Cin/groups, KH, KW]` (the raw weights; fake-quantized with `w_quant`).
    pub w: &'a GpuTensor,
    pub w_quant: Option<QuantOperand<'a>>,
    /// STE mask of the forward input x (per tensor).
    pub x_mask: Option<SteMask<'a>>,
    /// `dx += ...` instead of `dx = ...` (fan-out).
    pub accumulate: bool,
    /// `[N, Cin, H, W]`, written (or accumulated into).
    pub dx: &'a GpuTensor,
}

/// Arguments of [`conv2d_backward_weight`].
#[derive(Debug, Clone, Copy)]
pub struct Conv2dBackwardWeightArgs<'a> {
    /// `[N, Cin, H, W]` (the raw forward input; fake-quantized with `x_quant`).
    pub x: &'a GpuTensor,
    pub x_quant: Option<QuantOperand<'a>>,
    /// `[N, Cout, OH, OW]`.
    pub dy: &'a GpuTensor,
    /// STE mask of the weights (per output channel).
    pub w_mask: Option<SteMask<'a>>,
    /// `[Cout, Cin/groups, KH, KW]`, written.
    pub dw: &'a GpuTensor,
}

/// The two dispatches of the weight gradient and the split-K scratch they share
/// (`[splits, Cout, Cin/groups*KH*KW]`, created when the dispatches are built).
#[derive(Debug, Clone)]
pub struct Conv2dWeightGrad {
    pub partial: Dispatch,
    pub reduce: Dispatch,
    pub partials: GpuTensor,
    pub splits: usize,
}

impl Conv2dWeightGrad {
    /// Both dispatches, in the order they must run.
    pub fn dispatches(&self) -> [&Dispatch; 2] {
        [&self.partial, &self.reduce]
    }
}

super::kernel_params! {
    #[derive(Default)]
    pub(crate) struct ConvParams for ["conv", "conv_backward", "conv_wgrad", "conv_wgrad_reduce", "conv_bias_grad"] {
        n: u32,
        c_in: u32,
        h: u32,
        w: u32,
        c_out: u32,
        oh: u32,
        ow: u32,
        groups: u32,
        kh: u32,
        kw: u32,
        stride_h: u32,
        stride_w: u32,
        pad_h: u32,
        pad_w: u32,
        dil_h: u32,
        dil_w: u32,
        cin_g: u32,
        cout_g: u32,
        gemm_m: u32,
        gemm_n: u32,
        gemm_k: u32,
        k_chunk: u32,
        splits: u32,
        flags: u32,
        x_qmin: f32,
        x_qmax: f32,
        w_qmin: f32,
        w_qmax: f32,
    }
}

/// Bits of `ConvParams::flags` (the same constants in shaders/common/conv_params.wgsl).
const FQ_X: u32 = 1;
const FQ_W: u32 = 2;
const HAS_BIAS: u32 = 4;
const RELU: u32 = 8;
const MASK: u32 = 16;
const ACCUM: u32 = 32;
/// The weight quantizer is per tensor (one channel) rather than per output channel.
const W_PER_TENSOR: u32 = 64;

fn bit(on: bool, b: u32) -> u32 {
    if on {
        b
    } else {
        0
    }
}

/// Invocations per workgroup and the reduction step of the GEMM shaders.
const WG: usize = 256;
const BK: usize = 8;

fn base_params(cfg: &Conv2dGeom) -> ConvParams {
    let (oh, ow) = cfg.out_size();
    ConvParams {
        n: cfg.n as u32,
        c_in: cfg.c_in as u32,
        h: cfg.h as u32,
        w: cfg.w as u32,
        c_out: cfg.c_out as u32,
        oh: oh as u32,
        ow: ow as u32,
        groups: cfg.groups as u32,
        kh: cfg.kh as u32,
        kw: cfg.kw as u32,
        stride_h: cfg.stride.0 as u32,
        stride_w: cfg.stride.1 as u32,
        pad_h: cfg.padding.0 as u32,
        pad_w: cfg.padding.1 as u32,
        dil_h: cfg.dilation.0 as u32,
        dil_w: cfg.dilation.1 as u32,
        cin_g: (cfg.c_in / cfg.groups) as u32,
        cout_g: (cfg.c_out / cfg.groups) as u32,
        ..Default::default()
    }
}

/// A workgroup shape of the GEMM shaders: `wg` invocations (override `WG`), `tpm` of them
/// along M (override `TPM`); the tile is `4 tpm x 4 wg / tpm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    wg: usize,
    tpm: usize,
}

impl Tile {
    fn bm(&self) -> usize {
        4 * self.tpm
    }
    fn bn(&self) -> usize {
        4 * self.wg / self.tpm
    }
    fn count(&self, m: usize, n: usize) -> usize {
        m.div_ceil(self.bm()) * n.div_ceil(self.bn())
    }
    /// The pipeline key; `UNROLL` is off on CPU adapters (lavapipe), where it only doubles
    /// the first-dispatch compile time.
    fn key(&self, ctx: &GpuContext, shader: &'static str, entry: &'static str) -> PipelineKey {
        let unroll = !is_cpu(ctx);
        PipelineKey::new(shader, entry)
            .with("WG", self.wg as f64)
            .with("TPM", self.tpm as f64)
            .with("UNROLL", unroll as u8 as f64)
    }
}

/// The tiles on offer: 64x64, 32x128, 16x256 with 256 invocations, and 32x32 with 64.
/// Each is one pipeline per kernel, compiled at first use (about a second each on lavapipe).
const TILES: [Tile; 4] =
    [Tile { wg: 256, tpm: 16 }, Tile { wg: 256, tpm: 8 }, Tile { wg: 256, tpm: 4 }, Tile { wg: 64, tpm: 8 }];

/// The tile for a GEMM of `m` rows and `n` columns: the one wasting the least padded area,
/// ties to the earlier in [`TILES`]. The 64-invocation tile only wins on small GEMMs (weight
/// gradients of 1x1 or single-channel convs), where it wastes 4x less.
fn pick_tile(m: usize, n: usize) -> Tile {
    let area = |t: &Tile| t.count(m, n) * t.bm() * t.bn();
    let mut best = TILES[0];
    for t in TILES {
        if area(&t) < area(&best) {
            best = t;
        }
    }
    best
}

fn is_cpu(ctx: &GpuContext) -> bool {
    ctx.summary.device_type == "Cpu"
}

/// Workgroups of a GEMM shader: the tiles numbered linearly and folded over (x, y) as
/// `grid_1d` does, `z` (groups, or splits x groups) in z.
fn gemm_grid(m: usize, n: usize, z: usize, tile: Tile) -> [u32; 3] {
    let [x, y, _] = grid_1d(tile.count(m, n), 1);
    [x, y, z.min(u32::MAX as usize) as u32]
}

fn check_tensor(t: &GpuTensor, shape: &[usize], what: &str) -> Result<()> {
    if t.shape != shape || t.dtype != DType::F32 {
        return Err(WqatError::shape(format!("conv2d: {what} is {:?} {:?}, expected f32 {shape:?}", t.dtype, t.shape)));
    }
    Ok(())
}

/// Validates a quantizer operand: activations per tensor (`weight` false, 1 channel);
/// weights per output channel (axis 0, `channels` = Cout) or per tensor (the flag bit
/// `W_PER_TENSOR` is returned for them). Returns (qmin, qmax, extra flags).
fn check_quant(state: &GpuTensor, spec: &QuantSpec, weight: bool, what: &str, c_out: usize) -> Result<(f32, f32, u32)> {
    spec.validate()?;
    let per_channel = weight && spec.channel_axis.is_some();
    let (want_axis, channels) = if per_channel { (Some(0), c_out) } else { (None, 1) };
    if spec.channel_axis != want_axis {
        return Err(WqatError::invalid(format!(
            "conv2d: {what} must be quantized with channel axis {want_axis:?}, got {:?}",
            spec.channel_axis
        )));
    }
    let len = QStateLayout::new(channels).len();
    if state.len() != len || state.dtype != DType::F32 {
        return Err(WqatError::shape(format!(
            "conv2d: {what} quantizer state has {} slots, {channels} channel(s) need {len}",
            state.len()
        )));
    }
    let flags = if weight && !per_channel { W_PER_TENSOR } else { 0 };
    Ok((spec.qmin() as f32, spec.qmax() as f32, flags))
}

/// Records `y = conv(FQ(x), FQ(w)) (+ bias) (then ReLU)`.
/// Bindings: 1 x, 2 w, 3 bias, 4 x state, 5 w state, 6 y (absent optional operands are bound
/// to a read-only input and never read).
pub fn conv2d_forward(ctx: &GpuContext, cfg: &Conv2dGeom, a: &Conv2dForwardArgs) -> Result<Dispatch> {
    cfg.validate()?;
    check_tensor(a.x, &cfg.x_shape(), "x")?;
    check_tensor(a.w, &cfg.w_shape(), "w")?;
    check_tensor(a.y, &cfg.y_shape(), "y")?;
    if let Some(b) = a.bias {
        check_tensor(b, &[cfg.c_out], "bias")?;
    }
    let mut p = base_params(cfg);
    if let Some(q) = &a.x_quant {
        (p.x_qmin, p.x_qmax, _) = check_quant(q.state, &q.spec, false, "x", 1)?;
    }
    let mut w_flags = 0;
    if let Some(q) = &a.w_quant {
        (p.w_qmin, p.w_qmax, w_flags) = check_quant(q.state, &q.spec, true, "w", cfg.c_out)?;
    }
    let (m, n) = (cfg.c_out / cfg.groups, cfg.y_len() / cfg.c_out);
    p.gemm_m = m as u32;
    p.gemm_n = n as u32;
    p.gemm_k = (cfg.c_in / cfg.groups * cfg.kh * cfg.kw) as u32;
    p.flags = bit(a.x_quant.is_some(), FQ_X)
        | bit(a.w_quant.is_some(), FQ_W)
        | bit(a.bias.is_some(), HAS_BIAS)
        | bit(a.relu, RELU)
        | w_flags;
    let (key, grid) = if ctx.conv_direct && ctx.conv_strip && strip_fits(cfg) {
        (strip_key(cfg.stride.1, false), strip_grid(m, cfg.n, cfg.y_shape()[2], cfg.y_shape()[3], cfg.groups))
    } else if ctx.conv_direct {
        // Direct path: 64 invocations, TPM along M (4 rows each, enough to cover M up to 64),
        // the rest along N (8 columns each).
        let tpm = m.div_ceil(4).next_power_of_two().min(16);
        let (bm, bn) = (4 * tpm, 8 * (64 / tpm));
        let tiles = m.div_ceil(bm) * n.div_ceil(bn);
        let [x, y, _] = grid_1d(tiles, 1);
        let key = PipelineKey::new("conv", "conv2d_forward")
            .with("WG", 64.0)
            .with("TPM", tpm as f64)
            .with("UNROLL", 0.0)
            .with("DIRECT", 1.0);
        (key, [x, y, cfg.groups as u32])
    } else {
        let tile = pick_tile(m, n);
        (tile.key(ctx, "conv", "conv2d_forward"), gemm_grid(m, n, cfg.groups, tile))
    };
    let bias = a.bias.unwrap_or(a.w);
    let xs = a.x_quant.map(|q| q.state).unwrap_or(a.x);
    let ws = a.w_quant.map(|q| q.state).unwrap_or(a.w);
    Dispatch::new(
        ctx,
        &key,
        bytemuck::bytes_of(&p),
        &[&a.x.buffer, &a.w.buffer, &bias.buffer, &xs.buffer, &ws.buffer, &a.y.buffer],
        grid,
    )
}

/// Records `dx (+)= conv_transpose(dy, FQ(w)) * STE(x)`.
/// Bindings: 1 dy, 2 w, 3 w state, 4 x (mask values), 5 x state, 6 dx.
pub fn conv2d_backward_data(ctx: &GpuContext, cfg: &Conv2dGeom, a: &Conv2dBackwardDataArgs) -> Result<Dispatch> {
    cfg.validate()?;
    check_tensor(a.dy, &cfg.y_shape(), "dy")?;
    check_tensor(a.w, &cfg.w_shape(), "w")?;
    check_tensor(a.dx, &cfg.x_shape(), "dx")?;
    let mut p = base_params(cfg);
    let mut w_flags = 0;
    if let Some(q) = &a.w_quant {
        (p.w_qmin, p.w_qmax, w_flags) = check_quant(q.state, &q.spec, true, "w", cfg.c_out)?;
    }
    if let Some(mk) = &a.x_mask {
        check_tensor(mk.values, &cfg.x_shape(), "x (STE mask)")?;
        (p.x_qmin, p.x_qmax, _) = check_quant(mk.state, &mk.spec, false, "x (STE mask)", 1)?;
    }
    // One GEMM per (group, stride phase); the grid covers the largest phase.
    let phases = cfg.stride.0 * cfg.stride.1;
    let (m, n) = (cfg.c_in / cfg.groups, cfg.n * cfg.h.div_ceil(cfg.stride.0) * cfg.w.div_ceil(cfg.stride.1));
    p.gemm_m = m as u32;
    p.gemm_n = n as u32;
    p.flags = bit(a.w_quant.is_some(), FQ_W) | bit(a.x_mask.is_some(), MASK) | bit(a.accumulate, ACCUM) | w_flags;
    if ctx.conv_direct && ctx.conv_strip && strip_fits_transposed(cfg) {
        return backward_data_strip(ctx, cfg, a, p);
    }
    let z = cfg.groups * phases;
    let (key, grid) = if ctx.conv_direct {
        // Direct path: one invocation per 4 rows x 8 columns of a phase, 64 per workgroup.
        let [x, y, _] = grid_1d(direct_blocks(m, n).div_ceil(DIRECT_WG), 1);
        (direct_key("conv_backward", "conv2d_backward_data"), [x, y, z as u32])
    } else {
        let tile = pick_tile(m, n);
        (tile.key(ctx, "conv_backward", "conv2d_backward_data"), gemm_grid(m, n, z, tile))
    };
    let ws = a.w_quant.map(|q| q.state).unwrap_or(a.w);
    let (xv, xs) = a.x_mask.map(|mk| (mk.values, mk.state)).unwrap_or((a.dy, a.dy));
    Dispatch::new(
        ctx,
        &key,
        bytemuck::bytes_of(&p),
        &[&a.dy.buffer, &a.w.buffer, &ws.buffer, &xv.buffer, &xs.buffer, &a.dx.buffer],
        grid,
    )
}

/// Output channels per workgroup, pixels per invocation, invocations per workgroup and taps
/// staged at a time of the strip kernel (`conv.wgsl` `conv2d_strip`, CPU adapters).
const STRIP_ROWS: usize = 8;
const STRIP_PIXELS: usize = 8;
const STRIP_WG: usize = 64;
const STRIP_TAPS: usize = 512;

/// Whether the strip kernel computes this forward convolution: a kernel 3 wide, dilation 1 and
/// stride 1 or 2 along W (any height, stride, dilation and padding along H), at most
/// [`STRIP_TAPS`] taps per input channel.
fn strip_fits(cfg: &Conv2dGeom) -> bool {
    cfg.kw == 3 && cfg.dilation.1 == 1 && (cfg.stride.1 == 1 || cfg.stride.1 == 2) && cfg.kh * 3 <= STRIP_TAPS
}

/// Whether the strip kernel computes this data gradient (as the forward convolution of dY with
/// the flipped, transposed weights): stride and dilation 1, kernel 3 wide, padding at most
/// the kernel size minus one.
fn strip_fits_transposed(cfg: &Conv2dGeom) -> bool {
    cfg.stride == (1, 1)
        && cfg.dilation == (1, 1)
        && cfg.kw == 3
        && cfg.padding.1 <= 2
        && cfg.padding.0 < cfg.kh
        && cfg.kh * 3 <= STRIP_TAPS
}

fn strip_key(stride_w: usize, transpose: bool) -> PipelineKey {
    PipelineKey::new("conv", "conv2d_strip").with("SW", stride_w as f64).with("TRANSPOSE", transpose as u8 as f64)
}

/// Workgroups of the strip kernel: tiles of [`STRIP_ROWS`] rows x [`STRIP_WG`] strips of
/// [`STRIP_PIXELS`] output pixels (rows fastest), folded over (x, y); groups in z.
fn strip_grid(m: usize, n: usize, oh: usize, ow: usize, groups: usize) -> [u32; 3] {
    let strips = n * oh * ow.div_ceil(STRIP_PIXELS);
    let [x, y, _] = grid_1d(m.div_ceil(STRIP_ROWS) * strips.div_ceil(STRIP_WG), 1);
    [x, y, groups as u32]
}

/// The data gradient on the strip kernel: the forward convolution of dY `[N, Cout, OH, OW]`
/// into dX with padding `K - 1 - pad`, the channel roles swapped (see `conv.wgsl`).
/// Bindings: 1 dy, 2 w, 3 x (mask values), 4 x state, 5 w state, 6 dx.
fn backward_data_strip(
    ctx: &GpuContext,
    cfg: &Conv2dGeom,
    a: &Conv2dBackwardDataArgs,
    real: ConvParams,
) -> Result<Dispatch> {
    let (oh, ow) = cfg.out_size();
    let (cin_g, cout_g) = (cfg.c_in / cfg.groups, cfg.c_out / cfg.groups);
    let p = ConvParams {
        c_in: cfg.c_out as u32,
        h: oh as u32,
        w: ow as u32,
        c_out: cfg.c_in as u32,
        oh: cfg.h as u32,
        ow: cfg.w as u32,
        pad_h: (cfg.kh - 1 - cfg.padding.0) as u32,
        pad_w: (cfg.kw - 1 - cfg.padding.1) as u32,
        cin_g: cout_g as u32,
        cout_g: cin_g as u32,
        gemm_m: cin_g as u32,
        gemm_n: 0,
        ..real
    };
    let ws = a.w_quant.map(|q| q.state).unwrap_or(a.w);
    let (xv, xs) = a.x_mask.map(|mk| (mk.values, mk.state)).unwrap_or((a.dy, a.dy));
    Dispatch::new(
        ctx,
        &strip_key(1, true),
        bytemuck::bytes_of(&p),
        &[&a.dy.buffer, &a.w.buffer, &xv.buffer, &xs.buffer, &ws.buffer, &a.dx.buffer],
        strip_grid(cin_g, cfg.n, cfg.h, cfg.w, cfg.groups),
    )
}

/// Invocations per workgroup of the direct (CPU-adapter) paths.
const DIRECT_WG: usize = 64;

/// Rows of a direct weight-gradient register block (8 rows x 8 columns: each gathered input
/// value feeds 8 FMAs, the load-bound kernel's best ratio on lavapipe).
const WGRAD_ROWS: usize = 8;

/// Register blocks (4 rows x 8 columns) of an `m x n` output on the direct backward-data path.
fn direct_blocks(m: usize, n: usize) -> usize {
    m.div_ceil(4) * n.div_ceil(8)
}

/// The pipeline key of a direct-path entry point (backward data, weight-gradient partials).
fn direct_key(shader: &'static str, entry: &'static str) -> PipelineKey {
    PipelineKey::new(shader, entry).with("WG", DIRECT_WG as f64).with("UNROLL", 0.0).with("DIRECT", 1.0)
}

/// Splits of the direct weight gradient over `rows` = N*OH output rows: enough invocations
/// (`blocks` register blocks per split) for 32 workgroups, each split at least 2 rows. Only
/// shapes decide, so the summation order (and the result) is the same run to run.
fn direct_splits(blocks: usize, rows: usize, groups: usize) -> usize {
    let target = 32 * DIRECT_WG;
    (target.div_ceil(blocks * groups)).clamp(1, 256).min(rows.div_ceil(2)).max(1)
}

/// Number of split-K chunks for the weight gradient: enough workgroups to fill the device
/// (fewer on CPU adapters such as lavapipe, where each split costs a pass), each split at
/// least 16 steps of BK.
fn pick_splits(ctx: &GpuContext, tiles: usize, k: usize, groups: usize) -> usize {
    let target: usize = if is_cpu(ctx) { 8 } else { 512 };
    let k_steps = k.div_ceil(BK);
    let max_by_k = (k_steps / 16).max(1);
    let max_by_grid = (65535 / groups).max(1);
    target.div_ceil(tiles.max(1)).clamp(1, 256).min(max_by_k).min(max_by_grid)
}

/// Records `dw = correlate(FQ(x), dy) * STE(w)` as a split-K partial GEMM and a reduction.
/// Partial bindings: 1 dy, 2 x, 3 x state, 4 partials. Reduce bindings: 1 partials, 2 w
/// (mask values), 3 w state, 4 dw.
pub fn conv2d_backward_weight(
    ctx: &GpuContext,
    cfg: &Conv2dGeom,
    a: &Conv2dBackwardWeightArgs,
) -> Result<Conv2dWeightGrad> {
    cfg.validate()?;
    check_tensor(a.x, &cfg.x_shape(), "x")?;
    check_tensor(a.dy, &cfg.y_shape(), "dy")?;
    check_tensor(a.dw, &cfg.w_shape(), "dw")?;
    let mut p = base_params(cfg);
    if let Some(q) = &a.x_quant {
        (p.x_qmin, p.x_qmax, _) = check_quant(q.state, &q.spec, false, "x", 1)?;
    }
    let mut w_flags = 0;
    if let Some(mk) = &a.w_mask {
        check_tensor(mk.values, &cfg.w_shape(), "w (STE mask)")?;
        (p.w_qmin, p.w_qmax, w_flags) = check_quant(mk.state, &mk.spec, true, "w (STE mask)", cfg.c_out)?;
    }
    let (m, n, k) = (cfg.c_out / cfg.groups, cfg.w_len() / cfg.c_out, cfg.y_len() / cfg.c_out);
    p.gemm_m = m as u32;
    p.gemm_n = n as u32;
    p.gemm_k = k as u32;
    p.flags = bit(a.x_quant.is_some(), FQ_X) | bit(a.w_mask.is_some(), MASK) | w_flags;
    let (key, grid, splits, k_chunk) = if ctx.conv_direct {
        // Direct path: splits cut the N*OH output rows (k_chunk rows each); one invocation per
        // 8 x 8 block of one split, 64 per workgroup, groups in z.
        let rows = cfg.n * cfg.out_size().0;
        let blocks = m.div_ceil(WGRAD_ROWS) * n.div_ceil(8);
        let k_chunk = rows.div_ceil(direct_splits(blocks, rows, cfg.groups));
        let splits = rows.div_ceil(k_chunk);
        let [x, y, _] = grid_1d((blocks * splits).div_ceil(DIRECT_WG), 1);
        (direct_key("conv_wgrad", "conv2d_wgrad_partial"), [x, y, cfg.groups as u32], splits, k_chunk)
    } else {
        let tile = pick_tile(m, n);
        let splits = pick_splits(ctx, tile.count(m, n) * cfg.groups * tile.wg / WG, k, cfg.groups);
        let k_chunk = k.div_ceil(BK).div_ceil(splits) * BK;
        let splits = k.div_ceil(k_chunk);
        let key = tile.key(ctx, "conv_wgrad", "conv2d_wgrad_partial");
        (key, gemm_grid(m, n, splits * cfg.groups, tile), splits, k_chunk)
    };
    p.k_chunk = k_chunk as u32;
    p.splits = splits as u32;
    let partials = GpuTensor::zeros(ctx, &[splits, cfg.c_out, n], DType::F32)?;
    let xs = a.x_quant.map(|q| q.state).unwrap_or(a.x);
    let partial = Dispatch::new(
        ctx,
        &key,
        bytemuck::bytes_of(&p),
        &[&a.dy.buffer, &a.x.buffer, &xs.buffer, &partials.buffer],
        grid,
    )?;
    let key = PipelineKey::new("conv_wgrad_reduce", "conv2d_wgrad_reduce");
    let (wv, ws) = a.w_mask.map(|mk| (mk.values, mk.state)).unwrap_or((a.dy, a.dy));
    let reduce = Dispatch::new(
        ctx,
        &key,
        bytemuck::bytes_of(&p),
        &[&partials.buffer, &wv.buffer, &ws.buffer, &a.dw.buffer],
        grid_1d(cfg.w_len(), WG as u32),
    )?;
    Ok(Conv2dWeightGrad { partial, reduce, partials, splits })
}

/// Records `db[co] = sum over n, oh, ow of dy[n, co, oh, ow]`. Bindings: 1 dy, 2 db.
pub fn conv2d_bias_grad(ctx: &GpuContext, cfg: &Conv2dGeom, dy: &GpuTensor, db: &GpuTensor) -> Result<Dispatch> {
    cfg.validate()?;
    check_tensor(dy, &cfg.y_shape(), "dy")?;
    check_tensor(db, &[cfg.c_out], "db")?;
    let p = base_params(cfg);
    let key = PipelineKey::new("conv_bias_grad", "conv2d_bias_grad");
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &[&dy.buffer, &db.buffer], [cfg.c_out as u32, 1, 1])
}
