//! CPU references for the optim kernels (in progress).
