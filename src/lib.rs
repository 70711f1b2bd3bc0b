//! wqat: GPU-first quantization-aware training on wgpu compute shaders.
//!
//! Layout: [`gpu`] (device, tensors, shader registry, recorded dispatches), [`kernels`]
//! (host wrappers of the WGSL entry points), [`reference`] (CPU references of every
//! kernel), [`quant`] (quantization semantics shared by all paths), [`qconfig`] (per-layer
//! quantization settings), [`data`] (data sets), [`model`] (graphs, zoo, parameter names,
//! checkpoint reading), [`engine`] (compiled training and the `wqat train` pipeline),
//! [`convert`] (QAT checkpoint -> integer model), [`infer`] (the integer model, its file
//! format, CPU and GPU executors and kernels, evaluation), [`bench`] (kernel benchmarks),
//! [`report`] (`wqat report`: plots and an HTML page of a run).

pub mod bench;
pub mod convert;
pub mod data;
pub mod engine;
pub mod error;
pub mod export;
pub mod fuzzing;
pub mod gpu;
pub mod infer;
pub mod kernels;
pub mod model;
pub mod qconfig;
pub mod quant;
pub mod reference;
pub mod report;
pub mod tensorfile;
pub mod testing;

pub use error::{Result, WqatError};
