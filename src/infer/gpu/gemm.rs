//! Host wrappers for `shaders/int8_gemm.wgsl`: int8 linear and conv2d (implicit GEMM) with
//! int32 accumulation and fixed-point requantization, bit-exact with
//! [`crate::infer::cpu::kernels::scalar`] (see the shader header for the arithmetic).
//!
//! GPU layouts: activations are uint8 codes packed four per u32, flat (a [`DType::I8x4`]
//! tensor whose `len` counts codes; [`upload_u8`] / [`read_u8`]). A layer's weights are
//! packed once by [`Int8Weights::new`] (linear: rows of `ceil(k / 4)` words per output
//! channel) or [`Int8Weights::new_conv`] (each kernel row of `kw` taps padded to whole
//! words), and per channel `(bias, M0, shift, sum_k w)` as `vec4<i32>`. The packed 4x8 dot
//! product is used when `ctx.use_dot4` (override `USE_DOT4`), else `unpack4xU8` /
//! `unpack4xI8`. On CPU adapters (`ctx.conv_direct`) conv and linear take the shader's
//! register-blocked `DIRECT` specialization where its layout conditions hold
//! ([`conv_takes_direct`], [`linear_takes_direct`]); it always unpacks (dot4I8Packed is
//! emulated on CPU adapters and measured slower there).
//!
//! Sub-8-bit weights stay packed on the GPU: [`Int8Weights::new_packed`] (and
//! [`Int8Weights::new_dequant_packed`]) take a layer's [`PackedWeights`] and store its
//! field width (2 or 4 bits, 8 above 4-bit weights) per code, so a W4 layer's weight buffer
//! is half a W8 one's (W2: a quarter); the shader unpacks each word (override `WBITS`, see
//! the shader header) on every path, bit-exact with the int8 words.
//!
//! [`int8_linear_f32`] is the same linear GEMM with an f32 epilogue instead of the
//! requantization (override `F32_OUT`): `f32(acc) * scale[c]` per output, the bits of
//! [`crate::infer::cpu::dequantize_acc`] (weights packed by [`Int8Weights::new_dequant`]).

use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, DType, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::infer::weights::PackedWeights;
use crate::infer::{Conv2dConfig, LinearConfig, Requant};

const WG: u32 = 64;

crate::kernels::kernel_params! {
    #[derive(Default)]
    pub(crate) struct Params for ["int8_gemm"] {
        total: u32,
        k: u32,
        kw4: u32,
        n: u32,
        cin: u32,
        h: u32,
        w: u32,
        cout_g: u32,
        cin_g: u32,
        oh: u32,
        ow: u32,
        kh: u32,
        kwid: u32,
        sh: u32,
        sw: u32,
        ph: u32,
        pw: u32,
        dh: u32,
        dw: u32,
        x_zero: i32,
        out_zero: i32,
        act_min: i32,
        act_max: i32,
        raw: u32,
        kq: u32,
        batch: u32,
        groups: u32,
        _pad: u32,
    }
}

/// Packs uint8 codes four per u32, little end first, zero padded.
pub fn pack_u8(codes: &[u8]) -> Vec<u32> {
    codes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))).collect()
}

/// Unpacks the first `n` codes of packed words.
pub fn unpack_u8(words: &[u32], n: usize) -> Vec<u8> {
    (0..n.min(words.len() * 4)).map(|e| (words[e / 4] >> (8 * (e % 4))) as u8).collect()
}

/// Uploads uint8 codes as a packed [`DType::I8x4`] tensor.
pub fn upload_u8(ctx: &GpuContext, shape: &[usize], codes: &[u8]) -> Result<GpuTensor> {
    let n: usize = shape.iter().product();
    if n != codes.len() {
        return Err(WqatError::shape(format!("shape {shape:?} holds {n} codes, data has {}", codes.len())));
    }
    let t = GpuTensor::zeros(ctx, shape, DType::I8x4)?;
    t.write(ctx, &pack_u8(codes))?;
    Ok(t)
}

/// Reads a packed uint8 tensor back (blocks on the GPU).
pub fn read_u8(ctx: &GpuContext, t: &GpuTensor) -> Result<Vec<u8>> {
    Ok(unpack_u8(&t.read_u32(ctx)?, t.len()))
}

