//! `tz-engine sft`: supervised fine-tuning on prompt/response JSON lines.
use crate::backend::Backend;
use crate::model::load::load_model;
use crate::model::weights::{save_model, SaveDtype};
use crate::train::sft::{load_pairs, sft_train};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct SftArgs {
    /// TOML config: `model.path`, `sft.data` (JSONL of {"prompt","response"}), `sft.steps`,
    /// `sft.lr`, `sft.batch`, `seed`, `device`, `out_dir`, `name`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// The run name `sft` uses when neither the config file nor `--set` gives one (the training
/// default would make it write into `runs/tiny-astarpo/`, perhaps the very model it reads).
pub const DEFAULT_SFT_NAME: &str = "sft";

pub fn run(args: SftArgs) -> Result<i32> {
    crate::util::interrupt::install();
    let mut cfg = super::train::load_config(args.config.as_ref(), &args.sets, None)?;
    let named_in_file = match &args.config {
        Some(p) => std::fs::read_to_string(p).ok().and_then(|t| t.parse::<toml::Table>().ok()).is_some_and(|t| t.contains_key("name")),
        None => false,
    };
    if !named_in_file && !args.sets.iter().any(|s| s.trim_start().starts_with("name=")) {
        cfg.name = DEFAULT_SFT_NAME.into();
    }
    if cfg.model.path.as_os_str().is_empty() || cfg.sft.data.as_os_str().is_empty() {
        bail!("sft needs model.path (a model directory) and sft.data (a JSONL file of prompt/response pairs)");
    }
    if cfg.sft.steps == 0 {
        bail!("sft.steps must be positive");
    }
    let out = std::path::absolute(cfg.run_dir())?;
    let input = std::path::absolute(&cfg.model.path)?;
    if out.starts_with(&input) || input.starts_with(&out) {
        bail!(
            "sft would write its model into {} which holds the model it reads ({}): choose another name (--set name=...)",
            out.display(),
            input.display()
        );
    }
    let _lock = crate::util::fs::lock_dir(&cfg.run_dir())?;
    crate::with_backend!(cfg.device, be => sft(&be, &cfg))
}

fn sft<B: Backend>(be: &B, cfg: &crate::train::TrainConfig) -> Result<i32> {
    let (model, tok) = load_model(be, &cfg.model.path)?;
    let host = crate::model::weights::load_params(&cfg.model.path, &model.cfg, &model.layout)?;
    let pairs = load_pairs(&cfg.sft.data, &tok)?;
    if pairs.is_empty() {
        bail!("{}: no prompt/response pairs to train on", cfg.sft.data.display());
    }
    if let Some((i, _)) = pairs.iter().enumerate().find(|(_, (p, r, _))| p.len() + r.len() > model.cfg.max_position_embeddings) {
        bail!("{}: item {}: longer than the model's context ({})", cfg.sft.data.display(), i + 1, model.cfg.max_position_embeddings);
    }
    let (loss, trained) = sft_train(be, &model, Some(&host), &pairs, cfg.sft.steps, cfg.sft.lr, cfg.sft.batch, cfg.seed, "SFT")?;
    let out = cfg.run_dir().join("final");
    save_model(&out, &model.cfg, &model.layout, &trained, SaveDtype::F32, Some(&tok.to_json_string()?))?;
    println!("SFT done: final loss {loss:.4}; model written to {}", out.display());
    Ok(0)
}
