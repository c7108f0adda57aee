//! The RL loop, the same for every objective (`crate::algo`). Each step: take a batch of
//! prompts, generate `samples_per_prompt` responses each from π_θ, score them with the task
//! reward, compute the reference's (and, if the objective asks, the behaviour policy's)
//! per-token log-probs, turn rewards into the objective's targets, then update π_θ in
//! mini-batches (gradient accumulation over micro-batches) with AdamW. Evaluation, samples,
//! checkpoints and metrics on their schedules.
//!
//! Data parallel (`crate::dist`): every rank runs this loop over the same prompts. Each takes
//! its contiguous part of every mini-batch, generates those responses (a response's sampling
//! stream is keyed by its place in the global batch, so the split does not change it), and
//! the rollouts are gathered, so rewards, targets and metrics are the global batch's on every
//! rank. Each rank scores and trains on its own part, with losses normalized by the global
//! mini-batch's sequence and token counts, and the sharded optimizer sums the gradients: N
//! ranks compute the update one rank computes for the same global batch, up to the order of
//! floating-point sums. Rank 0 writes metrics, samples, checkpoints and the summary.
use super::checkpoint::{self, TrainerState};
use super::config::TrainConfig;
use super::critic::{self, Critic};
use super::data::load_problems;
use super::diag::{self, TokenDiag};
use super::eval::{evaluate, EvalReport};
use super::metrics::{self, StepMetrics};
use super::optim::{AdamWConfig, Optimizer};
use super::plan::{gib, human, GradPlan, RunPlan};
use super::schedule::WindowObservation;
use super::zero3::{ShardedParams, ShardedSource};
use crate::algo::{LossInputs, Objective, Stage1};
use crate::backend::{Backend, DType, SamplingParams, View};
use crate::dist::{self, split_range, Comm};
use crate::model::arena::{Arena, ArenaPlan};
use crate::model::load::load_model;
use crate::model::{LogprobWorkspace, Lora, PackedBatch, ParamSource, Qwen2, Resident, Trajectory};
use crate::nvtx;
use crate::rng::{derive_seed, Rng};
use crate::rollout::{Finish, GenConfig, Generator, PromptSet, Rollout, RolloutCtx};
use crate::task::rewards::RewardSpec;
use crate::tokenizer::Tokenizer;
use crate::util::interrupt;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Serialize)]
pub struct Summary {
    pub name: String,
    pub algorithm: &'static str,
    pub steps: usize,
    pub wall_time_s: f64,
    pub skipped_steps: usize,
    pub base_solve_rate: f32,
    pub final_solve_rate: f32,
    pub base_reward_mean: f32,
    pub final_reward_mean: f32,
    pub final_eval: EvalReport,
}

/// Device buffers for the log-probs an objective's loss reads besides the policy's own.
struct LossBufs<B: Backend> {
    ref_logp: B::Buf,
    /// Only for objectives that need the behaviour policy's log-probs.
    old_logp: Option<B::Buf>,
}

/// The policy and the reference as loaded: whole on the device, or this rank's part of each.
enum Loaded<B: Backend> {
    Whole(Qwen2<B>, Qwen2<B>),
    Sharded(ShardedParams<B>, ShardedParams<B>),
}

/// A run's models sharded per unit (`crate::train::zero3`) and where they are gathered.
struct Zero3<B: Backend> {
    policy: ShardedParams<B>,
    reference: ShardedParams<B>,
    region: Arena<B>,
    /// The rollout phase's whole gathered model.
    full: crate::model::arena::Slot,
    /// The training phase's one gathered unit.
    staging: crate::model::arena::Slot,
}

pub struct Trainer<'a, B: Backend> {
    be: &'a B,
    comm: &'a dyn Comm<B>,
    cfg: TrainConfig,
    run_dir: PathBuf,
    tok: Tokenizer,
    tokenizer_json: String,
    reward: RewardSpec,
    objective: Box<dyn Objective<B>>,
    /// The models generation and (whole-parameter runs) scoring and training use. With
    /// parameters sharded per unit both are the rollout phase's gathered copy (`zero3`), which
    /// holds whichever `gather_for_generation` gathered last.
    policy: Qwen2<B>,
    reference: Qwen2<B>,
    /// Parameters sharded per unit (`dist.shard_params`).
    zero3: Option<Zero3<B>>,
    /// A LoRA run's adapters (`model.lora`): what the optimizer trains; `policy` is then the
    /// frozen base, and `reference` the same parameters (no second copy).
    lora: Option<Lora<B>>,
    base_dir: PathBuf,
    /// The base parameters' checksum at load (a LoRA run checks at the end that training
    /// left them bit-unchanged).
    base_sum: Option<u64>,
    opt: Optimizer<B>,
    /// The objective's critic, if it has one (PPO).
    critic: Option<Critic<B>>,
    gen: Generator<B>,
    ws: LogprobWorkspace<B>,
    bufs: LossBufs<B>,
    train: PromptSet,
    test: PromptSet,
    /// Indices into `train` that the loop samples from (after optional V* filtering).
    pool: Vec<usize>,
    /// Each training prompt's curriculum stage (with a curriculum).
    stage_of: Option<Vec<usize>>,
    /// Generation settings of training rollouts (evaluation and stage 1 derive theirs).
    rollout_settings: GenConfig,
    state: TrainerState,
    /// Self-play (`[selfplay]`): the proposal request's tokens, the indices into `train` of
    /// the accepted problems, and the identities proposals must avoid (training, held-out
    /// and accepted problems).
    proposal_prompt: Option<Vec<u32>>,
    selfplay_idx: Vec<usize>,
    known: std::collections::HashSet<String>,
}

/// Stops a run whose plan for `model`'s shape exceeds the device's free memory (for a preset
/// run, before its SFT warm start: the preset's shape bounds the base model it builds).
/// `ranks` data-parallel ranks, `sharing` of which share this device's memory (CPU thread
/// ranks share the host's).
pub fn check_fits<B: Backend>(be: &B, cfg: &TrainConfig, model: &crate::model::Qwen2Config, ranks: usize, sharing: usize) -> Result<()> {
    let workspace = |n: &crate::backend::ScratchNeeds| be.workspace_plan(n);
    let plan = RunPlan::new(cfg, model, be.act_dtype(), be.needs_master_weights(), &workspace, ranks)?;
    refuse_if_too_big(be, cfg, model, &plan, sharing)
}

/// Stops a run whose plan (times the ranks sharing the device) exceeds the device's free
/// memory, naming the two settings that would cut the most.
fn refuse_if_too_big<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    model: &crate::model::Qwen2Config,
    plan: &RunPlan,
    sharing: usize,
) -> Result<()> {
    let Some((free, _)) = be.mem_info() else { return Ok(()) };
    let total = plan.total() * sharing;
    if total <= free {
        return Ok(());
    }
    let workspace = |n: &crate::backend::ScratchNeeds| be.workspace_plan(n);
    let cuts = super::plan::best_cuts(cfg, model, be.act_dtype(), be.needs_master_weights(), &workspace, plan.shape.world);
    let hint = if cuts.is_empty() { "a smaller model".to_string() } else { cuts.join(" or ") };
    let ranks = if sharing > 1 { format!(" ({sharing} ranks on it)") } else { String::new() };
    bail!(
        "the run needs {} of device memory{ranks} ({total} bytes; `tz-engine plan` shows the lines) but the {} device has {} free: set {hint}",
        human(total),
        be.name(),
        human(free)
    )
}

