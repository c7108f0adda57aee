//! `tz-engine play`: one episode of an environment played by a model, printed turn by turn
//! (the model's replies and the observations), for people to look at.
use crate::backend::{Backend, Device, SamplingParams};
use crate::model::load::load_model;
use crate::rollout::{GenConfig, Generator, PromptSet, RolloutCtx};
use crate::task::rewards::{RewardParams, RewardSpec};
use crate::task::{LakeSpec, ProblemSpec, Reference, Template};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct PlayArgs {
    /// The environment (a task that is played over turns): frozenlake.
    #[arg(long)]
    pub env: String,
    /// Model directory (Hugging Face format).
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter added to the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Seeds the map (and, on slippery ice, the slips).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Side of the random square map.
    #[arg(long, default_value_t = 4)]
    pub size: usize,
    /// A fixed map instead: rows joined by '/', e.g. SFFF/FHFH/FFFH/HFFG, or 4x4 / 8x8 for Gym's.
    #[arg(long)]
    pub map: Option<String>,
    #[arg(long, default_value_t = 0.2)]
    pub hole_prob: f64,
    #[arg(long)]
    pub slippery: bool,
    #[arg(long, default_value_t = 10)]
    pub max_turns: u32,
    /// Tokens per reply.
    #[arg(long, default_value_t = 16)]
    pub reply_tokens: usize,
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    #[arg(long, default_value = "compact")]
    pub template: Template,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
}

pub fn run(args: PlayArgs) -> Result<i32> {
    let task = crate::task::by_name(&args.env)?;
    if task.environment().is_none() {
        let envs: Vec<&str> = crate::task::TASKS.iter().filter(|t| t.environment().is_some()).map(|t| t.name()).collect();
        bail!("--env {}: that task is single-turn (environments: {})", args.env, envs.join(", "));
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0");
    }
    crate::with_backend!(args.device, be => play(&be, &args, task))
}

fn play<B: Backend>(be: &B, args: &PlayArgs, task: &'static dyn crate::task::Task) -> Result<i32> {
    let lake = LakeSpec {
        sizes: vec![args.size],
        hole_prob: args.hole_prob,
        slippery: args.slippery,
        max_turns: args.max_turns,
        reply_tokens: args.reply_tokens,
        map: args.map.as_deref().map(|m| m.split('/').map(str::to_string).collect()).unwrap_or_default(),
        ..LakeSpec::default()
    };
    // Errors name this command's flags, not the config keys the same settings have in `train`.
    lake.validate_named(&|field| match field {
        "sizes" => "--size".into(),
        f => format!("--{}", f.replace('_', "-")),
    })?;
    let problems = task.generate(1, args.seed, &ProblemSpec { lake, ..ProblemSpec::default() })?;
    let (model, tok) = load_model(be, &args.model)?;
    let lora = args.adapter.as_ref().map(|d| crate::model::load::load_adapter(be, d, &model.cfg)).transpose()?;
    let ctx_len = model.cfg.max_position_embeddings;
    let set = PromptSet::new(problems, args.template, &tok, ctx_len.saturating_sub(1))?;
    if set.is_empty() {
        bail!("the first observation does not fit the model's context ({ctx_len} tokens)");
    }
    let max_prompt = set.max_prompt_len();
    let t_max = (max_prompt + args.max_new_tokens).min(ctx_len);
    let gen = Generator::new_with(be, &model.cfg, 1, max_prompt, t_max, lora.as_ref().map(|l| &l.layout))?;
    let settings = GenConfig {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams { temperature: args.temperature, top_k: 0, top_p: 1.0 },
        stop_token_ids: tok.eos_ids(&model.cfg.eos_token_ids),
        stop_strings: task.stop_strings(),
        turn_tokens: args.reply_tokens,
    };
    let reward = RewardSpec::default();
    let ctx = RolloutCtx { be, model: &model, adapters: lora.as_ref(), gen: &gen, tok: &tok, settings, reward: &reward };
    let o = ctx.rollout(&set, &[0], &[args.seed])?.remove(0);
    println!("{}", set.prompts[0]);
    // The response alternates the model's replies with the environment's observations.
    let mut at = 0usize;
    let mut turn = 1;
    let reply = |from: usize, to: usize, turn: &mut u32| -> Result<()> {
        if to > from {
            println!("[turn {turn}] model: {}", tok.decode(&o.tokens[from..to], true)?.trim());
            *turn += 1;
        }
        Ok(())
    };
    for s in &o.env_spans {
        let (a, b) = (s[0] as usize, s[1] as usize);
        reply(at, a, &mut turn)?;
        println!("{}", tok.decode(&o.tokens[a..b], true)?.trim_start_matches('\n'));
        at = b;
    }
    reply(at, o.tokens.len(), &mut turn)?;
    let env = task.environment().expect("checked above");
    let params = RewardParams::default();
    let optimal = env.reference(&set.problems[0], Reference::Optimal, args.seed, &params);
    println!(
        "outcome: {:?} after {} turns ({} invalid), return {:.2}; the shortest-path policy: {:?} in {} turns",
        o.score.reason, o.turns, o.invalid, o.score.score, optimal.score.reason, optimal.turns
    );
    Ok(0)
}
