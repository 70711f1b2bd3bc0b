//! Shader registry: every WGSL file embedded at build time (see `build.rs`), and compute
//! pipelines created once and cached under a typed [`PipelineKey`].
//!
//! A key is (shader file, entry point, override constants). Specializations such as tile
//! sizes or "fuse fake-quant into operand A" are WGSL `override` constants, so one kernel
//! source serves lavapipe and real GPUs without forking.

use crate::error::{Result, WqatError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// The WGSL source of a shader file by stem (`"fake_quant"` for `shaders/fake_quant.wgsl`).
pub fn shader_source(name: &str) -> Option<&'static str> {
    SHADER_SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Identifies one compiled pipeline. Constants are kept sorted by name so that equal
/// specializations hash equally whatever order the caller listed them in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub shader: &'static str,
    pub entry: &'static str,
    /// Override constants as (name, f64 bits): f64 is what wgpu takes, bits make it hashable.
    constants: Vec<(&'static str, u64)>,
}

impl PipelineKey {
    pub fn new(shader: &'static str, entry: &'static str) -> Self {
        PipelineKey { shader, entry, constants: Vec::new() }
    }
    /// Adds an override constant (booleans as 0/1, integers as themselves).
    pub fn with(mut self, name: &'static str, value: f64) -> Self {
        self.constants.retain(|(n, _)| *n != name);
        self.constants.push((name, value.to_bits()));
        self.constants.sort_by_key(|(n, _)| *n);
        self
    }
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        self.constants.iter().map(|(n, b)| (*n, f64::from_bits(*b))).collect()
    }
}

/// Modules and pipelines created so far on one device.
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    /// Number of distinct pipelines created (for tests and `wqat bench` reports).
    pub fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl super::GpuContext {
    /// The pipeline for `key`, created on first use. Layouts are derived from the shader
    /// (`layout: None`), so bind groups use `pipeline.get_bind_group_layout(0)`.
    pub fn pipeline(&self, key: &PipelineKey) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.registry.pipelines.lock().unwrap().get(key) {
            return Ok(p.clone());
        }
        let module = {
            let mut modules = self.registry.modules.lock().unwrap();
            if let Some(m) = modules.get(key.shader) {
                m.clone()
            } else {
                let src = shader_source(key.shader).ok_or_else(|| WqatError::Shader {
                    file: format!("{}.wgsl", key.shader),
                    message: "no such shader file".into(),
                })?;
                let m = self.checked(&format!("shader {}", key.shader), || {
                    Ok(self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(key.shader),
                        source: wgpu::ShaderSource::Wgsl(src.into()),
                    }))
                })?;
                modules.insert(key.shader, m.clone());
                m
            }
        };
        let constants = key.constants();
        let pipeline = self.checked(&format!("pipeline {}::{}", key.shader, key.entry), || {
            Ok(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.entry),
                layout: None,
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            }))
        })?;
        let pipeline = Arc::new(pipeline);
        self.registry.pipelines.lock().unwrap().insert(key.clone(), pipeline.clone());
        Ok(pipeline)
    }

    /// Number of pipelines in the cache.
    pub fn pipeline_count(&self) -> usize {
        self.registry.len()
    }
}

/// Validates one WGSL source with naga (parse + full validation). Needs no GPU.
pub fn validate_wgsl(name: &str, src: &str) -> Result<naga::Module> {
    let module = naga::front::wgsl::parse_str(src)
        .map_err(|e| WqatError::Shader { file: format!("{name}.wgsl"), message: e.emit_to_string(src) })?;
    let mut validator =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    validator
        .validate(&module)
        .map_err(|e| WqatError::Shader { file: format!("{name}.wgsl"), message: e.emit_to_string(src) })?;
    Ok(module)
}

/// A WGSL struct as naga lays it out (uniform address space rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgslStruct {
    pub name: String,
    /// Size in bytes (the struct's span: last member rounded up to the struct's alignment).
    pub size: usize,
    /// `(name, byte offset, byte size)` of every member, in order.
    pub members: Vec<(String, usize, usize)>,
}

/// The struct of the uniform at group 0, binding 0 of `shaders/<name>.wgsl` (as compiled,
/// includes expanded), or `None` when the shader has none. Needs no GPU.
pub fn uniform_layout(name: &str) -> Result<Option<WgslStruct>> {
    let src = shader_source(name)
        .ok_or_else(|| WqatError::Shader { file: format!("{name}.wgsl"), message: "no such shader file".into() })?;
    let module = naga::front::wgsl::parse_str(src)
        .map_err(|e| WqatError::Shader { file: format!("{name}.wgsl"), message: e.emit_to_string(src) })?;
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| WqatError::Shader { file: format!("{name}.wgsl"), message: format!("layout: {e}") })?;
    let uniform = module.global_variables.iter().map(|(_, g)| g).find(|g| {
        g.space == naga::AddressSpace::Uniform && g.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 0)
    });
    let Some(var) = uniform else { return Ok(None) };
    let ty = &module.types[var.ty];
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        return Err(WqatError::Shader {
            file: format!("{name}.wgsl"),
            message: "the uniform at binding 0 is not a struct".into(),
        });
    };
    Ok(Some(WgslStruct {
        name: ty.name.clone().unwrap_or_default(),
        size: *span as usize,
        members: members
            .iter()
            .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize, layouter[m.ty].size as usize))
            .collect(),
    }))
}
