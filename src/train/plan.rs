//! The memory plan of a training run, computed from its config and the model's config.json
//! before any weight is loaded. The trainer allocates from it line by line, so
//! `tz-engine plan --config FILE` prints what `tz-engine train --config FILE` allocates
//! (tools/emu-check.sh compares it with every allocation the emulated GPU sees).
//!
//! Persistent state (parameters, reference, gradients, Adam moments, master weights, small
//! loss buffers, the backend's own workspace) is allocated once. Activations live in one
//! region shared by the phases of a step, which never run at once: rollout (KV cache, prefill
//! and decode activations, logits) and scoring/training (per-layer activations or, with
//! recompute, only layer inputs; gradient scratch; logits chunks; log-probs). The region is as
//! large as the larger phase, not their sum.
use super::config::TrainConfig;
use crate::backend::{DType, ScratchNeeds};
use crate::model::arena::ArenaPlan;
use crate::model::logprob::LogprobPlan;
use crate::model::{Keep, ParamLayout, Qwen2Config};
use crate::rollout::GenLayout;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `train.recompute`: activation checkpointing per decoder layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// `layers` on CUDA for models of at least `AUTO_RECOMPUTE_PARAMS` parameters, else `none`.
    #[default]
    Auto,
    None,
    Layers,
}

/// Models this large recompute by default on CUDA (Qwen2.5-1.5B and up; 0.5B's activations
/// fit beside its state).
pub const AUTO_RECOMPUTE_PARAMS: usize = 1_000_000_000;

impl Recompute {
    pub fn enabled(self, cuda: bool, params: usize) -> bool {
        match self {
            Recompute::Auto => cuda && params >= AUTO_RECOMPUTE_PARAMS,
            Recompute::None => false,
            Recompute::Layers => true,
        }
    }
}

/// The backend's own allocations for a run of these shapes (`Backend::workspace_plan`).
pub type Workspace<'a> = &'a dyn Fn(&ScratchNeeds) -> Vec<(&'static str, usize)>;

/// The sizes every buffer of one rank of the run is planned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunShape {
    /// Data-parallel ranks (each plans the same).
    pub world: usize,
    /// Longest prompt (`train.max_prompt_tokens`: longer prompts are dropped at load).
    pub max_prompt: usize,
    /// Longest prompt + response.
    pub t_max: usize,
    /// Sequences generated at once (`train.rollout_batch`; on more than one rank, at most a
    /// rank's share of a step's sequences).
    pub slots: usize,
    pub micro_batch: usize,
    /// Response tokens of a micro-batch.
    pub max_targets: usize,
    pub keep: Keep,
}

impl RunShape {
    pub fn new(cfg: &TrainConfig, model: &Qwen2Config, cuda: bool, world: usize) -> Result<Self> {
        let t = &cfg.train;
        if world == 0 {
            bail!("a run needs at least one rank");
        }
        let ctx = model.max_position_embeddings;
        let max_prompt = t.max_prompt_tokens;
        let t_max = (max_prompt + t.max_response_tokens).min(ctx);
        if t_max <= max_prompt {
            bail!("train.max_prompt_tokens ({max_prompt}) leaves no room for a response in the model's context ({ctx})");
        }
        let recompute = t.recompute.enabled(cuda, ParamLayout::new(model).total);
        // A rank generates its part of each mini-batch (`train::run`): at most this many.
        let seqs = t.batch_prompts * cfg.algo.samples_per_prompt();
        let share = seqs.div_ceil(t.mini_batch) * t.mini_batch.div_ceil(world);
        Ok(RunShape {
            world,
            max_prompt,
            t_max,
            slots: if world > 1 { t.rollout_batch.min(share.max(1)) } else { t.rollout_batch },
            micro_batch: t.micro_batch,
            max_targets: t.micro_batch * t.max_response_tokens,
            keep: Keep::for_training(recompute),
        })
    }

    pub fn recompute(&self) -> bool {
        self.keep == Keep::LayerInputs
    }

    pub fn scratch_needs(&self, model: &Qwen2Config) -> ScratchNeeds {
        ScratchNeeds {
            attn_rows: self.micro_batch * self.t_max,
            n_head: model.num_attention_heads,
            head_dim: model.head_dim,
            decode_rows: self.slots,
            decode_len: self.t_max,
        }
    }
}

