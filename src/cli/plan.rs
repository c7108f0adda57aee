//! `tz-engine plan`: the device memory a training run will allocate, by category, computed by
//! the same planner the engine allocates from — so a user knows before launching whether a
//! model fits a GPU.
use crate::backend::{DType, Device};
use crate::model::arena::ArenaPlan;
use crate::model::logprob::LogprobPlan;
use crate::model::{ParamLayout, Qwen2Config};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct PlanArgs {
    /// Model directory (its config.json is read; weights are not needed).
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Or a preset name (e.g. qwen2.5-1.5b).
    #[arg(long)]
    pub preset: Option<String>,
    /// Sequences per forward/backward pass (micro-batch).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence (prompt + response).
    #[arg(long, default_value_t = 1280)]
    pub seq: usize,
    /// Sequences generated at once (KV cache).
    #[arg(long, default_value_t = 256)]
    pub rollout_batch: usize,
    /// Prompt tokens (the rest of --seq is response).
    #[arg(long, default_value_t = 256)]
    pub prompt: usize,
    /// cuda plans bf16 weights/activations with fp32 master weights; cpu plans f32.
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    pub device: Device,
}

pub struct PlanLine {
    pub category: &'static str,
    pub bytes: usize,
}

/// Bytes per category for training with a frozen reference model.
pub fn plan_training(cfg: &Qwen2Config, device: Device, batch: usize, seq: usize, rollout_batch: usize, prompt: usize) -> Vec<PlanLine> {
    let act = if device == Device::Cuda { DType::BF16 } else { DType::F32 };
    let n = ParamLayout::new(cfg).total;
    let mut lines = vec![
        PlanLine { category: "policy parameters", bytes: n * act.size_bytes() },
        PlanLine { category: "reference parameters", bytes: n * act.size_bytes() },
        PlanLine { category: "gradients (f32)", bytes: n * 4 },
        PlanLine { category: "Adam moments (f32)", bytes: 2 * n * 4 },
    ];
    if device == Device::Cuda {
        lines.push(PlanLine { category: "master weights (f32)", bytes: n * 4 });
    }
    let mut p = ArenaPlan::new(act);
    let response = seq.saturating_sub(prompt).max(1);
    LogprobPlan::new(&mut p, cfg, batch * seq, batch, batch * response, true);
    for (c, b) in p.categories {
        lines.push(PlanLine { category: leak_category("training", c), bytes: b });
    }
    for (c, b) in crate::rollout::plan_bytes(cfg, act, rollout_batch, prompt.min(seq - 1).max(1), seq) {
        lines.push(PlanLine { category: leak_category("rollout", c), bytes: b });
    }
    lines
}

fn leak_category(phase: &str, c: &str) -> &'static str {
    // A handful of fixed labels; leaking them keeps PlanLine simple and costs nothing.
    Box::leak(format!("{phase}: {c}").into_boxed_str())
}

pub fn run(args: PlanArgs) -> Result<i32> {
    let cfg = match (&args.model, &args.preset) {
        (Some(dir), _) => crate::model::load::load_config(dir)?,
        (None, Some(name)) => crate::model::presets::preset(name)?.cfg,
        (None, None) => bail!("give --model DIR or --preset NAME"),
    };
    if args.batch == 0 || args.seq < 2 || args.rollout_batch == 0 {
        bail!("--batch and --rollout-batch must be positive and --seq at least 2");
    }
    if args.seq > cfg.max_position_embeddings {
        bail!("--seq {} exceeds the model's context ({})", args.seq, cfg.max_position_embeddings);
    }
    let lines = plan_training(&cfg, args.device, args.batch, args.seq, args.rollout_batch, args.prompt);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!("planned {} memory: micro-batch {} x {} tokens, rollout batch {}", args.device, args.batch, args.seq, args.rollout_batch);
    for l in &lines {
        println!("  {:<36} {:>9.3} GiB", l.category, gib(l.bytes));
    }
    let total: usize = lines.iter().map(|l| l.bytes).sum();
    println!("  {:<36} {:>9.3} GiB", "total", gib(total));
    Ok(0)
}
