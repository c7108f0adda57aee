//! tz-engine: TinyZero-style reinforcement learning (A*PO, GRPO) for Qwen2 models.
//! Data flows task → tokenizer → model → rollout → algorithm → trainer → cli; `backend`
//! (the device contract) sits under the model, `util` (files, JSON lines) beside everything.
pub mod algo;
pub mod backend;
pub mod cli;
pub mod dist;
pub mod model;
pub mod nvtx;
pub mod rng;
pub mod rollout;
pub mod task;
pub mod tokenizer;
pub mod train;
pub mod util;