/// One allocation (or group of same-purpose allocations) of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanLine {
    pub what: String,
    pub bytes: usize,
}

/// What a phase of the shared region holds, by category (for the printout; the region's line
/// is the larger phase's size).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseUse {
    pub phase: &'static str,
    pub categories: Vec<(&'static str, usize)>,
    pub bytes: usize,
}

/// Training FLOPs of one step with every sequence at the planned full length.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepFlops {
    /// Reference (and behaviour-policy) scoring, policy forward and backward.
    pub without_recompute: f64,
    pub with_recompute: f64,
    /// One forward of the policy over the step's sequences, for comparison.
    pub one_forward: f64,
}

/// What the collectives of one step move, per rank (data parallel; zero on one rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StepTraffic {
    /// Optimizer updates per step (each reduce-scatters the gradients and all-gathers the
    /// parameters).
    pub updates: usize,
    /// Bytes of the gradient buffers reduce-scattered per update (each rank sends
    /// (N − 1)/N of them in a ring).
    pub reduce_scatter_bytes: usize,
    /// Bytes all-gathered per update (the parameters, or the gradient buffers they travel in).
    pub all_gather_bytes: usize,
    /// What one rank sends per step in ring collectives: (N − 1)/N of both, per update.
    pub sent_per_rank_bytes: usize,
}

pub struct RunPlan {
    pub shape: RunShape,
    pub lines: Vec<PlanLine>,
    pub traffic: StepTraffic,
    pub phases: Vec<PhaseUse>,
    pub flops: StepFlops,
    /// The shared region's per-phase plans, for the trainer to place its phases in.
    pub rollout: (ArenaPlan, GenLayout),
    pub training: (ArenaPlan, LogprobPlan),
    /// Where the gradients (and, sharded per unit, the gathered parameters) live.
    pub grads: GradPlan,
}

/// The gradient buffers of a run, in the shared region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradPlan {
    /// Whole gradient buffers in the training phase (`dist.shard_params = false`).
    Whole(crate::model::grads::GradSlots),
    /// Parameters sharded per unit (`crate::train::zero3`): the whole model gathered for
    /// generation in the rollout phase (`full`), one gathered unit (`staging`) and the
    /// gradient buckets in the training phase.
    PerUnit { full: crate::model::arena::Slot, staging: crate::model::arena::Slot, buckets: crate::model::grads::BucketSlots },
    /// A LoRA run (`model.lora`): the adapters' f32 gradients (padded for the ranks) in the
    /// training phase, and a critic's (PPO) whole gradient slots beside them.
    Adapters { adapters: crate::model::arena::Slot, critic: Option<crate::model::grads::GradSlots> },
}