/// A layer's weight codes as the constructors of [`Int8Weights`] take them.
#[derive(Clone, Copy)]
enum Codes<'a> {
    /// One int8 code per value (stored in 8-bit fields).
    I8(&'a [i8]),
    /// Packed codes (stored in their own field width).
    Packed(&'a PackedWeights),
}

impl Codes<'_> {
    fn len(&self) -> usize {
        match self {
            Codes::I8(w) => w.len(),
            Codes::Packed(p) => p.len(),
        }
    }
    fn field_bits(&self) -> u32 {
        match self {
            Codes::I8(_) => 8,
            Codes::Packed(p) => p.field_bits(),
        }
    }
}

/// One layer's packed weights and per-channel requantization, uploaded once.
#[derive(Debug, Clone)]
pub struct Int8Weights {
    /// u32 words of weights, `kw4` logical words of four codes per output channel (see the
    /// shader header for their order), each in `field_bits` bits per code (`32 /
    /// (4 field_bits)` logical words per u32), zero padded to a multiple of 4 u32 (the shader
    /// reads them as `vec4<u32>`).
    pub weights: GpuTensor,
    /// Storage bits per code: 8, 4 (3- and 4-bit weights) or 2.
    pub field_bits: u32,
    /// `[n, 4]` i32: bias, M0, shift, sum of the channel's weights.
    pub chan: GpuTensor,
    /// Output channels.
    pub n: usize,
    /// Reduction length (`k` of a linear layer, `c_in / groups * kh * kw` of a conv).
    pub k: usize,
    /// `[c_in / groups, kh, kw]` of a conv, `[1, 1, k]` of a linear layer; each kernel row
    /// of `kw` values starts a word.
    pub kernel: [usize; 3],
    pub out_zero: i32,
    pub act_min: i32,
    pub act_max: i32,
}

impl Int8Weights {
    /// Packs linear weights `w` (`[n, k]` int8 row-major) with their int32 `bias` and
    /// requantization.
    pub fn new(ctx: &GpuContext, w: &[i8], n: usize, k: usize, bias: &[i32], rq: &Requant) -> Result<Self> {
        Self::new_conv(ctx, w, n, [1, 1, k], bias, rq)
    }

    /// Packs conv weights `w` (`[c_out = n, cin_g, kh, kw]` with `kernel = [cin_g, kh, kw]`):
    /// kernel rows of `kw` taps padded to whole words, words ordered (ky, word, ci).
    pub fn new_conv(
        ctx: &GpuContext,
        w: &[i8],
        n: usize,
        kernel: [usize; 3],
        bias: &[i32],
        rq: &Requant,
    ) -> Result<Self> {
        let [cin_g, kh, kw] = kernel;
        let k = cin_g * kh * kw;
        if n == 0 || k == 0 || w.len() != n * k || bias.len() != n {
            return Err(WqatError::shape(format!(
                "int8 weights: {} values / {} biases for n {n}, kernel {kernel:?}",
                w.len(),
                bias.len()
            )));
        }
        rq.validate(n)?;
        Self::pack(ctx, Codes::I8(w), n, kernel, bias, &rq.multiplier, &rq.shift, [rq.out_zero, rq.act_min, rq.act_max])
    }

    /// [`Int8Weights::new_conv`] of packed codes (a linear layer: `kernel = [1, 1, k]`),
    /// kept packed on the GPU: 2-bit fields for W2, nibbles for W3 / W4, bytes above.
    pub fn new_packed(
        ctx: &GpuContext,
        w: &PackedWeights,
        n: usize,
        kernel: [usize; 3],
        bias: &[i32],
        rq: &Requant,
    ) -> Result<Self> {
        rq.validate(n)?;
        Self::pack(
            ctx,
            Codes::Packed(w),
            n,
            kernel,
            bias,
            &rq.multiplier,
            &rq.shift,
            [rq.out_zero, rq.act_min, rq.act_max],
        )
    }

    /// [`Int8Weights::new_dequant`] of packed codes, kept packed on the GPU.
    pub fn new_dequant_packed(
        ctx: &GpuContext,
        w: &PackedWeights,
        n: usize,
        k: usize,
        bias: &[i32],
        scale: &[f32],
    ) -> Result<Self> {
        Self::dequant(ctx, Codes::Packed(w), n, k, bias, scale)
    }

    /// Bytes of the weight buffer on the GPU.
    pub fn weight_bytes(&self) -> usize {
        4 * self.weights.len()
    }

