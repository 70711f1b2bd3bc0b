//! The GPU runtime: adapter/device context, tensors and buffer pool, the shader registry
//! with its pipeline cache, and recorded dispatches.

pub mod context;
pub mod plan;
pub mod registry;
pub mod tensor;

pub use context::{list_adapters, AdapterSummary, GpuContext, GpuOptions};
pub use plan::{grid_1d, Dispatch, Plan};
pub use registry::{
    shader_source, uniform_layout, validate_wgsl, PipelineKey, WgslStruct, SHADER_MODULES, SHADER_SOURCES,
};
pub use tensor::{BufferPool, DType, GpuTensor};
