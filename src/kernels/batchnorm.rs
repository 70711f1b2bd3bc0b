//! Host wrappers for `shaders/batchnorm*.wgsl` (in progress).
