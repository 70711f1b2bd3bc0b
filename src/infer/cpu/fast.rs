//! The fast CPU executor of fully integer models on the pair kernels ([`SimdKernel::Avx2`],
//! [`SimdKernel::Portable`]): weights packed once per model ([`CpuPacks`], kept by the
//! [`Int8CpuModel`] and built on its first forward), activations kept channels-last between layers (no im2col, no
//! transposes; a linear layer after a flatten reads the channels-last order through a
//! permutation of its packed weight columns), convs and linears without threads of their
//! own (the caller splits the batch, or the rows of a layer for a single image). Node
//! outputs are converted to NCHW only when traced.

use super::{Int8CpuModel, NodeValue};
use crate::error::{Result, WqatError};
use crate::infer::cpu::kernels::nhwc::{self, PoolGeom};
use crate::infer::cpu::kernels::simd::{hwc_to_nchw, par_rows};
use crate::infer::cpu::kernels::{PackedConv, PackedLinear, SimdKernel};
use crate::infer::Conv2dConfig;
use crate::infer::{Domain, Int8Model, LayerKind};
use crate::model::graph::{Op, INPUT};
use std::sync::{Mutex, OnceLock};

/// What a node runs as on the fast path.
#[derive(Debug)]
enum NodePack {
    Conv(PackedConv),
    Linear(PackedLinear),
    Other,
}

/// The plan of the fast path: per node its pack and the `[c, h, w]` whose channels-last
/// order its output is stored in.
#[derive(Debug)]
struct Plan {
    packs: Vec<NodePack>,
    mem: Vec<[usize; 3]>,
    /// Conv `i` whose only consumer is a 2x2 stride-2 max pool `i + 1`: computed fused
    /// when the node outputs are not traced.
    fuse_pool: Vec<bool>,
}

/// The cache of the fast CPU path an [`Int8CpuModel`] keeps for its model: packed weights
/// (built once, on the first forward that needs them; `None` when the model has layers the
/// fast path does not run) and reusable scratch buffers. The executor borrows the model, so
/// its layers cannot change under the cache.
#[derive(Default)]
pub(crate) struct CpuPacks {
    plan: OnceLock<Option<Plan>>,
    scratch: Mutex<Vec<Scratch>>,
}

/// Buffers of one forward, per node: the padded i16 input of a conv / linear (zero
/// padding written once) and the output codes (fully overwritten by every run).
#[derive(Default)]
struct Scratch {
    xp: Vec<Vec<i16>>,
    outs: Vec<Vec<u8>>,
}

impl std::fmt::Debug for CpuPacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuPacks {{ packed: {} }}", matches!(self.plan.get(), Some(Some(_))))
    }
}

fn zero_of(d: Domain) -> Option<i32> {
    d.quant().map(|q| q.zero)
}

impl Int8Model {
    fn build_plan(&self) -> Result<Option<Plan>> {
        if zero_of(self.input).is_none() {
            return Ok(None);
        }
        let mut packs = Vec::with_capacity(self.nodes.len());
        let mut mem: Vec<[usize; 3]> = Vec::with_capacity(self.nodes.len());
        for (r, l) in self.nodes.iter().zip(&self.layers) {
            let mem_of = |j: usize| if j == INPUT { self.graph.input } else { mem[j] };
            if zero_of(l.out).is_none() || r.inputs.iter().any(|&j| zero_of(self.domain_of(j)).is_none()) {
                return Ok(None);
            }
            let zx = zero_of(self.domain_of(r.inputs[0])).unwrap_or(0);
            let spatial_ok = r.inputs.iter().enumerate().all(|(t, &j)| mem_of(j) == r.in_shapes[t]);
            let [c, h, w] = r.in_shapes[0];
            let (pack, m) = match (&l.kind, &r.node.op) {
                (LayerKind::Int(il), Op::Conv { kernel, stride, padding, dilation, groups, .. }) if spatial_ok => {
                    let cfg = Conv2dConfig {
                        batch: 1,
                        c_in: c,
                        h,
                        w,
                        c_out: r.out_shape[0],
                        kernel: [*kernel; 2],
                        stride: [*stride; 2],
                        padding: [*padding; 2],
                        dilation: [*dilation; 2],
                        groups: *groups,
                        x_zero: zx,
                    };
                    (NodePack::Conv(PackedConv::new(&cfg, &il.weight.codes(), &il.bias, &il.requant)?), r.out_shape)
                }
                (LayerKind::Int(il), Op::Linear { .. }) => {
                    let [mc, mh, mw] = mem_of(r.inputs[0]);
                    let k = c * h * w;
                    if mc * mh * mw != k || il.weight.len() != k * r.out_shape[0] {
                        return Ok(None);
                    }
                    // Stored element m = (y * mw + x) * mc + ch is logical k = ch * mh * mw + y * mw + x.
                    let perm = |m: usize| (m % mc) * mh * mw + m / mc;
                    let n = r.out_shape[0];
                    il.requant.validate(n)?;
                    if il.bias.len() != n {
                        return Ok(None);
                    }
                    (
                        NodePack::Linear(PackedLinear::new(k, n, zx, &il.weight.codes(), &il.bias, &il.requant, perm)?),
                        r.out_shape,
                    )
                }
                (LayerKind::MaxPool, Op::MaxPool { .. }) if spatial_ok => (NodePack::Other, r.out_shape),
                (LayerKind::AvgPool(Some(_)), Op::AvgPool { .. } | Op::GlobalAvgPool) if spatial_ok => {
                    (NodePack::Other, r.out_shape)
                }
                (LayerKind::Add(Some(_)), Op::Add { .. }) if spatial_ok => (NodePack::Other, r.out_shape),
                (LayerKind::Flatten, _) => (NodePack::Other, mem_of(r.inputs[0])),
                _ => return Ok(None),
            };
            packs.push(pack);
            mem.push(m);
        }
        let fuse_pool = (0..packs.len())
            .map(|i| {
                let consumers = self.nodes.iter().filter(|r| r.inputs.contains(&i)).count();
                let pool_next = self.nodes.get(i + 1).is_some_and(|r| {
                    r.inputs == [i]
                        && matches!(r.node.op, Op::MaxPool { kernel: 2, stride: 0 | 2, padding: 0 })
                        && matches!(self.layers[i + 1].kind, LayerKind::MaxPool)
                });
                matches!(packs[i], NodePack::Conv(_)) && pool_next && consumers == 1
            })
            .collect();
        Ok(Some(Plan { packs, mem, fuse_pool }))
    }
}

