//! RL objectives. Each algorithm is one implementation of [`Objective`] in its own file, with
//! its own config section (a variant of [`AlgoConfig`], `[algo] name = "..."`); the trainer
//! calls only this trait. An objective says what it needs per prompt (samples, an optional
//! stage 1 such as A*PO's V*, behaviour-policy log-probs), turns scored rollouts into
//! per-sequence targets, and computes its loss and ∂loss/∂logp for a micro-batch.
//!
//! Losses run on the device (`Backend::apo_loss`, `grpo_loss`): the policy's log-probs are
//! already there, and ∂loss/∂logp is the backward's input, so a host loss would cost two
//! transfers per micro-batch.
pub mod astarpo;
pub mod grpo;
pub mod ppo;
pub mod reinforce;
pub mod vstar;

use crate::backend::{Backend, Seqs, View};
use crate::rollout::{PromptSet, Rollout, RolloutCtx};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[algo]`: which objective, with that objective's own settings. Unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum AlgoConfig {
    #[serde(alias = "a*po", alias = "apo")]
    Astarpo(astarpo::AstarpoConfig),
    Grpo(grpo::GrpoConfig),
    Reinforce(reinforce::ReinforceConfig),
    Ppo(ppo::PpoConfig),
}

impl Default for AlgoConfig {
    fn default() -> Self {
        AlgoConfig::Astarpo(astarpo::AstarpoConfig::default())
    }
}

impl AlgoConfig {
    pub fn name(&self) -> &'static str {
        match self {
            AlgoConfig::Astarpo(_) => "astarpo",
            AlgoConfig::Grpo(_) => "grpo",
            AlgoConfig::Reinforce(_) => "reinforce",
            AlgoConfig::Ppo(_) => "ppo",
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            AlgoConfig::Astarpo(c) => c.validate(),
            AlgoConfig::Grpo(c) => c.validate(),
            AlgoConfig::Reinforce(c) => c.validate(),
            AlgoConfig::Ppo(c) => c.validate(),
        }
    }

    /// Responses per prompt at each step (what the built objective's `samples_per_prompt` says;
    /// known before building it, for the memory plan).
    pub fn samples_per_prompt(&self) -> usize {
        match self {
            AlgoConfig::Astarpo(c) => c.samples_per_prompt(),
            AlgoConfig::Grpo(c) => c.group_size,
            AlgoConfig::Reinforce(c) => c.samples_per_prompt,
            AlgoConfig::Ppo(c) => c.samples_per_prompt,
        }
    }

    pub fn needs_old_logprobs(&self) -> bool {
        matches!(self, AlgoConfig::Grpo(_) | AlgoConfig::Ppo(_))
    }

    /// Whether the objective trains a separate critic (a second model: the memory plan counts
    /// it).
    pub fn has_critic(&self) -> bool {
        matches!(self, AlgoConfig::Ppo(c) if c.critic == ppo::CriticKind::Separate)
    }

    /// Whether the policy carries a value head (PPO with a shared critic): its layout is
    /// `ParamLayout::with_value_head`.
    pub fn policy_value_head(&self) -> bool {
        matches!(self, AlgoConfig::Ppo(c) if c.critic == ppo::CriticKind::Shared)
    }

    /// Lengths of the F32 device buffers `build` allocates for these micro-batch sizes.
    pub fn buffer_lens(&self, micro_batch: usize, max_targets: usize) -> Vec<usize> {
        match self {
            AlgoConfig::Astarpo(_) => astarpo::buffer_lens(micro_batch).to_vec(),
            AlgoConfig::Grpo(_) | AlgoConfig::Reinforce(_) | AlgoConfig::Ppo(_) => token_loss_lens(max_targets).to_vec(),
        }
    }

    /// The objective, with its device buffers planned for micro-batches of at most
    /// `micro_batch` sequences and `max_targets` response tokens.
    pub fn build<B: Backend>(&self, be: &B, micro_batch: usize, max_targets: usize) -> Result<Box<dyn Objective<B>>> {
        Ok(match self {
            AlgoConfig::Astarpo(c) => Box::new(astarpo::Astarpo::new(be, c.clone(), micro_batch)?),
            AlgoConfig::Grpo(c) => Box::new(grpo::Grpo::new(be, c.clone(), max_targets)?),
            AlgoConfig::Reinforce(c) => Box::new(reinforce::Reinforce::new(be, c.clone(), max_targets)?),
            AlgoConfig::Ppo(c) => Box::new(ppo::Ppo::new(be, c.clone(), max_targets)?),
        })
    }
}

/// How a token-level loss combines its token terms (veRL's `loss_agg_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossAgg {
    /// Mean over the mini-batch's tokens (every token counts the same).
    #[serde(rename = "token-mean")]
    TokenMean,
    /// Σ over a sequence's tokens, mean over the mini-batch's sequences.
    #[serde(rename = "seq-mean-token-sum")]
    SeqMeanTokenSum,
    /// Mean over a sequence's tokens, mean over the sequences (every sequence counts the same).
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
}

