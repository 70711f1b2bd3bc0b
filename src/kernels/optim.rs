//! Host wrappers for `shaders/optim*.wgsl` (in progress).
