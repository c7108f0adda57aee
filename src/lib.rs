//! tz-engine: TinyZero-style reinforcement learning (A*PO, GRPO) for Qwen2 models.
//! Data flows task → tokenizer → model → rollout → algorithm → trainer.
pub mod algo;
pub mod backend;
pub mod cli;
pub mod model;
pub mod nvtx;
pub mod rng;
pub mod rollout;
pub mod task;
pub mod tokenizer;
pub mod train;