impl LossAgg {
    /// The weight of each token of a sequence of `len` tokens.
    pub fn weight(self, len: usize, mini_seqs: usize, mini_tokens: usize) -> f32 {
        match self {
            LossAgg::TokenMean => 1.0 / mini_tokens.max(1) as f32,
            LossAgg::SeqMeanTokenSum => 1.0 / mini_seqs.max(1) as f32,
            LossAgg::SeqMeanTokenMean => 1.0 / (mini_seqs.max(1) * len.max(1)) as f32,
        }
    }
}

/// Per-response-token device buffers of a token-level loss (GRPO, REINFORCE): each token's
/// advantage (its sequence's), its weight in the loss, and its loss term.
pub struct TokenLoss<B: Backend> {
    adv: B::Buf,
    weight: B::Buf,
    loss: B::Buf,
}

/// F32 lengths of `TokenLoss`'s buffers (advantage, weight, loss).
pub fn token_loss_lens(max_targets: usize) -> [usize; 3] {
    [max_targets.max(1); 3]
}

impl<B: Backend> TokenLoss<B> {
    pub fn new(be: &B, max_targets: usize) -> Result<Self> {
        let [a, w, l] = token_loss_lens(max_targets);
        let f = |n| be.alloc(crate::backend::DType::F32, n);
        Ok(TokenLoss { adv: f(a)?, weight: f(w)?, loss: f(l)? })
    }

    /// Uploads each token's advantage — its own (`x.token_advantages`) or its sequence's
    /// target — and each token's weight under `agg`; returns the (loss, advantage, weight)
    /// views of this micro-batch.
    pub fn stage(&self, be: &B, x: &LossInputs<B>, agg: LossAgg) -> Result<[View<'_, B>; 3]> {
        let nt = x.seqs.tokens();
        let lens = x.seqs.cu_host.windows(2).map(|w| (w[1] - w[0]) as usize);
        let adv: Vec<f32> = match x.token_advantages {
            Some(a) => a.to_vec(),
            None => x.targets.iter().zip(lens.clone()).flat_map(|(&a, n)| std::iter::repeat_n(a, n)).collect(),
        };
        anyhow::ensure!(adv.len() == nt, "{} token advantages for {nt} tokens", adv.len());
        let weight: Vec<f32> = lens.flat_map(|n| std::iter::repeat_n(agg.weight(n, x.mini_seqs, x.mini_tokens), n)).collect();
        let (loss, adv_v, weight_v) =
            (View::all(&self.loss).slice(0, nt), View::all(&self.adv).slice(0, nt), View::all(&self.weight).slice(0, nt));
        be.upload_f32(adv_v, &adv)?;
        be.upload_f32(weight_v, &weight)?;
        Ok([loss, adv_v, weight_v])
    }

    /// Σ_t loss[t] of the micro-batch `stage` prepared (weights already applied).
    pub fn total(&self, be: &B, x: &LossInputs<B>) -> Result<f64> {
        let mut l = vec![0f32; x.seqs.tokens()];
        be.download_f32(View::all(&self.loss).slice(0, l.len()), &mut l)?;
        Ok(l.iter().map(|&v| v as f64).sum::<f64>())
    }
}