fn oom_hint(e: anyhow::Error, what: &str, bytes: usize, setting: &str) -> anyhow::Error {
    anyhow!("{e:#} — while allocating {what} ({:.2} GiB planned); lower {setting}", bytes as f64 / (1u64 << 30) as f64)
}

impl<'a, B: Backend> Trainer<'a, B> {
    /// Builds everything the loop needs; resumes from the run's latest checkpoint if `resume`.
    /// On a data-parallel run every rank of `comm` builds its own.
    pub fn new(be: &'a B, cfg: TrainConfig, base_dir: &Path, resume: bool, comm: &'a dyn Comm<B>) -> Result<Self> {
        let root = comm.is_root();
        let run_dir = cfg.run_dir();
        if checkpoint::has_checkpoints(&run_dir) && !resume {
            bail!("{} already has checkpoints: pass --resume to continue it, --restart to start it over, or choose another name (--set name=...)", run_dir.display());
        }
        let (template, reward) = (cfg.task.template, cfg.task.reward_spec(cfg.train.max_response_tokens));
        // The memory plan first, from config.json alone: a run that cannot fit stops here,
        // before minutes of loading weights.
        let model_cfg = crate::model::load::load_config(base_dir)?;
        let workspace = |n: &crate::backend::ScratchNeeds| be.workspace_plan(n);
        let plan = RunPlan::new(&cfg, &model_cfg, be.act_dtype(), be.needs_master_weights(), &workspace, comm.world())?;
        // Ranks sharing a device: one checks for all of them, before any of them allocates.
        let sharing = comm.ranks_sharing_memory();
        if sharing == 1 || root {
            refuse_if_too_big(be, &cfg, &model_cfg, &plan, sharing)?;
        }
        if sharing > 1 {
            comm.barrier()?;
        }
        let free = be.mem_info().map(|(f, _)| format!(", {:.3} GiB free", gib(f))).unwrap_or_default();
        if root {
            eprintln!(
                "memory plan: {:.3} GiB ({} bytes) on {}, recompute {}{free}",
                gib(plan.total()),
                plan.total(),
                be.name(),
                if plan.shape.recompute() { "layers" } else { "none" }
            );
        }
        let ckpt = match resume {
            true => checkpoint::latest(&run_dir)?.map(|dir| checkpoint::load(&dir)).transpose()?,
            false => None,
        };
        let policy_dir = ckpt.as_ref().map_or(base_dir, |c| c.dir.as_path());
        // Whole models on the device, or (sharded per unit) this rank's part of each, loaded
        // from host values: the whole model never sits on one device outside generation.
        let (models, tok) = match plan.grads {
            GradPlan::Adapters { .. } => {
                // One copy of the base: the policy's frozen part and, adapters disabled, the
                // reference.
                let (base, tok) = load_model(be, base_dir)?;
                let alias = Qwen2::in_region(base.cfg.clone(), base.layout.clone(), base.params.clone(), 0)?;
                (Loaded::Whole(base, alias), tok)
            }
            GradPlan::Whole(_) => {
                let (reference, tok) = load_model(be, base_dir)?;
                let policy = match cfg.algo.policy_value_head() {
                    // A shared critic: the policy carries the value head (a checkpoint's, in
                    // its critic file, or zero).
                    true => {
                        let head = ckpt.as_ref().and_then(|c| c.critic.as_ref()).map(|(p, _)| p.as_slice());
                        if let (Some(c), None) = (&ckpt, head) {
                            bail!("{}: the checkpoint has no value head (algo.critic = \"shared\" needs one): it was written by another algorithm", c.dir.display());
                        }
                        critic::policy_with_value_head(be, policy_dir, head)?
                    }
                    false => load_model(be, policy_dir)?.0,
                };
                (Loaded::Whole(policy, reference), tok)
            }
            GradPlan::PerUnit { .. } => {
                let tok = crate::model::load::load_tokenizer(base_dir, &model_cfg)?;
                let layout = crate::model::ParamLayout::new(&model_cfg);
                let shard = |dir: &Path| -> Result<ShardedParams<B>> {
                    let cfg = crate::model::load::load_config(dir)?;
                    if cfg != model_cfg {
                        bail!("the checkpoint's config differs from the base model's");
                    }
                    let host = crate::model::weights::load_params(dir, &cfg, &layout)?;
                    ShardedParams::from_host(be, cfg, layout.clone(), &host, comm.world(), comm.rank())
                        .with_context(|| format!("loading this rank's part of {} onto {}", dir.display(), be.name()))
                };
                (Loaded::Sharded(shard(policy_dir)?, shard(base_dir)?), tok)
            }
        };
        if let Loaded::Whole(policy, reference) = &models {
            if policy.cfg != reference.cfg || policy.cfg != model_cfg {
                bail!("the checkpoint's config differs from the base model's");
            }
        }
        let (train_p, test_p) = load_problems(&cfg)?;
        let t = &cfg.train;
        let train = PromptSet::new(train_p, template, &tok, t.max_prompt_tokens)?;
        let test = PromptSet::new(test_p, template, &tok, t.max_prompt_tokens)?;
        let stage_of = cfg.curriculum.enabled().then(|| cfg.curriculum.stages_of(&train.problems));
        if let Some(s) = &stage_of {
            for k in 0..cfg.curriculum.stages.len() {
                if !s.iter().any(|&x| x <= k) {
                    bail!("curriculum stage {k} has no training problems (none fits its ranges or an earlier stage's)");
                }
            }
        }
        if train.is_empty() || test.is_empty() {
            bail!("every prompt is longer than train.max_prompt_tokens ({})", t.max_prompt_tokens);
        }
        let RunPlan { shape, rollout: (rollout_plan, gen_layout), training: (train_plan, ws_plan), grads: grad_slots, .. } = plan;
        // One activation region for every phase: generation, scoring and the update never
        // run at once, so each is placed at the start of the same allocations.
        let region = Arena::for_phases(be, &[&rollout_plan, &train_plan]).map_err(|e| {
            oom_hint(e, "activations", ArenaPlan::shared_bytes(&[&rollout_plan, &train_plan]), "train.micro_batch or train.rollout_batch")
        })?;
        let gen = Generator::in_arena(&region, &rollout_plan, gen_layout)?;
        let ws = LogprobWorkspace::in_arena(&region, &train_plan, ws_plan)?;
        let (policy, reference, zero3) = match (models, grad_slots) {
            (Loaded::Whole(policy, reference), _) => (policy, reference, None),
            (Loaded::Sharded(policy, reference), GradPlan::PerUnit { full, staging, .. }) => {
                let layout = policy.layout.clone();
                let gathered = || Qwen2::in_region(model_cfg.clone(), layout.clone(), region.act.clone(), full.off);
                let z = Zero3 { policy, reference, region: region.clone(), full, staging };
                (gathered()?, gathered()?, Some(z))
            }
            (Loaded::Sharded(..), _) => unreachable!("sharded models come from a per-unit plan"),
        };
        let lora = match &cfg.model.lora {
            None => None,
            Some(lc) => {
                let layout = crate::model::LoraLayout::new(&model_cfg, lc)?;
                let host = match &ckpt {
                    Some(c) => {
                        let (saved, host) = crate::model::peft::load_adapter(&c.dir, &model_cfg)?;
                        if saved.cfg.rank != lc.rank || saved.cfg.targets != lc.targets || saved.scale() != layout.scale() {
                            bail!(
                                "{}: the checkpoint's adapter (rank {}, {:?}) is not model.lora's",
                                c.dir.display(),
                                saved.cfg.rank,
                                saved.cfg.targets
                            );
                        }
                        host
                    }
                    None => layout.init_params(crate::rng::derive_seed(cfg.seed, 0x10a, 0)),
                };
                Some(Lora::from_host(be, layout, &host).map_err(|e| oom_hint(e, "adapters", 0, "model.lora.rank"))?)
            }
        };
        let base_sum = match &lora {
            Some(_) => Some(params_checksum(be, &policy)?),
            None => None,
        };
        let (mb, max_targets) = (shape.micro_batch, shape.max_targets);
        let objective = cfg.algo.build(be, mb, max_targets)?;
        let f = |n: usize| be.alloc(DType::F32, n.max(1));
        let bufs =
            LossBufs { ref_logp: f(max_targets)?, old_logp: if objective.needs_old_logprobs() { Some(f(max_targets)?) } else { None } };
        be.reserve_scratch(&shape.scratch_needs(&policy.cfg))?;
        let adam = AdamWConfig { weight_decay: t.weight_decay, clip: t.grad_clip, ..AdamWConfig::default() };
        let mut opt = match (&grad_slots, &zero3) {
            (GradPlan::Adapters { adapters, .. }, _) => {
                let lora = lora.as_ref().expect("a LoRA plan has adapters");
                let grads = crate::model::Grads::adapters_in_arena(&region, &lora.layout, *adapters)?;
                Optimizer::with_grads(be, lora, adam, grads, comm.world(), comm.rank())
            }
            (GradPlan::Whole(slots), _) => {
                let grads = crate::model::Grads::in_arena(&region, &policy.layout, *slots)?;
                Optimizer::with_grads(be, &policy, adam, grads, comm.world(), comm.rank())
            }
            (GradPlan::PerUnit { buckets, .. }, Some(z)) => {
                let grads = crate::model::Grads::in_buckets(&region, &policy.layout, *buckets)?;
                Optimizer::for_shards(be, &z.policy, adam, grads)
            }
            (GradPlan::PerUnit { .. }, None) => unreachable!("a per-unit plan shards the models"),
        }
        .map_err(|e| oom_hint(e, "optimizer state", 16 * policy.layout.total / comm.world(), "the model size"))?;
        if ckpt.is_none() && opt.master.is_some() {
            match &lora {
                // The adapters were uploaded from these f32 values (rounded to bf16).
                Some(l) => opt.init_master(be, &l.layout.init_params(crate::rng::derive_seed(cfg.seed, 0x10a, 0)))?,
                None => {
                    let layout = crate::model::ParamLayout::new(&policy.cfg);
                    let mut host = crate::model::weights::load_params(base_dir, &policy.cfg, &layout)?;
                    if policy.layout.value_head().is_some() {
                        host = critic::initial_params(host, &policy.cfg);
                    }
                    opt.init_master(be, &host)?;
                }
            }
        }
        let critic = match objective.critic() {
            // No critic, or a shared one (the value head is in the policy's layout).
            None => None,
            Some(s) if s.shared.is_some() => None,
            Some(settings) => {
                let saved = match &ckpt {
                    Some(c) => Some(c.critic.as_ref().ok_or_else(|| {
                        anyhow!(
                            "{}: the checkpoint has no critic ({} needs one): it was written by another algorithm",
                            c.dir.display(),
                            objective.name()
                        )
                    })?),
                    None => None,
                };
                let host = match saved {
                    Some((p, _)) if p.len() != crate::model::ParamLayout::with_value_head(&policy.cfg).total => bail!(
                        "{}: the checkpoint's critic is a value head on the policy (written with algo.critic = \"shared\"), not a separate critic",
                        ckpt.as_ref().map_or(base_dir, |c| c.dir.as_path()).display()
                    ),
                    Some((p, _)) => p.clone(),
                    None => {
                        let layout = crate::model::ParamLayout::new(&policy.cfg);
                        critic::initial_params(crate::model::weights::load_params(base_dir, &policy.cfg, &layout)?, &policy.cfg)
                    }
                };
                let layout = crate::model::ParamLayout::with_value_head(&policy.cfg);
                let slots = match grad_slots {
                    GradPlan::Whole(s) | GradPlan::Adapters { critic: Some(s), .. } => s,
                    _ => bail!("a critic with dist.shard_params"),
                };
                let grads = crate::model::Grads::in_arena(&region, &layout, slots)?;
                let mut c = Critic::new(be, &policy.cfg, &host, grads, adam, settings, comm.world(), comm.rank())
                    .map_err(|e| oom_hint(e, "critic", 16 * layout.total, "the model size"))?;
                if let Some((_, s)) = saved {
                    c.opt.load_state(be, s)?;
                }
                Some(c)
            }
        };
        let state = match &ckpt {
            Some(c) => {
                opt.load_state(be, &c.opt)?;
                if root && c.state.world_size != comm.world() {
                    eprintln!(
                        "resuming a checkpoint of {} rank(s) on {} (checkpoints hold whole, gathered state)",
                        c.state.world_size,
                        comm.world()
                    );
                }
                c.state.clone()
            }
            None => TrainerState {
                step: 0,
                epoch: 0,
                cursor: 0,
                rng: Rng::new(cfg.seed),
                skipped_steps: 0,
                bad_in_a_row: 0,
                base_solve_rate: None,
                base_reward_mean: None,
                elapsed_s: 0.0,
                world_size: comm.world(),
                reward_cumulative: 0.0,
                window: Default::default(),
                curriculum: Default::default(),
                selfplay: vec![],
            },
        };
        let rollout_settings = GenConfig {
            max_new_tokens: t.max_response_tokens,
            sampling: SamplingParams { temperature: t.temperature, top_k: 0, top_p: t.top_p },
            stop_token_ids: tok.eos_ids(&policy.cfg.eos_token_ids),
            stop_strings: crate::task::by_name(&cfg.task.name)?.stop_strings(),
            turn_tokens: cfg.task.turn_tokens()?,
        };
        let tokenizer_json = tok.to_json_string()?;
        let n = train.len();
        let proposal_prompt = match cfg.selfplay.enabled() {
            false => None,
            true => {
                let task = crate::task::by_name(&cfg.task.name)?;
                let text = task
                    .proposal_prompt(&cfg.problem_spec(&cfg.data.counts), template)
                    .ok_or_else(|| anyhow!("[selfplay]: task {} takes no proposals", task.name()))?;
                let ids = tok.encode(&text)?;
                if ids.is_empty() || ids.len() > t.max_prompt_tokens {
                    bail!(
                        "[selfplay]: the proposal request is {} tokens, over train.max_prompt_tokens ({})",
                        ids.len(),
                        t.max_prompt_tokens
                    );
                }
                Some(ids)
            }
        };
        let known = super::data::identities(&train.problems).union(&super::data::identities(&test.problems)).cloned().collect();
        Ok(Trainer {
            be,
            comm,
            cfg,
            run_dir,
            tok,
            tokenizer_json,
            reward,
            objective,
            policy,
            reference,
            zero3,
            lora,
            base_dir: base_dir.to_path_buf(),
            base_sum,
            opt,
            critic,
            gen,
            ws,
            bufs,
            train,
            test,
            pool: (0..n).collect(),
            stage_of,
            rollout_settings,
            state,
            proposal_prompt,
            selfplay_idx: vec![],
            known,
        })
    }

