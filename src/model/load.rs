//! A model directory in Hugging Face format onto a backend: config.json, safetensors weights
//! (single or sharded), tokenizer.json.
use super::{weights, ParamLayout, Qwen2, Qwen2Config};
use crate::backend::Backend;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn load_config(dir: &Path) -> Result<Qwen2Config> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    Qwen2Config::load(&dir.join("config.json"))
}

pub fn load_tokenizer(dir: &Path, cfg: &Qwen2Config) -> Result<Tokenizer> {
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    if tok.vocab_size() > cfg.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model's vocabulary is {}",
            dir.join("tokenizer.json").display(),
            tok.vocab_size(),
            cfg.vocab_size
        );
    }
    Ok(tok)
}

/// The peft-format adapter in `dir` (`--adapter`) for a base of config `cfg`, on `be`.
pub fn load_adapter<B: Backend>(be: &B, dir: &Path, cfg: &Qwen2Config) -> Result<super::Lora<B>> {
    let (layout, host) = super::peft::load_adapter(dir, cfg)?;
    super::Lora::from_host(be, layout, &host).with_context(|| format!("loading {} onto {}", dir.display(), be.name()))
}

/// Loads weights and tokenizer; every error names the file and the problem.
pub fn load_model<B: Backend>(be: &B, dir: &Path) -> Result<(Qwen2<B>, Tokenizer)> {
    let cfg = load_config(dir)?;
    let tok = load_tokenizer(dir, &cfg)?;
    let layout = ParamLayout::new(&cfg);
    let host = weights::load_params(dir, &cfg, &layout)?;
    let model = Qwen2::from_host(be, cfg, &host).with_context(|| format!("loading {} onto {}", dir.display(), be.name()))?;
    Ok((model, tok))
}
