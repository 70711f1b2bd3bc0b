//! Recorded dispatches: a pipeline, a bind group built once, and a workgroup count.
//!
//! A training step is a `Vec<Dispatch>` built when the model is compiled and encoded into
//! one compute pass per step (see `Plan`). Binding convention for every kernel:
//! `@group(0) @binding(0)` is a uniform `Params` struct (shapes, flags), and storage
//! buffers follow at bindings 1, 2, ... in the order the host wrapper passes them.

use super::{GpuContext, PipelineKey};
use crate::error::{Result, WqatError};
use std::sync::Arc;

/// One recorded kernel launch.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub label: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// Bytes of the storage buffers bound at 1.. (each counted once): an upper bound of what
    /// the dispatch reads and writes, the memory-traffic yardstick of `wqat bench --train`.
    pub bound_bytes: u64,
    /// Kept alive for the life of the dispatch (the uniform `Params` buffer).
    _params: Option<wgpu::Buffer>,
}

impl Dispatch {
    /// Builds a dispatch: creates (or reuses) the pipeline for `key`, uploads `params` into
    /// a uniform buffer at binding 0, and binds `storage` at bindings 1.. in order.
    pub fn new(
        ctx: &GpuContext,
        key: &PipelineKey,
        params: &[u8],
        storage: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let max = ctx.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            return Err(WqatError::Limit(format!(
                "{}::{} needs {workgroups:?} workgroups, the adapter allows {max} per dimension",
                key.shader, key.entry
            )));
        }
        let pipeline = ctx.pipeline(key)?;
        let label = format!("{}::{}", key.shader, key.entry);
        ctx.checked(&label, || {
            use wgpu::util::DeviceExt;
            // Uniform buffers must be a multiple of 16 bytes.
            let mut bytes = params.to_vec();
            bytes.resize(bytes.len().div_ceil(16).max(1) * 16, 0);
            let pbuf = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
            let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: pbuf.as_entire_binding() }];
            for (i, b) in storage.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
            }
            let layout = pipeline.get_bind_group_layout(0);
            let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: &layout,
                entries: &entries,
            });
            Ok(Dispatch {
                label: label.clone(),
                pipeline: pipeline.clone(),
                bind_group,
                workgroups,
                bound_bytes: storage
                    .iter()
                    .enumerate()
                    .filter(|(i, b)| !storage[..*i].contains(b))
                    .map(|(_, b)| b.size())
                    .sum(),
                _params: Some(pbuf),
            })
        })
    }

    /// Encodes this dispatch into an open compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.workgroups.contains(&0) {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
}

/// Workgroup counts covering `n` invocations of a 1-D kernel with workgroup size `wg`,
/// folded into y when x would pass the 65535 limit. Shaders recover the linear index as
/// `gid.x + gid.y * (num_workgroups.x * WG)`.
pub fn grid_1d(n: usize, wg: u32) -> [u32; 3] {
    let groups = (n as u64).div_ceil(wg as u64).max(1);
    if groups <= 65535 {
        [groups as u32, 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }
}

/// An ordered list of dispatches recorded once and replayed.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub dispatches: Vec<Dispatch>,
}

impl Plan {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, d: Dispatch) {
        self.dispatches.push(d);
    }
    pub fn extend(&mut self, other: &Plan) {
        self.dispatches.extend(other.dispatches.iter().cloned());
    }
    /// Encodes every dispatch into one compute pass of `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wqat plan"), timestamp_writes: None });
        for d in &self.dispatches {
            d.record(&mut pass);
        }
    }
}

impl GpuContext {
    /// Encodes the dispatches into one command buffer and submits it (does not wait).
    pub fn submit(&self, dispatches: &[&Dispatch]) -> Result<()> {
        self.checked("submit", || {
            let mut enc = self.device.create_command_encoder(&Default::default());
            {
                let mut pass =
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
                for d in dispatches {
                    d.record(&mut pass);
                }
            }
            self.queue.submit([enc.finish()]);
            Ok(())
        })
    }
    /// Submits a plan as one command buffer.
    pub fn submit_plan(&self, plan: &Plan) -> Result<()> {
        let refs: Vec<&Dispatch> = plan.dispatches.iter().collect();
        self.submit(&refs)
    }
}