    /// Packs linear weights `w` (`[n, k]` int8 row-major) with their int32 `bias` for
    /// [`int8_linear_f32`]: output `f32(acc) * scale[c]`, with `scale[c] = s_in * s_w[c]`
    /// rounded to f32 by the caller (as [`crate::infer::cpu::dequantize_acc`] does). The
    /// scale travels in the multiplier's slot as f32 bits.
    pub fn new_dequant(ctx: &GpuContext, w: &[i8], n: usize, k: usize, bias: &[i32], scale: &[f32]) -> Result<Self> {
        Self::dequant(ctx, Codes::I8(w), n, k, bias, scale)
    }

    fn dequant(ctx: &GpuContext, w: Codes<'_>, n: usize, k: usize, bias: &[i32], scale: &[f32]) -> Result<Self> {
        if scale.len() != n || scale.iter().any(|s| !s.is_finite()) {
            return Err(WqatError::shape(format!(
                "int8 weights: {} finite scales needed for {n} channels, got {}",
                n,
                scale.len()
            )));
        }
        let bits: Vec<i32> = scale.iter().map(|s| s.to_bits() as i32).collect();
        Self::pack(ctx, w, n, [1, 1, k], bias, &bits, &vec![0; n], [0, 0, 0])
    }

    /// Packs the weights and the per-channel `(bias, m0, shift, sum w)`.
    #[allow(clippy::too_many_arguments)]
    fn pack(
        ctx: &GpuContext,
        w: Codes<'_>,
        n: usize,
        kernel: [usize; 3],
        bias: &[i32],
        m0: &[i32],
        shift: &[i32],
        [out_zero, act_min, act_max]: [i32; 3],
    ) -> Result<Self> {
        let [cin_g, kh, kw] = kernel;
        let k = cin_g * kh * kw;
        if n == 0 || k == 0 || w.len() != n * k || bias.len() != n || m0.len() != n || shift.len() != n {
            return Err(WqatError::shape(format!(
                "int8 weights: {} values / {} biases for n {n}, kernel {kernel:?}",
                w.len(),
                bias.len()
            )));
        }
        let kw4 = words_per_channel(kernel);
        let kq = kw.div_ceil(4);
        // Field f of logical word q (code kx % 4 of a kernel row's word) sits at bit
        // (q % per) * 4 * fb + f * fb of u32 q / per.
        let fb = w.field_bits();
        let per = (8 / fb) as usize;
        let mask = (1u32 << fb) - 1;
        let mut words = vec![0u32; (n * kw4).div_ceil(per).div_ceil(4) * 4];
        let mut chan = vec![0i32; n * 4];
        let mut row = vec![0i8; k];
        for c in 0..n {
            match w {
                Codes::I8(w) => row.copy_from_slice(&w[c * k..(c + 1) * k]),
                Codes::Packed(p) => row.iter_mut().enumerate().for_each(|(i, v)| *v = p.get(c * k + i)),
            }
            for (i, &v) in row.iter().enumerate() {
                let (ci, ky, kx) = (i / (kh * kw), i / kw % kh, i % kw);
                let q = c * kw4 + (ky * kq + kx / 4) * cin_g + ci;
                let bit = (q % per) as u32 * 4 * fb + (kx % 4) as u32 * fb;
                words[q / per] |= (v as u8 as u32 & mask) << bit;
            }
            let sum = row.iter().map(|&v| v as i32).sum::<i32>();
            chan[c * 4..c * 4 + 4].copy_from_slice(&[bias[c], m0[c], shift[c], sum]);
        }
        Ok(Int8Weights {
            weights: GpuTensor::from_u32(ctx, &[words.len()], &words)?,
            field_bits: fb,
            chan: GpuTensor::from_i32(ctx, &[n, 4], &chan)?,
            n,
            k,
            kernel,
            out_zero,
            act_min,
            act_max,
        })
    }

    fn params(&self, total: usize, x_zero: i32) -> Params {
        Params {
            total: total as u32,
            k: self.k as u32,
            kw4: words_per_channel(self.kernel) as u32,
            kq: self.kernel[2].div_ceil(4) as u32,
            n: self.n as u32,
            x_zero,
            out_zero: self.out_zero,
            act_min: self.act_min,
            act_max: self.act_max,
            ..Default::default()
        }
    }
}

fn words_per_channel([cin_g, kh, kw]: [usize; 3]) -> usize {
    cin_g * kh * kw.div_ceil(4)
}

