//! The trainer: config, loop, eval, metrics, checkpoints.
