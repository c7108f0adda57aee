//! `tz-engine merge`: a base model with a LoRA adapter merged into its weights
//! (`W += (α/r)·B·A` per adapted projection), written as a plain Hugging Face model that
//! transformers (or `tz-engine` without `--adapter`) loads. Host-only: no device needed.
use crate::model::load::{load_config, load_tokenizer};
use crate::model::weights::{load_params, save_model, SaveDtype};
use crate::model::ParamLayout;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct MergeArgs {
    /// The base model directory (Hugging Face format).
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter directory (peft format).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged model (replaced atomically if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// f32 (default: exact) or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn run(args: MergeArgs) -> Result<i32> {
    let dtype = match args.dtype.as_str() {
        "f32" => SaveDtype::F32,
        "bf16" => SaveDtype::BF16,
        other => bail!("--dtype '{other}' is not f32 or bf16"),
    };
    let cfg = load_config(&args.model)?;
    let tok = load_tokenizer(&args.model, &cfg)?;
    let layout = ParamLayout::new(&cfg);
    let mut params = load_params(&args.model, &cfg, &layout)?;
    let (lora, adapters) = crate::model::peft::load_adapter(&args.adapter, &cfg)?;
    lora.merge_into(&mut params, &layout, &adapters)?;
    save_model(&args.out, &cfg, &layout, &params, dtype, Some(&tok.to_json_string()?))?;
    eprintln!(
        "merged {} (rank {}, {} adapted projections) into {} -> {}",
        args.adapter.display(),
        lora.rank(),
        lora.entries.len() / 2,
        args.model.display(),
        args.out.display()
    );
    Ok(0)
}
