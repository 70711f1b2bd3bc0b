//! Host wrappers for `shaders/gemm.wgsl` (fp32 GEMM with fused fake-quant and epilogue) and
//! `shaders/copy.wgsl` (the bandwidth yardstick of the benchmarks).
//!
//! `C[M,N] (+)= mask ⊙ relu(op(A') op(B') + bias)` with `A' = FQ(A)`, `B' = FQ(B)` optional.
//! A linear layer `y = FQ(x) FQ(W)^T + b` (x [B,in], W [out,in]) maps to:
//! * forward: [`GemmConfig::linear_forward`], `A = x`, `B = W` (trans_b), bias;
//! * input gradient `dX = (dY FQ(W)) ⊙ STE(x)`: [`GemmConfig::linear_backward_input`],
//!   `A = dY`, `B = W`, mask source `x` with the activation quantizer;
//! * weight gradient `dW = (dY^T FQ(x)) ⊙ STE(W)`: [`GemmConfig::linear_backward_weight`],
//!   `A = dY` (trans_a), `B = x`, mask source `W` with the weight quantizer (per output channel
//!   = rows of C).
//!
//! The unfused path is `fake_quant_forward` into a scratch tensor, then [`gemm`] with no fq.

use super::expect_len;
use crate::error::{Result, WqatError};
use crate::gpu::{Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::kernels::fake_quant::fake_quant_forward;
use crate::quant::{QStateLayout, QuantSpec};

/// Tiling of one GEMM pipeline: `wg_x * wg_y` threads, each computing `tm x tn` outputs
/// (`tn` is 4 or 8: one or two vec4 column groups), stepping `bk` along K. The workgroup
/// tile is `(wg_y*tm) x (wg_x*tn)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmTile {
    pub wg_x: u32,
    pub wg_y: u32,
    pub tm: u32,
    pub tn: u32,
    pub bk: u32,
    /// Stage operand tiles in workgroup memory (real GPUs); `false` reads operands straight
    /// from storage inside the K loop (lavapipe, where barriers and workgroup memory cost
    /// more than they save; `bk` is then unused).
    pub shared: bool,
}

/// Workgroup-memory floats per operand tile and the largest `tm` (`shaders/gemm.wgsl`).
pub const GEMM_TILE_MAX: u32 = 1024;
pub const GEMM_TM_MAX: u32 = 8;

impl GemmTile {
    /// 8x16 threads with 8x8 register blocks (128x64 tile), no workgroup memory: best on
    /// lavapipe, whose SIMD lanes gain most from register blocking.
    pub const CPU: GemmTile = GemmTile { wg_x: 8, wg_y: 16, tm: 8, tn: 8, bk: 16, shared: false };
    /// 16x16 threads with 4x4 register blocks (64x64 tile) staged through workgroup memory:
    /// the usual choice for real GPUs.
    pub const GPU: GemmTile = GemmTile { wg_x: 16, wg_y: 16, tm: 4, tn: 4, bk: 16, shared: true };

    /// The default tiling for the context's adapter.
    pub fn for_context(ctx: &GpuContext) -> GemmTile {
        if ctx.summary.device_type == "Cpu" {
            GemmTile::CPU
        } else {
            GemmTile::GPU
        }
    }
    /// Direct (no workgroup memory) tiles for CPU adapters, largest first: 128x64 (the
    /// default), 64x64, 32x32 and 16x16.
    pub const CPU_TILES: [GemmTile; 4] = [
        GemmTile::CPU,
        GemmTile { wg_x: 8, wg_y: 8, tm: 8, tn: 8, bk: 16, shared: false },
        GemmTile { wg_x: 8, wg_y: 8, tm: 4, tn: 4, bk: 16, shared: false },
        GemmTile { wg_x: 4, wg_y: 4, tm: 4, tn: 4, bk: 16, shared: false },
    ];

