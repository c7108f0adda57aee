//! `cosine`: correctness scaled by response length (the adaptive-rollout fork's
//! `algorithm.cosine_reward`, after "Demystifying Long Chain-of-Thought Reasoning"). With
//! progress `p = min(tokens, max_len) / max_len` and `c = cos(π·p)`:
//! correct → `min_value_correct + ½(max_value_correct − min_value_correct)(1 + c)` (short
//! correct answers earn most), wrong → `max_value_wrong + ½(min_value_wrong −
//! max_value_wrong)(1 + c)` (short wrong answers are penalized most). A response of at least
//! `max_len` tokens scores `exceed_length` when that is set. Correct means the task's check.
use super::{Judged, Reward};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// `task.cosine`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CosineParams {
    pub min_value_wrong: f32,
    pub max_value_wrong: f32,
    pub min_value_correct: f32,
    pub max_value_correct: f32,
    /// Tokens at which the schedule ends; 0: the run's response limit.
    pub max_len: usize,
    /// The score of a response of `max_len` tokens or more (unset: the schedule's end value).
    pub exceed_length: Option<f32>,
}

impl Default for CosineParams {
    fn default() -> Self {
        // TRL/open-r1's defaults for the cosine-scaled reward.
        CosineParams {
            min_value_wrong: -1.0,
            max_value_wrong: -0.5,
            min_value_correct: 0.5,
            max_value_correct: 1.0,
            max_len: 0,
            exceed_length: None,
        }
    }
}

impl CosineParams {
    pub fn check(&self) -> Result<()> {
        let values = [self.min_value_wrong, self.max_value_wrong, self.min_value_correct, self.max_value_correct];
        if values.iter().chain(self.exceed_length.iter()).any(|v| !v.is_finite()) {
            bail!("task.cosine values must be finite numbers");
        }
        Ok(())
    }

    pub fn value(&self, correct: bool, tokens: usize) -> f32 {
        let max_len = self.max_len.max(1);
        if tokens >= max_len {
            if let Some(v) = self.exceed_length {
                return v;
            }
        }
        let progress = tokens.min(max_len) as f64 / max_len as f64;
        let c = (std::f64::consts::PI * progress).cos();
        let (lo, hi) =
            if correct { (self.min_value_correct, self.max_value_correct) } else { (self.max_value_wrong, self.min_value_wrong) };
        (lo as f64 + 0.5 * (hi as f64 - lo as f64) * (1.0 + c)) as f32
    }
}

pub struct Cosine;

impl Reward for Cosine {
    fn name(&self) -> &'static str {
        "cosine"
    }
    fn value(&self, r: &Judged) -> f32 {
        r.params.cosine.value(r.verdict.solved(), r.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::CosineParams;

    #[test]
    fn ends_and_middle_of_the_schedule() {
        let p = CosineParams { max_len: 100, ..CosineParams::default() };
        let near = |a: f32, b: f32| (a - b).abs() < 1e-6;
        // Correct: 1.0 at length 0, 0.75 halfway, 0.5 at the end and beyond.
        assert!(near(p.value(true, 0), 1.0) && near(p.value(true, 50), 0.75) && near(p.value(true, 100), 0.5));
        assert!(near(p.value(true, 500), 0.5));
        // Wrong: −1.0 at length 0, −0.75 halfway, −0.5 at the end.
        assert!(near(p.value(false, 0), -1.0) && near(p.value(false, 50), -0.75) && near(p.value(false, 100), -0.5));
        // Monotone between the ends.
        assert!(p.value(true, 20) > p.value(true, 40) && p.value(false, 20) < p.value(false, 40));
        let capped = CosineParams { exceed_length: Some(-2.0), ..p.clone() };
        assert_eq!((capped.value(true, 100), capped.value(false, 99) > -0.51), (-2.0, true));
        assert!(CosineParams { max_value_correct: f32::NAN, ..p }.check().is_err());
    }
}
