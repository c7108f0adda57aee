//! Problems rendered with a prompt template and tokenized once.
use crate::task::{Problem, Template};
use crate::tokenizer::Tokenizer;
use anyhow::Result;

/// Problems with their prompt text and tokens; prompts over the token limit are dropped (as
/// TinyZero's dataloader filters them) and counted.
pub struct PromptSet {
    pub problems: Vec<Problem>,
    pub prompts: Vec<String>,
    pub tokens: Vec<Vec<u32>>,
    pub dropped_too_long: usize,
    /// The template the prompts are in (environments write their observations in it too).
    pub template: Template,
}

impl PromptSet {
    pub fn new(problems: Vec<Problem>, template: Template, tok: &Tokenizer, max_prompt_tokens: usize) -> Result<Self> {
        let mut s = PromptSet { problems: vec![], prompts: vec![], tokens: vec![], dropped_too_long: 0, template };
        for p in problems {
            let text = p.task().prompt(&p, template);
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
