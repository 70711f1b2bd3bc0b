//! CPU references for the gemm kernels (in progress).