    pub fn run(mut self) -> Result<Summary> {
        interrupt::install();
        let t = self.cfg.train.clone();
        let root = self.comm.is_root();
        let metrics_path = self.run_dir.join("metrics.jsonl");
        if root {
            std::fs::create_dir_all(&self.run_dir).with_context(|| format!("cannot create {}", self.run_dir.display()))?;
            metrics::truncate_after(&metrics_path, self.state.step)?;
            // Samples of steps after the checkpoint are written again by the replayed steps.
            metrics::truncate_after(&self.run_dir.join("samples.jsonl"), self.state.step)?;
            metrics::truncate_after(&self.run_dir.join("proposals.jsonl"), self.state.step)?;
            if self.state.step == 0 {
                let _ = std::fs::remove_file(&metrics_path);
            }
            eprintln!(
                "run {}: {} train / {} test prompts ({} + {} over the prompt limit dropped), algorithm {}, device {}{}",
                self.run_dir.display(),
                self.train.len(),
                self.test.len(),
                self.train.dropped_too_long,
                self.test.dropped_too_long,
                self.objective.name(),
                self.be.name(),
                if self.comm.world() > 1 { format!(" × {} ranks", self.comm.world()) } else { String::new() }
            );
        }
        {
            self.gather_for_generation(false)?;
            let reference = RolloutCtx {
                adapters: None,
                be: self.be,
                model: &self.reference,
                gen: &self.gen,
                tok: &self.tok,
                settings: self.rollout_settings.clone(),
                reward: &self.reward,
            };
            let stage = Stage1 {
                reference,
                train: &self.train,
                pool: &mut self.pool,
                cache_dir: &self.cfg.out_dir,
                seed: self.cfg.seed,
                comm: self.comm,
            };
            self.objective.prepare(stage)?;
        }
        // A resumed run's self-play problems join the pool again (their V* sampled again).
        let accepted = std::mem::take(&mut self.state.selfplay);
        self.add_selfplay(accepted)?;
        if self.state.base_solve_rate.is_none() {
            let r = self.eval()?;
            self.state.base_solve_rate = Some(r.overall.solve_rate);
            self.state.base_reward_mean = Some(r.overall.reward_mean);
            if root {
                eprintln!("base model: held-out solve rate {:.3}, mean reward {:.3}", r.overall.solve_rate, r.overall.reward_mean);
                // The base model's evaluation: eval fields only (no training step happened).
                let line = serde_json::json!({"step": 0, "kind": "eval", "eval_solve_rate": r.overall.solve_rate, "eval_reward_mean": r.overall.reward_mean, "eval_format_rate": r.overall.format_rate});
                metrics::append_json(&metrics_path, &line)?;
            }
        }
        let mut bar = root.then(|| crate::util::progress::Progress::new("steps", t.steps as u64, self.state.step as u64, 10));
        let started = Instant::now();
        let elapsed0 = self.state.elapsed_s;
        while self.state.step < t.steps {
            let mut m = self.step()?;
            self.state.step += 1;
            m.step = self.state.step;
            if m.skipped {
                self.state.skipped_steps += 1;
                self.state.bad_in_a_row += 1;
                if self.state.bad_in_a_row >= t.max_bad_steps {
                    bail!(
                        "{} non-finite losses or gradients in a row (last grad norm {}): stopping; lower train.lr or check the data",
                        self.state.bad_in_a_row,
                        m.grad_norm
                    );
                }
            } else {
                self.state.bad_in_a_row = 0;
            }
            let last = self.state.step == t.steps;
            if t.eval_every > 0 && (self.state.step.is_multiple_of(t.eval_every) || last) {
                // An interrupted evaluation leaves this step's eval fields empty; the step itself
                // is complete and is checkpointed below.
                match self.eval() {
                    Ok(r) => {
                        m.eval_solve_rate = Some(r.overall.solve_rate);
                        m.eval_reward_mean = Some(r.overall.reward_mean);
                        m.eval_format_rate = Some(r.overall.format_rate);
                        m.eval_by_difficulty = Some(r.by_difficulty.iter().map(|(k, g)| (k.clone(), g.solve_rate)).collect());
                        if let Some(bar) = &bar {
                            bar.println(format!(
                                "step {}: held-out solve rate {:.3}, mean reward {:.3}",
                                self.state.step, r.overall.solve_rate, r.overall.reward_mean
                            ));
                        }
                    }
                    Err(e) if interrupt::is_interrupt(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            self.state.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
            m.elapsed_s = self.state.elapsed_s;
            if let Some(bar) = &mut bar {
                metrics::append(&metrics_path, &m)?;
                bar.set_message(format!("reward {:.3} solve {:.3} loss {:.4}", m.reward_mean, m.solve_rate, m.loss));
                bar.inc();
            }
            // Every rank takes the same decision, whichever saw Ctrl-C first.
            let interrupted = dist::any(self.comm, interrupt::requested())?;
            if (t.save_every > 0 && self.state.step.is_multiple_of(t.save_every)) || last || interrupted {
                self.save()?;
            }
            if interrupted {
                if let Some(bar) = bar {
                    bar.finish();
                }
                // No final evaluation (it can take hours): the run continues with --resume.
                let phase = format!("training: checkpoint written at step {}; continue with --resume", self.state.step);
                return Err(anyhow::Error::new(interrupt::Interrupted(phase)));
            }
        }
        if let Some(bar) = bar {
            bar.finish();
        }
        let step = self.state.step;
        let final_eval = self.final_eval().map_err(|e| {
            if interrupt::is_interrupt(&e) {
                let phase = format!("the final evaluation: the checkpoint of step {step} is complete; --resume runs the evaluation again");
                anyhow::Error::new(interrupt::Interrupted(phase))
            } else {
                e
            }
        })?;
        let summary = Summary {
            name: self.cfg.name.clone(),
            algorithm: self.objective.name(),
            steps: self.state.step,
            wall_time_s: self.state.elapsed_s,
            skipped_steps: self.state.skipped_steps,
            base_solve_rate: self.state.base_solve_rate.unwrap_or(0.0),
            final_solve_rate: final_eval.overall.solve_rate,
            base_reward_mean: self.state.base_reward_mean.unwrap_or(0.0),
            final_reward_mean: final_eval.overall.reward_mean,
            final_eval,
        };
        let params = self.opt.params_to_host_in(self.be, self.trainable(), self.comm)?;
        if let Some(want) = self.base_sum {
            if params_checksum(self.be, &self.policy)? != want {
                bail!("the frozen base parameters changed during a LoRA run (a bug): the adapters are saved in the checkpoints");
            }
        }
        if root {
            crate::util::fs::write_atomic(&self.run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
            let final_dir = self.run_dir.join("final");
            match &self.lora {
                // The adapters in peft format; `tz-engine merge` makes a plain model of them.
                Some(l) => crate::model::peft::save_adapter(
                    &final_dir,
                    &l.layout,
                    &params,
                    crate::model::weights::SaveDtype::F32,
                    Some(&self.base_dir.display().to_string()),
                )?,
                // The plain policy (a shared critic's value head stays in the checkpoints).
                None => {
                    let plain = crate::model::ParamLayout::new(&self.policy.cfg);
                    crate::model::weights::save_model(
                        &final_dir,
                        &self.policy.cfg,
                        &plain,
                        &params[..plain.total],
                        crate::model::weights::SaveDtype::F32,
                        Some(&self.tokenizer_json),
                    )?
                }
            }
            if let Err(e) = super::plot::plot_run(&self.run_dir) {
                eprintln!("warning: could not draw learning curves: {e:#}");
            }
        }
        Ok(summary)
    }

    /// With parameters sharded per unit, gathers the whole policy (or the reference) into
    /// the rollout phase's region, where `self.policy` and `self.reference` read it (a
    /// collective; every rank generates, if only its part). Whole models: nothing to do.
    fn gather_for_generation(&self, policy: bool) -> Result<()> {
        let Some(z) = &self.zero3 else { return Ok(()) };
        let _r = nvtx::range("gather_parameters");
        let model = if policy { &z.policy } else { &z.reference };
        model.gather_all(self.be, self.comm, z.region.view(z.full))
    }

    /// What the optimizer updates: the adapters of a LoRA run, else the policy.
    fn trainable(&self) -> &dyn super::optim::Trainable<B> {
        match &self.lora {
            Some(l) => l,
            None => &self.policy,
        }
    }

    /// Where a scoring or training pass of the policy (or the reference) reads its
    /// parameters: the model itself, or its shards gathered unit by unit (the policy's
    /// gradients reduce-scattered into the optimizer's accumulator).
    fn source(&self, policy: bool) -> Box<dyn ParamSource<B> + '_> {
        if let (true, Some(lora)) = (policy, &self.lora) {
            return Box::new(crate::model::WithAdapters::resident(&self.policy, lora));
        }
        match &self.zero3 {
            None => Box::new(Resident(if policy { &self.policy } else { &self.reference })),
            Some(z) => Box::new(ShardedSource {
                model: if policy { &z.policy } else { &z.reference },
                comm: self.comm,
                staging: z.region.view(z.staging),
                accumulator: if policy { self.opt.accumulator() } else { None },
            }),
        }
    }

    /// Passes that every rank must make together (sharded parameters gather in every pass):
    /// the most micro-batches any rank has for `count(r)` sequences. Whole models: none.
    fn lockstep_passes(&self, count: impl Fn(usize) -> usize) -> usize {
        match self.zero3 {
            None => 0,
            Some(_) => (0..self.comm.world()).map(|r| count(r).div_ceil(self.cfg.train.micro_batch)).max().unwrap_or(0),
        }
    }

    /// Generate-and-score with the policy and the training rollout settings.
    fn policy_ctx(&self) -> RolloutCtx<'_, B> {
        RolloutCtx {
            be: self.be,
            model: &self.policy,
            adapters: self.lora.as_ref(),
            gen: &self.gen,
            tok: &self.tok,
            settings: self.rollout_settings.clone(),
            reward: &self.reward,
        }
    }

    /// Adds accepted self-play problems to the training set and the state (and to the
    /// objective's per-prompt tables).
    fn add_selfplay(&mut self, problems: Vec<crate::task::Problem>) -> Result<()> {
        let first = self.train.len();
        let max_prompt = self.cfg.train.max_prompt_tokens;
        for p in problems {
            self.known.insert(p.task().identity(&p));
            if self.train.push(p.clone(), &self.tok, max_prompt)? {
                self.selfplay_idx.push(self.train.len() - 1);
            }
            self.state.selfplay.push(p);
        }
        if self.train.len() > first {
            self.gather_for_generation(false)?;
            let reference = RolloutCtx {
                adapters: None,
                be: self.be,
                model: &self.reference,
                gen: &self.gen,
                tok: &self.tok,
                settings: self.rollout_settings.clone(),
                reward: &self.reward,
            };
            let mut unused_pool = vec![];
            let stage = Stage1 {
                reference,
                train: &self.train,
                pool: &mut unused_pool,
                cache_dir: &self.cfg.out_dir,
                seed: self.cfg.seed,
                comm: self.comm,
            };
            self.objective.add_prompts(stage, first)?;
        }
        Ok(())
    }

    /// A self-play round (`crate::train::selfplay`): the proposer's replies to the request,
    /// split over the ranks and gathered in order, read and de-duplicated; the accepted
    /// problems join the pool.
    fn propose(&mut self, step_no: usize) -> Result<super::selfplay::Round> {
        let _r = nvtx::range("selfplay");
        let sp = self.cfg.selfplay.clone();
        let ask = self.proposal_prompt.clone().ok_or_else(|| anyhow!("self-play without a proposal request"))?;
        let mine = split_range(sp.proposals, self.comm.world(), self.comm.rank());
        let prompts = vec![ask; mine.len()];
        let seeds: Vec<u64> = mine.clone().map(|j| derive_seed(self.cfg.seed ^ 0x5e1f_9a1e, step_no as u64, j as u64)).collect();
        let policy = sp.proposer == super::selfplay::Proposer::Policy;
        self.gather_for_generation(policy)?;
        let gc = GenConfig {
            max_new_tokens: sp.max_tokens,
            sampling: SamplingParams { temperature: sp.temperature, top_k: 0, top_p: 1.0 },
            turn_tokens: 0,
            ..self.rollout_settings.clone()
        };
        let (model, adapters) = if policy { (&self.policy, self.lora.as_ref()) } else { (&self.reference, None) };
        let decode = |ids: &[u32]| self.tok.decode(ids, false).unwrap_or_default();
        let gens = self.gen.generate_with(self.be, model, adapters, &prompts, &seeds, &gc, &decode)?;
        let mut replies = gens.iter().map(|g| self.tok.decode(&g.tokens, true)).collect::<Result<Vec<String>>>()?;
        if self.comm.world() > 1 {
            replies = dist::all_gather_json(self.comm, replies)?.into_iter().flatten().collect();
        }
        let task = crate::task::by_name(&self.cfg.task.name)?;
        let room = sp.max_pool.saturating_sub(self.state.selfplay.len());
        let spec = self.cfg.problem_spec(&self.cfg.data.counts);
        let got = super::selfplay::accept(task, &replies, &spec, &mut self.known, room);
        if self.comm.is_root() {
            use std::io::Write;
            let path = self.run_dir.join("proposals.jsonl");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            for (reply, verdict) in replies.iter().zip(&got.verdicts) {
                writeln!(f, "{}", serde_json::json!({"step": step_no, "reply": reply, "verdict": verdict}))?;
            }
        }
        let mut round = got.round;
        self.add_selfplay(got.problems)?;
        round.pool = self.state.selfplay.len();
        Ok(round)
    }

    /// The next `n` prompts: epochs are seeded permutations of the pool.
    fn next_prompts(&mut self, n: usize) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let stage = self.state.curriculum.stage;
            let mut perm: Vec<usize> = match &self.stage_of {
                Some(of) => self.pool.iter().copied().filter(|&i| of[i] <= stage).collect(),
                None => self.pool.clone(),
            };
            anyhow::ensure!(!perm.is_empty(), "no training prompts left for curriculum stage {stage}");
            Rng::new(derive_seed(self.cfg.seed, self.state.epoch, 0xe70c)).shuffle(&mut perm);
            while out.len() < n && self.state.cursor < perm.len() {
                out.push(perm[self.state.cursor]);
                self.state.cursor += 1;
            }
            if self.state.cursor >= perm.len() {
                self.state.epoch += 1;
                self.state.cursor = 0;
            }
        }
        Ok(out)
    }

