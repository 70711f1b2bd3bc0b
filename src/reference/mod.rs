//! CPU references, one file per op family, mirroring `src/kernels/`. Plain loops, clear
//! over clever: they define what the kernels must compute.

pub mod fake_quant;
