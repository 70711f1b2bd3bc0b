//! Host wrappers for `shaders/loss*.wgsl` (in progress).