    fn step(&mut self) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let cfg = self.cfg.clone();
        let t = &cfg.train;
        let per_prompt = self.objective.samples_per_prompt();
        let step_no = self.state.step + 1;
        let selfplay = match cfg.selfplay.proposes_at(step_no) {
            true => Some(self.propose(step_no)?),
            false => None,
        };
        // A `selfplay.mix` share of the prompts from the accepted problems (uniform, with
        // replacement, seeded by the step), the rest from the pool's permutation.
        let from_selfplay = cfg.selfplay.drawn(t.batch_prompts, self.selfplay_idx.len());
        let mut prompts = self.next_prompts(t.batch_prompts - from_selfplay)?;
        let mut draw = Rng::new(derive_seed(cfg.seed, step_no as u64, 0x5e1f));
        prompts.extend((0..from_selfplay).map(|_| self.selfplay_idx[draw.below(self.selfplay_idx.len() as u64) as usize]));
        let idx: Vec<usize> = prompts.iter().flat_map(|&i| std::iter::repeat_n(i, per_prompt)).collect();
        let seeds: Vec<u64> = (0..idx.len()).map(|j| derive_seed(cfg.seed, self.state.step as u64 + 1, j as u64)).collect();
        // Which sequences of the global batch each rank generates, scores and trains on.
        let (world, rank) = (self.comm.world(), self.comm.rank());
        let owned = |r: usize| -> Vec<usize> {
            let all: Vec<usize> = (0..idx.len()).collect();
            all.chunks(t.mini_batch).flat_map(|mini| mini[split_range(mini.len(), world, r)].to_vec()).collect()
        };
        let mine = owned(rank);
        // This step's sampling: the annealed temperature and the adaptive window.
        let temperature = cfg.rollout.temperature(t.temperature, step_no, t.steps);
        let lr = super::schedule::learning_rate(t.lr, t.lr_end, t.lr_schedule, t.lr_warmup_steps, step_no, t.steps);
        let aw = &cfg.rollout.adaptive_window;
        let (window, explored) = self.state.window.window_for(aw, t.max_response_tokens, cfg.seed, step_no);
        let outs = {
            let _r = nvtx::range("rollout");
            let my_idx: Vec<usize> = mine.iter().map(|&j| idx[j]).collect();
            let my_seeds: Vec<u64> = mine.iter().map(|&j| seeds[j]).collect();
            let sampling = SamplingParams { temperature, ..self.rollout_settings.sampling };
            self.gather_for_generation(true)?;
            let ctx = self.policy_ctx();
            let my_outs = ctx.with_sampling(sampling, Some(window)).rollout(&self.train, &my_idx, &my_seeds)?;
            if world == 1 {
                my_outs
            } else {
                let mut all: Vec<Option<Rollout>> = vec![None; idx.len()];
                for (r, part) in dist::all_gather_json(self.comm, my_outs)?.into_iter().enumerate() {
                    let at = owned(r);
                    anyhow::ensure!(part.len() == at.len(), "rank {r} sent {} rollouts for {} sequences", part.len(), at.len());
                    for (j, o) in at.into_iter().zip(part) {
                        all[j] = Some(o);
                    }
                }
                all.into_iter().map(|o| o.expect("every sequence has an owner")).collect::<Vec<_>>()
            }
        };
        let t_rollout = t0.elapsed().as_secs_f32();

