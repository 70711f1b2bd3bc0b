//! Host wrappers for `shaders/conv*.wgsl` (in progress).
