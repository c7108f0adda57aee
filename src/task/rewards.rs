//! Rewards as plug-ins. A [`Reward`] turns one response into a number; a run's reward
//! (`task.reward`, a [`RewardSpec`]) is a weighted sum of registered rewards, the way TRL sums
//! its reward functions with `reward_weights`. Each reward registers once in [`REWARDS`]; the
//! trainer, the evaluator and `tz-engine reward` see only `RewardSpec`.
//!
//! Whatever the reward, a response's *verdict* (solved or not, and why) is the task's own
//! TinyZero check, so solve rates stay comparable across rewards; the reward only sets the
//! score the algorithms learn from.
//!
//! | name | from | value |
//! |---|---|---|
//! | `tinyzero` | TinyZero | 1.0 correct, 0.1 an answer but wrong, 0 none |
//! | `binary` | the adaptive-rollout fork (`format_score = 0`) | 1.0 correct, else 0 |
//! | `strict_format` | the TRL/unsloth reproduction | 0 / 0.1 / 1.0 by structure and answer line (`format`) |
//! | `equation` | the TRL/unsloth reproduction | 1.0 when LHS = RHS = target (`equation`) |
//! | `dense` | the "TinyZero with A\*PO" Modal project | partial credit up to 0.9, 1.0 exact (`dense`) |
//! | `cosine` | the adaptive-rollout fork's `cosine_reward` | correctness scaled by length (`cosine`) |
mod cosine;
mod dense;
mod equation;
mod format;

pub use cosine::CosineParams;

use super::reward::{RewardKind, Score};
use super::Problem;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

/// What a reward sees of one response.
pub struct Judged<'a> {
    pub problem: &'a Problem,
    /// The decoded response (special tokens dropped), as the task's check reads it.
    pub text: &'a str,
    /// Its length in tokens.
    pub tokens: usize,
    /// The task's TinyZero verdict.
    pub verdict: Score,
    pub params: &'a RewardParams,
}

/// One reward function.
pub trait Reward: Send + Sync {
    /// The name `task.reward` uses.
    fn name(&self) -> &'static str;
    /// The tasks whose problems it can score; `None`: every task.
    fn tasks(&self) -> Option<&'static [&'static str]> {
        None
    }
    fn value(&self, r: &Judged) -> f32;
}

struct Tinyzero;
impl Reward for Tinyzero {
    fn name(&self) -> &'static str {
        "tinyzero"
    }
    fn value(&self, r: &Judged) -> f32 {
        r.verdict.score
    }
}

struct Binary;
impl Reward for Binary {
    fn name(&self) -> &'static str {
        "binary"
    }
    fn value(&self, r: &Judged) -> f32 {
        r.problem.task().score(r.problem, r.text, RewardKind::Binary).score
    }
}

/// Every reward, once.
pub static REWARDS: &[&dyn Reward] = &[&Tinyzero, &Binary, &format::StrictFormat, &equation::Equation, &dense::Dense, &cosine::Cosine];

pub fn by_name(name: &str) -> Result<&'static dyn Reward> {
    REWARDS.iter().copied().find(|r| r.name() == name).ok_or_else(|| {
        let names: Vec<&str> = REWARDS.iter().map(|r| r.name()).collect();
        anyhow!("unknown reward '{name}' (known: {})", names.join(", "))
    })
}

/// Settings of the rewards that have any (`task.cosine`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardParams {
    pub cosine: CosineParams,
    /// Environments: the return lost for each reply that names no action
    /// (`task.frozenlake.invalid_penalty`).
    pub invalid_move_penalty: f32,
}

impl Default for RewardParams {
    fn default() -> Self {
        RewardParams { cosine: CosineParams::default(), invalid_move_penalty: 0.1 }
    }
}

/// A weighted sum of rewards: `task.reward = "tinyzero"`, `"equation,strict_format"`,
/// `"equation=1,strict_format=0.5"`, or a table `{ equation = 1.0, strict_format = 0.5 }`.
#[derive(Clone)]
pub struct RewardSpec {
    terms: Vec<(&'static dyn Reward, f32)>,
    pub params: RewardParams,
}

impl PartialEq for RewardSpec {
    fn eq(&self, o: &Self) -> bool {
        self.terms() == o.terms() && self.params == o.params
    }
}

impl std::fmt::Debug for RewardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RewardSpec({self}, {:?})", self.params)
    }
}

