//! Environments: tasks played over several turns. A single-turn task scores one response; an
//! environment answers each reply with the next observation until the episode ends, and the
//! episode's return is the rollout's score. The rollout keeps the KV cache across turns
//! (`Generator::generate_turns`) and the trainer masks the observation tokens out of the loss
//! (`PackedBatch::from_pairs` over trajectories with environment spans).
//!
//! A task with an environment returns it from `Task::environment`; the episode's first
//! observation is the task's prompt, so prompt sets, templates and the SFT warm start stay the
//! single-turn ones.
use super::reward::Score;
use super::rewards::RewardParams;
use super::template::Template;
use super::Problem;

/// How an episode ended, in the terms every phase reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// The return (the rollout's score) and the verdict: `Correct` when the goal was reached.
    pub score: Score,
    /// Turns taken (replies the environment answered).
    pub turns: u32,
    /// Replies that named no legal action (each still a turn).
    pub invalid: u32,
}

/// The policies an environment can play itself, as references for a model's success rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// A shortest way to the goal (FrozenLake: breadth-first search over the map).
    Optimal,
    /// Uniformly random legal actions.
    Random,
}

/// One episode in progress.
pub trait Episode: Send {
    /// The agent's reply to the latest observation; the next observation, or `None` when the
    /// episode is over (goal, failure or the turn limit).
    fn step(&mut self, reply: &str) -> Option<String>;
    fn outcome(&self) -> Outcome;
}

pub trait Environment: Send + Sync {
    /// A fresh episode of `p` (its first observation is `Task::prompt(p, template)`); `seed`
    /// keys the episode's randomness, `params` the rewards' settings (the invalid-move cost).
    fn reset(&self, p: &Problem, template: Template, seed: u64, params: &RewardParams) -> Box<dyn Episode>;
    /// The outcome of a reference policy playing an episode of `p`.
    fn reference(&self, p: &Problem, policy: Reference, seed: u64, params: &RewardParams) -> Outcome;
    /// A demonstration of `p` for the SFT warm start: the optimal policy's replies, each
    /// replaced by a random legal move with probability `random_moves`, interleaved with the
    /// observations — (text, written by the agent) segments, starting with the agent's.
    fn demonstration(&self, p: &Problem, template: Template, seed: u64, random_moves: f32) -> Vec<(String, bool)>;
}