impl RunPlan {
    /// `act`: the backend's weight/activation dtype; `master`: whether it keeps f32 master
    /// weights; `workspace`: the backend's own allocations for these shapes.
    ///
    /// `world`: data-parallel ranks; the plan is one rank's (each holds its part of the
    /// optimizer state, `train::optim`, and generates its share of a step).
    pub fn new(cfg: &TrainConfig, model: &Qwen2Config, act: DType, master: bool, workspace: Workspace, world: usize) -> Result<Self> {
        let shape = RunShape::new(cfg, model, act == DType::BF16, world)?;
        let layout = ParamLayout::new(model);
        if cfg.dist.shard_params {
            return Self::per_unit(cfg, model, act, master, workspace, shape, layout);
        }
        if let Some(lc) = &cfg.model.lora {
            return Self::lora(cfg, model, act, master, workspace, shape, layout, &crate::model::LoraLayout::new(model, lc)?);
        }
        let reference_n = layout.total;
        // A shared critic (PPO, `algo.critic = "shared"`): the policy carries the value head.
        let layout = if cfg.algo.policy_value_head() { ParamLayout::with_value_head(model) } else { layout };
        let n = layout.total;
        let a = act.size_bytes();
        let (grads_full, grads_low) = crate::model::grads::grad_elements(&layout, cfg.train.grad_dtype);
        // Gradient buffers are padded to an even split; a rank's state is its share of each
        // (rank 0's, the largest).
        let pad = |x: usize| x.div_ceil(world) * world;
        let local = grads_full.div_ceil(world) + grads_low.div_ceil(world);
        let part = if world > 1 { format!(", 1/{world}") } else { String::new() };
        let mut lines = vec![
            line(if cfg.algo.policy_value_head() { "policy parameters (with the value head)" } else { "policy parameters" }, n * a),
            line("reference parameters", reference_n * a),
            line(&format!("Adam moments (f32, two{part})"), 2 * local.max(1) * 4),
        ];
        if master {
            lines.push(line(&format!("master weights (f32{part})"), local.max(1) * 4));
        }
        // A critic (PPO) is the model again with a value head and its own optimizer state; it
        // trains in the policy's activation region and gradient slots after the policy's
        // update, so the slots are planned for its (larger) layout.
        let grad_layout = if cfg.algo.has_critic() { ParamLayout::with_value_head(model) } else { layout.clone() };
        let (critic_full, critic_low) = crate::model::grads::grad_elements(&grad_layout, cfg.train.grad_dtype);
        if cfg.algo.has_critic() {
            let local = critic_full.div_ceil(world) + critic_low.div_ceil(world);
            lines.push(line("critic parameters", grad_layout.total * a));
            lines.push(line(&format!("critic Adam moments (f32, two{part})"), 2 * local.max(1) * 4));
            if master {
                lines.push(line(&format!("critic master weights (f32{part})"), local.max(1) * 4));
            }
        }
        let grad_bytes = 4 * pad(grads_full) + a * pad(grads_low);
        // The parameters travel in place when the gradients are one buffer, else inside the
        // gradient buffers.
        let gather = if grads_low > 0 { grad_bytes } else { n * a };
        let traffic = ring_traffic(cfg, world, a, grad_bytes, gather, cfg.algo.has_critic().then_some(&grad_layout));
        let mut rp = ArenaPlan::new(act);
        let gen = GenLayout::plan(&mut rp, model, shape.slots, shape.max_prompt, shape.t_max)?;
        let mut tp = ArenaPlan::new(act);
        let ws = LogprobPlan::new(&mut tp, model, shape.micro_batch * shape.t_max, shape.micro_batch, shape.max_targets, shape.keep);
        // Gradients live only from a mini-batch's first backward to its update: in the
        // training phase of the shared region, where the rollout's KV cache is at other times.
        let grads = GradPlan::Whole(crate::model::grads::plan_slots(&mut tp, &grad_layout, cfg.train.grad_dtype, world));
        lines.push(line("activations, gradients (shared by phases)", ArenaPlan::shared_bytes(&[&rp, &tp])));
        Ok(Self::finish(cfg, model, workspace, shape, lines, traffic, (rp, gen), (tp, ws), grads))
    }

