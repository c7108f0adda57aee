//! `[curriculum]`: Countdown problems by difficulty — how many numbers, how large the numbers
//! and the target — in stages, advancing every `every` steps or once the rolling solve rate
//! of the last `window` steps reaches `threshold`.
//!
//! A problem belongs to the first stage whose ranges it fits; stage k trains on the problems of
//! stages 0..=k (earlier problems stay in the mix). With generated data, `data.generate_train`
//! problems are generated for each stage from its ranges; with a data file, its problems are
//! sorted into the stages (those fitting none are not trained on). The stage and the rolling
//! solve rates are in the checkpoint.
use crate::task::{Problem, ProblemSpec};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Advance {
    /// Every `every` steps.
    #[default]
    Steps,
    /// When the mean step solve rate of the last `window` steps reaches `threshold`.
    SolveRate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Countdown sizes (numbers per problem).
    pub counts: Vec<usize>,
    pub max_number: i64,
    pub max_target: i64,
}

impl Stage {
    pub fn spec(&self) -> ProblemSpec {
        ProblemSpec { counts: self.counts.clone(), max_number: self.max_number, max_target: self.max_target, ..ProblemSpec::default() }
    }

    fn fits(&self, p: &Problem) -> bool {
        match p {
            Problem::Countdown { nums, target } => {
                self.counts.contains(&nums.len())
                    && nums.iter().all(|&n| (1..=self.max_number).contains(&n))
                    && (1..=self.max_target).contains(target)
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurriculumSection {
    /// Easiest first; empty: no curriculum.
    pub stages: Vec<Stage>,
    pub advance: Advance,
    pub every: usize,
    pub threshold: f32,
    pub window: usize,
}

impl Default for CurriculumSection {
    fn default() -> Self {
        CurriculumSection { stages: vec![], advance: Advance::Steps, every: 100, threshold: 0.5, window: 10 }
    }
}

impl CurriculumSection {
    pub fn enabled(&self) -> bool {
        !self.stages.is_empty()
    }

    pub fn validate(&self, task: &str) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if task != "countdown" {
            bail!("curriculum.stages grade Countdown problems; task.name is {task}");
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.counts.is_empty() || s.counts.iter().any(|c| !(2..=6).contains(c)) || s.max_number < 1 || s.max_target < 1 {
                bail!("curriculum.stages[{i}]: counts must list sizes between 2 and 6, max_number and max_target be at least 1");
            }
        }
        match self.advance {
            Advance::Steps if self.every == 0 => bail!("curriculum.every must be positive"),
            Advance::SolveRate if self.window == 0 || !(0.0..=1.0).contains(&self.threshold) => {
                bail!("curriculum.window must be positive and curriculum.threshold in [0, 1]")
            }
            _ => Ok(()),
        }
    }

    /// Each problem's stage (the first it fits; `usize::MAX`: none).
    pub fn stages_of(&self, problems: &[Problem]) -> Vec<usize> {
        problems.iter().map(|p| self.stages.iter().position(|s| s.fits(p)).unwrap_or(usize::MAX)).collect()
    }
}

/// Where a run is in its curriculum (in the trainer state).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CurriculumState {
    pub stage: usize,
    /// Solve rates of the steps since the stage began (the last `window`).
    pub recent: Vec<f32>,
}

impl CurriculumState {
    /// Records step `step`'s solve rate; true if the run moves to the next stage.
    pub fn observe(&mut self, cfg: &CurriculumSection, step: usize, solve_rate: f32) -> bool {
        if !cfg.enabled() || self.stage + 1 >= cfg.stages.len() {
            return false;
        }
        self.recent.push(solve_rate);
        let keep = cfg.window.max(1);
        if self.recent.len() > keep {
            self.recent.drain(..self.recent.len() - keep);
        }
        let advance = match cfg.advance {
            Advance::Steps => step.is_multiple_of(cfg.every),
            Advance::SolveRate => {
                self.recent.len() >= keep && self.recent.iter().map(|&r| r as f64).sum::<f64>() / keep as f64 >= cfg.threshold as f64
            }
        };
        if advance {
            self.stage += 1;
            self.recent.clear();
        }
        advance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages() -> Vec<Stage> {
        vec![Stage { counts: vec![3], max_number: 9, max_target: 20 }, Stage { counts: vec![3, 4], max_number: 99, max_target: 99 }]
    }

    #[test]
    fn problems_sort_into_the_first_stage_they_fit() {
        let c = CurriculumSection { stages: stages(), ..Default::default() };
        let ps = [
            Problem::Countdown { nums: vec![1, 2, 3], target: 6 },
            Problem::Countdown { nums: vec![1, 2, 30], target: 6 },
            Problem::Countdown { nums: vec![1, 2, 3, 4], target: 24 },
            Problem::Countdown { nums: vec![1, 2], target: 3 },
        ];
        assert_eq!(c.stages_of(&ps), vec![0, 1, 1, usize::MAX]);
        assert!(c.validate("multiply").is_err() && c.validate("countdown").is_ok());
    }

    #[test]
    fn advances_on_schedule_or_on_the_rolling_solve_rate() {
        let by_steps = CurriculumSection { stages: stages(), every: 3, ..Default::default() };
        let mut s = CurriculumState::default();
        let moved: Vec<bool> = (1..=7).map(|step| s.observe(&by_steps, step, 0.0)).collect();
        // Moves at step 3, then stays in the last stage.
        assert_eq!(moved, vec![false, false, true, false, false, false, false]);
        let by_rate = CurriculumSection { stages: stages(), advance: Advance::SolveRate, threshold: 0.5, window: 2, ..Default::default() };
        let mut s = CurriculumState::default();
        assert!(!s.observe(&by_rate, 1, 0.9)); // one step is not a full window
        assert!(!s.observe(&by_rate, 2, 0.0)); // mean 0.45
        assert!(!s.observe(&by_rate, 3, 0.6)); // mean 0.3
        assert!(s.observe(&by_rate, 4, 0.6)); // mean 0.6
        assert_eq!((s.stage, s.recent.len()), (1, 0));
    }
}
