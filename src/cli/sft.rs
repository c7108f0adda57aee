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

pub fn run(args: SftArgs) -> Result<i32> {
    let cfg = super::train::load_config(args.config.as_ref(), &args.sets, None)?;
    if cfg.model.path.as_os_str().is_empty() || cfg.sft.data.as_os_str().is_empty() {
        bail!("sft needs model.path (a model directory) and sft.data (a JSONL file of prompt/response pairs)");
    }
    if cfg.sft.steps == 0 {
        bail!("sft.steps must be positive");
    }
    crate::with_backend!(cfg.device, be => sft(&be, &cfg))
}

fn sft<B: Backend>(be: &B, cfg: &crate::train::TrainConfig) -> Result<i32> {
    let (model, tok) = load_model(be, &cfg.model.path)?;
    let host = crate::model::weights::load_params(&cfg.model.path, &model.cfg, &model.layout)?;
    let pairs = load_pairs(&cfg.sft.data, &tok)?;
    if let Some((i, _)) = pairs.iter().enumerate().find(|(_, (p, r))| p.len() + r.len() > model.cfg.max_position_embeddings) {
        bail!("{}: item {}: longer than the model's context ({})", cfg.sft.data.display(), i + 1, model.cfg.max_position_embeddings);
    }
    let (loss, trained) = sft_train(be, &model, Some(&host), &pairs, cfg.sft.steps, cfg.sft.lr, cfg.sft.batch, cfg.seed, "SFT")?;
    let out = cfg.run_dir().join("final");
    save_model(&out, &model.cfg, &model.layout, &trained, SaveDtype::F32, Some(&tok.to_json_string()?))?;
    println!("SFT done: final loss {loss:.4}; model written to {}", out.display());
    Ok(0)
}