    /// The tiling [`gemm`] uses when `GemmConfig::tile` is `None`: [`GemmTile::for_context`],
    /// except that on CPU adapters a C of `m x n` that the default tile would mostly pad
    /// (small layers: a 64x10 output in a 128x64 tile computes 13x the useful work on one
    /// core) takes the largest of [`GemmTile::CPU_TILES`] covering it at least 75% full, or
    /// the fullest one.
    pub fn for_problem(ctx: &GpuContext, m: usize, n: usize) -> GemmTile {
        let default = GemmTile::for_context(ctx);
        if default != GemmTile::CPU {
            return default;
        }
        let fill = |t: &GemmTile| {
            let (bm, bn) = (t.bm() as usize, t.bn() as usize);
            (m * n) as f64 / (m.div_ceil(bm) * bm * n.div_ceil(bn) * bn) as f64
        };
        let mut best = GemmTile::CPU;
        for t in GemmTile::CPU_TILES {
            if fill(&t) >= 0.75 {
                return t;
            }
            if fill(&t) > fill(&best) {
                best = t;
            }
        }
        best
    }
    pub fn bm(&self) -> u32 {
        self.wg_y * self.tm
    }
    pub fn bn(&self) -> u32 {
        self.wg_x * self.tn
    }
    /// Checks the tile against the shader's fixed arrays and the adapter's limits.
    pub fn validate(&self, ctx: &GpuContext) -> Result<()> {
        let threads = self.wg_x * self.wg_y;
        let ok = self.wg_x > 0
            && self.wg_y > 0
            && self.bk > 0
            && (1..=GEMM_TM_MAX).contains(&self.tm)
            && (self.tn == 4 || self.tn == 8)
            && (!self.shared || (self.bm() * self.bk <= GEMM_TILE_MAX && self.bn() * self.bk <= GEMM_TILE_MAX));
        if !ok {
            return Err(WqatError::invalid(format!(
                "gemm tile {self:?}: needs tm in 1..={GEMM_TM_MAX}, tn 4 or 8, bm*bk and bn*bk <= {GEMM_TILE_MAX} when shared"
            )));
        }
        let l = &ctx.limits;
        if threads > l.max_compute_invocations_per_workgroup
            || self.wg_x > l.max_compute_workgroup_size_x
            || self.wg_y > l.max_compute_workgroup_size_y
        {
            return Err(WqatError::Limit(format!("gemm tile {self:?}: workgroup larger than the adapter allows")));
        }
        Ok(())
    }
}

/// What one GEMM computes. Shapes are logical: C is `[m, n]`, the reduction runs over `k`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmConfig {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored `[k, m]` (else `[m, k]`).
    pub trans_a: bool,
    /// B is stored `[n, k]` (else `[k, n]`).
    pub trans_b: bool,
    /// Fake-quantize A as it is loaded; `channel_axis: Some(0)` = per row of A's storage.
    pub fq_a: Option<QuantSpec>,
    /// Fake-quantize B as it is loaded; `channel_axis: Some(0)` = per row of B's storage.
    pub fq_b: Option<QuantSpec>,
    /// Add `bias[n]` to every row.
    pub bias: bool,
    /// ReLU after the bias.
    pub relu: bool,
    /// `C += result` instead of `C = result`.
    pub accumulate: bool,
    /// Multiply by the STE mask of a mask source `[m, n]`; `channel_axis: Some(0)` = per row of C.
    pub mask: Option<QuantSpec>,
    /// Tiling; `None` = [`GemmTile::for_problem`].
    pub tile: Option<GemmTile>,
}

