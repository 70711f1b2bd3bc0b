//! One test binary for the kernel families (each module: a family's WGSL entry points
//! against its CPU reference on random shapes that straddle the workgroup sizes, with a
//! named tolerance; backward kernels also against finite differences of the reference).
//! One binary links the crate and compiles shaders once, which keeps CI fast on 2 cores.
//!
//! Paths that an adapter feature or an option selects (int8 `dot4I8Packed` or its unpack
//! fallback, the conv kernels' DIRECT or tiled path) are parameters of the tests: a test that
//! cares builds one context per path and checks each (see `int8::contexts`, `conv`), so one
//! run covers them all and nothing needs an environment rerun.

mod activation;
mod attention;
mod batchnorm;
mod bias_quant;
mod conv;
mod fake_quant;
mod fused_passes;
mod gelu;
mod gemm;
mod histogram;
mod int8;
mod int8_ops;
mod layernorm;
mod loss;
mod lsq;
mod observer;
mod optim;
mod pool;
mod sequence;
