//! Host wrappers for `shaders/histogram*.wgsl` (in progress).