impl Int8CpuModel<'_> {
    fn plan(&self) -> Option<&Plan> {
        self.packs.plan.get_or_init(|| self.model.build_plan().ok().flatten()).as_ref()
    }

    /// Bytes of the fast path's packed weight panels (i16 per code, built on the first
    /// forward that takes the fast path; `None` before, or when the model has layers it
    /// does not run). The pair kernels need i16 operands: a sub-8-bit model's panels are
    /// the same size as its W8 version's.
    pub fn fast_weight_bytes(&self) -> Option<usize> {
        let plan = self.packs.plan.get()?.as_ref()?;
        Some(
            plan.packs
                .iter()
                .map(|p| match p {
                    NodePack::Conv(c) => c.weight_bytes(),
                    NodePack::Linear(l) => l.weight_bytes(),
                    NodePack::Other => 0,
                })
                .sum(),
        )
    }

    /// Whether `kernel` runs this model on the fast path.
    pub(crate) fn fast_path(&self, kernel: Option<SimdKernel>) -> bool {
        kernel.is_some_and(|k| k.uses_pairs()) && self.plan().is_some()
    }

    /// Runs `batch` images (f32, NCHW) through the fast path; `threads > 1` splits the
    /// rows of each conv / linear (for batches smaller than the thread count). Returns the
    /// node outputs (all of them, NCHW, when `keep`; else only the last one).
    pub(crate) fn run_fast(
        &self,
        images: &[f32],
        batch: usize,
        kernel: SimdKernel,
        keep: bool,
        threads: usize,
    ) -> Result<Vec<NodeValue>> {
        let plan = self.plan().ok_or_else(|| WqatError::invalid("int8 model: no fast CPU plan"))?;
        let q = self.model.input.quant().ok_or_else(|| WqatError::invalid("int8 model: f32 input on the fast path"))?;
        let [ic, ih, iw] = self.model.graph.input;
        let codes = quantize(kernel, images, q);
        let input = if ic == 1 {
            codes
        } else {
            let mut t = vec![0u8; codes.len()];
            nhwc::nchw_to_hwc(&codes, batch, ic, ih * iw, &mut t);
            t
        };
        let mut ws = self.packs.scratch.lock().map(|mut v| v.pop()).ok().flatten().unwrap_or_default();
        let n = self.model.nodes.len();
        ws.xp.resize_with(n, Vec::new);
        ws.outs.resize_with(n, Vec::new);
        let mut last_use = vec![0usize; n];
        for (i, r) in self.model.nodes.iter().enumerate() {
            for &j in &r.inputs {
                if j != INPUT {
                    last_use[j] = i;
                }
            }
        }
        let mut vals: Vec<Option<Vec<u8>>> = vec![None; n];
        for (i, r) in self.model.nodes.iter().enumerate() {
            let get = |j: usize| -> Result<&[u8]> {
                if j == INPUT {
                    Ok(&input)
                } else {
                    vals[j].as_deref().ok_or_else(|| WqatError::invalid("int8 model: input freed early"))
                }
            };
            if vals[i].is_some() {
                continue; // a max pool computed with its conv
            }
            let x = get(r.inputs[0])?;
            let [c, h, w] = r.in_shapes[0];
            let [co, oh, ow] = r.out_shape;
            let mut out = std::mem::take(&mut ws.outs[i]);
            out.resize(batch * co * oh * ow, 0);
            let xp = &mut ws.xp[i];
            match (&plan.packs[i], &self.model.layers[i].kind, &r.node.op) {
                (NodePack::Conv(p), _, _) if plan.fuse_pool[i] && !keep => {
                    let mut pooled = std::mem::take(&mut ws.outs[i + 1]);
                    pooled.resize(p.pooled_rows(batch) * co, 0);
                    p.load_hwc(x, batch, xp)?;
                    let work = p.cfg.k() * co * 4;
                    let rows = p.pooled_rows(batch);
                    par_rows_n(threads, rows, work, co, &mut pooled, |rows, o| p.run_pool2(kernel, xp, rows, o))?;
                    vals[i + 1] = Some(pooled);
                }
                (NodePack::Conv(p), _, _) => {
                    p.load_hwc(x, batch, xp)?;
                    let work = p.cfg.k() * co;
                    par_rows_n(threads, p.rows(batch), work, co, &mut out, |rows, o| p.run(kernel, xp, rows, o))?;
                }
                (NodePack::Linear(p), _, _) => {
                    p.load(x, batch, xp)?;
                    par_rows_n(threads, batch, p.k * co, co, &mut out, |rows, o| p.run(kernel, xp, rows, o))?;
                }
                (_, LayerKind::MaxPool, Op::MaxPool { kernel, stride, padding }) => {
                    let s = if *stride == 0 { *kernel } else { *stride };
                    let g = PoolGeom {
                        batch,
                        chw: [c, h, w],
                        kernel: [*kernel; 2],
                        stride: [s; 2],
                        padding: [*padding; 2],
                        out_hw: [oh, ow],
                    };
                    nhwc::max_pool_hwc(&g, x, &mut out)?;
                }
                (_, LayerKind::AvgPool(Some(rq)), op) => {
                    let (k, s, p) = match op {
                        Op::AvgPool { kernel, stride, padding } => {
                            ([*kernel; 2], if *stride == 0 { *kernel } else { *stride }, *padding)
                        }
                        _ => ([h, w], 1, 0),
                    };
                    let g = PoolGeom {
                        batch,
                        chw: [c, h, w],
                        kernel: k,
                        stride: [s; 2],
                        padding: [p; 2],
                        out_hw: [oh, ow],
                    };
                    nhwc::avg_pool_hwc(&g, rq, x, &mut out)?;
                }
                (_, LayerKind::Add(Some(cfg)), _) => {
                    let b = get(r.inputs[1])?;
                    crate::infer::cpu::kernels::scalar::add(cfg, x, b, &mut out)?;
                }
                (_, LayerKind::Flatten, _) if out.len() == x.len() => out.copy_from_slice(x),
                _ => return Err(WqatError::invalid(format!("int8 model: node {} not on the fast path", r.node.name))),
            }
            if vals[i + 1..].first().is_some_and(|v| v.is_some()) {
                ws.outs[i] = out; // fused into the pool: no output of its own
            } else {
                vals[i] = Some(out);
            }
            if !keep {
                for &j in &r.inputs {
                    if j != INPUT && last_use[j] == i && j + 1 != n {
                        ws.outs[j] = vals[j].take().unwrap_or_default();
                    }
                }
            }
        }
        if let Ok(mut v) = self.packs.scratch.lock() {
            v.push(ws);
        }
        Ok(vals
            .into_iter()
            .zip(&plan.mem)
            .map(|(v, &[c, h, w])| {
                NodeValue::Codes(match v {
                    Some(v) if h * w > 1 && c > 1 => {
                        let mut t = vec![0u8; v.len()];
                        hwc_to_nchw(&v, batch, c, h * w, &mut t);
                        t
                    }
                    Some(v) => v,
                    None => Vec::new(),
                })
            })
            .collect())
    }
}

/// [`par_rows`] on at most `threads` threads (1: in the calling thread).
fn par_rows_n(
    threads: usize,
    rows: usize,
    work: usize,
    row_len: usize,
    out: &mut [u8],
    f: impl Fn(std::ops::Range<usize>, &mut [u8]) -> Result<()> + Sync,
) -> Result<()> {
    if threads <= 1 {
        f(0..rows, out)
    } else {
        par_rows(rows, work, row_len, out, f)
    }
}

/// The input codes (`ActQuant::quantize` of every value; vectorized on AVX2).
fn quantize(kernel: SimdKernel, x: &[f32], q: crate::infer::ActQuant) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if kernel == SimdKernel::Avx2 && kernel.is_available() {
        let mut out = vec![0u8; x.len()];
        // SAFETY: AVX2 checked just above.
        unsafe {
            crate::infer::cpu::kernels::x86::quantize_f32(x, q.inv_scale, q.zero as f32, q.qmax() as f32, &mut out)
        };
        return out;
    }
    let _ = kernel;
    x.iter().map(|&v| q.quantize(v)).collect()
}
