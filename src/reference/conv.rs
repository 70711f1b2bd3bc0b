//! CPU references for the conv kernels (in progress).
