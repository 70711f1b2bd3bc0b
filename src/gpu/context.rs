//! Adapter selection and the device every kernel runs on.
//!
//! Devices are injected (wgpu-examples style): every host wrapper takes `&GpuContext`, so
//! tests run the same code on whatever adapter they share.

use crate::error::{Result, WqatError};
use std::sync::Arc;

/// How to pick an adapter and which optional kernel paths to take.
///
/// `disable_dot4` and `conv_direct` force a kernel path whatever the adapter offers, so that
/// tests check every path on one adapter (they build one context per path) and users can
/// work around a driver. No shader uses subgroups or f16, so there are no switches for them;
/// `wqat devices` still reports whether an adapter has them.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Substring (case-insensitive) of the adapter name; `WGPU_ADAPTER_NAME` is used when unset.
    pub adapter: Option<String>,
    /// Do not use the packed 4x8 integer dot product; kernels unpack with `unpack4xI8` instead.
    pub disable_dot4: bool,
    /// Force the conv kernels' direct path (`Some(true)`: register blocks straight from
    /// storage, the CPU-adapter path) or their workgroup-tiled path (`Some(false)`); `None`
    /// picks direct on CPU adapters only. `WQAT_CONV_DIRECT=1` / `0`.
    pub conv_direct: Option<bool>,
    /// On the direct path, allow (`Some(true)`, the default with `None`) or forbid
    /// (`Some(false)`) the conv strip kernel (`conv.wgsl` `conv2d_strip`: 3-wide kernels,
    /// forward and stride-1 data gradient), so tests check the generic direct kernels too.
    /// `WQAT_CONV_STRIP=0` / `1`.
    pub conv_strip: Option<bool>,
}

impl GpuOptions {
    /// Options from the environment: `WQAT_ADAPTER` / `WGPU_ADAPTER_NAME`, `WQAT_NO_DOT4`
    /// set to anything but `0`, and `WQAT_CONV_DIRECT` (`1` or `0`; unset or anything else:
    /// by adapter type).
    pub fn from_env() -> Self {
        let flag = |name: &str| std::env::var(name).map(|v| v != "0" && !v.is_empty()).unwrap_or(false);
        GpuOptions {
            adapter: std::env::var("WQAT_ADAPTER").ok().filter(|s| !s.is_empty()),
            disable_dot4: flag("WQAT_NO_DOT4"),
            conv_direct: match std::env::var("WQAT_CONV_DIRECT").as_deref() {
                Ok("1") => Some(true),
                Ok("0") => Some(false),
                _ => None,
            },
            conv_strip: match std::env::var("WQAT_CONV_STRIP").as_deref() {
                Ok("1") => Some(true),
                Ok("0") => Some(false),
                _ => None,
            },
        }
    }
}

/// What one adapter offers, as `wqat devices` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub max_buffer_size: u64,
    pub max_storage_binding_size: u64,
    pub max_workgroup_size: [u32; 3],
    pub max_invocations_per_workgroup: u32,
    pub max_workgroups_per_dimension: u32,
    pub shader_f16: bool,
    pub subgroup: bool,
    pub dot4_packed: bool,
    pub timestamp_query: bool,
}

fn summarize(adapter: &wgpu::Adapter, dot4: bool) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    let features = adapter.features();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: info.driver.clone(),
        driver_info: info.driver_info.clone(),
        max_buffer_size: limits.max_buffer_size,
        max_storage_binding_size: limits.max_storage_buffer_binding_size,
        max_workgroup_size: [
            limits.max_compute_workgroup_size_x,
            limits.max_compute_workgroup_size_y,
            limits.max_compute_workgroup_size_z,
        ],
        max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroup: features.contains(wgpu::Features::SUBGROUP),
        dot4_packed: dot4,
        timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
    }
}

fn new_instance() -> wgpu::Instance {
    // `with_env` honours WGPU_BACKEND and friends; GL is not compiled in.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env())
}

