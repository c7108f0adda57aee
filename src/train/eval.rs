//! Held-out evaluation: greedy mean reward, exact-solve rate, format rate and pass@k, overall
//! and by difficulty. Episodes (tasks with an environment) also report mean turns to the
//! goal, the invalid-reply rate, and the success of the environment's optimal and uniformly
//! random policies on the same problems, as references.
use crate::backend::{Backend, SamplingParams};
use crate::dist::{all_gather_json, split_range, HostComm};
use crate::rollout::{PromptSet, Rollout, RolloutCtx};
use crate::task::Reference;
use crate::util::progress::Progress;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvalGroup {
    pub n: usize,
    pub reward_mean: f32,
    pub solve_rate: f32,
    pub format_rate: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_at_k: Option<f32>,
    /// Sampled pass@1 at temperature 1: the solve rate over the pass@k samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_solve_rate: Option<f32>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub episodes: Option<EpisodeStats>,
}

/// Episode statistics of greedy evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EpisodeStats {
    /// Mean turns of the episodes that reached the goal (0 when none did).
    pub steps_to_goal_mean: f32,
    /// Replies that named no action, over all turns taken.
    pub invalid_rate: f32,
    /// Success of the environment's shortest-path policy on the same problems.
    pub optimal_solve_rate: f32,
    /// Success of uniformly random moves on the same problems.
    pub random_solve_rate: f32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvalReport {
    #[serde(flatten)]
    pub overall: EvalGroup,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    pub by_difficulty: BTreeMap<String, EvalGroup>,
}

#[derive(Default)]
struct Acc {
    n: usize,
    reward: f64,
    solved: usize,
    formatted: usize,
    pass: usize,
    /// Solved samples and samples drawn (pass@k).
    sampled_solved: usize,
    sampled: usize,
    /// Episodes: turns of solved episodes, all turns, invalid replies, reference successes.
    episodes: bool,
    goal_turns: u64,
    turns: u64,
    invalid: u64,
    optimal: usize,
    random: usize,
}

impl Acc {
    fn group(&self, with_pass: bool) -> EvalGroup {
        let n = self.n.max(1) as f32;
        EvalGroup {
            n: self.n,
            reward_mean: (self.reward / self.n.max(1) as f64) as f32,
            solve_rate: self.solved as f32 / n,
            format_rate: self.formatted as f32 / n,
            pass_at_k: with_pass.then(|| self.pass as f32 / n),
            sampled_solve_rate: with_pass.then(|| self.sampled_solved as f32 / self.sampled.max(1) as f32),
            episodes: self.episodes.then(|| EpisodeStats {
                steps_to_goal_mean: self.goal_turns as f32 / self.solved.max(1) as f32,
                invalid_rate: self.invalid as f32 / self.turns.max(1) as f32,
                optimal_solve_rate: self.optimal as f32 / n,
                random_solve_rate: self.random as f32 / n,
            }),
        }
    }
}

