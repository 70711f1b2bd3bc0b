//! Host wrappers, one file per op family: each function validates shapes, fills the
//! kernel's `Params` and returns a recorded [`crate::gpu::Dispatch`].

pub mod activation;
pub mod attention;
pub mod batchnorm;
pub mod bias_quant;
pub mod bn_fold;
pub mod conv;
pub mod fake_quant;
pub mod gelu;
pub mod gemm;
pub mod histogram;
pub mod int8;
pub mod layernorm;
pub mod loss;
pub mod lsq;
pub mod observer;
pub mod optim;
pub mod pool;
pub mod sequence;
