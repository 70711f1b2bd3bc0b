//! CPU references for the int8 kernels: the scalar backend in [`crate::int8::scalar`] is
//! the definition; re-exported here next to the other references.

pub use crate::int8::requant::{
    multiply_by_quantized_multiplier, multiply_by_quantized_multiplier_rounded, quantize_multiplier, requantize,
};
pub use crate::int8::scalar::{add, avg_pool, conv2d, global_avg_pool, linear, max_pool};
