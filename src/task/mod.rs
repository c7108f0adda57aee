//! Tasks: Countdown, 3-digit multiplication and FrozenLake — problems, prompt templates,
//! TinyZero-exact rewards, an exhaustive solver, environments played over several turns
//! (`env`), and datasets (parquet, JSON lines, seeded generators).
//!
//! A task is one implementation of [`Task`] registered in [`TASKS`]; the trainer, the SFT warm
//! start and the commands reach tasks only through that trait and [`by_name`] (no string
//! dispatch on a task name anywhere else).
//!
//! ```
//! use tz_engine::task::{render_prompt, score, solve_countdown, Problem, RewardKind, Template};
//! let p = Problem::Countdown { nums: vec![44, 19, 35], target: 98 };
//! assert!(render_prompt(&p, Template::Base).contains("Using the numbers [44, 19, 35]"));
//! let eq = solve_countdown(&[44, 19, 35], 98).unwrap();
//! assert_eq!(score(&p, &format!("<think>...</think>\n<answer>{eq}</answer>"), RewardKind::Tinyzero).score, 1.0);
//! assert_eq!(score(&p, "<answer>44 + 19</answer>", RewardKind::Tinyzero).score, 0.1);
//! ```
pub mod countdown;
pub mod data;
pub mod env;
pub mod expr;
pub mod frozenlake;
pub mod multiply;
pub mod proposal;
pub mod reward;
pub mod rewards;
pub mod solver;
pub mod template;

pub use data::{generate_countdown, generate_multiply, load_problems, parse_rows, write_countdown_parquet};
pub use env::{Environment, Episode, Outcome, Reference};
pub use frozenlake::{Lake, LakeSpec};
pub use proposal::Rejection;
pub use reward::{Reason, RewardKind, Score};
pub use solver::solve_countdown;
pub use template::Template;

use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Problem {
    Countdown { nums: Vec<i64>, target: i64 },
    Multiply { a: i64, b: i64 },
    FrozenLake(Lake),
}

/// The generators' settings. Countdown: how many numbers (chosen uniformly among `counts`),
/// numbers uniform in 1..=max_number, targets uniform in 1..=max_target (TinyZero's dataset uses
/// 3 or 4 numbers and targets below 100; smaller ranges make an easier curriculum for tiny
/// models). FrozenLake: `lake`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProblemSpec {
    pub counts: Vec<usize>,
    pub max_number: i64,
    pub max_target: i64,
    pub lake: LakeSpec,
}

impl Default for ProblemSpec {
    fn default() -> Self {
        ProblemSpec { counts: vec![3, 4], max_number: 99, max_target: 99, lake: LakeSpec::default() }
    }
}