fn instance_has_dot4(instance: &wgpu::Instance) -> bool {
    instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct)
}

/// Lists every adapter the instance can see (for `wqat devices`).
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = new_instance();
    let dot4 = instance_has_dot4(&instance);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().map(|a| summarize(a, dot4)).collect()
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The device, its queue and what it can do. Cheap to share behind an `Arc`.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::Adapter,
    pub summary: AdapterSummary,
    pub limits: wgpu::Limits,
    /// `dot4I8Packed` may be used (else kernels take their `unpack4xI8` path).
    pub use_dot4: bool,
    /// Timestamp queries are enabled (benchmarks use them; tests never need them).
    pub has_timestamps: bool,
    /// The conv kernels take their direct path (CPU adapters, unless `GpuOptions::conv_direct`
    /// says otherwise) instead of the workgroup-tiled one.
    pub conv_direct: bool,
    /// The direct conv path may use its strip kernel (`GpuOptions::conv_strip`).
    pub conv_strip: bool,
    pub(crate) registry: super::registry::PipelineCache,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext").field("adapter", &self.summary.name).finish()
    }
}

impl GpuContext {
    /// Picks an adapter (hardware first, then software) and opens a device with the
    /// adapter's own limits and the optional features wqat uses (timestamp queries).
    pub fn new(opts: &GpuOptions) -> Result<Arc<GpuContext>> {
        let instance = new_instance();
        let dot4 = instance_has_dot4(&instance);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if adapters.is_empty() {
            return Err(WqatError::NoAdapter(String::new()));
        }
        let wanted = opts.adapter.clone().or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok().filter(|s| !s.is_empty()));
        let adapter = match wanted {
            Some(w) => {
                let lw = w.to_lowercase();
                let found = adapters.iter().find(|a| a.get_info().name.to_lowercase().contains(&lw)).cloned();
                match found {
                    Some(a) => a,
                    None => {
                        let available =
                            adapters.iter().map(|a| format!("{:?}", a.get_info().name)).collect::<Vec<_>>().join(", ");
                        return Err(WqatError::AdapterNotFound { wanted: w, available });
                    }
                }
            }
            None => {
                let mut sorted = adapters.clone();
                sorted.sort_by_key(|a| {
                    let info = a.get_info();
                    // Prefer Vulkan/Metal/DX12 order as enumerated; rank by device type.
                    type_rank(info.device_type)
                });
                sorted.into_iter().next().expect("non-empty")
            }
        };
        Self::from_adapter(adapter, opts, dot4)
    }

    /// Opens a device on a given adapter.
    pub fn from_adapter(adapter: wgpu::Adapter, opts: &GpuOptions, dot4: bool) -> Result<Arc<GpuContext>> {
        let available = adapter.features();
        let mut wanted = wgpu::Features::empty();
        for f in [
            wgpu::Features::TIMESTAMP_QUERY,
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        ] {
            if available.contains(f) {
                wanted |= f;
            }
        }
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("wqat"),
            required_features: wanted,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| WqatError::Device(e.to_string()))?;
        let summary = summarize(&adapter, dot4);
        Ok(Arc::new(GpuContext {
            use_dot4: dot4 && !opts.disable_dot4,
            has_timestamps: wanted.contains(wgpu::Features::TIMESTAMP_QUERY),
            conv_direct: opts.conv_direct.unwrap_or(summary.device_type == "Cpu"),
            conv_strip: opts.conv_strip.unwrap_or(true),
            device,
            queue,
            adapter,
            summary,
            limits,
            registry: Default::default(),
        }))
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| WqatError::Gpu { context: "poll".into(), message: e.to_string() })
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns any captured
    /// wgpu error into a [`WqatError::Gpu`] instead of wgpu's default panic handler.
    pub fn checked<T>(&self, context: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v.or(o) {
            return Err(WqatError::Gpu { context: context.to_string(), message: e.to_string() });
        }
        out
    }
}
