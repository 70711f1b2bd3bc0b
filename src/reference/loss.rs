//! CPU references for the loss kernels (in progress).
