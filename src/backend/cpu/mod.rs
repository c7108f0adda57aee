//! The CPU backend: f32, multi-threaded, the oracle.
