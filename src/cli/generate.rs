//! `tz-engine generate`: sample responses to prompts. Input lines may carry other fields
//! (ignored); an `id` is copied into each of the line's outputs.
use crate::backend::{Backend, Device, SamplingParams};
use crate::model::load::load_model;
use crate::rollout::{GenConfig, Generator};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct GenerateArgs {
    /// Model directory (Hugging Face format).
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter (peft format: adapter_config.json, adapter_model.safetensors) added to
    /// the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSON lines `{"prompt":"..."}`; `-` for stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// Responses per prompt (output lines follow the input order, K per prompt).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 means off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop once the response contains this string (kept in the output); repeatable.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Sequences generated at once.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

#[derive(serde::Deserialize)]
struct Item {
    prompt: String,
}

#[derive(serde::Serialize)]
struct Out<'a> {
    response: &'a str,
    response_tokens: &'a [u32],
    finish: crate::rollout::Finish,
}

pub fn run(args: GenerateArgs) -> Result<i32> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0, got {}", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", args.top_p);
    }
    if args.n == 0 || args.batch == 0 || args.max_new_tokens == 0 {
        bail!("--n, --batch and --max-new-tokens must be positive");
    }
    crate::with_backend!(args.device, be => generate(&be, &args))
}

fn generate<B: Backend>(be: &B, args: &GenerateArgs) -> Result<i32> {
    let records = crate::util::jsonl::read_records::<Item>(&args.input)?;
    let (ids, items): (Vec<_>, Vec<Item>) = records.into_iter().map(|r| (r.id, r.item)).unzip();
    let (model, tok) = load_model(be, &args.model)?;
    let lora = args.adapter.as_ref().map(|d| crate::model::load::load_adapter(be, d, &model.cfg)).transpose()?;
    crate::util::limits::items("prompts × --n", items.len(), args.n)?;
    let mut prompts = Vec::with_capacity(items.len() * args.n);
    let mut seeds = Vec::with_capacity(items.len() * args.n);
    for (i, it) in items.iter().enumerate() {
        let ids = tok.encode(&it.prompt).map_err(|e| anyhow!("{}: item {}: {e:#}", args.input.display(), i + 1))?;
        if ids.is_empty() {
            bail!("{}: item {}: the prompt encodes to no tokens", args.input.display(), i + 1);
        }
        for k in 0..args.n {
            prompts.push(ids.clone());
            seeds.push(crate::rng::derive_seed(args.seed, i as u64, k as u64));
        }
    }
    if prompts.is_empty() {
        return Ok(0);
    }
    let max_prompt = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let ctx = model.cfg.max_position_embeddings;
    if max_prompt >= ctx {
        bail!("a prompt has {max_prompt} tokens, leaving no room in the model's context ({ctx})");
    }
    let t_max = (max_prompt + args.max_new_tokens).min(ctx);
    let gen = Generator::new_with(be, &model.cfg, args.batch.min(prompts.len()), max_prompt, t_max, lora.as_ref().map(|l| &l.layout))?;
    let gc = GenConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p },
        stop_token_ids: tok.eos_ids(&model.cfg.eos_token_ids),
        stop_strings: args.stop.clone(),
        turn_tokens: 0,
    };
    let decode = |ids: &[u32]| tok.decode(ids, false).unwrap_or_default();
    let outs = gen.generate_with(be, &model, lora.as_ref(), &prompts, &seeds, &gc, &decode)?;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    for (j, g) in outs.iter().enumerate() {
        let text = tok.decode(&g.tokens, true)?;
        let line = serde_json::to_string(&Out { response: &text, response_tokens: &g.tokens, finish: g.finish })?;
        writeln!(w, "{}", crate::util::jsonl::with_id(ids[j / args.n].as_ref(), line))?;
    }
    w.flush()?;
    Ok(0)
}
