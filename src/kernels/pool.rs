//! Host wrappers for `shaders/pool*.wgsl` (in progress).