impl GemmConfig {
    /// A plain `C = A B` of the given shape, everything else off.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        GemmConfig {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            fq_a: None,
            fq_b: None,
            bias: false,
            relu: false,
            accumulate: false,
            mask: None,
            tile: None,
        }
    }
    /// `y[batch, out] = FQ(x) FQ(W)^T + b`: A = x `[batch, in]`, B = W `[out, in]`.
    pub fn linear_forward(batch: usize, inp: usize, out: usize, act: Option<QuantSpec>, w: Option<QuantSpec>) -> Self {
        GemmConfig { trans_b: true, fq_a: act, fq_b: w, bias: true, ..Self::new(batch, out, inp) }
    }
    /// `dX[batch, in] = (dY FQ(W)) ⊙ STE(x)`: A = dY `[batch, out]`, B = W `[out, in]`,
    /// mask source x with the activation quantizer.
    pub fn linear_backward_input(
        batch: usize,
        inp: usize,
        out: usize,
        act: Option<QuantSpec>,
        w: Option<QuantSpec>,
    ) -> Self {
        GemmConfig { fq_b: w, mask: act, ..Self::new(batch, inp, out) }
    }
    /// `dW[out, in] = (dY^T FQ(x)) ⊙ STE(W)`: A = dY `[batch, out]` (trans_a), B = x
    /// `[batch, in]`, mask source W with the weight quantizer.
    pub fn linear_backward_weight(
        batch: usize,
        inp: usize,
        out: usize,
        act: Option<QuantSpec>,
        w: Option<QuantSpec>,
    ) -> Self {
        GemmConfig { trans_a: true, fq_b: act, mask: w, ..Self::new(out, inp, batch) }
    }
    /// Rows of A's storage (its per-channel count).
    pub fn a_rows(&self) -> usize {
        if self.trans_a {
            self.k
        } else {
            self.m
        }
    }
    /// Rows of B's storage (its per-channel count).
    pub fn b_rows(&self) -> usize {
        if self.trans_b {
            self.n
        } else {
            self.k
        }
    }
    /// Floating-point operations of one run (2 m n k).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// The optional buffers of a GEMM; each must be present exactly when its flag is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmExtras<'a> {
    /// `[n]`, when `cfg.bias`.
    pub bias: Option<&'a GpuTensor>,
    /// Quantizer state of A, when `cfg.fq_a`.
    pub qa: Option<&'a GpuTensor>,
    /// Quantizer state of B, when `cfg.fq_b`.
    pub qb: Option<&'a GpuTensor>,
    /// Mask source S `[m, n]`, when `cfg.mask`.
    pub mask_src: Option<&'a GpuTensor>,
    /// Quantizer state of S, when `cfg.mask`.
    pub mask_state: Option<&'a GpuTensor>,
}

super::kernel_params! {
    pub(crate) struct Params for ["gemm"] {
        m: u32,
        n: u32,
        k: u32,
        ca: u32,
        cb: u32,
        cm: u32,
        _p0: [u32; 2],
        qmin_a: f32,
        qmax_a: f32,
        qmin_b: f32,
        qmax_b: f32,
        qmin_m: f32,
        qmax_m: f32,
        _p1: [f32; 2],
    }
}

/// Validates a quantizer: spec, channel axis (none or rows), state length. Returns
/// (channels, qmin, qmax).
fn quantizer(what: &str, spec: &QuantSpec, state: Option<&GpuTensor>, rows: usize) -> Result<(u32, f32, f32)> {
    spec.validate()?;
    let channels = match spec.channel_axis {
        None => 1,
        Some(0) => rows,
        Some(ax) => {
            return Err(WqatError::invalid(format!("gemm: {what} quantizer channel axis {ax}; only rows (0) or none")))
        }
    };
    let state = state.ok_or_else(|| WqatError::invalid(format!("gemm: {what} quantizer state missing")))?;
    expect_len(state, QStateLayout::new(channels).len(), &format!("gemm: {what} quantizer state"))?;
    Ok((channels as u32, spec.qmin() as f32, spec.qmax() as f32))
}

fn flag_matches(what: &str, flag: bool, present: bool) -> Result<()> {
    if flag != present {
        let msg = if flag { "is enabled but its buffer is missing" } else { "buffer given but the flag is off" };
        return Err(WqatError::invalid(format!("gemm: {what} {msg}")));
    }
    Ok(())
}

