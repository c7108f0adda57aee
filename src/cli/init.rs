//! `tz-engine init`: a randomly initialized Qwen2 in Hugging Face format.
use crate::model::presets::{init_params, preset, train_tiny_tokenizer};
use crate::model::weights::{save_model, SaveDtype};
use crate::model::ParamLayout;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct InitArgs {
    /// tiny, tiny-2l, qwen2.5-0.5b, qwen2.5-1.5b or qwen2.5-3b.
    #[arg(long)]
    pub preset: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// f32 or bf16 (default: f32 for tiny presets, bf16 for the Qwen2.5 shapes).
    #[arg(long)]
    pub dtype: Option<String>,
    /// A tokenizer.json to ship with the model (required for a usable Qwen2.5-shaped model;
    /// tiny presets train their own).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

pub fn run(args: InitArgs) -> Result<i32> {
    let p = preset(&args.preset)?;
    let mut cfg = p.cfg.clone();
    let tok_json = match (&args.tokenizer, p.tokenizer_vocab) {
        (Some(path), _) => {
            let t = Tokenizer::from_file(path)?;
            if t.vocab_size() > cfg.vocab_size {
                bail!("{}: {} tokens do not fit the preset's vocabulary ({})", path.display(), t.vocab_size(), cfg.vocab_size);
            }
            Some(t.to_json_string()?)
        }
        (None, 0) => {
            eprintln!("warning: no --tokenizer given; {} gets no tokenizer.json (fine for benchmarks and `plan`)", p.name);
            None
        }
        (None, vocab) => {
            let t = Tokenizer::from_tokenizers(train_tiny_tokenizer(&crate::task::tokenizer_corpus(args.seed), vocab)?);
            cfg.vocab_size = t.vocab_size();
            cfg.eos_token_ids = t.eos_ids(&[]);
            Some(t.to_json_string()?)
        }
    };
    let dtype = match args.dtype.as_deref() {
        Some("f32") => SaveDtype::F32,
        Some("bf16") => SaveDtype::BF16,
        Some(other) => bail!("--dtype '{other}' is not f32 or bf16"),
        None if p.tokenizer_vocab > 0 => SaveDtype::F32,
        None => SaveDtype::BF16,
    };
    let layout = ParamLayout::new(&cfg);
    let params = init_params(&cfg, args.seed);
    save_model(&args.out, &cfg, &layout, &params, dtype, tok_json.as_deref())?;
    println!("wrote {} ({} parameters, vocab {}) to {}", p.name, layout.total, cfg.vocab_size, args.out.display());
    Ok(0)
}
