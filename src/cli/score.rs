//! `tz-engine score`: per-token log-probs of responses given prompts. Input lines may carry
//! other fields (ignored); an `id` is copied into the line's output.
use crate::backend::{Backend, Device};
use crate::model::load::load_model;
use crate::model::{LogprobWorkspace, PackedBatch};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct ScoreArgs {
    /// Model directory (Hugging Face format).
    #[arg(long)]
    pub model: PathBuf,
    /// JSON lines `{"prompt":"...","response":"..."}`; `-` for stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// A LoRA adapter (peft format: adapter_config.json, adapter_model.safetensors) added to
    /// the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Tokens per forward pass (sequences are packed up to this many).
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
}

#[derive(serde::Deserialize)]
struct Item {
    prompt: String,
    response: String,
}

#[derive(serde::Serialize)]
struct Scored<'a> {
    prompt_tokens: &'a [u32],
    response_tokens: &'a [u32],
    logprobs: &'a [f32],
}

pub fn run(args: ScoreArgs) -> Result<i32> {
    crate::with_backend!(args.device, be => score(&be, &args))
}

fn score<B: Backend>(be: &B, args: &ScoreArgs) -> Result<i32> {
    let records = crate::util::jsonl::read_records::<Item>(&args.input)?;
    let (ids, items): (Vec<_>, Vec<Item>) = records.into_iter().map(|r| (r.id, r.item)).unzip();
    let (model, tok) = load_model(be, &args.model)?;
    let lora = args.adapter.as_ref().map(|d| crate::model::load::load_adapter(be, d, &model.cfg)).transpose()?;
    let mut pairs = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let p = tok.encode(&it.prompt).map_err(|e| anyhow!("line {}: {e:#}", i + 1))?;
        let r = tok.encode(&it.response).map_err(|e| anyhow!("line {}: {e:#}", i + 1))?;
        if p.is_empty() {
            return Err(anyhow!("{}: item {}: the prompt encodes to no tokens", args.input.display(), i + 1));
        }
        let len = p.len() + r.len();
        if len > model.cfg.max_position_embeddings {
            return Err(anyhow!(
                "{}: item {}: prompt + response is {len} tokens, longer than the model's context ({})",
                args.input.display(),
                i + 1,
                model.cfg.max_position_embeddings
            ));
        }
        pairs.push((p, r));
    }
    // Pack sequences into batches of at most `batch_tokens` tokens (a longer one goes alone).
    let budget = args.batch_tokens.max(1);
    let mut batches: Vec<std::ops::Range<usize>> = vec![];
    let mut start = 0;
    let mut tokens = 0;
    for (i, (p, r)) in pairs.iter().enumerate() {
        let len = p.len() + r.len();
        if i > start && tokens + len > budget {
            batches.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += len;
    }
    if start < pairs.len() {
        batches.push(start..pairs.len());
    }
    let max_rows = batches.iter().map(|b| pairs[b.clone()].iter().map(|(p, r)| p.len() + r.len()).sum::<usize>()).max().unwrap_or(1);
    let max_seqs = batches.iter().map(|b| b.len()).max().unwrap_or(1);
    let max_targets = batches.iter().map(|b| pairs[b.clone()].iter().map(|(_, r)| r.len()).sum::<usize>()).max().unwrap_or(1);
    let mut ws = LogprobWorkspace::new_with(
        be,
        &model.cfg,
        max_rows,
        max_seqs,
        max_targets.max(1),
        crate::model::Keep::Nothing,
        lora.as_ref().map(|l| &l.layout),
    )?;
    let resident = crate::model::Resident(&model);
    let with = lora.as_ref().map(|lora| crate::model::WithAdapters::resident(&model, lora));
    let src: &dyn crate::model::ParamSource<B> = match &with {
        Some(w) => w,
        None => &resident,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut logp = vec![0f32; max_targets];
    for range in batches {
        let batch = PackedBatch::from_pairs(&pairs[range.clone()])?;
        ws.load(be, &model.cfg, &batch)?;
        model.forward_logprobs_from(be, &ws, false, src)?;
        let nt = batch.n_targets();
        be.download_f32(ws.logp(), &mut logp[..nt])?;
        if let Some(j) = logp[..nt].iter().position(|x| !x.is_finite()) {
            let k = batch.target_cu.partition_point(|&c| c as usize <= j) - 1;
            bail!(
                "the model's log-probs are not finite (input record {}): its weights or config (rope_theta, rms_norm_eps, dtype) are broken",
                range.start + k + 1
            );
        }
        for (k, i) in range.enumerate() {
            let (t0, t1) = (batch.target_cu[k] as usize, batch.target_cu[k + 1] as usize);
            let line = Scored { prompt_tokens: &pairs[i].0, response_tokens: &pairs[i].1, logprobs: &logp[t0..t1] };
            writeln!(out, "{}", crate::util::jsonl::with_id(ids[i].as_ref(), serde_json::to_string(&line)?))?;
        }
    }
    out.flush()?;
    Ok(0)
}
