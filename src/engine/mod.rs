//! The QAT engine: model state on the GPU ([`state`]), compilation of a model into fixed
//! dispatch lists ([`compile`]), and the training pipeline ([`train`]).

pub mod bit_schedule;
pub mod calibrate;
pub mod compile;
pub mod config;
pub mod evaluate;
pub mod run;
pub mod sensitivity;
pub mod state;
pub mod throughput;
pub mod train;

pub use compile::{CompileOptions, Compiled, StepOptions};
pub use config::{LayerQConfig, ObserverKind, OptimConfig, QConfig, QuantizerKind};
pub use state::ModelState;
pub use train::{Phase, RunReport, Schedule, TrainConfig, Trainer};
