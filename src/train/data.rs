//! Training and held-out problems, rendered with the prompt template and tokenized once.
use super::config::{parse_rows, TrainConfig};
use crate::task::{self, Problem, Template};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};

/// Problems with their prompt text and tokens; prompts over the token limit are dropped (as
/// TinyZero's dataloader filters them) and counted.
pub struct PromptSet {
    pub problems: Vec<Problem>,
    pub prompts: Vec<String>,
    pub tokens: Vec<Vec<u32>>,
    pub dropped_too_long: usize,
}

impl PromptSet {
    pub fn new(problems: Vec<Problem>, template: Template, tok: &Tokenizer, max_prompt_tokens: usize) -> Result<Self> {
        let mut s = PromptSet { problems: vec![], prompts: vec![], tokens: vec![], dropped_too_long: 0 };
        for p in problems {
            let text = task::render_prompt(&p, template);
            let ids = tok.encode(&text)?;
            if ids.is_empty() || ids.len() > max_prompt_tokens {
                s.dropped_too_long += 1;
                continue;
            }
            s.problems.push(p);
            s.prompts.push(text);
            s.tokens.push(ids);
        }
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.problems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn max_prompt_len(&self) -> usize {
        self.tokens.iter().map(Vec::len).max().unwrap_or(1)
    }
}

/// The run's (train, test) problems: from files (parquet/JSONL, with TinyZero's row ranges) or
/// generated with the run's seed (train and test from disjoint seeds, test de-duplicated
/// against train).
pub fn load_problems(cfg: &TrainConfig) -> Result<(Vec<Problem>, Vec<Problem>)> {
    let d = &cfg.data;
    let generate = |n: usize, salt: u64| -> Vec<Problem> {
        let seed = crate::rng::derive_seed(cfg.seed, salt, 0x5eed);
        match cfg.task.name.as_str() {
            "multiply" => task::generate_multiply(n, seed),
            _ => task::generate_countdown(n, seed, &cfg.countdown_spec(&d.counts)),
        }
    };
    let train = if d.train.as_os_str().is_empty() {
        generate(d.generate_train, 1)
    } else {
        task::load_problems(&d.train, parse_rows(&d.train_rows)?)?
    };
    let test = if d.test.as_os_str().is_empty() {
        if d.train.as_os_str().is_empty() {
            let seen: std::collections::HashSet<String> = train.iter().map(|p| format!("{p:?}")).collect();
            generate(d.generate_test * 2, 2).into_iter().filter(|p| !seen.contains(&format!("{p:?}"))).take(d.generate_test).collect()
        } else {
            // TinyZero's split: the test rows come from the same file.
            let rows = parse_rows(&d.test_rows)?;
            if rows.is_none() {
                bail!("data.test is empty: set data.test_rows (e.g. 327680..328704) to take the test split from data.train");
            }
            task::load_problems(&d.train, rows)?
        }
    } else {
        task::load_problems(&d.test, parse_rows(&d.test_rows)?)?
    };
    if train.is_empty() || test.is_empty() {
        bail!("the training or test set is empty");
    }
    Ok((train, test))
}
