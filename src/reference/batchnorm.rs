//! CPU references for the batchnorm kernels (in progress).
