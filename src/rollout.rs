//! Batched generation: prefill, decode loop over a KV cache, stop handling, per-sequence RNG.