    /// The phases' lines, the small buffers and the backend's workspace, common to both kinds.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        cfg: &TrainConfig,
        model: &Qwen2Config,
        workspace: Workspace,
        shape: RunShape,
        mut lines: Vec<PlanLine>,
        traffic: StepTraffic,
        (rp, gen): (ArenaPlan, GenLayout),
        (tp, ws): (ArenaPlan, LogprobPlan),
        grads: GradPlan,
    ) -> Self {
        let phases = vec![
            PhaseUse { phase: "rollout", categories: rp.categories.clone(), bytes: rp.bytes() },
            PhaseUse { phase: "training", categories: tp.categories.clone(), bytes: tp.bytes() },
        ];
        let f32_buf = |len: usize| 4 * len.max(1);
        let logp_bufs = if cfg.algo.needs_old_logprobs() { 2 } else { 1 };
        lines.push(line("reference/old log-probs (f32)", logp_bufs * f32_buf(shape.max_targets)));
        lines.push(line("loss buffers (f32)", cfg.algo.buffer_lens(shape.micro_batch, shape.max_targets).into_iter().map(f32_buf).sum()));
        for (what, bytes) in workspace(&shape.scratch_needs(model)) {
            lines.push(line(what, bytes));
        }
        let flops = step_flops(cfg, model, &shape);
        RunPlan { shape, lines, traffic, phases, flops, rollout: (rp, gen), training: (tp, ws), grads }
    }

    /// The plan with parameters sharded per unit (`dist.shard_params`, `crate::train::zero3`):
    /// each rank keeps 1/N of every unit of the policy and the reference (bf16), of the master
    /// weights and moments, and an f32 gradient accumulator of the same shape. The rollout
    /// phase gathers the whole model (beside its KV cache); the training phase holds one
    /// gathered unit and two gradient buckets (the embedding's, and one the other units share).
    fn per_unit(
        cfg: &TrainConfig,
        model: &Qwen2Config,
        act: DType,
        master: bool,
        workspace: Workspace,
        shape: RunShape,
        layout: ParamLayout,
    ) -> Result<Self> {
        let world = shape.world;
        let a = act.size_bytes();
        let shards = super::zero3::UnitShards::new(&layout, world, 0)?;
        let local = shards.local_len().max(1);
        let part = format!("1/{world} of each unit");
        let mut lines = vec![
            line(&format!("policy parameters ({part})"), local * a),
            line(&format!("reference parameters ({part})"), local * a),
            line("Adam moments (f32, two, the same part)", 2 * local * 4),
        ];
        if master {
            lines.push(line("master weights (f32, the same part)", local * 4));
        }
        lines.push(line("gradient accumulator (f32, the same part)", local * 4));
        let mut rp = ArenaPlan::new(act);
        let full = rp.act("parameters (gathered for generation)", super::zero3::full_len(&shards));
        let gen = GenLayout::plan(&mut rp, model, shape.slots, shape.max_prompt, shape.t_max)?;
        let mut tp = ArenaPlan::new(act);
        let ws = LogprobPlan::new(&mut tp, model, shape.micro_batch * shape.t_max, shape.micro_batch, shape.max_targets, shape.keep);
        let staging = tp.act("parameters (one unit, gathered)", shards.max_padded());
        let buckets = crate::model::grads::plan_buckets(&mut tp, &layout, world);
        lines.push(line("activations, gathered units, gradients (shared)", ArenaPlan::shared_bytes(&[&rp, &tp])));
        let traffic = per_unit_traffic(cfg, &layout, &shards, a);
        let grads = GradPlan::PerUnit { full, staging, buckets };
        Ok(Self::finish(cfg, model, workspace, shape, lines, traffic, (rp, gen), (tp, ws), grads))
    }

    /// The plan of a LoRA run (`model.lora`): the base once (frozen, in the act dtype, no
    /// master copy, no moments, no gradient; with its adapters disabled it is the reference
    /// policy), the adapters with their f32 moments (and master weights) split over the ranks
    /// like a whole model's, their gradients in the training phase, adapter scratch in both
    /// phases.
    #[allow(clippy::too_many_arguments)]
    fn lora(
        cfg: &TrainConfig,
        model: &Qwen2Config,
        act: DType,
        master: bool,
        workspace: Workspace,
        shape: RunShape,
        layout: ParamLayout,
        lora: &crate::model::LoraLayout,
    ) -> Result<Self> {
        let (world, a) = (shape.world, act.size_bytes());
        let pad = |x: usize| x.div_ceil(world) * world;
        let local = pad(lora.total) / world;
        let part = if world > 1 { format!(", 1/{world}") } else { String::new() };
        let mut lines = vec![
            line("base parameters (frozen; also the reference)", layout.total * a),
            line(&format!("adapter parameters (rank {})", lora.rank()), lora.total * a),
            line(&format!("adapter Adam moments (f32, two{part})"), 2 * local.max(1) * 4),
        ];
        if master {
            lines.push(line(&format!("adapter master weights (f32{part})"), local.max(1) * 4));
        }
        let critic_layout = ParamLayout::with_value_head(model);
        let (cf, cl) = crate::model::grads::grad_elements(&critic_layout, cfg.train.grad_dtype);
        if cfg.algo.has_critic() {
            let local = cf.div_ceil(world) + cl.div_ceil(world);
            lines.push(line("critic parameters", critic_layout.total * a));
            lines.push(line(&format!("critic Adam moments (f32, two{part})"), 2 * local.max(1) * 4));
            if master {
                lines.push(line(&format!("critic master weights (f32{part})"), local.max(1) * 4));
            }
        }
        let mut rp = ArenaPlan::new(act);
        let gen = GenLayout::plan_with(&mut rp, model, shape.slots, shape.max_prompt, shape.t_max, Some(lora))?;
        let mut tp = ArenaPlan::new(act);
        let rows = shape.micro_batch * shape.t_max;
        let ws = LogprobPlan::new_with(&mut tp, model, rows, shape.micro_batch, shape.max_targets, shape.keep, Some(lora));
        let adapters = tp.f32("gradients", pad(lora.total).max(1));
        let critic = cfg.algo.has_critic().then(|| crate::model::grads::plan_slots(&mut tp, &critic_layout, cfg.train.grad_dtype, world));
        lines.push(line("activations, gradients (shared by phases)", ArenaPlan::shared_bytes(&[&rp, &tp])));
        let traffic = ring_traffic(cfg, world, a, 4 * pad(lora.total), lora.total * a, cfg.algo.has_critic().then_some(&critic_layout));
        let grads = GradPlan::Adapters { adapters, critic };
        Ok(Self::finish(cfg, model, workspace, shape, lines, traffic, (rp, gen), (tp, ws), grads))
    }

    pub fn total(&self) -> usize {
        self.lines.iter().map(|l| l.bytes).sum()
    }
}

