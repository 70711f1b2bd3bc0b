//! Integer inference: the converted model ([`Int8Model`], built by [`crate::convert`]), its
//! file format ([`format`]), the CPU executor ([`Int8CpuModel`], scalar / SIMD kernels in
//! [`cpu::kernels`]) and the GPU executor ([`Int8GpuModel`], host wrappers of the int8
//! shaders in [`gpu`]), the arithmetic they share ([`requant`], [`ops`]) and evaluation
//! ([`eval`]). The model holds data only; each executor owns its backend state (packed
//! weights, buffers, recorded dispatches).

pub mod cpu;
pub mod eval;
pub mod format;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod requant;
pub mod weights;

pub use cpu::kernels::{CpuBackend, SimdKernel};
pub use cpu::{Int8CpuModel, Int8Output, NodeValue};
pub use eval::{evaluate, layer_report, preprocess_image_file, Backend, EvalResult, LayerDiff};
pub use gpu::Int8GpuModel;
pub use model::{ActQuant, Domain, FloatLayer, Int8Model, IntFloatLayer, IntLayer, Layer, LayerKind, SeqLayer};
pub use ops::{div_round_half_even, AddConfig, AvgDivisor, AvgRequant, Conv2dConfig, LinearConfig, PoolConfig};
pub use requant::{quantize_bias, quantize_multiplier, Activation, Requant};
pub use weights::PackedWeights;
