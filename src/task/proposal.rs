//! Self-play proposals: a model is asked to write a new problem of a task, and its reply is
//! read back and checked (well-formed, within the run's ranges, solvable) before the problem
//! may join the training pool (`crate::train::selfplay` adds the de-duplication). Countdown is
//! the task that takes proposals; its prompt and reply formats live here.
use super::reward::last_answer;
use super::solver::solve_countdown;
use super::template::{Template, SYSTEM};
use super::{Problem, ProblemSpec};

/// Why a proposal was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No `<answer>` with numbers and a target in the expected form.
    Malformed,
    /// A number count, number or target outside the run's generator ranges.
    OutOfRange,
    /// The solver finds no equation reaching the target.
    Unsolvable,
    /// Already in the training pool, the held-out set, or proposed before.
    Duplicate,
}

fn counts_text(counts: &[usize]) -> String {
    let c: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
    match c.len() {
        0 => String::new(),
        1 => c[0].clone(),
        n => format!("{} or {}", c[..n - 1].join(", "), c[n - 1]),
    }
}

/// The request to propose a Countdown problem within `spec`'s ranges, in the template's format.
pub fn countdown_prompt(spec: &ProblemSpec, t: Template) -> String {
    let (counts, n, m) = (counts_text(&spec.counts), spec.max_number, spec.max_target);
    match t {
        // Mirrors the compact problem prompt (`numbers 44 19 35 target 98`).
        Template::Compact => format!("propose {counts} numbers to {n} target to {m}\n"),
        Template::Base | Template::QwenInstruct => {
            let request = format!(
                "Propose a new Countdown problem: {counts} numbers from 1 to {n} and a target from 1 to {m} that an equation using each number exactly once with +, -, * and / can reach. Return it in <answer> </answer> tags, for example <answer>numbers: 44, 19, 35; target: 98</answer>."
            );
            match t {
                Template::Base => format!("{SYSTEM}\nUser: {request}\nAssistant: Let me think of one.\n<think>"),
                _ => format!(
                    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n {request}<|im_end|>\n<|im_start|>assistant\nLet me think of one.\n<think>"
                ),
            }
        }
    }
}

/// A well-formed proposal of `p` (what the SFT warm start demonstrates).
pub fn countdown_reply(p: &Problem, t: Template) -> Option<String> {
    let Problem::Countdown { nums, target } = p else { return None };
    let ns: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
    Some(match t {
        Template::Compact => format!("<answer>numbers {} target {target}</answer>", ns.join(" ")),
        Template::Base | Template::QwenInstruct => format!(" </think>\n<answer>numbers: {}; target: {target}</answer>", ns.join(", ")),
    })
}

/// The integers of `s` if it is only integers and the separators `, ; : [ ]` and spaces.
fn integers(s: &str) -> Option<Vec<i64>> {
    if !s.chars().all(|c| c.is_ascii_digit() || " ,;:[]\t".contains(c)) {
        return None;
    }
    s.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().ok()).collect()
}

/// The problem a proposal's reply states: the last `<answer>` holding `numbers … target …`
/// (any case; the numbers separated by spaces, commas or in brackets), checked against
/// `spec`'s counts and ranges and by the solver.
pub fn read_countdown(reply: &str, spec: &ProblemSpec) -> Result<Problem, Rejection> {
    let answer = last_answer(reply).ok_or(Rejection::Malformed)?.to_ascii_lowercase();
    let rest = answer.strip_prefix("numbers").ok_or(Rejection::Malformed)?;
    let (numbers, target) = rest.split_once("target").ok_or(Rejection::Malformed)?;
    let nums = integers(numbers).ok_or(Rejection::Malformed)?;
    let target = match integers(target).as_deref() {
        Some(&[t]) => t,
        _ => return Err(Rejection::Malformed),
    };
    if nums.len() < 2 {
        return Err(Rejection::Malformed);
    }
    let in_range = spec.counts.contains(&nums.len())
        && nums.iter().all(|&x| (1..=spec.max_number).contains(&x))
        && (1..=spec.max_target).contains(&target);
    if !in_range {
        return Err(Rejection::OutOfRange);
    }
    if solve_countdown(&nums, target).is_none() {
        return Err(Rejection::Unsolvable);
    }
    Ok(Problem::Countdown { nums, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProblemSpec {
        ProblemSpec { counts: vec![3, 4], max_number: 99, max_target: 99, ..ProblemSpec::default() }
    }

    #[test]
    fn replies_round_trip_in_every_template() {
        let p = Problem::Countdown { nums: vec![44, 19, 35], target: 98 };
        for t in [Template::Compact, Template::Base, Template::QwenInstruct] {
            let reply = countdown_reply(&p, t).unwrap();
            assert_eq!(read_countdown(&reply, &spec()), Ok(p.clone()), "{t:?}: {reply}");
            assert!(countdown_prompt(&spec(), t).contains("99"));
        }
        assert!(countdown_prompt(&spec(), Template::Compact).starts_with("propose 3 or 4 numbers"));
        assert_eq!(countdown_reply(&Problem::Multiply { a: 1, b: 2 }, Template::Compact), None);
    }

    #[test]
    fn proposals_are_checked_for_form_ranges_and_a_solution() {
        let s = spec();
        let read = |r: &str| read_countdown(r, &s);
        // Tolerated forms: brackets, commas, case, text before the answer, the last answer.
        assert_eq!(read("x <answer>Numbers: [2, 3, 4]; Target: 24</answer>"), Ok(Problem::Countdown { nums: vec![2, 3, 4], target: 24 }));
        assert_eq!(
            read("<answer>numbers 1 1 1 target 1</answer> <answer>numbers 2 3 4 target 9</answer>").unwrap(),
            Problem::Countdown { nums: vec![2, 3, 4], target: 9 }
        );
        for bad in [
            "numbers 2 3 4 target 24",
            "<answer>2 3 4 target 24</answer>",
            "<answer>numbers 2 3 4</answer>",
            "<answer>numbers 2 3 x4 target 24</answer>",
            "<answer>numbers 2 3 4 target 24 25</answer>",
            "<answer>numbers 2 3 -4 target 24</answer>",
            "<answer>numbers 7 target 7</answer>",
            "<answer>numbers 2 3 4 target 99999999999999999999999</answer>",
        ] {
            assert_eq!(read(bad), Err(Rejection::Malformed), "{bad}");
        }
        // Two numbers (counts are 3 or 4), a number over 99, a target of 0 or over 99.
        for out in [
            "<answer>numbers 2 3 target 5</answer>",
            "<answer>numbers 2 3 100 target 5</answer>",
            "<answer>numbers 2 3 4 target 0</answer>",
            "<answer>numbers 2 3 4 target 100</answer>",
        ] {
            assert_eq!(read(out), Err(Rejection::OutOfRange), "{out}");
        }
        // 1, 1, 1 reach at most 3.
        assert_eq!(read("<answer>numbers 1 1 1 target 97</answer>"), Err(Rejection::Unsolvable));
    }
}