/// Records `C = op(A') op(B')` with the configured fusions (see the module docs).
/// `a` holds `m*k` elements, `b` `k*n`, `c` `m*n` (read too when `accumulate`); the
/// optional buffers go in `extra`. Storage bindings: a, b, c, bias, qa, qb, mask_src,
/// mask_state (A stands in for the absent ones).
pub fn gemm(
    ctx: &GpuContext,
    cfg: &GemmConfig,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
    extra: &GemmExtras,
) -> Result<Dispatch> {
    let (m, n, k) = (cfg.m, cfg.n, cfg.k);
    if m == 0 || n == 0 || k == 0 {
        return Err(WqatError::shape(format!("gemm: zero-size problem m={m} n={n} k={k}")));
    }
    let fits = |x: usize, y: usize| x.checked_mul(y).is_some_and(|v| v <= u32::MAX as usize);
    if !(fits(m, n) && fits(m, k) && fits(k, n)) {
        return Err(WqatError::Limit(format!("gemm: m={m} n={n} k={k} exceed 32-bit indexing")));
    }
    expect_len(a, m * k, "gemm: A")?;
    expect_len(b, k * n, "gemm: B")?;
    expect_len(c, m * n, "gemm: C")?;
    flag_matches("bias", cfg.bias, extra.bias.is_some())?;
    flag_matches("fq_a", cfg.fq_a.is_some(), extra.qa.is_some())?;
    flag_matches("fq_b", cfg.fq_b.is_some(), extra.qb.is_some())?;
    flag_matches("mask", cfg.mask.is_some(), extra.mask_src.is_some() && extra.mask_state.is_some())?;
    if let Some(bias) = extra.bias {
        expect_len(bias, n, "gemm: bias")?;
    }
    let mut p = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        ca: 1,
        cb: 1,
        cm: 1,
        _p0: [0; 2],
        qmin_a: 0.0,
        qmax_a: 0.0,
        qmin_b: 0.0,
        qmax_b: 0.0,
        qmin_m: 0.0,
        qmax_m: 0.0,
        _p1: [0.0; 2],
    };
    if let Some(spec) = &cfg.fq_a {
        (p.ca, p.qmin_a, p.qmax_a) = quantizer("A", spec, extra.qa, cfg.a_rows())?;
    }
    if let Some(spec) = &cfg.fq_b {
        (p.cb, p.qmin_b, p.qmax_b) = quantizer("B", spec, extra.qb, cfg.b_rows())?;
    }
    if let Some(spec) = &cfg.mask {
        (p.cm, p.qmin_m, p.qmax_m) = quantizer("mask", spec, extra.mask_state, m)?;
        expect_len(extra.mask_src.unwrap_or(c), m * n, "gemm: mask source")?;
    }
    let tile = cfg.tile.unwrap_or_else(|| GemmTile::for_problem(ctx, m, n));
    tile.validate(ctx)?;
    let per_channel = |s: &Option<QuantSpec>| s.is_some_and(|s| s.channel_axis.is_some());
    let flag = |v: bool| if v { 1.0 } else { 0.0 };
    let key = PipelineKey::new("gemm", "gemm")
        .with("WGX", tile.wg_x as f64)
        .with("WGY", tile.wg_y as f64)
        .with("TM", tile.tm as f64)
        .with("TN4", (tile.tn / 4) as f64)
        .with("BK", tile.bk as f64)
        .with("SHARED", flag(tile.shared))
        .with("TRANS_A", flag(cfg.trans_a))
        .with("TRANS_B", flag(cfg.trans_b))
        .with("FQ_A", flag(cfg.fq_a.is_some()))
        .with("FQ_B", flag(cfg.fq_b.is_some()))
        .with("PC_A", flag(per_channel(&cfg.fq_a)))
        .with("PC_B", flag(per_channel(&cfg.fq_b)))
        .with("BIAS", flag(cfg.bias))
        .with("RELU", flag(cfg.relu))
        .with("ACCUM", flag(cfg.accumulate))
        .with("MASK", flag(cfg.mask.is_some()))
        .with("PC_M", flag(per_channel(&cfg.mask)));
    fn or_a<'t>(t: Option<&'t GpuTensor>, a: &'t GpuTensor) -> &'t wgpu::Buffer {
        &t.unwrap_or(a).buffer
    }
    let d = |t| or_a(t, a);
    let storage = [
        &a.buffer,
        &b.buffer,
        &c.buffer,
        d(extra.bias),
        d(extra.qa),
        d(extra.qb),
        d(extra.mask_src),
        d(extra.mask_state),
    ];
    let groups = [n.div_ceil(tile.bn() as usize) as u32, m.div_ceil(tile.bm() as usize) as u32, 1];
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &storage, groups)
}

