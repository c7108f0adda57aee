//! Hugging Face config.json (transformers 4.x and 5.x).