/// Greedy evaluation of the first `limit` problems (0 = all) with `ctx`'s model, stop rules and
/// response limit; with `pass_k > 0` also draws `pass_k` samples at temperature 1 per problem
/// for pass@k.
///
/// With `progress`, generated responses are counted there. Stops with
/// `util::interrupt::Interrupted` at a generator-full boundary after Ctrl-C.
///
/// On a data-parallel run every rank of `comm` calls this: each generates its contiguous part
/// of the problems, and the report, computed from every rank's results, is the same on all.
pub fn evaluate<B: Backend>(
    ctx: &RolloutCtx<B>,
    set: &PromptSet,
    limit: usize,
    pass_k: usize,
    seed: u64,
    mut progress: Option<&mut Progress>,
    comm: &dyn HostComm,
) -> Result<EvalReport> {
    let n = if limit == 0 { set.len() } else { limit.min(set.len()) };
    let idx: Vec<usize> = split_range(n, comm.world(), comm.rank()).collect();
    let greedy = ctx.with_sampling(SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 }, None);
    // One generator-full at a time (the results are the same: each sequence's sample does not
    // depend on its batch), so progress is counted and Ctrl-C is honoured between them.
    //
    // Ranks go through the same number of rounds (rank 0's part is the largest) and decide
    // together whether to stop, so an interrupted evaluation stops every rank at one boundary.
    let largest = split_range(n, comm.world(), 0).len();
    let mut run = |c: &RolloutCtx<B>, idx: &[usize], seeds: &[u64], per_problem: usize| -> Result<Vec<Rollout>> {
        let mut out = Vec::with_capacity(idx.len());
        let chunk = c.gen.slots.max(1);
        for round in 0..(largest * per_problem).div_ceil(chunk) {
            if crate::dist::any(comm, crate::util::interrupt::requested())? {
                return Err(anyhow::Error::new(crate::util::interrupt::Interrupted("evaluation".into())));
            }
            let r = (round * chunk).min(idx.len())..((round + 1) * chunk).min(idx.len());
            let (i, s) = (&idx[r.clone()], &seeds[r]);
            if i.is_empty() {
                continue;
            }
            out.extend(c.rollout(set, i, s)?);
            if let Some(p) = progress.as_deref_mut() {
                for _ in 0..i.len() {
                    p.inc();
                }
            }
        }
        Ok(out)
    };
    let mine = run(&greedy, &idx, &vec![0; idx.len()], 1)?;
    let mut passed = vec![false; n];
    // Solved samples per problem.
    let mut wins = vec![0usize; n];
    if pass_k > 0 {
        let sample = ctx.with_sampling(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 }, None);
        let rep: Vec<usize> = idx.iter().flat_map(|&i| std::iter::repeat_n(i, pass_k)).collect();
        let seeds: Vec<u64> = rep.iter().enumerate().map(|(j, &i)| crate::rng::derive_seed(seed, i as u64, (j % pass_k) as u64)).collect();
        for r in run(&sample, &rep, &seeds, pass_k)? {
            passed[r.idx] |= r.score.solved();
            wins[r.idx] += r.score.solved() as usize;
        }
    }
    let outs: Vec<Rollout> = all_gather_json(comm, mine)?.concat();
    let passed: Vec<bool> = match comm.world() {
        1 => passed,
        // Each rank set the flags of its own problems only.
        _ => all_gather_json(comm, passed)?.iter().fold(vec![false; n], |acc, p| acc.iter().zip(p).map(|(a, b)| *a | *b).collect()),
    };
    let wins: Vec<usize> = match comm.world() {
        1 => wins,
        _ => all_gather_json(comm, wins)?.iter().fold(vec![0; n], |acc, w| acc.iter().zip(w).map(|(a, b)| a + b).collect()),
    };
    let mut all = Acc::default();
    let mut by: BTreeMap<String, Acc> = BTreeMap::new();
    let params = &ctx.reward.params;
    for r in &outs {
        let p = &set.problems[r.idx];
        let label = p.difficulty_label();
        let env = p.task().environment();
        let reference = |policy| env.is_some_and(|e| e.reference(p, policy, 0, params).score.solved());
        let (optimal, random) = (reference(Reference::Optimal), reference(Reference::Random));
        for acc in [&mut all, by.entry(label.to_string()).or_default()] {
            if env.is_some() {
                acc.episodes = true;
                acc.goal_turns += if r.score.solved() { r.turns as u64 } else { 0 };
                acc.turns += r.turns as u64;
                acc.invalid += r.invalid as u64;
                acc.optimal += optimal as usize;
                acc.random += random as usize;
            }
            acc.n += 1;
            acc.reward += r.score.score as f64;
            acc.solved += r.score.solved() as usize;
            acc.formatted += r.score.formatted() as usize;
            acc.pass += passed[r.idx] as usize;
            acc.sampled_solved += wins[r.idx];
            acc.sampled += pass_k;
        }
    }
    Ok(EvalReport {
        overall: all.group(pass_k > 0),
        k: (pass_k > 0).then_some(pass_k),
        by_difficulty: by.into_iter().map(|(k, a)| (k, a.group(pass_k > 0))).collect(),
    })
}
