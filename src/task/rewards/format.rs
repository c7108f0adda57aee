//! `strict_format`: the TRL/unsloth reproduction's format reward. The response, with the
//! prompt's opening `<think>` restored (TinyZero's and TRL's prompts end with it, so a response
//! starts inside the think block), must match
//! `^<think>([\s\S]*?)<\/think>\n<answer>([\s\S]*?)<\/answer>$` as Python's `re.match` reads it
//! (`$` also matches before one final newline). No match: 0. A match whose answer fails the
//! answer-line checks — after trimming it is one non-empty line and contains `=` (the answer
//! is an equation, `expr = target`) — 0.1. Both: 1.0.
use super::{Judged, Reward};

pub struct StrictFormat;

impl Reward for StrictFormat {
    fn name(&self) -> &'static str {
        "strict_format"
    }
    fn value(&self, r: &Judged) -> f32 {
        strict_format(r.text)
    }
}

pub fn strict_format(response: &str) -> f32 {
    let restored;
    let text = if response.starts_with("<think>") {
        response
    } else {
        restored = format!("<think>{response}");
        &restored
    };
    let body = text.strip_suffix('\n').unwrap_or(text);
    let Some(inner) = body.strip_prefix("<think>").and_then(|b| b.strip_suffix("</answer>")) else {
        return 0.0;
    };
    // The lazy first group ends at the first separator; any separator leaves a match.
    const SEP: &str = "</think>\n<answer>";
    let Some(i) = inner.find(SEP) else {
        return 0.0;
    };
    let answer = inner[i + SEP.len()..].trim();
    if !answer.is_empty() && !answer.contains('\n') && answer.contains('=') {
        1.0
    } else {
        0.1
    }
}

#[cfg(test)]
mod tests {
    use super::strict_format;

    #[test]
    fn structure_then_answer_line() {
        // Golden cases written from the description.
        let cases = [
            (" 44+19+35=98 </think>\n<answer>44 + 19 + 35 = 98</answer>", 1.0),
            ("<think>x</think>\n<answer>44 + 19 + 35 = 98</answer>\n", 1.0),
            // The prompt's <think> restored; an empty think block is allowed.
            ("</think>\n<answer>1+2=3</answer>", 1.0),
            // Structure right, answer line not an equation, or over two lines, or empty.
            ("x</think>\n<answer>44 + 19 + 35</answer>", 0.1),
            ("x</think>\n<answer>1+2\n=3</answer>", 0.1),
            ("x</think>\n<answer> </answer>", 0.1),
            // The first separator ends the think block; later text is all answer.
            ("a</think>\n<answer>b</think>\n<answer>1=1</answer>", 0.1),
            // Not the structure: text after the answer, no newline between blocks, two
            // trailing newlines, no answer block.
            ("x</think>\n<answer>1+2=3</answer> done", 0.0),
            ("x</think><answer>1+2=3</answer>", 0.0),
            ("x</think>\n<answer>1+2=3</answer>\n\n", 0.0),
            ("x</think>", 0.0),
            ("", 0.0),
        ];
        for (text, want) in cases {
            assert_eq!(strict_format(text), want, "{text:?}");
        }
    }
}
