//! TinyZero's rule-based rewards, reproduced exactly (so scores are comparable with theirs)
//! apart from the one documented difference in `expr` (`**` and `//` are not operators).
use super::expr;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    /// 1.0 correct, 0.1 formatted but wrong, 0.0 no answer.
    #[default]
    Tinyzero,
    /// 1.0 correct, else 0.0.
    Binary,
}

impl std::str::FromStr for RewardKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "tinyzero" => Ok(RewardKind::Tinyzero),
            "binary" => Ok(RewardKind::Binary),
            other => anyhow::bail!("unknown reward '{other}' (expected tinyzero or binary)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NoAnswer,
    WrongNumbers,
    InvalidChars,
    EvalError,
    WrongValue,
    NotAnInteger,
    /// An episode ended in a hole (FrozenLake).
    Hole,
    /// An episode ran out of turns (or of response tokens) before its goal.
    TurnLimit,
    Correct,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Score {
    pub score: f32,
    pub reason: Reason,
}

impl Score {
    pub fn solved(&self) -> bool {
        self.reason == Reason::Correct
    }
    /// An answer tag was found (TinyZero's "format" credit).
    pub fn formatted(&self) -> bool {
        !matches!(self.reason, Reason::NoAnswer | Reason::NotAnInteger)
    }
}

/// The content of the last `<answer>…</answer>` in `text` (non-greedy matches, scanned left
/// to right as Python's `re.finditer` does), trimmed.
pub fn last_answer(text: &str) -> Option<&str> {
    answers(text).last()
}

/// The content of every `<answer>…</answer>` in `text`, in order, trimmed (an unclosed tag
/// ends the scan).
pub fn answers(text: &str) -> impl Iterator<Item = &str> {
    let (open, close) = ("<answer>", "</answer>");
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(open)? + open.len();
        let len = rest[start..].find(close)?;
        let found = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(found.trim())
    })
}

/// Python's `str.split('\n')[-1]`.
fn last_line(text: &str) -> &str {
    text.rsplit('\n').next().unwrap_or("")
}

fn graded(kind: RewardKind, correct: bool, reason: Reason) -> Score {
    let score = match (correct, kind) {
        (true, _) => 1.0,
        (false, RewardKind::Tinyzero) => 0.1,
        (false, RewardKind::Binary) => 0.0,
    };
    Score { score, reason }
}

/// Countdown: last line, last answer, the numbers used exactly once each (as a multiset of
/// digit runs), only `[\d+\-*/().\s]` characters, and the value within 1e-5 of the target.
pub fn countdown(nums: &[i64], target: i64, response: &str, kind: RewardKind) -> Score {
    let Some(eq) = last_answer(last_line(response)) else {
        return Score { score: 0.0, reason: Reason::NoAnswer };
    };
    // Digit runs, compared as integers without overflow: strip leading zeros, compare text.
    let norm = |s: &str| s.trim_start_matches('0').to_string();
    let mut used: Vec<String> = vec![];
    let mut run = String::new();
    for c in eq.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else if !run.is_empty() {
            used.push(norm(&run));
            run.clear();
        }
    }
    let mut want: Vec<String> = nums.iter().map(|n| if *n < 0 { format!("-{n}") } else { norm(&n.to_string()) }).collect();
    used.sort();
    want.sort();
    if used != want {
        return graded(kind, false, Reason::WrongNumbers);
    }
    if eq.is_empty() || !eq.chars().all(|c| c.is_ascii_digit() || "+-*/().".contains(c) || c.is_whitespace()) {
        return graded(kind, false, Reason::InvalidChars);
    }
    match expr::eval(eq) {
        Err(_) => graded(kind, false, Reason::EvalError),
        Ok(v) if (v - target as f64).abs() < 1e-5 => graded(kind, true, Reason::Correct),
        Ok(_) => graded(kind, false, Reason::WrongValue),
    }
}

/// Multiplication: the last answer anywhere in the response must parse as an integer
/// (Python's `int()`: optional sign and surrounding whitespace); equal to a·b scores 1.0,
/// another integer 0.1, no answer or a non-integer 0.
pub fn multiply(a: i64, b: i64, response: &str, kind: RewardKind) -> Score {
    let Some(ans) = last_answer(response) else {
        return Score { score: 0.0, reason: Reason::NoAnswer };
    };
    let digits = ans.strip_prefix(['+', '-']).unwrap_or(ans);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Score { score: 0.0, reason: Reason::NotAnInteger };
    }
    let negative = ans.starts_with('-');
    let want = (a as i128) * (b as i128);
    let got = digits.trim_start_matches('0');
    let want_abs = want.unsigned_abs().to_string();
    let want_abs = if want_abs == "0" { String::new() } else { want_abs };
    let equal = got == want_abs && (negative == (want < 0) || got.is_empty());
    graded(kind, equal, if equal { Reason::Correct } else { Reason::WrongValue })
}
