//! Countdown (TinyZero's main task): reach the target with + − × ÷ using each given number
//! exactly once.
use super::reward::{self, RewardKind, Score};
use super::solver::solve_countdown;
use super::template::{Template, SYSTEM};
use super::{Problem, ProblemSpec, Task};
use crate::rng::Rng;
use anyhow::{anyhow, bail, Result};

pub struct Countdown;

/// Countdown problems drawn from `spec`, kept only when the solver finds a solution; sizes are
/// uniform over `spec.counts`.
/// Draws allowed per requested problem (plus a floor): the shipped ranges need about two, so
/// running out means the ranges hardly admit solvable problems (e.g. numbers up to 10^6 with
/// targets up to 99), and the generator says so instead of drawing forever.
const DRAWS_PER_PROBLEM: usize = 200;
const MIN_DRAWS: usize = 5_000;

pub fn generate_countdown(n: usize, seed: u64, spec: &ProblemSpec) -> Result<Vec<Problem>> {
    let counts: Vec<usize> = if spec.counts.is_empty() { vec![3, 4] } else { spec.counts.clone() };
    let (max_number, max_target) = (spec.max_number.max(1) as u64, spec.max_target.max(1) as u64);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n.min(1 << 20));
    let budget = n.saturating_mul(DRAWS_PER_PROBLEM).max(MIN_DRAWS);
    let mut draws = 0usize;
    while out.len() < n {
        // The size is drawn first and kept while redrawing unsolvable instances, so sizes stay
        // uniform over `counts` even though small instances are less often solvable.
        let k = counts[rng.below(counts.len() as u64) as usize].clamp(2, 6);
        for _ in 0..10_000 {
            if draws >= budget {
                bail!(
                    "only {} of {n} Countdown problems were solvable in {draws} draws (numbers 1..={max_number}, targets 1..={max_target}, sizes {counts:?}): choose ranges whose problems have solutions (the defaults: numbers and targets up to 99)",
                    out.len()
                );
            }
            draws += 1;
            let nums: Vec<i64> = (0..k).map(|_| 1 + rng.below(max_number) as i64).collect();
            let target = 1 + rng.below(max_target) as i64;
            if solve_countdown(&nums, target).is_some() {
                out.push(Problem::Countdown { nums, target });
                break;
            }
        }
    }
    Ok(out)
}

/// `[44, 19, 35]`, as Python prints a list.
fn py_list(nums: &[i64]) -> String {
    let items: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
    format!("[{}]", items.join(", "))
}

fn request(nums: &[i64], target: i64) -> String {
    format!(
        "Using the numbers {}, create an equation that equals {target}. You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.",
        py_list(nums)
    )
}

fn parts(p: &Problem) -> (&[i64], i64) {
    match p {
        Problem::Countdown { nums, target } => (nums, *target),
        // Problems reach a task through `Problem::task`, so this is a caller's bug.
        other => panic!("Countdown task given {other:?}"),
    }
}

impl Task for Countdown {
    fn name(&self) -> &'static str {
        "countdown"
    }

    fn generate(&self, n: usize, seed: u64, spec: &ProblemSpec) -> Result<Vec<Problem>> {
        generate_countdown(n, seed, spec)
    }

    fn parse(&self, v: &serde_json::Value) -> Option<Result<Problem>> {
        let nums = v.get("nums")?;
        Some((|| {
            let nums = nums
                .as_array()
                .ok_or_else(|| anyhow!("'nums' must be a list of integers"))?
                .iter()
                .map(|x| x.as_i64().ok_or_else(|| anyhow!("'nums' must be a list of integers")))
                .collect::<Result<Vec<_>>>()?;
            if nums.is_empty() || nums.len() > 6 {
                bail!("'nums' must hold 1 to 6 numbers");
            }
            let target = v.get("target").and_then(|x| x.as_i64()).ok_or_else(|| anyhow!("'target' must be an integer"))?;
            Ok(Problem::Countdown { nums, target })
        })())
    }

    fn record_shape(&self) -> &'static str {
        "{\"nums\":[..],\"target\":N}"
    }

    fn prompt(&self, p: &Problem, t: Template) -> String {
        let (nums, target) = parts(p);
        match t {
            Template::Base => format!("{SYSTEM}\nUser: {}\nAssistant: Let me solve this step by step.\n<think>", request(nums, target)),
            Template::QwenInstruct => format!(
                "<|im_start|>system\nYou are a helpful assistant. You first thinks about the reasoning process in the mind and then provides the user with the answer.<|im_end|>\n<|im_start|>user\n {}<|im_end|>\n<|im_start|>assistant\nLet me solve this step by step.\n<think>",
                request(nums, target)
            ),
            Template::Compact => {
                let ns: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
                format!("numbers {} target {target}\n", ns.join(" "))
            }
        }
    }

    fn score(&self, p: &Problem, response: &str, kind: RewardKind) -> Score {
        let (nums, target) = parts(p);
        reward::countdown(nums, target, response, kind)
    }

    /// The solver's equation; the answer tag is on the last line, as the reward requires.
    fn proposal_prompt(&self, spec: &ProblemSpec, t: Template) -> Option<String> {
        Some(super::proposal::countdown_prompt(spec, t))
    }

    fn proposal_reply(&self, p: &Problem, t: Template) -> Option<String> {
        super::proposal::countdown_reply(p, t)
    }

    fn read_proposal(&self, reply: &str, spec: &ProblemSpec) -> std::result::Result<Problem, super::Rejection> {
        super::proposal::read_countdown(reply, spec)
    }

    fn sft_response(&self, p: &Problem, t: Template) -> Option<String> {
        let (nums, target) = parts(p);
        let eq = solve_countdown(nums, target)?;
        Some(match t {
            Template::Compact => format!("<answer>{}</answer>", eq.replace(' ', "")),
            Template::Base | Template::QwenInstruct => format!(" {eq} = {target} </think>\n<answer> {eq} </answer>"),
        })
    }

    /// `…<answer>EXPR</answer>` → `…<answer>EXPR=TARGET</answer>`. TinyZero's reward scores
    /// that as format-only (the target joins the numbers used).
    fn base_model_style(&self, p: &Problem, response: &str) -> String {
        let (_, target) = parts(p);
        match response.rfind("</answer>") {
            Some(at) => {
                let (head, tail) = response.split_at(at);
                if head.ends_with(' ') {
                    format!("{} = {target} {tail}", head.trim_end())
                } else {
                    format!("{head}={target}{tail}")
                }
            }
            None => response.to_string(),
        }
    }

    fn difficulty(&self, p: &Problem) -> &'static str {
        match parts(p).0.len() {
            3 => "3 numbers",
            4 => "4 numbers",
            5 => "5 numbers",
            6 => "6 numbers",
            _ => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_style_is_format_only_under_the_tinyzero_reward() {
        let p = Problem::Countdown { nums: vec![4, 5, 3], target: 27 };
        for t in [Template::Compact, Template::Base] {
            let bare = Countdown.sft_response(&p, t).unwrap();
            let eq = Countdown.base_model_style(&p, &bare);
            assert!(eq.contains("27") && eq.ends_with("</answer>"), "{eq}");
            assert_eq!(Countdown.score(&p, &bare, RewardKind::Tinyzero).score, 1.0, "{bare}");
            assert_eq!(Countdown.score(&p, &eq, RewardKind::Tinyzero).score, 0.1, "{eq}");
        }
    }
}
