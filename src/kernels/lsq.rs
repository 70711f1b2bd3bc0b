//! Host wrappers for `shaders/lsq*.wgsl` (in progress).
