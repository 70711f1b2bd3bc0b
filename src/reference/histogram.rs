//! CPU references for the histogram kernels (in progress).
