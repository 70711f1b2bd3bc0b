//! CPU references for the lsq kernels (in progress).
