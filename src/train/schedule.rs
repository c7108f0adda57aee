//! `[rollout]`: what changes about sampling over a run — the temperature schedule and the
//! adaptive response-length window (ARPO-style: the adaptive-rollout fork's
//! `rollout.adaptive_window`). Both are functions of the step and of the steps' rollout
//! statistics, which every data-parallel rank has whole, so every rank takes the same values;
//! the window's state is in the checkpoint, so a resumed run continues the same schedule.
//!
//! Log-probs are those of the temperature-1 policy whatever the sampling temperature (the
//! policy being trained is π, sampling at another temperature is exploration), as before.
use crate::rng::{derive_seed, Rng};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anneal {
    #[default]
    Linear,
    Cosine,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSection {
    /// The sampling temperature at the last step, from `train.temperature` at the first
    /// (unset: `train.temperature` throughout).
    pub temperature_end: Option<f32>,
    pub temperature_schedule: Anneal,
    pub adaptive_window: AdaptiveWindowConfig,
}

impl RolloutSection {
    pub fn validate(&self, max_response: usize) -> Result<()> {
        if let Some(t) = self.temperature_end {
            if !(t > 0.0 && t.is_finite()) {
                bail!("rollout.temperature_end must be a finite number > 0");
            }
        }
        self.adaptive_window.validate(max_response)
    }

    /// The sampling temperature of step `step` (1-based) of `steps`.
    pub fn temperature(&self, start: f32, step: usize, steps: usize) -> f32 {
        let Some(end) = self.temperature_end else { return start };
        let p = if steps <= 1 { 1.0 } else { (step.clamp(1, steps) - 1) as f64 / (steps - 1) as f64 };
        anneal(self.temperature_schedule, start, end, p)
    }
}

/// From `a` at p = 0 to `b` at p = 1.
fn anneal(kind: Anneal, a: f32, b: f32, p: f64) -> f32 {
    let (a, b) = (a as f64, b as f64);
    let v = match kind {
        Anneal::Linear => a + (b - a) * p,
        Anneal::Cosine => b + 0.5 * (a - b) * (1.0 + (std::f64::consts::PI * p).cos()),
    };
    v as f32
}

/// The policy's learning rate at step `step` (1-based) of `steps` (`train.lr`, `lr_end`,
/// `lr_schedule`, `lr_warmup_steps`): `lr · step / warmup` during the warm-up, then from `lr`
/// at the first step after it to `end` at the last.
pub fn learning_rate(lr: f32, end: Option<f32>, kind: Anneal, warmup: usize, step: usize, steps: usize) -> f32 {
    let step = step.clamp(1, steps.max(1));
    if step <= warmup {
        return lr * step as f32 / warmup as f32;
    }
    let Some(end) = end else { return lr };
    let rest = steps.saturating_sub(warmup);
    let p = if rest <= 1 { 1.0 } else { (step - warmup - 1) as f64 / (rest - 1) as f64 };
    anneal(kind, lr, end, p)
}

/// `rollout.adaptive_window`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveWindowConfig {
    pub enabled: bool,
    /// Steps sampled at the full window (`train.max_response_tokens`) to measure correct
    /// responses; then the window starts at `warmup_margin` × their mean length.
    pub warmup_steps: usize,
    pub warmup_margin: f32,
    /// The window never goes below this (tokens).
    pub min_window: usize,
    /// Shrink (× `shrink`) when the success rate is at least `high_success` and correct
    /// responses use less than `underuse` of the window.
    pub high_success: f32,
    pub underuse: f32,
    pub shrink: f32,
    /// Grow (× `grow`) when the success rate is below `low_success` or more than `saturation`
    /// of the responses hit the window.
    pub low_success: f32,
    pub saturation: f32,
    pub grow: f32,
    /// Probability that a step samples at the full window instead (ε-greedy exploration of the
    /// maximum); its statistics update the window like any other step's.
    pub epsilon: f32,
}

impl Default for AdaptiveWindowConfig {
    fn default() -> Self {
        AdaptiveWindowConfig {
            enabled: false,
            warmup_steps: 5,
            warmup_margin: 1.5,
            min_window: 16,
            high_success: 0.5,
            underuse: 0.6,
            shrink: 0.9,
            low_success: 0.1,
            saturation: 0.3,
            grow: 1.25,
            epsilon: 0.05,
        }
    }
}

