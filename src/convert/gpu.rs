//! GPU executor of an [`Int8Model`]: `int8_gemm.wgsl` for conv / linear (the packed
//! `dot4I8Packed` path or the unpack fallback, by `ctx.use_dot4`) and `int8_ops.wgsl` for
//! input quantization, pools and adds. Buffers are allocated once for `max_batch` images;
//! the forward of each batch size is recorded once as a fixed list of dispatches and
//! replayed (one submit per forward, no allocation after the first call of a size).

use super::cpu::{argmax_rows, Int8Output, NodeValue};
use super::kernels as k;
use super::{Domain, Int8Model, LayerKind};
use crate::error::{Result, WqatError};
use crate::gpu::{DType, Dispatch, GpuContext, GpuTensor};
use crate::int8::{Conv2dConfig, LinearConfig, PoolConfig};
use crate::kernels::int8::{int8_conv2d, int8_linear, unpack_u8, Int8Weights};
use crate::model::graph::{Op, INPUT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An [`Int8Model`] uploaded to the GPU for batches of up to `max_batch` images.
pub struct Int8GpuModel {
    ctx: Arc<GpuContext>,
    model: Int8Model,
    max_batch: usize,
    input_f32: GpuTensor,
    input_codes: GpuTensor,
    /// Output codes of every node (flatten aliases its input's buffer).
    outputs: Vec<GpuTensor>,
    weights: Vec<Option<Int8Weights>>,
    /// Recorded forwards by batch size.
    plans: Mutex<HashMap<usize, Vec<Dispatch>>>,
    /// Mappable copy of the logits.
    staging: wgpu::Buffer,
}

impl std::fmt::Debug for Int8GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8GpuModel")
            .field("model", &self.model.graph.name)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

fn view(t: &GpuTensor, n: usize) -> GpuTensor {
    GpuTensor { buffer: t.buffer.clone(), shape: vec![n], dtype: t.dtype }
}

impl Int8GpuModel {
    /// Uploads `model` (packed weights, per-node activation buffers for `max_batch`
    /// images). The GPU path runs fully quantized models; a node kept in f32 is an error
    /// (run those with [`Int8Model::forward_cpu`]).
    pub fn new(ctx: &Arc<GpuContext>, model: &Int8Model, max_batch: usize) -> Result<Int8GpuModel> {
        if max_batch == 0 {
            return Err(WqatError::invalid("max_batch must be at least 1"));
        }
        if model.input.quant().is_none() {
            return Err(WqatError::invalid("the GPU int8 executor needs a quantized input (first layer kept fp32?)"));
        }
        let sample: usize = model.graph.input.iter().product();
        let input_f32 = GpuTensor::zeros(ctx, &[max_batch * sample], DType::F32)?;
        let input_codes = GpuTensor::zeros(ctx, &[max_batch * sample], DType::I8x4)?;
        let mut outputs: Vec<GpuTensor> = Vec::with_capacity(model.layers.len());
        let mut weights = Vec::with_capacity(model.layers.len());
        for (r, l) in model.nodes.iter().zip(&model.layers) {
            let float = matches!(l.kind, LayerKind::Float(_) | LayerKind::AvgPool(None) | LayerKind::Add(None))
                || l.out == Domain::Float;
            if float {
                return Err(WqatError::invalid(format!(
                    "node {} runs in f32; the GPU int8 executor needs every layer quantized (use the CPU executor)",
                    r.node.name
                )));
            }
            let n: usize = r.out_shape.iter().product::<usize>() * max_batch;
            let out = match l.kind {
                LayerKind::Flatten => {
                    let j = r.inputs[0];
                    view(if j == INPUT { &input_codes } else { &outputs[j] }, n)
                }
                _ => GpuTensor::zeros(ctx, &[n], DType::I8x4)?,
            };
            outputs.push(out);
            weights.push(match &l.kind {
                LayerKind::Int(il) => {
                    let cout = r.out_shape[0];
                    Some(Int8Weights::new(ctx, &il.weight, cout, il.weight.len() / cout, &il.bias, &il.requant)?)
                }
                _ => None,
            });
        }
        let classes = model.num_classes();
        let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("int8 logits readback"),
            size: DType::I8x4.bytes_for(max_batch * classes),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Int8GpuModel {
            ctx: ctx.clone(),
            model: model.clone(),
            max_batch,
            input_f32,
            input_codes,
            outputs,
            weights,
            plans: Mutex::new(HashMap::new()),
            staging,
        })
    }

    /// The largest batch a forward takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The model this executor runs.
    pub fn model(&self) -> &Int8Model {
        &self.model
    }

    /// Records the forward of `batch` images.
    fn record(&self, batch: usize) -> Result<Vec<Dispatch>> {
        let ctx = &*self.ctx;
        let m = &self.model;
        let sample: usize = m.graph.input.iter().product();
        let q_in = m.input.quant().ok_or_else(|| WqatError::invalid("unquantized input"))?;
        let mut ds = vec![k::quantize_f32(
            ctx,
            &q_in,
            &view(&self.input_f32, batch * sample),
            &view(&self.input_codes, batch * sample),
        )?];
        let src = |j: usize, n: usize| if j == INPUT { view(&self.input_codes, n) } else { view(&self.outputs[j], n) };
        for (i, (r, l)) in m.nodes.iter().zip(&m.layers).enumerate() {
            let [c, h, w] = r.in_shapes[0];
            let n_in = batch * c * h * w;
            let n_out = batch * r.out_shape.iter().product::<usize>();
            let x = src(r.inputs[0], n_in);
            let out = view(&self.outputs[i], n_out);
            let zero_in = m.domain_of(r.inputs[0]).quant().map(|q| q.zero).unwrap_or(0);
            let d = match (&l.kind, &r.node.op) {
                (LayerKind::Int(_), Op::Conv { out_channels, kernel, stride, padding, dilation, groups, .. }) => {
                    let cfg = Conv2dConfig {
                        batch,
                        c_in: c,
                        h,
                        w,
                        c_out: *out_channels,
                        kernel: [*kernel; 2],
                        stride: [*stride; 2],
                        padding: [*padding; 2],
                        dilation: [*dilation; 2],
                        groups: *groups,
                        x_zero: zero_in,
                    };
                    let wt = self.weights[i].as_ref().ok_or_else(|| WqatError::invalid("missing weights"))?;
                    Some(int8_conv2d(ctx, &cfg, &x, wt, &out)?)
                }
                (LayerKind::Int(_), Op::Linear { out_features, .. }) => {
                    let cfg = LinearConfig { m: batch, k: c * h * w, n: *out_features, x_zero: zero_in };
                    let wt = self.weights[i].as_ref().ok_or_else(|| WqatError::invalid("missing weights"))?;
                    Some(int8_linear(ctx, &cfg, &x, wt, &out)?)
                }
                (LayerKind::MaxPool, Op::MaxPool { kernel, stride, padding }) => {
                    let s = if *stride == 0 { *kernel } else { *stride };
                    let cfg = PoolConfig {
                        batch,
                        channels: c,
                        h,
                        w,
                        kernel: [*kernel; 2],
                        stride: [s; 2],
                        padding: [*padding; 2],
                    };
                    Some(k::maxpool_u8(ctx, &cfg, &x, &out)?)
                }
                (LayerKind::AvgPool(Some(rq)), op) => {
                    let cfg = match op {
                        Op::AvgPool { kernel, stride, padding } => PoolConfig {
                            batch,
                            channels: c,
                            h,
                            w,
                            kernel: [*kernel; 2],
                            stride: [if *stride == 0 { *kernel } else { *stride }; 2],
                            padding: [*padding; 2],
                        },
                        _ => PoolConfig::global(batch, c, h, w),
                    };
                    Some(k::avgpool_u8(ctx, &cfg, rq, &x, &out)?)
                }
                (LayerKind::Add(Some(cfg)), Op::Add { .. }) => {
                    let b = src(r.inputs[1], n_in);
                    Some(k::add_u8(ctx, cfg, &x, &b, &out)?)
                }
                (LayerKind::Flatten, _) => None,
                _ => {
                    return Err(WqatError::invalid(format!("node {}: no GPU int8 kernel for this layer", r.node.name)))
                }
            };
            ds.extend(d);
        }
        Ok(ds)
    }

    /// Uploads the images and runs the recorded forward (returns with the work submitted).
    fn run(&self, images: &[f32], batch: usize) -> Result<std::sync::MutexGuard<'_, HashMap<usize, Vec<Dispatch>>>> {
        let sample: usize = self.model.graph.input.iter().product();
        if batch == 0 || batch > self.max_batch || images.len() != batch * sample {
            return Err(WqatError::shape(format!(
                "{} input values for {batch} images of shape {:?} (max batch {})",
                images.len(),
                self.model.graph.input,
                self.max_batch
            )));
        }
        let mut plans = self.plans.lock().map_err(|_| WqatError::invalid("int8 GPU model lock poisoned"))?;
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(batch) {
            e.insert(self.record(batch)?);
        }
        self.input_f32.write(&self.ctx, images)?;
        let refs: Vec<&Dispatch> = plans[&batch].iter().collect();
        self.ctx.submit(&refs)?;
        Ok(plans)
    }

    fn finish(&self, codes: &[u8], batch: usize, activations: Option<Vec<NodeValue>>) -> Result<Int8Output> {
        let last = self.model.layers.len() - 1;
        let q = self.model.layers[last].out.quant().ok_or_else(|| WqatError::invalid("unquantized logits"))?;
        let classes = self.model.num_classes();
        let logits: Vec<f32> = codes[..batch * classes].iter().map(|&c| q.dequantize(c)).collect();
        let predictions = argmax_rows(&logits, classes);
        Ok(Int8Output { logits, predictions, activations })
    }

    /// Runs `batch` normalized images (`[batch, C, H, W]` f32) and returns dequantized
    /// logits and predictions.
    pub fn forward(&self, images: &[f32], batch: usize) -> Result<Int8Output> {
        let _plans = self.run(images, batch)?;
        let n = batch * self.model.num_classes();
        let bytes = DType::I8x4.bytes_for(n);
        let last = &self.outputs[self.outputs.len() - 1];
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&last.buffer, 0, &self.staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let slice = self.staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait()?;
        let gpu_err = |m: String| WqatError::Gpu { context: "int8 readback".into(), message: m };
        rx.recv().map_err(|e| gpu_err(e.to_string()))?.map_err(|e| gpu_err(e.to_string()))?;
        let words: Vec<u32> = {
            let v = slice.get_mapped_range().map_err(|e| gpu_err(format!("{e:?}")))?;
            bytemuck::cast_slice::<u8, u32>(&v).to_vec()
        };
        self.staging.unmap();
        self.finish(&unpack_u8(&words, n), batch, None)
    }

    /// [`Int8GpuModel::forward`] that also reads back every node's output codes.
    pub fn forward_traced(&self, images: &[f32], batch: usize) -> Result<Int8Output> {
        let _plans = self.run(images, batch)?;
        let mut acts = Vec::with_capacity(self.outputs.len());
        for (r, t) in self.model.nodes.iter().zip(&self.outputs) {
            let n = batch * r.out_shape.iter().product::<usize>();
            acts.push(NodeValue::Codes(crate::kernels::int8::read_u8(&self.ctx, &view(t, n))?));
        }
        let last = match acts.last() {
            Some(NodeValue::Codes(c)) => c.clone(),
            _ => Vec::new(),
        };
        self.finish(&last, batch, Some(acts))
    }
}
