//! One test binary for the kernel families (each module: a family's WGSL entry points
//! against its CPU reference on random shapes that straddle the workgroup sizes, with a
//! named tolerance; backward kernels also against finite differences of the reference).
//! One binary links the crate and compiles shaders once, which keeps CI fast on 2 cores.

mod attention;
mod gelu;
mod layernorm;
mod sequence;