impl Default for RewardSpec {
    fn default() -> Self {
        RewardSpec::new(&[("tinyzero", 1.0)]).expect("tinyzero is registered")
    }
}

impl RewardSpec {
    pub fn new(terms: &[(&str, f32)]) -> Result<Self> {
        if terms.is_empty() {
            bail!("a reward needs at least one term");
        }
        let mut out = Vec::with_capacity(terms.len());
        for &(name, w) in terms {
            if !w.is_finite() {
                bail!("reward '{name}': weight {w} is not a finite number");
            }
            let r = by_name(name)?;
            if out.iter().any(|(x, _): &(&dyn Reward, f32)| x.name() == name) {
                bail!("reward '{name}' is listed twice");
            }
            out.push((r, w));
        }
        Ok(RewardSpec { terms: out, params: RewardParams::default() })
    }

    pub fn with_params(mut self, params: RewardParams) -> Self {
        self.params = params;
        self
    }

    /// (name, weight) of each term.
    pub fn terms(&self) -> Vec<(&'static str, f32)> {
        self.terms.iter().map(|(r, w)| (r.name(), *w)).collect()
    }

    /// An error if a term cannot score `task`'s problems, or a setting is out of range.
    pub fn check(&self, task: &str) -> Result<()> {
        for (r, _) in &self.terms {
            if let Some(tasks) = r.tasks() {
                if !tasks.contains(&task) {
                    bail!("reward '{}' scores {} problems only, not {task}", r.name(), tasks.join(", "));
                }
            }
        }
        self.params.cosine.check()
    }

    /// The settings resolved for responses of at most `max_response` tokens (cosine's
    /// `max_len = 0` means that limit).
    pub fn for_responses(&self, max_response: usize) -> Self {
        let mut s = self.clone();
        if s.params.cosine.max_len == 0 {
            s.params.cosine.max_len = max_response;
        }
        s
    }

    /// `text` (of `tokens` tokens) scored: the weighted sum, with the task's verdict.
    pub fn score(&self, p: &Problem, text: &str, tokens: usize) -> Score {
        let (score, _) = self.score_parts(p, text, tokens);
        score
    }

    /// As `score`, with each term's unweighted value.
    pub fn score_parts(&self, p: &Problem, text: &str, tokens: usize) -> (Score, Vec<(&'static str, f32)>) {
        let verdict = p.task().score(p, text, RewardKind::Tinyzero);
        let judged = Judged { problem: p, text, tokens, verdict, params: &self.params };
        let parts: Vec<(&'static str, f32)> = self.terms.iter().map(|(r, _)| (r.name(), r.value(&judged))).collect();
        // One term of weight 1 is that reward's value exactly (no rounding through a sum).
        let score = match self.terms.as_slice() {
            [(_, w)] if *w == 1.0 => parts[0].1,
            _ => self.terms.iter().zip(&parts).map(|((_, w), (_, v))| w * v).sum(),
        };
        (Score { score, reason: verdict.reason }, parts)
    }

    /// Whether a term needs the response's token count (`tz-engine reward` lines then carry it).
    pub fn needs_length(&self) -> bool {
        self.terms.iter().any(|(r, _)| r.name() == "cosine")
    }
}

impl std::str::FromStr for RewardSpec {
    type Err = anyhow::Error;
    /// `name`, or `name[=weight],name[=weight],…` (weight 1 when omitted).
    fn from_str(s: &str) -> Result<Self> {
        let mut terms = vec![];
        for item in s.split(',').map(str::trim) {
            let (name, w) = match item.split_once('=') {
                Some((n, w)) => {
                    let w: f32 = w.trim().parse().map_err(|_| anyhow!("reward '{}': weight '{}' is not a number", n.trim(), w.trim()))?;
                    (n.trim(), w)
                }
                None => (item, 1.0),
            };
            if name.is_empty() {
                bail!("empty reward name in '{s}'");
            }
            terms.push((name, w));
        }
        RewardSpec::new(&terms)
    }
}

impl std::fmt::Display for RewardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let items: Vec<String> =
            self.terms.iter().map(|(r, w)| if *w == 1.0 { r.name().to_string() } else { format!("{}={w}", r.name()) }).collect();
        f.write_str(&items.join(","))
    }
}

