//! The trainer: config, the RL loop (the same for every objective in `crate::algo`), SFT warm
//! start, evaluation, metrics, checkpoints and learning curves.
pub mod checkpoint;
pub mod config;
pub mod critic;
pub mod curriculum;
pub mod data;
pub mod diag;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod plan;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod selfplay;
pub mod sft;
pub mod zero3;

pub use config::TrainConfig;
