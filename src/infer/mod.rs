//! Integer inference: the converted model ([`Int8Model`]), its file format,
//! the CPU (scalar / SIMD) and GPU executors with their kernels, and evaluation.

pub mod cpu;
pub mod eval;
pub mod format;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod requant;

pub use cpu::kernels::{CpuBackend, SimdKernel};
pub use cpu::{Int8CpuModel, Int8Output, NodeValue};
pub use eval::{evaluate, layer_report, preprocess_image_file, Backend, EvalResult, LayerDiff};
pub use gpu::Int8GpuModel;
pub use model::{ActQuant, Domain, FloatLayer, Int8Model, IntFloatLayer, IntLayer, Layer, LayerKind, SeqLayer};
pub use ops::{AddConfig, AvgRequant, Conv2dConfig, LinearConfig, PoolConfig};
pub use requant::{quantize_bias, quantize_multiplier, Activation, Requant};