/// What one rank sends per step (zero on one rank) when each update reduce-scatters
/// `grad_bytes` of gradients and all-gathers `gather_bytes`, plus a critic's (PPO, of layout
/// `critic`) updates, which move its own gradients and parameters the same way.
fn ring_traffic(
    cfg: &TrainConfig,
    world: usize,
    a: usize,
    grad_bytes: usize,
    gather_bytes: usize,
    critic: Option<&ParamLayout>,
) -> StepTraffic {
    if world <= 1 {
        return StepTraffic::default();
    }
    let updates = (cfg.train.batch_prompts * cfg.algo.samples_per_prompt()).div_ceil(cfg.train.mini_batch);
    let ring = |b: usize| b / world * (world - 1);
    let pad = |x: usize| x.div_ceil(world) * world;
    let critic = critic.map_or(0, |l| {
        let (f, low) = crate::model::grads::grad_elements(l, cfg.train.grad_dtype);
        let g = 4 * pad(f) + a * pad(low);
        ring(g) + ring(if low > 0 { g } else { l.total * a })
    });
    StepTraffic {
        updates,
        reduce_scatter_bytes: grad_bytes,
        all_gather_bytes: gather_bytes,
        sent_per_rank_bytes: updates * (ring(grad_bytes) + ring(gather_bytes) + critic),
    }
}

/// Passes a rank makes per step (the most any rank makes: every rank joins every pass's
/// collectives): training passes (forward and backward) and scoring passes (forward).
pub fn passes_per_step(cfg: &TrainConfig, world: usize) -> (usize, usize) {
    let t = &cfg.train;
    let seqs = t.batch_prompts * cfg.algo.samples_per_prompt();
    let minis: Vec<usize> = (0..seqs).collect::<Vec<_>>().chunks(t.mini_batch).map(|m| m.len()).collect();
    let train: usize = minis.iter().map(|&m| m.div_ceil(world).div_ceil(t.micro_batch)).sum();
    let owned: usize = minis.iter().map(|&m| m.div_ceil(world)).sum();
    let scoring = owned.div_ceil(t.micro_batch) * if cfg.algo.needs_old_logprobs() { 2 } else { 1 };
    (train, scoring)
}

/// What one rank moves per step with parameters sharded per unit: every pass gathers the
/// units it uses (the lm_head's unit once more for the logits), every training pass
/// reduce-scatters every unit's gradients, and each step's rollout gathers the whole model.
fn per_unit_traffic(cfg: &TrainConfig, layout: &ParamLayout, s: &super::zero3::UnitShards, a: usize) -> StepTraffic {
    let world = s.world;
    if world == 1 {
        return StepTraffic::default();
    }
    let (train, scoring) = passes_per_step(cfg, world);
    let padded = |u: crate::model::Unit| s.padded(s.index(u));
    let all: usize = (0..s.units.len()).map(|i| s.padded(i)).sum();
    let lm = padded(layout.lm_unit());
    let forward = all + lm;
    let backward = all - padded(crate::model::Unit::Embed) + lm;
    let gathered = a * (train * (forward + backward) + scoring * forward + all);
    let reduced = 4 * train * all;
    let updates = (cfg.train.batch_prompts * cfg.algo.samples_per_prompt()).div_ceil(cfg.train.mini_batch);
    let ring = |b: usize| b / world * (world - 1);
    StepTraffic {
        updates,
        reduce_scatter_bytes: reduced / updates.max(1),
        all_gather_bytes: gathered / updates.max(1),
        sent_per_rank_bytes: ring(gathered) + ring(reduced),
    }
}

