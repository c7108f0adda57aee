//! The trainer: config, the RL loop (A*PO, GRPO), SFT warm start, evaluation, metrics,
//! checkpoints and learning curves.
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod run;
pub mod sft;
pub mod vstar;

pub use config::TrainConfig;
