//! `equation`: the TRL/unsloth reproduction's correctness reward for Countdown. The first
//! `<answer>…</answer>` (on one line) holds `LHS` or `LHS = RHS`: only digits, `+ - * / ( ) .`,
//! whitespace and `=`; the LHS uses each given number exactly once (its digit runs are the
//! numbers as a multiset); the LHS and every RHS evaluate within 1e-5 of the target. All of
//! that: 1.0, else 0.
use super::{arithmetic_chars_only, countdown_parts, first_answer, numbers_in, Judged, Reward};
use crate::task::expr;

pub struct Equation;

impl Reward for Equation {
    fn name(&self) -> &'static str {
        "equation"
    }
    fn tasks(&self) -> Option<&'static [&'static str]> {
        Some(&["countdown"])
    }
    fn value(&self, r: &Judged) -> f32 {
        match countdown_parts(r.problem) {
            Some((nums, target)) => equation(nums, target, r.text),
            None => 0.0,
        }
    }
}

/// Whether `s` evaluates within 1e-5 of `target`.
pub(super) fn equals_target(s: &str, target: i64) -> bool {
    expr::eval(s).is_ok_and(|v| (v - target as f64).abs() < 1e-5)
}

/// Whether the digit runs of `s` are `nums` exactly (as multisets).
pub(super) fn uses_each_once(s: &str, nums: &[i64]) -> bool {
    let mut used = numbers_in(s);
    let mut want = nums.to_vec();
    used.sort_unstable();
    want.sort_unstable();
    used == want
}

pub fn equation(nums: &[i64], target: i64, response: &str) -> f32 {
    let Some(ans) = first_answer(response) else {
        return 0.0;
    };
    if !ans.split('=').all(arithmetic_chars_only) {
        return 0.0;
    }
    let mut sides = ans.split('=');
    let lhs = sides.next().unwrap_or("");
    let ok = uses_each_once(lhs, nums) && equals_target(lhs, target) && sides.all(|rhs| equals_target(rhs, target));
    if ok {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::equation;

    #[test]
    fn lhs_equals_rhs_equals_target_with_each_number_once() {
        let (nums, t) = ([44, 19, 35], 98);
        let cases = [
            ("<answer>44 + 19 + 35 = 98</answer>", 1.0),
            ("<answer>(35 + 19) + 44</answer>", 1.0),
            ("x</think>\n<answer> 44+19+35 = 98.000001 </answer>", 1.0),
            // The first answer counts, not the last.
            ("<answer>44 + 19</answer> <answer>44 + 19 + 35</answer>", 0.0),
            // RHS off, LHS off, a number twice or missing, another number, bad characters,
            // an empty side, no answer, division by zero.
            ("<answer>44 + 19 + 35 = 97</answer>", 0.0),
            ("<answer>44 + 19 - 35 = 98</answer>", 0.0),
            ("<answer>44 + 44 + 35 = 98</answer>", 0.0),
            ("<answer>44 + 19 + 35 + 0 = 98</answer>", 0.0),
            ("<answer>44 + 19 + 35 == 98</answer>", 0.0),
            ("<answer>44 + 19 + 35 = x</answer>", 0.0),
            ("<answer>44 ** 19 + 35</answer>", 0.0),
            ("44 + 19 + 35", 0.0),
            ("<answer>44 / (19 - 19) + 35</answer>", 0.0),
        ];
        for (text, want) in cases {
            assert_eq!(equation(&nums, t, text), want, "{text:?}");
        }
    }
}
