//! CPU references for the activation kernels (in progress).
