//! 3-digit multiplication (TinyZero's second task): the product as an integer.
use super::reward::{self, RewardKind, Score};
use super::template::Template;
use super::{Problem, ProblemSpec, Task};
use crate::rng::Rng;
use anyhow::{anyhow, Result};

pub struct Multiply;

/// 3-digit multiplication problems, without repeats (at most 900² of them).
pub fn generate_multiply(n: usize, seed: u64) -> Vec<Problem> {
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n.min(900 * 900));
    while out.len() < n.min(900 * 900) {
        let (a, b) = (100 + rng.below(900) as i64, 100 + rng.below(900) as i64);
        if seen.insert((a, b)) {
            out.push(Problem::Multiply { a, b });
        }
    }
    out
}

fn parts(p: &Problem) -> (i64, i64) {
    match p {
        Problem::Multiply { a, b } => (*a, *b),
        // Problems reach a task through `Problem::task`, so this is a caller's bug.
        other => panic!("Multiply task given {other:?}"),
    }
}

impl Task for Multiply {
    fn name(&self) -> &'static str {
        "multiply"
    }

    fn generate(&self, n: usize, seed: u64, _spec: &ProblemSpec) -> Result<Vec<Problem>> {
        Ok(generate_multiply(n, seed))
    }

    fn parse(&self, v: &serde_json::Value) -> Option<Result<Problem>> {
        v.get("a")?;
        let int = |k: &str| -> Result<i64> { v.get(k).and_then(|x| x.as_i64()).ok_or_else(|| anyhow!("'{k}' must be an integer")) };
        Some((|| Ok(Problem::Multiply { a: int("a")?, b: int("b")? }))())
    }

    fn record_shape(&self) -> &'static str {
        "{\"a\":A,\"b\":B}"
    }

    fn prompt(&self, p: &Problem, t: Template) -> String {
        let (a, b) = parts(p);
        match t {
            Template::Compact => format!("{a} * {b} =\n"),
            Template::QwenInstruct => format!(
                "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nGive me the answer of the following equation: {a} * {b} =<|im_end|>\n<|im_start|>assistant\nOk let me think about it.\n<think>"
            ),
            Template::Base => format!("User: Give me the answer of the following equation: {a} * {b} = Assistant: Ok let me think about it.\n<think>"),
        }
    }

    fn score(&self, p: &Problem, response: &str, kind: RewardKind) -> Score {
        let (a, b) = parts(p);
        reward::multiply(a, b, response, kind)
    }

    fn sft_response(&self, p: &Problem, t: Template) -> Option<String> {
        let (a, b) = parts(p);
        let prod = (a as i128 * b as i128).to_string();
        Some(match t {
            Template::Compact => format!("<answer>{prod}</answer>"),
            Template::Base | Template::QwenInstruct => format!(" {a} * {b} = {prod} </think>\n<answer> {prod} </answer>"),
        })
    }

    fn difficulty(&self, _p: &Problem) -> &'static str {
        "multiply"
    }
}
