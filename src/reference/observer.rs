//! CPU references for the observer kernels (in progress).
