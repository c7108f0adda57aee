//! Tokenizer: a Hugging Face `tokenizer.json` through the `tokenizers` crate (no network
//! features). Prompts and responses are encoded without adding special tokens, as TinyZero
//! concatenates a rendered prompt and the generated response.
use anyhow::{anyhow, Context, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("bad tokenizer {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| anyhow!("tokenizer.json does not parse: {e}"))?;
        Ok(Tokenizer { inner })
    }

    pub fn from_tokenizers(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer { inner }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow!("cannot decode tokens: {e}"))
    }

    /// Number of token ids, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The config's EOS ids plus Qwen's end-of-turn and end-of-text tokens when present.
    pub fn eos_ids(&self, cfg_eos: &[u32]) -> Vec<u32> {
        let mut ids: Vec<u32> = cfg_eos.to_vec();
        for t in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = self.token_id(t) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    pub fn to_json_string(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| anyhow!("cannot serialize tokenizer: {e}"))
    }
}