/// One task: how its problems are made and read, prompted, answered and scored.
pub trait Task: Send + Sync {
    /// The name configs and data lines use (`task.name`, `"task"`).
    fn name(&self) -> &'static str;
    /// `n` seeded problems. `spec` holds the generators' settings (Countdown's ranges,
    /// FrozenLake's map sizes); each task reads its own.
    fn generate(&self, n: usize, seed: u64, spec: &ProblemSpec) -> Result<Vec<Problem>>;
    /// This task's problem from one data record (a JSON object; parquet rows arrive as one),
    /// or `None` when the record is not shaped like this task's. Fields the task does not use
    /// are ignored.
    fn parse(&self, record: &serde_json::Value) -> Option<Result<Problem>>;
    /// The record shape `parse` accepts, for error messages (`{"a":A,"b":B}`).
    fn record_shape(&self) -> &'static str;
    fn prompt(&self, p: &Problem, template: Template) -> String;
    fn score(&self, p: &Problem, response: &str, reward: RewardKind) -> Score;
    /// A correct response in the template's format (the SFT target), when one can be written.
    fn sft_response(&self, p: &Problem, template: Template) -> Option<String>;
    /// `response` rewritten the way base language models often answer (Countdown: the target
    /// appended as `expr=target`); tasks without such a style return it unchanged.
    fn base_model_style(&self, _p: &Problem, response: &str) -> String {
        response.to_string()
    }
    /// Generation stops once a response contains one of these (kept in the response).
    fn stop_strings(&self) -> Vec<String> {
        vec!["</answer>".to_string()]
    }
    /// The group a problem is reported under in evaluations ("3 numbers").
    fn difficulty(&self, p: &Problem) -> &'static str;
    /// What makes two problems the same for held-out sets (FrozenLake: the map, whatever
    /// the seed).
    fn identity(&self, p: &Problem) -> String {
        format!("{p:?}")
    }
    /// Self-play: the request to propose a new problem of this task within `spec`'s ranges, in
    /// the template's format; `None` when the task takes no proposals.
    fn proposal_prompt(&self, _spec: &ProblemSpec, _template: Template) -> Option<String> {
        None
    }
    /// A well-formed proposal of `p` (what an SFT warm start demonstrates).
    fn proposal_reply(&self, _p: &Problem, _template: Template) -> Option<String> {
        None
    }
    /// The problem a proposal's reply states, if it is well-formed, within `spec` and
    /// solvable (else why not).
    fn read_proposal(&self, _reply: &str, _spec: &ProblemSpec) -> std::result::Result<Problem, Rejection> {
        Err(Rejection::Malformed)
    }
    /// The environment that plays this task's problems over several turns; `None` for a
    /// single-turn task (one response, scored by `score`).
    fn environment(&self) -> Option<&'static dyn Environment> {
        None
    }
}

/// Every task, once.
pub static TASKS: &[&dyn Task] = &[&countdown::Countdown, &multiply::Multiply, &frozenlake::FrozenLake];

/// The registered task called `name`.
pub fn by_name(name: &str) -> Result<&'static dyn Task> {
    match TASKS.iter().find(|t| t.name() == name) {
        Some(t) => Ok(*t),
        None => bail!("unknown task '{name}' (known: {})", names().join(", ")),
    }
}

pub fn names() -> Vec<&'static str> {
    TASKS.iter().map(|t| t.name()).collect()
}

/// A problem from a record of any registered task (the first whose shape it has).
pub fn parse_any(record: &serde_json::Value) -> Result<Problem> {
    for t in TASKS {
        if let Some(p) = t.parse(record) {
            return p;
        }
    }
    let shapes: Vec<&str> = TASKS.iter().map(|t| t.record_shape()).collect();
    bail!("expected {}", shapes.join(" or "))
}

impl Problem {
    /// The task this problem belongs to.
    pub fn task(&self) -> &'static dyn Task {
        match self {
            Problem::Countdown { .. } => &countdown::Countdown,
            Problem::Multiply { .. } => &multiply::Multiply,
            Problem::FrozenLake(_) => &frozenlake::FrozenLake,
        }
    }

    pub fn difficulty_label(&self) -> &'static str {
        self.task().difficulty(self)
    }
}

/// The prompt for `p` in template `t`.
pub fn render_prompt(p: &Problem, t: Template) -> String {
    p.task().prompt(p, t)
}

/// `response` scored by `p`'s task with reward `kind`.
pub fn score(p: &Problem, response: &str, kind: RewardKind) -> Score {
    p.task().score(p, response, kind)
}

/// A correct response to `p` in template `t`'s format.
pub fn sft_response(p: &Problem, t: Template) -> Option<String> {
    p.task().sft_response(p, t)
}

/// Task text for training a small tokenizer: prompts and answers of every task and template.
pub fn tokenizer_corpus(seed: u64) -> Vec<String> {
    let mut out = vec![];
    // The default ranges always fill (about two draws per problem).
    for p in generate_countdown(2000, seed, &ProblemSpec::default()).unwrap_or_default() {
        for t in [Template::Compact, Template::Base] {
            let r = sft_response(&p, t).unwrap_or_default();
            out.push(format!("{}{}", render_prompt(&p, t), r));
        }
    }
    for p in generate_multiply(200, seed) {
        out.push(render_prompt(&p, Template::Base));
    }
    out
}
