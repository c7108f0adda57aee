//! `tz-engine bench phases`: the three phases a training run spends its time in, on a model
//! directory, timed inside one process so loading is not counted (it is reported apart):
//! - **score** — a forward pass and the response tokens' log-probs (the reference and old
//!   policy's work in RL), tokens per second over whole sequences;
//! - **generate** — sampling at T = 1 for a fixed number of new tokens (no stop token, so every
//!   run does the same work), new tokens per second;
//! - **train** — forward, backward and an AdamW step over a batch, seconds per step.
//!
//! Token ids are seeded random draws from the vocabulary: the work of every phase depends on
//! the shapes only. `tools/bench_cpu_torch.py` runs the same three phases with PyTorch and
//! transformers on the same directory; `tools/bench_cpu_vs_torch.sh` puts the two side by side.
use super::bench::time;
use crate::backend::{Backend, Device, SamplingParams};
use crate::model::{Keep, LogprobWorkspace, PackedBatch, ParamLayout, Qwen2};
use crate::rng::Rng;
use crate::rollout::{GenConfig, Generator};
use crate::train::optim::{AdamWConfig, Optimizer};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct PhaseArgs {
    /// Model directory (Hugging Face format: config.json and safetensors; no tokenizer needed).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Sequences per score pass and per train step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Tokens per scored / trained sequence (half prompt, half response).
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Sequences generated at once.
    #[arg(long, default_value_t = 64)]
    pub gen_batch: usize,
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed repetitions of each phase (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Only these phases (comma-separated: score, generate, train).
    #[arg(long, default_value = "score,generate,train")]
    pub phases: String,
    /// Write the results as JSON lines to this file as well.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct PhaseRow {
    engine: &'static str,
    phase: String,
    shape: String,
    seconds: f64,
    /// Tokens per second (score: all tokens; generate: new tokens); seconds per step for train.
    rate: f64,
    unit: &'static str,
}

const PHASES: [&str; 3] = ["score", "generate", "train"];

pub fn run(a: PhaseArgs) -> Result<i32> {
    if a.reps == 0 || a.batch == 0 || a.gen_batch == 0 || a.new_tokens == 0 || a.prompt_tokens == 0 || a.seq < 2 {
        bail!("--reps, --batch, --gen-batch, --prompt-tokens and --new-tokens must be positive and --seq at least 2");
    }
    let phases: Vec<&str> = a.phases.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if let Some(p) = phases.iter().find(|p| !PHASES.contains(p)) {
        bail!("--phases: unknown phase {p:?} (phases: {})", PHASES.join(", "));
    }
    crate::with_backend!(a.device, be => bench(&be, &a, &phases))
}

fn bench<B: Backend>(be: &B, a: &PhaseArgs, phases: &[&str]) -> Result<i32> {
    let t = Instant::now();
    let cfg = crate::model::load::load_config(&a.model)?;
    let host = crate::model::weights::load_params(&a.model, &cfg, &ParamLayout::new(&cfg))?;
    let model = Qwen2::from_host(be, cfg, &host).with_context(|| format!("loading {} onto {}", a.model.display(), be.name()))?;
    drop(host);
    be.synchronize()?;
    let load_s = t.elapsed().as_secs_f64();
    let cfg = &model.cfg;
    let ctx = cfg.max_position_embeddings;
    if a.seq > ctx || a.prompt_tokens + a.new_tokens > ctx {
        bail!("--seq and --prompt-tokens + --new-tokens must fit the model's context ({ctx} tokens)");
    }
    let mut rng = Rng::new(0x7e57);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect() };
    let mut rows = vec![PhaseRow {
        engine: "tz-engine",
        phase: "load".into(),
        shape: format!("{} parameters", model.layout.total),
        seconds: load_s,
        rate: load_s,
        unit: "s",
    }];
    let half = a.seq / 2;
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..a.batch).map(|_| (ids(a.seq - half), ids(half))).collect();
    let batch = PackedBatch::from_pairs(&pairs)?;
    let shape = format!("{} x {} tokens", a.batch, a.seq);
    for &phase in phases {
        let row = match phase {
            "score" => {
                let mut ws = LogprobWorkspace::new(be, cfg, a.batch * a.seq, a.batch, a.batch * half, Keep::Nothing)?;
                ws.load(be, cfg, &batch)?;
                let s = time(be, a.reps, || model.forward_logprobs(be, &ws, false))?;
                PhaseRow {
                    engine: "tz-engine",
                    phase: phase.into(),
                    shape: shape.clone(),
                    seconds: s,
                    rate: (a.batch * a.seq) as f64 / s,
                    unit: "tok/s",
                }
            }
            "generate" => {
                let gen = Generator::new(be, cfg, a.gen_batch, a.prompt_tokens, a.prompt_tokens + a.new_tokens)?;
                let prompts: Vec<Vec<u32>> = (0..a.gen_batch).map(|_| ids(a.prompt_tokens)).collect();
                let seeds: Vec<u64> = (0..a.gen_batch as u64).collect();
                let gc = GenConfig {
                    max_new_tokens: a.new_tokens,
                    sampling: SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 },
                    stop_token_ids: vec![],
                    stop_strings: vec![],
                    turn_tokens: 0,
                };
                let s = time(be, a.reps, || gen.generate(be, &model, &prompts, &seeds, &gc, &|_| String::new()).map(drop))?;
                PhaseRow {
                    engine: "tz-engine",
                    phase: phase.into(),
                    shape: format!("{} x ({} + {} new) tokens", a.gen_batch, a.prompt_tokens, a.new_tokens),
                    seconds: s,
                    rate: (a.gen_batch * a.new_tokens) as f64 / s,
                    unit: "new tok/s",
                }
            }
            _ => {
                let mut ws = LogprobWorkspace::new(be, cfg, a.batch * a.seq, a.batch, a.batch * half, Keep::AllLayers)?;
                ws.load(be, cfg, &batch)?;
                let mut opt = Optimizer::new(be, &model, AdamWConfig::default())?;
                let nt = batch.n_targets();
                let s = time(be, a.reps, || {
                    opt.zero_grad(be)?;
                    model.forward_logprobs(be, &ws, false)?;
                    be.fill(ws.dlogp(), -1.0 / nt as f32)?;
                    model.backward_logprobs(be, &ws, &opt.grads, false)?;
                    // A tiny rate: the weights barely move, so every repetition does the same work.
                    opt.step(be, &model, 1e-8).map(drop)
                })?;
                PhaseRow { engine: "tz-engine", phase: phase.into(), shape: shape.clone(), seconds: s, rate: s, unit: "s/step" }
            }
        };
        rows.push(row);
    }
    let mut out = String::new();
    for r in &rows {
        println!("{:<9} {:<32} {:>10.4} s  {:>12.2} {}", r.phase, r.shape, r.seconds, r.rate, r.unit);
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    if let Some(p) = &a.json {
        std::fs::write(p, out).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(0)
}
