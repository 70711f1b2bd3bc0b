//! Host wrappers for `shaders/activation*.wgsl` (in progress).