/// The unfused equivalent of [`gemm`] (for benchmarks and debugging): `fake_quant_forward`
/// of A into `scratch[0]` and of B into `scratch[1]` (each needed exactly when its fq is on,
/// same element count as the operand), then [`gemm`] with fake-quant off. Returns the
/// dispatches in order.
pub fn gemm_unfused(
    ctx: &GpuContext,
    cfg: &GemmConfig,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
    extra: &GemmExtras,
    scratch: [Option<&GpuTensor>; 2],
) -> Result<Vec<Dispatch>> {
    let (ar, br) = (cfg.a_rows(), cfg.b_rows());
    let operands = [
        (a, cfg.fq_a, extra.qa, ar, cfg.m * cfg.k / ar.max(1)),
        (b, cfg.fq_b, extra.qb, br, cfg.k * cfg.n / br.max(1)),
    ];
    let mut out = Vec::new();
    let mut fed: Vec<&GpuTensor> = Vec::new();
    for (i, (x, spec, state, rows, cols)) in operands.into_iter().enumerate() {
        match (spec, scratch[i]) {
            (None, _) => fed.push(x),
            (Some(spec), Some(s)) => {
                let what = if i == 0 { "A" } else { "B" };
                let state = state.ok_or_else(|| WqatError::invalid(format!("gemm_unfused: {what} state missing")))?;
                expect_len(s, x.len(), &format!("gemm: {what} scratch"))?;
                // Per-row quantization of the operand's storage, viewed as [rows, cols].
                let view = |t: &GpuTensor| GpuTensor { shape: vec![rows, cols], ..t.clone() };
                let spec = QuantSpec { channel_axis: spec.channel_axis.map(|_| 0), ..spec };
                out.push(fake_quant_forward(ctx, &view(x), state, &view(s), &spec)?);
                fed.push(s);
            }
            (Some(_), None) => return Err(WqatError::invalid("gemm_unfused: fake-quant needs a scratch tensor")),
        }
    }
    let plain = GemmConfig { fq_a: None, fq_b: None, ..*cfg };
    let extra = GemmExtras { qa: None, qb: None, ..*extra };
    out.push(gemm(ctx, &plain, fed[0], fed[1], c, &extra)?);
    Ok(out)
}

super::kernel_params! {
    pub(crate) struct CopyParams for ["copy"] {
        n: u32,
        _p: [u32; 3],
    }
}

/// `out = x` elementwise (f32), the bandwidth yardstick for elementwise kernels.
pub fn copy_f32(ctx: &GpuContext, x: &GpuTensor, out: &GpuTensor) -> Result<Dispatch> {
    if x.len() != out.len() {
        return Err(WqatError::shape(format!("copy_f32: {:?} into {:?}", x.shape, out.shape)));
    }
    let p = CopyParams { n: x.len() as u32, _p: [0; 3] };
    let (key, grid) = crate::kernels::fake_quant::elementwise(ctx, "copy", "copy_f32", x.len());
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &[&x.buffer, &out.buffer], grid)
}

super::kernel_params! {
    pub(crate) struct CeilingParams for ["gemm_ceiling"] { m: u32, n: u32, k: u32, _pad: u32 }
}

/// Rows and columns of one `gemm_ceiling` workgroup tile; K must be a multiple of 4.
pub const CEILING_TILE: usize = 64;

/// Records the benchmarks' ceiling microkernel (`shaders/gemm_ceiling.wgsl`): plain
/// `C = A B` with A `[m, k]`, B `[k, n]`, C `[m, n]`, for `m` and `n` multiples of
/// [`CEILING_TILE`] and `k` of 4 (no edges, no fake-quant). Bindings: 1 A, 2 B, 3 C.
pub fn gemm_ceiling(ctx: &GpuContext, a: &GpuTensor, b: &GpuTensor, c: &GpuTensor) -> Result<Dispatch> {
    let (m, k) = match a.shape[..] {
        [m, k] => (m, k),
        _ => return Err(WqatError::shape(format!("gemm_ceiling: A must be 2-D, got {:?}", a.shape))),
    };
    let n = c.shape.get(1).copied().unwrap_or(0);
    let ok = m.is_multiple_of(CEILING_TILE) && n.is_multiple_of(CEILING_TILE) && k.is_multiple_of(4) && m * n > 0;
    if !ok || b.shape != [k, n] || c.shape != [m, n] || [a, b, c].iter().any(|t| t.dtype != crate::gpu::DType::F32) {
        return Err(WqatError::shape(format!(
            "gemm_ceiling: f32 A {:?} B {:?} C {:?} with m, n multiples of {CEILING_TILE}, k of 4",
            a.shape, b.shape, c.shape
        )));
    }
    let p = CeilingParams { m: m as u32, n: n as u32, k: k as u32, _pad: 0 };
    let key = PipelineKey::new("gemm_ceiling", "gemm_ceiling");
    let grid = [(n / CEILING_TILE) as u32, (m / CEILING_TILE) as u32, 1];
    Dispatch::new(ctx, &key, bytemuck::bytes_of(&p), &[&a.buffer, &b.buffer, &c.buffer], grid)
}
