//! Rollouts: batched generation from a policy (`generate`: packed prefill into a KV cache, one
//! decode row per live sequence), and the generate-and-score step every phase that samples
//! uses — RL steps, V* estimation, evaluation. A problem whose task has an environment is
//! played as an episode: each reply is answered with the environment's next observation
//! (appended to the same sequence, KV cache kept), and the episode's return is the score.
pub mod generate;
pub mod prompts;

pub use generate::{Finish, GenConfig, GenLayout, Generation, Generator};
pub use prompts::PromptSet;

use crate::backend::{Backend, SamplingParams};
use crate::model::{Lora, Qwen2};
use crate::task::rewards::RewardSpec;
use crate::task::{Episode, Score};
use crate::tokenizer::Tokenizer;
use anyhow::Result;

/// One scored response (serializable: data-parallel ranks exchange their rollouts).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    /// Index into the prompt set.
    pub idx: usize,
    pub tokens: Vec<u32>,
    pub text: String,
    pub score: Score,
    pub finish: Finish,
    /// Environment observations inside `tokens`, as [start, end) (empty for single-turn
    /// tasks): not the policy's tokens, so not trained on.
    #[serde(default)]
    pub env_spans: Vec<[u32; 2]>,
    /// Episodes: turns taken and replies that named no action (0 for single-turn tasks).
    #[serde(default)]
    pub turns: u32,
    #[serde(default)]
    pub invalid: u32,
}

impl Rollout {
    /// The policy's own tokens (the response less the environment's observations).
    pub fn agent_tokens(&self) -> usize {
        crate::model::agent_tokens(self.tokens.len(), &self.env_spans)
    }
}

/// Everything generate-and-score needs: which model samples, with which planned generator,
/// tokenizer and generation settings, and the reward to score with (each problem's own task
/// gives the verdict).
pub struct RolloutCtx<'a, B: Backend> {
    pub be: &'a B,
    pub model: &'a Qwen2<B>,
    /// Adapters added to `model` (a LoRA policy); `None` samples the base.
    pub adapters: Option<&'a Lora<B>>,
    pub gen: &'a Generator<B>,
    pub tok: &'a Tokenizer,
    pub settings: GenConfig,
    pub reward: &'a RewardSpec,
}

impl<'a, B: Backend> RolloutCtx<'a, B> {
    /// The same context sampling from `model` instead.
    pub fn with_model(&self, model: &'a Qwen2<B>) -> Self {
        RolloutCtx { model, adapters: None, settings: self.settings.clone(), ..*self }
    }

    /// The same context with other sampling settings (and, if given, another response limit).
    pub fn with_sampling(&self, sampling: SamplingParams, max_new_tokens: Option<usize>) -> Self {
        let settings =
            GenConfig { sampling, max_new_tokens: max_new_tokens.unwrap_or(self.settings.max_new_tokens), ..self.settings.clone() };
        RolloutCtx { settings, ..*self }
    }

    /// Generates one response per entry of `idx` (prompt indices into `set`, repeats allowed;
    /// `seeds[j]` keys response j's sampling stream) and scores it.
    ///
    /// Problems with an environment are played as episodes (`seeds[j]` also keys episode j's
    /// randomness) and scored by their outcome.
    pub fn rollout(&self, set: &PromptSet, idx: &[usize], seeds: &[u64]) -> Result<Vec<Rollout>> {
        let prompts: Vec<Vec<u32>> = idx.iter().map(|&i| set.tokens[i].clone()).collect();
        let decode = |ids: &[u32]| self.tok.decode(ids, false).unwrap_or_default();
        let mut episodes: Vec<Option<Box<dyn Episode>>> = idx
            .iter()
            .zip(seeds)
            .map(|(&i, &s)| {
                let p = &set.problems[i];
                p.task().environment().map(|env| env.reset(p, set.template, s, &self.reward.params))
            })
            .collect();
        let mut next_turn = |j: usize, reply: &[u32], _: Finish| -> Result<Option<Vec<u32>>> {
            let Some(ep) = episodes[j].as_mut() else { return Ok(None) };
            match ep.step(&self.tok.decode(reply, true)?) {
                Some(obs) => Ok(Some(self.tok.encode(&obs)?)),
                None => Ok(None),
            }
        };
        let outs = self.gen.generate_turns(self.be, self.model, self.adapters, &prompts, seeds, &self.settings, &decode, &mut next_turn)?;
        let mut res = Vec::with_capacity(outs.len());
        for ((&i, g), ep) in idx.iter().zip(outs).zip(&episodes) {
            let text = self.tok.decode(&g.tokens, true)?;
            let p = &set.problems[i];
            let (score, turns, invalid) = match ep {
                Some(ep) => {
                    let o = ep.outcome();
                    (o.score, o.turns, o.invalid)
                }
                None => (self.reward.score(p, &text, g.tokens.len()), 0, 0),
            };
            res.push(Rollout { idx: i, tokens: g.tokens, text, score, finish: g.finish, env_spans: g.env_spans, turns, invalid });
        }
        Ok(res)
    }
}

impl<B: Backend> Clone for RolloutCtx<'_, B> {
    fn clone(&self) -> Self {
        RolloutCtx { settings: self.settings.clone(), ..*self }
    }
}
