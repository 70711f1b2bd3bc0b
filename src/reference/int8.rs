//! CPU references for the int8 kernels (in progress).
