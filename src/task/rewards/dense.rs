//! `dense`: the "TinyZero with A\*PO" Modal project's partial credit for Countdown. An exact
//! answer (the task's check, or `equation`) scores 1.0. Otherwise, from the first
//! `<answer>…</answer>` and its expression (the text before any `=`):
//!
//! - 0.1 format: there is an answer;
//! - 0.1 legal operators: the expression is non-empty and only digits, `+ - * / ( ) .` and
//!   whitespace;
//! - 0.1 valid expression: it evaluates;
//! - 0.2 × number usage: the share of the given numbers it uses (the multiset overlap of its
//!   digit runs with the numbers, over the larger of the two counts);
//! - 0.6 × closeness: `exp(−5·|value − target| / max(|target|, 1))` when it evaluates;
//!
//! summed and capped at 0.9, so that only an exact answer reaches 1.0 (a right value from the
//! wrong numbers would otherwise outscore it). No answer: 0.
use super::equation::equation;
use super::{arithmetic_chars_only, countdown_parts, first_answer, numbers_in, Judged, Reward};
use crate::task::expr;

pub struct Dense;

impl Reward for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn tasks(&self) -> Option<&'static [&'static str]> {
        Some(&["countdown"])
    }
    fn value(&self, r: &Judged) -> f32 {
        match countdown_parts(r.problem) {
            Some((nums, target)) => dense(nums, target, r.text, r.verdict.solved()),
            None => 0.0,
        }
    }
}

/// Multiset intersection size.
fn overlap(a: &[i64], b: &[i64]) -> usize {
    let mut rest = b.to_vec();
    a.iter()
        .filter(|x| match rest.iter().position(|y| y == *x) {
            Some(i) => {
                rest.swap_remove(i);
                true
            }
            None => false,
        })
        .count()
}

pub fn dense(nums: &[i64], target: i64, response: &str, solved: bool) -> f32 {
    if solved || equation(nums, target, response) == 1.0 {
        return 1.0;
    }
    let Some(ans) = first_answer(response) else {
        return 0.0;
    };
    let lhs = ans.split('=').next().unwrap_or("").trim();
    let mut r = 0.1f64;
    if !lhs.is_empty() && arithmetic_chars_only(lhs) {
        r += 0.1;
    }
    let value = expr::eval(lhs).ok().filter(|v| v.is_finite());
    if value.is_some() {
        r += 0.1;
    }
    let used = numbers_in(lhs);
    let most = used.len().max(nums.len());
    if most > 0 {
        r += 0.2 * overlap(&used, nums) as f64 / most as f64;
    }
    if let Some(v) = value {
        let t = target as f64;
        r += 0.6 * (-5.0 * (v - t).abs() / t.abs().max(1.0)).exp();
    }
    r.min(0.9) as f32
}

#[cfg(test)]
mod tests {
    use super::dense;

    #[test]
    fn partial_credit_by_component() {
        let (nums, t) = ([44, 19, 35], 98);
        let close = |text: &str, want: f64| {
            let got = dense(&nums, t, text, false) as f64;
            assert!((got - want).abs() < 1e-6, "{text:?}: {got} vs {want}");
        };
        close("<answer>44 + 19 + 35</answer>", 1.0);
        close("no answer", 0.0);
        // Format only: letters are neither legal nor an expression, no numbers.
        close("<answer>sixty</answer>", 0.1);
        // All numbers, legal, evaluates to 28: 0.1 + 0.1 + 0.1 + 0.2 + 0.6·e^(−5·70/98).
        close("<answer>44 - 19 + 35 - 32</answer>", 0.1 + 0.1 + 0.1 + 0.2 * 3.0 / 4.0 + 0.6 * (-5.0f64 * 70.0 / 98.0).exp());
        close("<answer>44 + 19 - 35</answer>", 0.5 + 0.6 * (-5.0f64 * 70.0 / 98.0).exp());
        // Right value from the wrong numbers: capped below exact.
        close("<answer>49 + 49</answer>", 0.9);
        // Legal characters that do not parse: format, legal, no value, one of three numbers.
        close("<answer>44 +</answer>", 0.1 + 0.1 + 0.2 / 3.0);
        // The task's verdict decides exactness too.
        assert_eq!(dense(&nums, t, "anything", true), 1.0);
    }
}