fn check_packed(t: &GpuTensor, n: usize, what: &str) -> Result<()> {
    if t.dtype != DType::I8x4 || t.len() != n {
        return Err(WqatError::shape(format!(
            "{what}: expected a packed u8 tensor of {n} codes, got {:?} of {}",
            t.dtype,
            t.len()
        )));
    }
    if n as u64 >= (1u64 << 32) - 8 {
        return Err(WqatError::Limit(format!("{what}: {n} codes exceed the 2^32 byte indexing of the int8 kernels")));
    }
    Ok(())
}

/// The pipeline key; DIRECT kernels always unpack (see `dot4v` in the shader). `wbits`:
/// the weights' field width (override `WBITS`).
fn key(ctx: &GpuContext, entry: &'static str, direct: bool, wbits: u32) -> PipelineKey {
    PipelineKey::new("int8_gemm", entry)
        .with("USE_DOT4", if ctx.use_dot4 && !direct { 1.0 } else { 0.0 })
        .with("DIRECT", if direct { 1.0 } else { 0.0 })
        .with("WBITS", wbits as f64)
}

fn linear_dispatch(
    ctx: &GpuContext,
    cfg: &LinearConfig,
    x: &GpuTensor,
    layer: &Int8Weights,
    out: &GpuTensor,
    f32_out: bool,
) -> Result<Dispatch> {
    cfg.validate(cfg.m * cfg.k, layer.n * layer.k, layer.n, cfg.m * cfg.n)?;
    if layer.n != cfg.n || layer.kernel != [1, 1, cfg.k] {
        return Err(WqatError::shape(format!(
            "linear {cfg:?} with weights of n {} kernel {:?}",
            layer.n, layer.kernel
        )));
    }
    let what = if f32_out { "int8_linear_f32" } else { "int8_linear" };
    check_packed(x, cfg.m * cfg.k, &format!("{what} x"))?;
    let total = cfg.m * cfg.n;
    if f32_out {
        if out.dtype != DType::F32 || out.len() != total {
            return Err(WqatError::shape(format!(
                "{what}: expected an f32 output of {total} values, got {:?} of {}",
                out.dtype,
                out.len()
            )));
        }
    } else {
        check_packed(out, total, &format!("{what} out"))?;
    }
    let p = layer.params(total, cfg.x_zero);
    let direct = linear_takes_direct(ctx, cfg);
    let invocations = if direct { cfg.m.div_ceil(4) * cfg.n.div_ceil(DIRECT_CH) } else { total.div_ceil(4) };
    Dispatch::new(
        ctx,
        &key(ctx, "int8_linear", direct, layer.field_bits).with("F32_OUT", if f32_out { 1.0 } else { 0.0 }),
        bytemuck::bytes_of(&p),
        &[&x.buffer, &layer.weights.buffer, &layer.chan.buffer, &out.buffer],
        grid_1d(invocations, WG),
    )
}

/// Output channels per invocation of the DIRECT kernels.
const DIRECT_CH: usize = 8;

/// Whether [`int8_linear`] takes the DIRECT kernel: CPU adapters, `n % 4 == 0` (each
/// invocation writes whole words of 4 channels).
pub fn linear_takes_direct(ctx: &GpuContext, cfg: &LinearConfig) -> bool {
    ctx.conv_direct && cfg.n.is_multiple_of(4)
}

/// Whether [`int8_conv2d`] takes the DIRECT kernel: CPU adapters, `oh * ow % 4 == 0` (an
/// output word is 4 positions of one plane), `dilation_w == 1` (a weight word's taps are
/// consecutive input bytes) and byte addresses within i32.
pub fn conv_takes_direct(ctx: &GpuContext, cfg: &Conv2dConfig) -> bool {
    let Ok((oh, ow)) = cfg.out_hw() else { return false };
    let x_len = cfg.batch * cfg.c_in * cfg.h * cfg.w;
    ctx.conv_direct && (oh * ow).is_multiple_of(4) && cfg.dilation[1] == 1 && x_len < (1 << 31) - 64
}

/// `out [m, n] = requant(x [m, k] . w^T + bias)` on packed u8 tensors.
pub fn int8_linear(
    ctx: &GpuContext,
    cfg: &LinearConfig,
    x: &GpuTensor,
    layer: &Int8Weights,
    out: &GpuTensor,
) -> Result<Dispatch> {
    linear_dispatch(ctx, cfg, x, layer, out, false)
}

