//! Host wrappers for `shaders/gemm*.wgsl` (in progress).