impl AdaptiveWindowConfig {
    fn validate(&self, max_response: usize) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let unit = |x: f32| (0.0..=1.0).contains(&x);
        if !(unit(self.high_success) && unit(self.low_success) && unit(self.saturation) && unit(self.underuse) && unit(self.epsilon)) {
            bail!("rollout.adaptive_window: high_success, low_success, saturation, underuse and epsilon must be in [0, 1]");
        }
        if !(self.shrink > 0.0 && self.shrink <= 1.0 && self.grow >= 1.0 && self.grow.is_finite()) {
            bail!("rollout.adaptive_window: shrink must be in (0, 1] and grow a finite number >= 1");
        }
        if !(self.warmup_margin > 0.0 && self.warmup_margin.is_finite()) {
            bail!("rollout.adaptive_window.warmup_margin must be a finite number > 0");
        }
        if self.min_window == 0 || self.min_window > max_response {
            bail!("rollout.adaptive_window.min_window must be in 1..=train.max_response_tokens ({max_response})");
        }
        Ok(())
    }
}

/// The window's state (in the trainer state, so it resumes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    /// The current window (0: still warming up at the full window).
    pub window: usize,
    /// Correct responses' lengths seen during the warm-up: count and sum.
    pub warm_n: usize,
    pub warm_sum: usize,
}

/// What one step's rollouts looked like, for the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowObservation {
    pub success_rate: f32,
    /// Mean tokens of the solved responses (0 when none).
    pub mean_success_length: f32,
    pub solved: usize,
    /// Share of the responses that reached the step's window.
    pub saturated_frac: f32,
}

impl WindowState {
    /// The window step `step` samples at, and whether it is an exploration step.
    pub fn window_for(&self, cfg: &AdaptiveWindowConfig, max_response: usize, seed: u64, step: usize) -> (usize, bool) {
        if !cfg.enabled || self.window == 0 {
            return (max_response, false);
        }
        let explore = cfg.epsilon > 0.0 && Rng::new(derive_seed(seed, step as u64, 0xada9)).next_f64() < cfg.epsilon as f64;
        if explore {
            (max_response, true)
        } else {
            (self.window.clamp(cfg.min_window, max_response), false)
        }
    }