        let rewards: Vec<f32> = outs.iter().map(|o| o.score.score).collect();
        let pairs: Vec<Trajectory> =
            outs.iter().map(|o| (self.train.tokens[o.idx].clone(), o.tokens.clone(), o.env_spans.clone())).collect();
        // Reference (and, where the objective needs them, behaviour-policy) log-probs of this
        // rank's responses (the others' stay empty).
        let t1 = Instant::now();
        let scoring_passes = self.lockstep_passes(|r| owned(r).len());
        let ref_lp = {
            let _r = nvtx::range("ref_logprobs");
            self.logprobs_of(&pairs, &mine, false, scoring_passes)?
        };
        let old_lp = if self.objective.needs_old_logprobs() {
            let _r = nvtx::range("old_logprobs");
            Some(self.logprobs_of(&pairs, &mine, true, scoring_passes)?)
        } else {
            None
        };
        // The critic's values of this rank's responses, and the per-token targets from the
        // whole batch's log-probs and values (gathered: advantages are whitened over it).
        let shared_critic = self.objective.critic().and_then(|s| s.shared.map(|vf_coef| (vf_coef, s.value_clip)));
        let value_model = match (&self.critic, shared_critic) {
            (Some(c), _) => Some(&c.model),
            (None, Some(_)) => Some(&self.policy),
            (None, None) => None,
        };
        let token = match (value_model, &old_lp) {
            (Some(model), Some(old)) => {
                let values = {
                    let _r = nvtx::range("values");
                    critic::values(self.be, model, &mut self.ws, &pairs, &mine, t.micro_batch)?
                };
                let (rf, od, vals) =
                    (merge_owned(self.comm, &ref_lp, &mine)?, merge_owned(self.comm, old, &mine)?, merge_owned(self.comm, &values, &mine)?);
                Some((self.objective.token_targets(&outs, &rf, &od, &vals)?, vals))
            }
            _ => None,
        };
        let t_ref = t1.elapsed().as_secs_f32();

