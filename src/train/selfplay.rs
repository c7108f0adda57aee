//! `[selfplay]`: problems proposed by a model during the run. Every `every` steps the proposer
//! (the policy being trained, or the frozen reference) is asked for `proposals` new problems
//! (`Task::proposal_prompt`, sampled at `temperature`); a reply is accepted when the task reads
//! a well-formed, in-range, solvable problem from it (`Task::read_proposal`) that is not
//! already a training problem, a held-out problem or an earlier proposal. Accepted problems
//! join the training pool: a `mix` share of every later step's prompts is drawn from them.
//! They are in the checkpoint, so a resumed run trains on the same ones.
use crate::task::{Problem, ProblemSpec, Rejection, Task};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proposer {
    /// The policy being trained (its problems follow what it has learned).
    #[default]
    Policy,
    /// The frozen reference model (the base).
    Reference,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfPlaySection {
    /// Propose at steps 1, 1 + every, 1 + 2·every, …; 0: no self-play.
    pub every: usize,
    /// Replies sampled per round.
    pub proposals: usize,
    /// Share of each step's prompts drawn (uniformly, with replacement) from the accepted
    /// problems once there are any; the rest come from the training pool as before.
    pub mix: f32,
    pub proposer: Proposer,
    pub temperature: f32,
    /// Tokens per proposal reply.
    pub max_tokens: usize,
    /// Accepted problems kept at most (later proposals are then rejected as `pool_full`).
    pub max_pool: usize,
}

impl Default for SelfPlaySection {
    fn default() -> Self {
        SelfPlaySection { every: 0, proposals: 64, mix: 0.25, proposer: Proposer::Policy, temperature: 1.0, max_tokens: 32, max_pool: 4096 }
    }
}

impl SelfPlaySection {
    pub fn enabled(&self) -> bool {
        self.every > 0
    }

    /// Whether step `step_no` (1-based) starts with a proposal round.
    pub fn proposes_at(&self, step_no: usize) -> bool {
        self.enabled() && step_no.saturating_sub(1).is_multiple_of(self.every)
    }

    /// Of `n` prompts, how many come from the accepted problems (`pool` of them).
    pub fn drawn(&self, n: usize, pool: usize) -> usize {
        if pool == 0 {
            return 0;
        }
        ((self.mix as f64 * n as f64).round() as usize).min(n)
    }

    pub fn validate(&self, task: &dyn Task, max_response_tokens: usize) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if task.proposal_prompt(&ProblemSpec::default(), crate::task::Template::Compact).is_none() {
            bail!("[selfplay]: task {} takes no proposals (countdown does)", task.name());
        }
        if self.proposals == 0 || self.max_pool == 0 {
            bail!("selfplay.proposals and selfplay.max_pool must be positive");
        }
        if !(0.0..=1.0).contains(&self.mix) {
            bail!("selfplay.mix must lie in [0, 1]");
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!("selfplay.temperature must be a positive number");
        }
        if self.max_tokens == 0 || self.max_tokens > max_response_tokens {
            bail!("selfplay.max_tokens must lie in 1..=train.max_response_tokens ({max_response_tokens}): replies use the rollout's planned buffers");
        }
        crate::util::limits::at_most("selfplay.proposals", self.proposals, crate::util::limits::MAX_ITEMS)?;
        Ok(())
    }
}

/// One proposal round's counts (metrics `selfplay/*`, on the steps that propose).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Round {
    #[serde(rename = "selfplay/proposals")]
    pub proposed: usize,
    #[serde(rename = "selfplay/accepted")]
    pub accepted: usize,
    #[serde(rename = "selfplay/malformed")]
    pub malformed: usize,
    #[serde(rename = "selfplay/out_of_range")]
    pub out_of_range: usize,
    #[serde(rename = "selfplay/unsolvable")]
    pub unsolvable: usize,
    #[serde(rename = "selfplay/duplicate")]
    pub duplicate: usize,
    #[serde(rename = "selfplay/pool_full")]
    pub pool_full: usize,
    /// accepted / proposals.
    #[serde(rename = "selfplay/accepted_frac", default)]
    pub accepted_frac: f32,
    /// Accepted problems in the pool after the round (all rounds).
    #[serde(rename = "selfplay/pool", default)]
    pub pool: usize,
}

/// A round's result: the problems that may join the pool (in reply order), the counts, and
/// each reply's verdict (`proposals.jsonl`).
pub struct Accepted {
    pub problems: Vec<Problem>,
    pub round: Round,
    pub verdicts: Vec<&'static str>,
}

