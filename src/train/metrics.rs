//! Per-step metrics, appended to `runs/<name>/metrics.jsonl` (one JSON object per line; the
//! plot command and users' own tools read it).
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub reward_mean: f32,
    pub solve_rate: f32,
    pub format_rate: f32,
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f32,
    pub entropy_mean: f32,
    /// The critic's metrics (PPO).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub critic: Option<super::critic::CriticStats>,
    /// The step's self-play proposal round (`[selfplay]`), if it had one.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub selfplay: Option<super::selfplay::Round>,
    pub resp_len_mean: f32,
    pub resp_len_max: usize,
    pub truncated_frac: f32,
    pub rollout_tok_s: f32,
    pub train_tok_s: f32,
    pub time_rollout_s: f32,
    pub time_ref_s: f32,
    pub time_update_s: f32,
    pub step_time_s: f32,
    pub peak_mem_bytes: u64,
    pub skipped: bool,
    // Diagnostics (`crate::train::diag`); absent from metrics written before they existed.
    /// Tokens of the step's prompts and responses (the overall total is their sum).
    #[serde(default)]
    pub tokens_prompt: usize,
    #[serde(default)]
    pub tokens_response: usize,
    #[serde(default)]
    pub tokens_total: usize,
    /// Responses that ended on EOS or a stop string.
    #[serde(default)]
    pub finished_frac: f32,
    /// Solve rate among truncated responses, and among finished ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solve_rate_truncated: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solve_rate_finished: Option<f32>,
    /// Mean tokens of the solved responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_len_mean: Option<f32>,
    /// KL(π‖π_ref) per response token at the training forward: k1 (mean log-ratio) and k3.
    #[serde(default)]
    pub kl_ref_k1: f32,
    #[serde(default)]
    pub kl_ref_k3: f32,
    /// log(π/π_old) per token, and the importance ratio π/π_old, where the objective has the
    /// behaviour policy's log-probs (GRPO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_ratio_mean: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_ratio_std: Option<f32>,
    #[serde(default, rename = "actor/is_ratio/mean", skip_serializing_if = "Option::is_none")]
    pub is_ratio_mean: Option<f32>,
    #[serde(default, rename = "actor/is_ratio/std", skip_serializing_if = "Option::is_none")]
    pub is_ratio_std: Option<f32>,
    #[serde(default, rename = "actor/is_ratio/p95", skip_serializing_if = "Option::is_none")]
    pub is_ratio_p95: Option<f32>,
    /// Share of tokens with the ratio outside the objective's clip range.
    #[serde(default, rename = "actor/is_clip/outside_frac", skip_serializing_if = "Option::is_none")]
    pub is_clip_outside_frac: Option<f32>,
    /// Σ of every sampled reward so far, and wall seconds of training so far (both across
    /// resumes).
    #[serde(default)]
    pub reward_cumulative: f64,
    #[serde(default)]
    pub elapsed_s: f64,
    /// The curriculum stage the step trained on (`[curriculum]`).
    #[serde(default, rename = "curriculum/stage", skip_serializing_if = "Option::is_none")]
    pub curriculum_stage: Option<usize>,
    /// The step's sampling temperature.
    #[serde(default)]
    pub temperature: f32,
    /// The adaptive response window (`rollout.adaptive_window`): the step's response limit,
    /// the solved responses' mean length and the success rate it saw, and whether the step
    /// explored the full window.
    #[serde(default, rename = "adaptive_window/current_window", skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    #[serde(default, rename = "adaptive_window/mean_success_length", skip_serializing_if = "Option::is_none")]
    pub window_success_length: Option<f32>,
    #[serde(default, rename = "adaptive_window/success_rate", skip_serializing_if = "Option::is_none")]
    pub window_success_rate: Option<f32>,
    #[serde(default, rename = "adaptive_window/explored", skip_serializing_if = "Option::is_none")]
    pub window_explored: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_solve_rate: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_reward_mean: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_format_rate: Option<f32>,
    /// Held-out solve rate by difficulty ("3 numbers", …) at evaluation steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_by_difficulty: Option<std::collections::BTreeMap<String, f32>>,
}

pub fn append(path: &Path, m: &StepMetrics) -> Result<()> {
    append_json(path, &serde_json::to_value(m)?)
}

/// Appends one JSON object as a line.
pub fn append_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut line = serde_json::to_string(v)?;
    line.push('\n');
    f.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// Keeps only the lines with `step <= last_step` (on resume, steps after the checkpoint are
/// replayed and must not appear twice).
pub fn truncate_after(path: &Path, last_step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= last_step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::util::fs::write_atomic(path, out.as_bytes())
}

/// Peak resident memory of this process (Linux VmHWM), for the metrics line.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