fn line(what: &str, bytes: usize) -> PlanLine {
    PlanLine { what: what.to_string(), bytes }
}

/// Matmul and attention FLOPs (2 per multiply-add) of a training step, sequences at `t_max`.
fn step_flops(cfg: &TrainConfig, m: &Qwen2Config, s: &RunShape) -> StepFlops {
    let (c, inter, layers, vocab) = (m.hidden_size as f64, m.intermediate_size as f64, m.num_hidden_layers as f64, m.vocab_size as f64);
    let shape = m.attn_shape();
    let (qkvw, qw) = (shape.qkv_width() as f64, shape.q_width() as f64);
    let seqs = (cfg.train.batch_prompts * cfg.algo.samples_per_prompt()) as f64;
    let tokens = seqs * s.t_max as f64;
    let targets = seqs * cfg.train.max_response_tokens as f64;
    // Causal attention: a token attends to half the sequence on average (QK^T and PV).
    let attn = 2.0 * 2.0 * (s.t_max as f64 / 2.0) * qw;
    let down = 2.0 * c * inter;
    let layer_tok = 2.0 * (qkvw * c + c * qw + 2.0 * inter * c) + down + attn;
    let lm_head = 2.0 * vocab * c * targets;
    let forward = layers * layer_tok * tokens + lm_head;
    let scoring = if cfg.algo.needs_old_logprobs() { 2.0 } else { 1.0 } * forward;
    // Backward: twice the forward, plus the logits chunks it recomputes.
    let without = scoring + forward + 2.0 * forward + lm_head;
    // Recompute: each layer's forward again, except the MLP down projection.
    let with = without + layers * (layer_tok - down) * tokens;
    StepFlops { without_recompute: without, with_recompute: with, one_forward: forward }
}

/// The plan's two most effective cuts, as "setting (saves X GiB)" phrases, for an error that
/// says what to lower.
pub fn best_cuts(cfg: &TrainConfig, model: &Qwen2Config, act: DType, master: bool, workspace: Workspace, world: usize) -> Vec<String> {
    let Ok(base) = RunPlan::new(cfg, model, act, master, workspace, world).map(|p| p.total()) else { return vec![] };
    let t = &cfg.train;
    let mut options: Vec<(String, TrainConfig)> = vec![];
    let mut with = |label: String, f: &dyn Fn(&mut TrainConfig)| {
        let mut c = cfg.clone();
        f(&mut c);
        options.push((label, c));
    };
    if t.micro_batch > 1 {
        with(format!("train.micro_batch={}", t.micro_batch / 2), &|c| c.train.micro_batch /= 2);
    }
    if t.rollout_batch > 1 {
        with(format!("train.rollout_batch={}", t.rollout_batch / 2), &|c| c.train.rollout_batch /= 2);
    }
    if t.max_response_tokens > 1 {
        with(format!("train.max_response_tokens={}", t.max_response_tokens / 2), &|c| c.train.max_response_tokens /= 2);
    }
    if t.recompute != Recompute::Layers {
        with("train.recompute=\"layers\"".into(), &|c| c.train.recompute = Recompute::Layers);
    }
    if world > 1 && !cfg.dist.shard_params && !cfg.algo.has_critic() {
        with("dist.shard_params=true".into(), &|c| {
            c.dist.shard_params = true;
            c.train.grad_dtype = crate::model::GradDtype::F32;
        });
    }
    let mut saved: Vec<(usize, String)> = options
        .into_iter()
        .filter_map(|(label, c)| {
            RunPlan::new(&c, model, act, master, workspace, world).ok().map(|p| (base.saturating_sub(p.total()), label))
        })
        .filter(|(s, _)| *s > 0)
        .collect();
    saved.sort_by_key(|s| std::cmp::Reverse(s.0));
    saved.into_iter().take(2).map(|(s, label)| format!("{label} (saves {})", human(s))).collect()
}

pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// "12.06 GiB" or, below 1 GiB, "310.4 MiB".
pub fn human(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", gib(bytes))
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