        let t2 = Instant::now();
        let targets = self.objective.targets(&outs);
        let (mut loss_sum, mut ent_sum, mut ntok_total) = (0f64, 0f64, 0usize);
        let (mut grad_norm, mut skipped) = (0f32, false);
        // A shared critic's value loss (summed over this rank's micro-batches) and clipped tokens.
        let mut shared_value = [0f64; 2];
        let mut diag = TokenDiag::default();
        let order: Vec<usize> = (0..outs.len()).collect();
        let epochs = self.objective.epochs();
        let token_adv = token.as_ref().map(|(tt, _)| tt.advantages.as_slice());
        for epoch in 0..epochs {
            for mini in order.chunks(t.mini_batch) {
                self.opt.zero_grad(self.be)?;
                // Losses are means over the whole (global) mini-batch; this rank adds its part.
                let ntok_mini: usize = mini.iter().map(|&i| outs[i].agent_tokens()).sum();
                let mine = &mini[split_range(mini.len(), world, rank)];
                // Sharded parameters: a rank with fewer micro-batches than another joins its
                // extra passes' collectives without sequences (adding nothing).
                for _ in mine.chunks(t.micro_batch).count()..self.lockstep_passes(|r| split_range(mini.len(), world, r).len()) {
                    self.idle_pass()?;
                }
                for micro in mine.chunks(t.micro_batch) {
                    let lp = StepLogprobs { reference: &ref_lp, old: old_lp.as_deref(), advantages: token_adv };
                    let diag = (epoch == 0).then_some(&mut diag);
                    let (l, e) = self.accumulate(micro, &pairs, lp, &targets, mini.len(), ntok_mini, diag)?;
                    loss_sum += l;
                    ent_sum += e;
                    // A shared critic: the value loss's gradients (× vf_coef) join the policy's
                    // in the same update.
                    if let (Some((vf_coef, clip)), Some((tt, values))) = (shared_critic, &token) {
                        let _r = nvtx::range("values");
                        let v = critic::value_accumulate(
                            self.be,
                            &self.policy,
                            &mut self.ws,
                            &self.opt.grads,
                            &pairs,
                            micro,
                            (values, &tt.returns),
                            ntok_mini,
                            clip,
                            vf_coef,
                        )?;
                        shared_value[0] += v.loss;
                        shared_value[1] += v.clipped as f64;
                    }
                }
                ntok_total += ntok_mini;
                let o = {
                    let _r = nvtx::range("optimizer");
                    match self.zero3 {
                        None => {
                            let trainable: &dyn super::optim::Trainable<B> = match &self.lora {
                                Some(l) => l,
                                None => &self.policy,
                            };
                            self.opt.step_in(self.be, trainable, lr, self.comm)?
                        }
                        Some(_) => self.opt.step_shards(self.be, lr, self.comm)?,
                    }
                };
                grad_norm = o.grad_norm;
                skipped |= o.skipped;
            }
        }
        let critic_stats = match (&mut self.critic, &token) {
            (Some(c), Some((tt, values))) => {
                let _r = nvtx::range("critic");
                Some(c.train_step(
                    self.be,
                    &mut self.ws,
                    &pairs,
                    &order,
                    values,
                    &tt.returns,
                    epochs,
                    (t.mini_batch, t.micro_batch),
                    self.comm,
                )?)
            }
            _ => None,
        };
        let n_minis = n_minis_of(outs.len(), t.mini_batch) * epochs as f64;
        let mut sums = [loss_sum, ent_sum, shared_value[0], shared_value[1]];
        self.comm.all_reduce_f64(&mut sums)?;
        let [loss_sum, ent_sum, vf_loss, vf_clipped] = sums;
        let critic_stats = match (shared_critic, &token) {
            (Some(_), Some((tt, values))) => {
                let tokens = outs.iter().map(|o| o.agent_tokens()).sum::<usize>() * epochs;
                Some(critic::stats([vf_loss, vf_clipped], n_minis as usize, tokens, values, &tt.returns, grad_norm))
            }
            _ => critic_stats,
        };
        let tokens = diag.finish(self.comm)?;
        let ratio = tokens.ratio.clone().unwrap_or_default();
        let has_ratio = tokens.ratio.is_some();
        let shape = diag::rollout_stats(&outs, |o| self.train.tokens[o.idx].len());
        self.state.reward_cumulative += rewards.iter().map(|&r| r as f64).sum::<f64>();
        let seen = WindowObservation {
            success_rate: outs.iter().filter(|o| o.score.solved()).count() as f32 / outs.len().max(1) as f32,
            mean_success_length: shape.correct_len_mean.unwrap_or(0.0),
            solved: outs.iter().filter(|o| o.score.solved()).count(),
            saturated_frac: outs.iter().filter(|o| o.tokens.len() >= window).count() as f32 / outs.len().max(1) as f32,
        };
        self.state.window.observe(aw, t.max_response_tokens, step_no, window, &seen);
        let stage = self.state.curriculum.stage;
        if self.state.curriculum.observe(&cfg.curriculum, step_no, seen.success_rate) {
            // The next stage's pool starts with a fresh permutation.
            self.state.epoch += 1;
            self.state.cursor = 0;
        }
        let t_update = t2.elapsed().as_secs_f32();
        let n = outs.len() as f32;
        let lens: Vec<usize> = outs.iter().map(|o| o.tokens.len()).collect();
        let step_time = t0.elapsed().as_secs_f32();
        let m = StepMetrics {
            reward_mean: rewards.iter().sum::<f32>() / n,
            solve_rate: outs.iter().filter(|o| o.score.solved()).count() as f32 / n,
            format_rate: outs.iter().filter(|o| o.score.formatted()).count() as f32 / n,
            loss: (loss_sum / n_minis) as f32,
            grad_norm,
            lr,
            entropy_mean: (ent_sum / ntok_total.max(1) as f64) as f32,
            critic: critic_stats,
            resp_len_mean: lens.iter().sum::<usize>() as f32 / n,
            resp_len_max: lens.iter().copied().max().unwrap_or(0),
            truncated_frac: outs.iter().filter(|o| o.finish == Finish::Length).count() as f32 / n,
            rollout_tok_s: lens.iter().sum::<usize>() as f32 / t_rollout.max(1e-6),
            train_tok_s: pairs.iter().map(|(p, r, _)| p.len() + r.len()).sum::<usize>() as f32 / t_update.max(1e-6),
            time_rollout_s: t_rollout,
            time_ref_s: t_ref,
            time_update_s: t_update,
            step_time_s: step_time,
            peak_mem_bytes: metrics::peak_rss_bytes(),
            skipped,
            tokens_prompt: shape.tokens_prompt,
            tokens_response: shape.tokens_response,
            tokens_total: shape.tokens_prompt + shape.tokens_response,
            finished_frac: shape.finished_frac,
            solve_rate_truncated: shape.solve_rate_truncated,
            solve_rate_finished: shape.solve_rate_finished,
            correct_len_mean: shape.correct_len_mean,
            kl_ref_k1: tokens.kl_ref_k1,
            kl_ref_k3: tokens.kl_ref_k3,
            log_ratio_mean: has_ratio.then_some(ratio.log_ratio_mean),
            log_ratio_std: has_ratio.then_some(ratio.log_ratio_std),
            is_ratio_mean: has_ratio.then_some(ratio.is_ratio_mean),
            is_ratio_std: has_ratio.then_some(ratio.is_ratio_std),
            is_ratio_p95: has_ratio.then_some(ratio.is_ratio_p95),
            is_clip_outside_frac: ratio.outside_frac,
            reward_cumulative: self.state.reward_cumulative,
            temperature,
            curriculum_stage: cfg.curriculum.enabled().then_some(stage),
            window: aw.enabled.then_some(window),
            window_success_length: aw.enabled.then_some(seen.mean_success_length),
            window_success_rate: aw.enabled.then_some(seen.success_rate),
            window_explored: aw.enabled.then_some(explored),
            selfplay,
            ..Default::default()
        };
        if self.comm.is_root() && t.sample_every > 0 && (self.state.step + 1).is_multiple_of(t.sample_every) {
            self.write_samples(self.state.step + 1, &outs)?;
        }
        Ok(m)
    }

    /// Per-sequence log-probs of the (prompt, response) pairs `which` under the reference
    /// model, or under the current policy when `policy`; the other pairs' stay empty.
    ///
    /// `passes`: with sharded parameters, the passes every rank makes (`lockstep_passes`); a
    /// rank with fewer micro-batches joins the rest without sequences.
    fn logprobs_of(&mut self, pairs: &[Trajectory], which: &[usize], policy: bool, passes: usize) -> Result<Vec<Vec<f32>>> {
        let mb = self.cfg.train.micro_batch;
        let mut mine = Vec::with_capacity(which.len());
        let mut host = vec![0f32; self.ws.plan.max_targets];
        let chunks = which.chunks(mb).count();
        for _ in chunks..passes {
            crate::model::source::idle_forward_logprobs(self.be, &self.policy.layout, self.source(policy).as_ref())?;
        }
        for chunk in which.chunks(mb) {
            let sub: Vec<&Trajectory> = chunk.iter().map(|&i| &pairs[i]).collect();
            let batch = PackedBatch::from_pairs(&sub)?;
            self.ws.load(self.be, &self.policy.cfg, &batch)?;
            let model = if policy { &self.policy } else { &self.reference };
            model.forward_logprobs_from(self.be, &self.ws, false, self.source(policy).as_ref())?;
            let nt = batch.n_targets();
            self.be.download_f32(self.ws.logp(), &mut host[..nt])?;
            for w in batch.target_cu.windows(2) {
                mine.push(host[w[0] as usize..w[1] as usize].to_vec());
            }
        }
        let mut out = vec![Vec::new(); pairs.len()];
        for (&i, lp) in which.iter().zip(mine) {
            out[i] = lp;
        }
        Ok(out)
    }

    /// A training pass without sequences (`idle_forward_logprobs`, `idle_backward_logprobs`).
    fn idle_pass(&self) -> Result<()> {
        let src = self.source(true);
        crate::model::source::idle_forward_logprobs(self.be, &self.policy.layout, src.as_ref())?;
        crate::model::source::idle_backward_logprobs(self.be, &self.policy.layout, &self.opt.grads, src.as_ref())
    }

    /// Forward + loss + backward of one micro-batch; returns (loss contribution, entropy sum).
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        &mut self,
        micro: &[usize],
        pairs: &[Trajectory],
        StepLogprobs { reference: ref_lp, old: old_lp, advantages: token_adv }: StepLogprobs,
        targets: &[f32],
        mini_seqs: usize,
        mini_tokens: usize,
        diag: Option<&mut TokenDiag>,
    ) -> Result<(f64, f64)> {
        let be = self.be;
        let sub: Vec<&Trajectory> = micro.iter().map(|&i| &pairs[i]).collect();
        let batch = PackedBatch::from_pairs(&sub)?;
        let fwd = nvtx::range("forward");
        self.ws.load(be, &self.policy.cfg, &batch)?;
        self.policy.forward_logprobs_from(be, &self.ws, true, self.source(true).as_ref())?;
        let nt = batch.n_targets();
        let flat = |src: &[Vec<f32>]| -> Vec<f32> { micro.iter().flat_map(|&i| src[i].iter().copied()).collect() };
        let ref_view = View::all(&self.bufs.ref_logp).slice(0, nt);
        let ref_host = flat(ref_lp);
        be.upload_f32(ref_view, &ref_host)?;
        let old_host = old_lp.map(flat);
        let old_view = match (&old_host, &self.bufs.old_logp) {
            (Some(old), Some(buf)) => {
                let v = View::all(buf).slice(0, nt);
                be.upload_f32(v, old)?;
                Some(v)
            }
            _ => None,
        };
        if let Some(diag) = diag {
            let mut logp = vec![0f32; nt];
            be.download_f32(self.ws.logp(), &mut logp)?;
            diag.add(&logp, &ref_host, old_host.as_deref(), self.objective.ratio_clip());
        }
        let adv_host = token_adv.map(flat);
        let micro_targets: Vec<f32> = micro.iter().map(|&i| targets[i]).collect();
        let x = LossInputs {
            logp: self.ws.logp(),
            dlogp: self.ws.dlogp(),
            ref_logp: ref_view,
            old_logp: old_view,
            seqs: self.ws.target_seqs(),
            targets: &micro_targets,
            token_advantages: adv_host.as_deref(),
            mini_seqs,
            mini_tokens,
        };
        self.objective.loss(be, &x)?;
        // Loss term −entropy_coeff · mean token entropy over the mini-batch.
        let entropy_coeff = self.objective.entropy_coeff();
        be.fill(self.ws.dentropy(), -entropy_coeff / mini_tokens as f32)?;
        drop(fwd);
        {
            let _r = nvtx::range("backward");
            self.policy.backward_logprobs_from(be, &self.ws, &self.opt.grads, true, self.source(true).as_ref())?;
        }
        let loss = self.objective.read_loss(be, &x)?;
        let mut e = vec![0f32; nt];
        be.download_f32(self.ws.entropy(), &mut e)?;
        let ent: f64 = e.iter().map(|&x| x as f64).sum();
        Ok((loss - entropy_coeff as f64 * ent / mini_tokens as f64, ent))
    }

    fn eval(&mut self) -> Result<EvalReport> {
        let _r = nvtx::range("eval");
        self.gather_for_generation(true)?;
        evaluate(&self.policy_ctx(), &self.test, self.cfg.train.eval_limit, 0, self.cfg.seed, None, self.comm)
    }

    fn final_eval(&mut self) -> Result<EvalReport> {
        self.gather_for_generation(true)?;
        evaluate(&self.policy_ctx(), &self.test, 0, self.cfg.train.eval_pass_k, self.cfg.seed, None, self.comm)
    }

    fn save(&mut self) -> Result<()> {
        // Collectives first (every rank), then rank 0 writes the whole state.
        let params = self.opt.params_to_host_in(self.be, self.trainable(), self.comm)?;
        let opt = self.opt.state_to_host_in(self.be, self.comm)?;
        let mut critic = match &self.critic {
            Some(c) => Some((c.opt.params_to_host_in(self.be, &c.model, self.comm)?, c.opt.state_to_host_in(self.be, self.comm)?)),
            None => None,
        };
        if !self.comm.is_root() {
            return Ok(());
        }
        self.state.world_size = self.comm.world();
        // A shared critic's head goes to the critic file (its optimizer state is in the
        // policy's), so the checkpoint's policy is a plain model.
        let plain = crate::model::ParamLayout::new(&self.policy.cfg);
        if self.policy.layout.value_head().is_some() {
            critic = Some((params[plain.total..].to_vec(), super::optim::OptimizerState { step: 0, m: vec![], v: vec![], master: None }));
        }
        let policy = match &self.lora {
            Some(l) => checkpoint::PolicyWeights::Adapter { layout: &l.layout, params: &params },
            None => checkpoint::PolicyWeights::Model { cfg: &self.policy.cfg, layout: &plain, params: &params[..plain.total] },
        };
        checkpoint::save(&self.run_dir, policy, &self.tokenizer_json, &opt, critic.as_ref().map(|(p, s)| (p.as_slice(), s)), &self.state)?;
        checkpoint::prune(&self.run_dir, self.cfg.train.keep_checkpoints)?;
        Ok(())
    }

    fn write_samples(&self, step: usize, outs: &[Rollout]) -> Result<()> {
        use std::io::Write;
        let path = self.run_dir.join("samples.jsonl");
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        for o in outs.iter().take(4) {
            let mut line =
                serde_json::json!({"step": step, "prompt": self.train.prompts[o.idx], "response": o.text, "score": o.score.score});
            if o.turns > 0 {
                // An episode: the response holds every turn, the observations included.
                line["turns"] = o.turns.into();
                line["outcome"] = serde_json::to_value(o.score.reason)?;
            }
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// A step's per-token inputs of the loss, per sequence: the reference's and the behaviour
/// policy's log-probs, and per-token advantages (objectives with a critic).
struct StepLogprobs<'a> {
    reference: &'a [Vec<f32>],
    old: Option<&'a [Vec<f32>]>,
    advantages: Option<&'a [Vec<f32>]>,
}

/// Mini-batch updates of one pass over `n` sequences.
fn n_minis_of(n: usize, mini_batch: usize) -> f64 {
    n.div_ceil(mini_batch.max(1)) as f64
}

/// Per-sequence arrays that each rank filled at its own sequences (`mine`), whole on every
/// rank.
fn merge_owned<B: Backend>(comm: &dyn Comm<B>, local: &[Vec<f32>], mine: &[usize]) -> Result<Vec<Vec<f32>>> {
    if comm.world() == 1 {
        return Ok(local.to_vec());
    }
    let part: Vec<(usize, Vec<f32>)> = mine.iter().map(|&i| (i, local[i].clone())).collect();
    let mut out = vec![Vec::new(); local.len()];
    for (r, got) in dist::all_gather_json(comm, part)?.into_iter().enumerate() {
        for (i, v) in got {
            anyhow::ensure!(i < out.len(), "rank {r} sent sequence {i} of {}", out.len());
            out[i] = v;
        }
    }
    Ok(out)
}

/// A checksum of a model's parameters as the device holds them, read in chunks (no whole
/// host copy of a large model).
fn params_checksum<B: Backend>(be: &B, model: &Qwen2<B>) -> Result<u64> {
    const CHUNK: usize = 1 << 22;
    let all = model.all_params();
    let (mut h, mut host) = (crate::util::FNV_OFFSET, vec![0f32; CHUNK.min(all.len())]);
    let mut at = 0;
    while at < all.len() {
        let n = CHUNK.min(all.len() - at);
        be.download_f32(all.slice(at, n), &mut host[..n])?;
        h = host[..n].iter().fold(h, |h, x| crate::util::fnv1a(h, &x.to_bits().to_le_bytes()));
        at += n;
    }
    Ok(h)
}
