//! safetensors I/O: memory-mapped, sharded, f32/bf16/f16; written back in HF format.
