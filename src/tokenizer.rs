//! Tokenizer: Hugging Face tokenizer.json via the `tokenizers` crate.
