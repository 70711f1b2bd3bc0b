//! GPU tensors (a storage buffer with a shape and a dtype), upload/readback, and a buffer
//! pool so that plans built once can recycle buffers instead of allocating per step.

use super::GpuContext;
use crate::error::{Result, WqatError};
use std::collections::HashMap;
use std::sync::Mutex;

/// Element type of a GPU tensor. Int8 data is stored four to a `u32` (see `I8x4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I32,
    U32,
    /// Four int8 values packed in one u32 (little end first); `len` counts int8 elements.
    I8x4,
}

impl DType {
    /// Bytes needed for `n` elements.
    pub fn bytes_for(self, n: usize) -> u64 {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4 * n as u64,
            DType::I8x4 => 4 * n.div_ceil(4) as u64,
        }
    }
}

/// Usages every wqat storage buffer gets: read/written by kernels, copied in and out.
pub const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// A buffer plus the logical shape and dtype of its contents.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    pub buffer: wgpu::Buffer,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl GpuTensor {
    /// Number of logical elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A zero-filled tensor. Zero-size tensors are rejected: wgpu cannot bind them.
    pub fn zeros(ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if n == 0 {
            return Err(WqatError::shape(format!("zero-size tensor of shape {shape:?}")));
        }
        let size = dtype.bytes_for(n);
        check_size(ctx, size)?;
        let buffer = ctx.checked("create buffer", || {
            Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            }))
        })?;
        Ok(GpuTensor { buffer, shape: shape.to_vec(), dtype })
    }
    /// Uploads f32 data.
    pub fn from_f32(ctx: &GpuContext, shape: &[usize], data: &[f32]) -> Result<GpuTensor> {
        Self::from_pod(ctx, shape, DType::F32, data)
    }
    /// Uploads u32 data.
    pub fn from_u32(ctx: &GpuContext, shape: &[usize], data: &[u32]) -> Result<GpuTensor> {
        Self::from_pod(ctx, shape, DType::U32, data)
    }
    /// Uploads i32 data.
    pub fn from_i32(ctx: &GpuContext, shape: &[usize], data: &[i32]) -> Result<GpuTensor> {
        Self::from_pod(ctx, shape, DType::I32, data)
    }
    fn from_pod<T: bytemuck::Pod>(ctx: &GpuContext, shape: &[usize], dtype: DType, data: &[T]) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(WqatError::shape(format!("shape {shape:?} holds {n} elements, data has {}", data.len())));
        }
        let t = Self::zeros(ctx, shape, dtype)?;
        t.write(ctx, data)?;
        Ok(t)
    }
    /// Overwrites the contents (queued; takes effect before the next submit).
    pub fn write<T: bytemuck::Pod>(&self, ctx: &GpuContext, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() as u64 > self.buffer.size() {
            return Err(WqatError::shape(format!(
                "write of {} bytes into a buffer of {}",
                bytes.len(),
                self.buffer.size()
            )));
        }
        ctx.queue.write_buffer(&self.buffer, 0, bytes);
        Ok(())
    }
    /// Reads the whole buffer back as f32 (blocks on the GPU).
    pub fn read_f32(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let v: Vec<f32> = read_buffer(ctx, &self.buffer)?;
        Ok(v[..self.len().min(v.len())].to_vec())
    }
    /// Reads the whole buffer back as u32.
    pub fn read_u32(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        let v: Vec<u32> = read_buffer(ctx, &self.buffer)?;
        let n = match self.dtype {
            DType::I8x4 => self.len().div_ceil(4),
            _ => self.len(),
        };
        Ok(v[..n.min(v.len())].to_vec())
    }
    /// Reads the whole buffer back as i32.
    pub fn read_i32(&self, ctx: &GpuContext) -> Result<Vec<i32>> {
        let v: Vec<i32> = read_buffer(ctx, &self.buffer)?;
        Ok(v[..self.len().min(v.len())].to_vec())
    }
}

fn check_size(ctx: &GpuContext, size: u64) -> Result<()> {
    let max_buf = ctx.limits.max_buffer_size;
    let max_bind = ctx.limits.max_storage_buffer_binding_size;
    if size > max_buf.min(max_bind) {
        return Err(WqatError::Limit(format!(
            "a buffer of {size} bytes exceeds the adapter's limit of {} bytes (max_buffer_size {max_buf}, max_storage_buffer_binding_size {max_bind}); use a smaller batch or model",
            max_buf.min(max_bind)
        )));
    }
    Ok(())
}

/// Copies a buffer into a mappable staging buffer and reads it (one GPU sync).
pub fn read_buffer<T: bytemuck::Pod>(ctx: &GpuContext, buffer: &wgpu::Buffer) -> Result<Vec<T>> {
    let size = buffer.size();
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    ctx.queue.submit([enc.finish()]);
    let slice = staging.slice(..);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait()?;
    rx.recv()
        .map_err(|e| WqatError::Gpu { context: "readback".into(), message: e.to_string() })?
        .map_err(|e| WqatError::Gpu { context: "readback".into(), message: e.to_string() })?;
    let data = {
        let view = slice
            .get_mapped_range()
            .map_err(|e| WqatError::Gpu { context: "readback".into(), message: format!("{e:?}") })?;
        bytemuck::cast_slice::<u8, T>(&view).to_vec()
    };
    staging.unmap();
    Ok(data)
}

/// Recycles storage buffers by byte size, so building and dropping plans (e.g. the
/// evaluation plan built after training) does not grow GPU memory.
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    created: Mutex<usize>,
}

impl BufferPool {
    pub fn new() -> Self {
        Self::default()
    }
    /// A tensor of the given shape; reuses a released buffer of the same size when one
    /// exists. Contents are unspecified (kernels overwrite, or the caller clears).
    pub fn acquire(&self, ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        if n == 0 {
            return Err(WqatError::shape(format!("zero-size tensor of shape {shape:?}")));
        }
        let size = dtype.bytes_for(n);
        if let Some(b) = self.free.lock().unwrap().get_mut(&size).and_then(|v| v.pop()) {
            return Ok(GpuTensor { buffer: b, shape: shape.to_vec(), dtype });
        }
        *self.created.lock().unwrap() += 1;
        GpuTensor::zeros(ctx, shape, dtype)
    }
    /// Returns a tensor's buffer to the pool.
    pub fn release(&self, t: GpuTensor) {
        self.free.lock().unwrap().entry(t.buffer.size()).or_default().push(t.buffer);
    }
    /// How many buffers the pool has ever created.
    pub fn created(&self) -> usize {
        *self.created.lock().unwrap()
    }
}