    /// Updates the window after step `step` (1-based) sampled with `used` tokens at most.
    pub fn observe(&mut self, cfg: &AdaptiveWindowConfig, max_response: usize, step: usize, used: usize, o: &WindowObservation) {
        if !cfg.enabled {
            return;
        }
        let clamp = |w: f64| (w.round() as usize).clamp(cfg.min_window, max_response);
        if self.window == 0 {
            self.warm_n += o.solved;
            self.warm_sum += (o.mean_success_length as f64 * o.solved as f64).round() as usize;
            if step >= cfg.warmup_steps {
                self.window = if self.warm_n == 0 {
                    // Nothing solved in the warm-up: keep the full window until something is.
                    max_response
                } else {
                    clamp(self.warm_sum as f64 / self.warm_n as f64 * cfg.warmup_margin as f64)
                };
            }
            return;
        }
        let w = used as f64;
        if o.success_rate < cfg.low_success || o.saturated_frac > cfg.saturation {
            self.window = clamp((w * cfg.grow as f64).ceil().max(w + 1.0));
        } else if o.success_rate >= cfg.high_success && (o.mean_success_length as f64) < cfg.underuse as f64 * w {
            self.window = clamp((w * cfg.shrink as f64).floor());
        } else {
            self.window = clamp(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_anneals_to_its_end() {
        let lr = |end, kind, warmup, step| learning_rate(1e-3, end, kind, warmup, step, 11);
        // Constant without an end; a linear warm-up reaches lr at its last step.
        assert_eq!((lr(None, Anneal::Cosine, 0, 1), lr(None, Anneal::Cosine, 0, 11)), (1e-3, 1e-3));
        assert_eq!((lr(None, Anneal::Linear, 4, 1), lr(None, Anneal::Linear, 4, 4), lr(None, Anneal::Linear, 4, 5)), (2.5e-4, 1e-3, 1e-3));
        // From lr at the first step to the end at the last; cosine is half-way at the middle.
        for kind in [Anneal::Linear, Anneal::Cosine] {
            assert!((lr(Some(1e-4), kind, 0, 1) - 1e-3).abs() < 1e-9);
            assert!((lr(Some(1e-4), kind, 0, 11) - 1e-4).abs() < 1e-9);
            assert!((lr(Some(1e-4), kind, 0, 6) - 5.5e-4).abs() < 1e-7, "{kind:?}");
            // With a warm-up the annealing starts after it.
            assert!((lr(Some(1e-4), kind, 1, 2) - 1e-3).abs() < 1e-9 && (lr(Some(1e-4), kind, 1, 11) - 1e-4).abs() < 1e-9);
        }
        assert!(lr(Some(1e-4), Anneal::Cosine, 0, 3) > lr(Some(1e-4), Anneal::Linear, 0, 3));
    }

    #[test]
    fn temperature_schedules_run_from_start_to_end() {
        let mut r = RolloutSection { temperature_end: Some(0.3), ..Default::default() };
        let near = |a: f32, b: f32| (a - b).abs() < 1e-6;
        assert!(near(r.temperature(1.0, 1, 11), 1.0) && near(r.temperature(1.0, 6, 11), 0.65) && near(r.temperature(1.0, 11, 11), 0.3));
        r.temperature_schedule = Anneal::Cosine;
        assert!(near(r.temperature(1.0, 1, 11), 1.0) && near(r.temperature(1.0, 6, 11), 0.65) && near(r.temperature(1.0, 11, 11), 0.3));
        // Cosine stays near the start longer.
        assert!(r.temperature(1.0, 3, 11) > 0.86);
        assert!(near(RolloutSection::default().temperature(0.7, 5, 10), 0.7));
        assert!(RolloutSection { temperature_end: Some(0.0), ..Default::default() }.validate(8).is_err());
    }

    #[test]
    fn window_warms_up_then_shrinks_and_grows() {
        let cfg = AdaptiveWindowConfig { enabled: true, warmup_steps: 2, epsilon: 0.0, min_window: 8, ..Default::default() };
        let max = 100;
        let mut s = WindowState::default();
        let obs = |rate: f32, len: f32, solved: usize, sat: f32| WindowObservation {
            success_rate: rate,
            mean_success_length: len,
            solved,
            saturated_frac: sat,
        };
        assert_eq!(s.window_for(&cfg, max, 1, 1), (max, false));
        s.observe(&cfg, max, 1, max, &obs(0.5, 20.0, 4, 0.0));
        s.observe(&cfg, max, 2, max, &obs(0.5, 30.0, 4, 0.0));
        // Mean correct length 25 × margin 1.5.
        assert_eq!(s.window, 38);
        let (w, _) = s.window_for(&cfg, max, 1, 3);
        // High success, correct answers use 20 of 38 (< 0.6): shrink.
        s.observe(&cfg, max, 3, w, &obs(0.8, 20.0, 8, 0.0));
        assert_eq!(s.window, 34);
        // Saturated: grow.
        s.observe(&cfg, max, 4, 34, &obs(0.3, 30.0, 3, 0.5));
        assert_eq!(s.window, 43);
        // Low success: grow, capped at the maximum.
        s.window = 90;
        s.observe(&cfg, max, 5, 90, &obs(0.0, 0.0, 0, 0.0));
        assert_eq!(s.window, 100);
        // Steady in between; never below min_window.
        s.window = 9;
        s.observe(&cfg, max, 6, 9, &obs(0.9, 1.0, 9, 0.0));
        assert_eq!(s.window, 8);
        // ε = 1: every step explores the maximum.
        let greedy = AdaptiveWindowConfig { epsilon: 1.0, ..cfg.clone() };
        assert_eq!(s.window_for(&greedy, max, 1, 7), (max, true));
        assert!(AdaptiveWindowConfig { min_window: 200, ..cfg }.validate(max).is_err());
    }
}
