//! Countdown and 3-digit multiplication: problems, prompt templates, TinyZero-exact rewards,
//! an exhaustive solver, and datasets (parquet, JSON lines, seeded generators).
//!
//! ```
//! use tz_engine::task::{render_prompt, score, solve_countdown, Problem, RewardKind, Template};
//! let p = Problem::Countdown { nums: vec![44, 19, 35], target: 98 };
//! assert!(render_prompt(&p, Template::Base).contains("Using the numbers [44, 19, 35]"));
//! let eq = solve_countdown(&[44, 19, 35], 98).unwrap();
//! assert_eq!(score(&p, &format!("<think>...</think>\n<answer>{eq}</answer>"), RewardKind::Tinyzero).score, 1.0);
//! assert_eq!(score(&p, "<answer>44 + 19</answer>", RewardKind::Tinyzero).score, 0.1);
//! ```
pub mod data;
pub mod expr;
pub mod reward;
pub mod solver;
pub mod template;

pub use data::{generate_countdown, CountdownSpec, generate_multiply, load_problems};
pub use reward::{score, Reason, RewardKind, Score};
pub use solver::solve_countdown;
pub use template::{render_prompt, sft_response, Template};

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Problem {
    Countdown { nums: Vec<i64>, target: i64 },
    Multiply { a: i64, b: i64 },
}

impl Problem {
    pub fn difficulty_label(&self) -> &'static str {
        match self {
            Problem::Countdown { nums, .. } => match nums.len() {
                3 => "3 numbers",
                4 => "4 numbers",
                5 => "5 numbers",
                6 => "6 numbers",
                _ => "other",
            },
            Problem::Multiply { .. } => "multiply",
        }
    }
}
