//! `tz-engine eval`: greedy mean reward, exact-solve rate, format rate and pass@k of a model
//! on a task dataset, overall and by difficulty.
use crate::backend::{Backend, Device, SamplingParams};
use crate::model::load::load_model;
use crate::rollout::{GenConfig, Generator, PromptSet, RolloutCtx};
use crate::task::rewards::RewardSpec;
use crate::task::{self, parse_rows, Template};
use crate::train::eval::evaluate;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct EvalArgs {
    /// Model directory (Hugging Face format).
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter (peft format: adapter_config.json, adapter_model.safetensors) added to
    /// the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Problems: parquet or JSONL (fields no task uses are ignored).
    #[arg(long)]
    pub data: PathBuf,
    /// Row range, e.g. 327680..328704 (TinyZero's test split).
    #[arg(long, default_value = "")]
    pub rows: String,
    /// Prompt template: base, qwen-instruct or compact.
    #[arg(long, default_value = "base")]
    pub template: Template,
    /// The reward (`crate::task::rewards`): a name, or `name[=weight],…` summed.
    #[arg(long, default_value = "tinyzero")]
    pub reward: RewardSpec,
    /// pass@k samples per problem (0: greedy only).
    #[arg(long, default_value_t = 0)]
    pub k: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Environments (FrozenLake): tokens per reply; a longer reply ends its turn.
    #[arg(long, default_value_t = 16)]
    pub reply_tokens: usize,
    #[arg(long, default_value_t = 256)]
    pub max_prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

pub fn run(args: EvalArgs) -> Result<i32> {
    crate::util::interrupt::install();
    if args.batch == 0 || args.max_new_tokens == 0 {
        bail!("--batch and --max-new-tokens must be positive");
    }
    crate::with_backend!(args.device, be => eval(&be, &args))
}

fn eval<B: Backend>(be: &B, args: &EvalArgs) -> Result<i32> {
    let problems = task::load_problems(&args.data, parse_rows(&args.rows)?)?;
    let (model, tok) = load_model(be, &args.model)?;
    let lora = args.adapter.as_ref().map(|d| crate::model::load::load_adapter(be, d, &model.cfg)).transpose()?;
    let set = PromptSet::new(problems, args.template, &tok, args.max_prompt_tokens)?;
    if set.is_empty() {
        bail!("no problems to evaluate (all prompts longer than --max-prompt-tokens?)");
    }
    let max_prompt = set.max_prompt_len();
    let t_max = (max_prompt + args.max_new_tokens).min(model.cfg.max_position_embeddings);
    if t_max <= max_prompt {
        bail!("prompts of {max_prompt} tokens leave no room for a response in the model's context");
    }
    crate::util::limits::items("problems × (1 + --k)", set.len(), args.k.saturating_add(1))?;
    let slots = args.batch.min(set.len() * args.k.max(1));
    let gen = Generator::new_with(be, &model.cfg, slots, max_prompt, t_max, lora.as_ref().map(|l| &l.layout))?;
    // Every task's stop strings: a dataset may mix tasks.
    let mut stop_strings: Vec<String> = set.problems.iter().flat_map(|p| p.task().stop_strings()).collect();
    stop_strings.sort();
    stop_strings.dedup();
    let settings = GenConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 },
        stop_token_ids: tok.eos_ids(&model.cfg.eos_token_ids),
        stop_strings,
        turn_tokens: args.reply_tokens,
    };
    args.reward.check(set.problems[0].task().name())?;
    let reward = args.reward.for_responses(args.max_new_tokens);
    let ctx = RolloutCtx { be, model: &model, adapters: lora.as_ref(), gen: &gen, tok: &tok, settings, reward: &reward };
    let total = set.len() * (1 + args.k);
    let mut progress = crate::util::progress::Progress::new("responses", total as u64, 0, (gen.slots as u64).max(1));
    let r = evaluate(&ctx, &set, 0, args.k, args.seed, Some(&mut progress), &crate::dist::Single)?;
    progress.finish();
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(0)
}
