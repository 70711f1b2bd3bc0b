//! CPU references for the pool kernels (in progress).