/// `out [m, n] = f32(x [m, k] . w^T + bias) * scale[c]` (f32 output) on a packed u8 `x`,
/// with weights from [`Int8Weights::new_dequant`]: bit for bit
/// [`crate::infer::cpu::kernels::linear_acc`] then [`crate::infer::cpu::dequantize_acc`].
pub fn int8_linear_f32(
    ctx: &GpuContext,
    cfg: &LinearConfig,
    x: &GpuTensor,
    layer: &Int8Weights,
    out: &GpuTensor,
) -> Result<Dispatch> {
    linear_dispatch(ctx, cfg, x, layer, out, true)
}

/// NCHW int8 conv2d (stride, zero-point padding, dilation, groups) on packed u8 tensors.
pub fn int8_conv2d(
    ctx: &GpuContext,
    cfg: &Conv2dConfig,
    x: &GpuTensor,
    layer: &Int8Weights,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let x_len = cfg.batch * cfg.c_in * cfg.h * cfg.w;
    let total = cfg.out_len()?;
    cfg.validate(x_len, layer.n * layer.k, layer.n, total)?;
    if layer.n != cfg.c_out || layer.kernel != [cfg.cin_g(), cfg.kernel[0], cfg.kernel[1]] {
        return Err(WqatError::shape(format!("conv {cfg:?} with weights of n {} kernel {:?}", layer.n, layer.kernel)));
    }
    check_packed(x, x_len, "int8_conv2d x")?;
    check_packed(out, total, "int8_conv2d out")?;
    let (oh, ow) = cfg.out_hw()?;
    let p = Params {
        cin: cfg.c_in as u32,
        h: cfg.h as u32,
        w: cfg.w as u32,
        cout_g: cfg.cout_g() as u32,
        cin_g: cfg.cin_g() as u32,
        oh: oh as u32,
        ow: ow as u32,
        kh: cfg.kernel[0] as u32,
        kwid: cfg.kernel[1] as u32,
        sh: cfg.stride[0] as u32,
        sw: cfg.stride[1] as u32,
        ph: cfg.padding[0] as u32,
        pw: cfg.padding[1] as u32,
        dh: cfg.dilation[0] as u32,
        dw: cfg.dilation[1] as u32,
        batch: cfg.batch as u32,
        groups: cfg.groups as u32,
        ..layer.params(total, cfg.x_zero)
    };
    let direct = conv_takes_direct(ctx, cfg);
    let grid = if direct {
        // x, y: output words of one plane over the batch; z: (group, block of 8 channels),
        // uniform per workgroup.
        let [x, y, _] = grid_1d(oh * ow / 4 * cfg.batch, WG);
        [x, y, (cfg.groups * cfg.cout_g().div_ceil(DIRECT_CH)) as u32]
    } else {
        grid_1d(total.div_ceil(4), WG)
    };
    Dispatch::new(
        ctx,
        &key(ctx, "int8_conv2d", direct, layer.field_bits),
        bytemuck::bytes_of(&p),
        &[&x.buffer, &layer.weights.buffer, &layer.chan.buffer, &out.buffer],
        grid,
    )
}

/// Test probe of the shader's requantization: `out[i] = requant(acc[i] + bias[c], c)` with
/// `c = channel[i]` (u32 tensors of equal length, a multiple of 4: `channel` is bound as
/// the weights, `vec4<u32>`); `raw` writes the signed
/// `MultiplyByQuantizedMultiplier` result (as u32 bits) without zero point or clamp.
pub fn int8_requant_probe(
    ctx: &GpuContext,
    acc: &GpuTensor,
    channel: &GpuTensor,
    layer: &Int8Weights,
    raw: bool,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let n = acc.len();
    if channel.len() != n || out.len() != n || n == 0 || !n.is_multiple_of(4) {
        return Err(WqatError::shape(format!(
            "requant probe: {n} accumulators, {} channels, {} outputs",
            channel.len(),
            out.len()
        )));
    }
    let p = Params { raw: raw as u32, ..layer.params(n, 0) };
    Dispatch::new(
        ctx,
        &key(ctx, "int8_requant_probe", false, 8),
        bytemuck::bytes_of(&p),
        &[&acc.buffer, &channel.buffer, &layer.chan.buffer, &out.buffer],
        grid_1d(n, WG),
    )
}
