//! Host wrappers, one file per op family: each function validates shapes, fills the
//! kernel's `Params` and returns a recorded [`crate::gpu::Dispatch`].

pub mod fake_quant;
