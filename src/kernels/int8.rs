//! Host wrappers for `shaders/int8*.wgsl` (in progress).
