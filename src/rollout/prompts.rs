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
            s.push(p, tok, max_prompt_tokens)?;
        }
        Ok(s)
    }

    /// Appends `p` unless its prompt is empty or over `max_prompt_tokens` (then counted as
    /// dropped); says whether it was added.
    pub fn push(&mut self, p: Problem, tok: &Tokenizer, max_prompt_tokens: usize) -> Result<bool> {
        let text = p.task().prompt(&p, self.template);
        let ids = tok.encode(&text)?;
        if ids.is_empty() || ids.len() > max_prompt_tokens {
            self.dropped_too_long += 1;
            return Ok(false);
        }
        self.problems.push(p);
        self.prompts.push(text);
        self.tokens.push(ids);
        Ok(true)
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
