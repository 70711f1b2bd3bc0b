//! CPU references for the int8 kernels: the scalar backend in [`crate::infer::cpu::kernels::scalar`] is
//! the definition; re-exported here next to the other references.

pub use crate::infer::cpu::kernels::scalar::{add, avg_pool, conv2d, global_avg_pool, linear, max_pool};
pub use crate::infer::requant::{
    multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_rounded, quantize_multiplier, requantize,
};
