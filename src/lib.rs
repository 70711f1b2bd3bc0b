//! wqat: GPU-first quantization-aware training on wgpu compute shaders.
//!
//! Layout: [`gpu`] (device, tensors, shader registry, recorded dispatches), [`kernels`]
//! (host wrappers of the WGSL entry points), [`reference`] (CPU references of every
//! kernel), [`quant`] (quantization semantics shared by all paths), [`int8`] (the CPU
//! integer backend), [`data`] (data sets).

pub mod bench;
pub mod data;
pub mod error;
pub mod gpu;
pub mod int8;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod reference;
pub mod tensorfile;
pub mod testing;

pub use error::{Result, WqatError};