/// One micro-batch's loss inputs, on the device. Log-prob arrays hold the micro-batch's
/// response tokens, sequence by sequence (`seqs`).
pub struct LossInputs<'a, B: Backend> {
    /// The policy's per-token log-probs (F32).
    pub logp: View<'a, B>,
    /// Written by `loss`: ∂loss/∂logp (F32), the backward's input.
    pub dlogp: View<'a, B>,
    pub ref_logp: View<'a, B>,
    /// The behaviour policy's log-probs, when the objective asked for them.
    pub old_logp: Option<View<'a, B>>,
    pub seqs: Seqs<'a, B>,
    /// The micro-batch's per-sequence targets (host), from `Objective::targets`.
    pub targets: &'a [f32],
    /// Per-token advantages of the micro-batch (host, sequence by sequence), from
    /// `Objective::token_targets`, for objectives with a critic.
    pub token_advantages: Option<&'a [f32]>,
    /// Sequences and response tokens of the whole mini-batch: losses are means over it.
    pub mini_seqs: usize,
    pub mini_tokens: usize,
}

/// What stage 1 gets: generate-and-score with the reference model, the training prompts, and
/// the pool of prompt indices the loop samples from (an objective may filter it).
pub struct Stage1<'a, B: Backend> {
    pub reference: RolloutCtx<'a, B>,
    pub train: &'a PromptSet,
    pub pool: &'a mut Vec<usize>,
    /// Where results shared by runs may be cached.
    pub cache_dir: &'a Path,
    pub seed: u64,
    /// The run's ranks: a stage 1 splits its work over them (and only rank 0 reports).
    pub comm: &'a dyn crate::dist::HostComm,
}

/// How an objective's critic trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CriticSettings {
    pub lr: f32,
    /// veRL's `cliprange_value`.
    pub value_clip: f32,
    /// A value head on the policy's trunk (`Some(vf_coef)`: the value loss's weight in the
    /// policy's loss) instead of a separate model.
    pub shared: Option<f32>,
}

/// Per response token, sequence by sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenTargets {
    pub advantages: Vec<Vec<f32>>,
    /// The critic's regression targets.
    pub returns: Vec<Vec<f32>>,
}

pub trait Objective<B: Backend> {
    fn name(&self) -> &'static str;
    /// Responses sampled per prompt at each step.
    fn samples_per_prompt(&self) -> usize;
    /// Whether `loss` needs the behaviour (pre-update) policy's log-probs.
    fn needs_old_logprobs(&self) -> bool {
        false
    }
    /// The clip range ε of its importance ratio, if it clips one (for the diagnostics).
    fn ratio_clip(&self) -> Option<f32> {
        None
    }
    /// Passes over each step's batch.
    fn epochs(&self) -> usize {
        1
    }
    /// A critic to train beside the policy (`crate::train::critic`), if the objective uses one.
    fn critic(&self) -> Option<CriticSettings> {
        None
    }
    /// Per-token advantages and value targets from the critic's values at the step's
    /// rollouts (objectives with a critic). Log-probs and values are per response token.
    fn token_targets(
        &self,
        _rollouts: &[Rollout],
        _ref_lp: &[Vec<f32>],
        _old_lp: &[Vec<f32>],
        _values: &[Vec<f32>],
    ) -> Result<TokenTargets> {
        anyhow::bail!("{} has no critic", self.name())
    }
    /// Coefficient of the −mean-token-entropy term added to the loss.
    fn entropy_coeff(&self) -> f32;
    /// Runs once before training (and again on resume, so it must be cached or cheap).
    fn prepare(&mut self, _stage: Stage1<B>) -> Result<()> {
        Ok(())
    }
    /// Prompts `first..s.train.len()` were appended to the training set during the run
    /// (self-play problems; `s.pool` is not theirs to filter): an objective with per-prompt
    /// stage-1 results computes theirs.
    fn add_prompts(&mut self, _stage: Stage1<B>, _first: usize) -> Result<()> {
        Ok(())
    }
    /// Per-sequence targets (advantages, regression targets) for a step's rollouts, which
    /// come `samples_per_prompt` per prompt, consecutively.
    fn targets(&self, rollouts: &[Rollout]) -> Vec<f32>;
    /// Enqueues the loss of one micro-batch and writes `x.dlogp`.
    fn loss(&self, be: &B, x: &LossInputs<B>) -> Result<()>;
    /// The loss `loss` last computed, as its contribution to the mini-batch mean (read after
    /// the backward, so the device is not waited on in between).
    fn read_loss(&self, be: &B, x: &LossInputs<B>) -> Result<f64>;
}
