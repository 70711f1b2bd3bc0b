//! CPU integer inference backend (in progress).