impl Serialize for RewardSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RewardSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Weights(std::collections::BTreeMap<String, f32>),
        }
        let spec = match Form::deserialize(d)? {
            Form::Text(s) => s.parse(),
            Form::Weights(m) => {
                let terms: Vec<(&str, f32)> = m.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                RewardSpec::new(&terms)
            }
        };
        spec.map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// The first `<answer>…</answer>` within one line, trimmed (TRL's
/// `re.search(r"<answer>(.*?)<\/answer>", …)`: `.` stops at a newline).
fn first_answer(text: &str) -> Option<&str> {
    let (open, close) = ("<answer>", "</answer>");
    let mut from = 0;
    while let Some(a) = text[from..].find(open) {
        let start = from + a + open.len();
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        if let Some(b) = text[start..line_end].find(close) {
            return Some(text[start..start + b].trim());
        }
        from = start;
    }
    None
}

/// Digit runs of `s` as integers (leading zeros dropped; a run too long for i64 never
/// equals a Countdown number, so it maps to -1).
fn numbers_in(s: &str) -> Vec<i64> {
    let mut out = vec![];
    let mut run = String::new();
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else if !run.is_empty() {
            out.push(run.parse().unwrap_or(-1));
            run.clear();
        }
    }
    out
}

/// Only digits, `+ - * / ( ) .` and whitespace.
fn arithmetic_chars_only(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_digit() || "+-*/().".contains(c) || c.is_whitespace())
}

fn countdown_parts(p: &Problem) -> Option<(&[i64], i64)> {
    match p {
        Problem::Countdown { nums, target } => Some((nums, *target)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_from_text_and_tables_and_refuse_bad_ones() {
        let s: RewardSpec = "equation=1, strict_format=0.5".parse().unwrap();
        assert_eq!(s.terms(), vec![("equation", 1.0), ("strict_format", 0.5)]);
        assert_eq!(s.to_string(), "equation,strict_format=0.5");
        let t: toml::Table = "r = { equation = 1.0, strict_format = 0.5 }".parse().unwrap();
        let from_table: RewardSpec = t["r"].clone().try_into().unwrap();
        assert_eq!(from_table.terms(), vec![("equation", 1.0), ("strict_format", 0.5)]);
        for bad in ["", "nope", "equation=x", "equation,equation", "tinyzero=inf"] {
            assert!(bad.parse::<RewardSpec>().is_err(), "{bad}");
        }
        assert!("equation".parse::<RewardSpec>().unwrap().check("multiply").is_err());
        assert!("strict_format".parse::<RewardSpec>().unwrap().check("multiply").is_ok());
    }

    #[test]
    fn one_tinyzero_term_is_the_tinyzero_score_and_sums_are_weighted() {
        let p = Problem::Countdown { nums: vec![44, 19, 35], target: 98 };
        let good = "<think>44+19+35</think>\n<answer>44 + 19 + 35</answer>";
        let tz = RewardSpec::default();
        assert_eq!(tz.score(&p, good, 10), crate::task::score(&p, good, RewardKind::Tinyzero));
        let sum: RewardSpec = "tinyzero=2,strict_format=0.5".parse().unwrap();
        // strict_format: the answer line has no `=`, so 0.1.
        let (s, parts) = sum.score_parts(&p, good, 10);
        assert_eq!(parts, vec![("tinyzero", 1.0), ("strict_format", 0.1)]);
        assert!((s.score - 2.05).abs() < 1e-6 && s.solved());
    }

    #[test]
    fn first_answer_stays_on_one_line() {
        assert_eq!(first_answer("<answer> 1+2 </answer><answer>3</answer>"), Some("1+2"));
        assert_eq!(first_answer("<answer>1\n</answer> <answer>4</answer>"), Some("4"));
        assert_eq!(first_answer("<answer>1"), None);
    }
}