/// Reads `replies` and keeps the new ones. `known` holds the identities (`Task::identity`) of
/// every training, held-out and accepted problem; accepted ones are added to it. `room`: how
/// many more the pool takes.
pub fn accept(task: &dyn Task, replies: &[String], spec: &ProblemSpec, known: &mut HashSet<String>, room: usize) -> Accepted {
    let mut round = Round { proposed: replies.len(), ..Round::default() };
    let (mut problems, mut verdicts) = (vec![], vec![]);
    for reply in replies {
        let (counter, verdict) = match task.read_proposal(reply, spec) {
            Ok(p) if !known.insert(task.identity(&p)) => (&mut round.duplicate, "duplicate"),
            Ok(p) if problems.len() >= room => {
                known.remove(&task.identity(&p));
                (&mut round.pool_full, "pool_full")
            }
            Ok(p) => {
                problems.push(p);
                (&mut round.accepted, "accepted")
            }
            Err(Rejection::Malformed) => (&mut round.malformed, "malformed"),
            Err(Rejection::OutOfRange) => (&mut round.out_of_range, "out_of_range"),
            Err(Rejection::Unsolvable) => (&mut round.unsolvable, "unsolvable"),
            Err(Rejection::Duplicate) => (&mut round.duplicate, "duplicate"),
        };
        *counter += 1;
        verdicts.push(verdict);
    }
    round.accepted_frac = round.accepted as f32 / round.proposed.max(1) as f32;
    Accepted { problems, round, verdicts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_proposals_are_new_well_formed_and_solvable() {
        let task = crate::task::by_name("countdown").unwrap();
        let spec = ProblemSpec::default();
        let train = Problem::Countdown { nums: vec![2, 3, 4], target: 24 };
        let mut known: HashSet<String> = [task.identity(&train)].into_iter().collect();
        let replies: Vec<String> = [
            "<answer>numbers 2 3 4 target 24</answer>", // a training problem
            "<answer>numbers 5 6 7 target 37</answer>", // new: 5 * 6 + 7
            "<answer>numbers 5 6 7 target 37</answer>", // proposed twice in one round
            "<answer>numbers 1 1 1 target 97</answer>", // unsolvable
            "<answer>numbers 1 2 target 3</answer>",    // 2 numbers: out of the counts [3, 4]
            "no answer",
            "<answer>numbers 8 9 10 target 7</answer>", // 8 + 9 - 10: new, but the pool is full
        ]
        .map(String::from)
        .to_vec();
        let Accepted { problems: got, round, verdicts } = accept(task, &replies, &spec, &mut known, 1);
        assert_eq!(got, vec![Problem::Countdown { nums: vec![5, 6, 7], target: 37 }]);
        assert_eq!(verdicts, ["duplicate", "accepted", "duplicate", "unsolvable", "out_of_range", "malformed", "pool_full"]);
        let want = Round {
            proposed: 7,
            accepted: 1,
            malformed: 1,
            out_of_range: 1,
            unsolvable: 1,
            duplicate: 2,
            pool_full: 1,
            accepted_frac: 1.0 / 7.0,
            pool: 0,
        };
        assert_eq!(round, want);
        // The full pool's reject stays proposable later; the accepted one is now known.
        let again = accept(task, &replies[5..], &spec, &mut known, 10).problems;
        assert_eq!(again, vec![Problem::Countdown { nums: vec![8, 9, 10], target: 7 }]);
        assert!(known.contains(&task.identity(&got[0])));
    }

    #[test]
    fn rounds_and_mix() {
        let s = SelfPlaySection { every: 10, mix: 0.25, ..SelfPlaySection::default() };
        assert!(s.proposes_at(1) && s.proposes_at(11) && !s.proposes_at(10));
        assert_eq!((s.drawn(64, 0), s.drawn(64, 3), s.drawn(2, 3)), (0, 16, 1));
        assert!(!SelfPlaySection::default().proposes_at(1));
        let task = crate::task::by_name("countdown").unwrap();
        assert!(s.validate(task, 32).is_ok());
        assert!(s.validate(task, 16).unwrap_err().to_string().contains("max_tokens"));
        let lake = crate::task::by_name("frozenlake").unwrap();
        assert!(s.validate(lake, 32).unwrap_err().to_string().contains("no proposals"));
    }
}
