//! Host wrappers for `shaders/observer*.wgsl` (in progress).
