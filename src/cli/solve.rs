//! `tz-engine solve --nums 44,19,35 --target 98`: one equation, or exit 1 if none exists.
use crate::task::solve_countdown;
use anyhow::{anyhow, bail, Result};
use clap::Args;

#[derive(Args, Default)]
pub struct SolveArgs {
    /// Comma-separated numbers, e.g. 44,19,35.
    #[arg(long)]
    pub nums: String,
    #[arg(long, allow_negative_numbers = true)]
    pub target: i64,
}

pub fn run(args: SolveArgs) -> Result<i32> {
    let nums: Vec<i64> = args
        .nums
        .split(',')
        .map(|s| s.trim().parse::<i64>().map_err(|_| anyhow!("--nums: '{s}' is not an integer")))
        .collect::<Result<_>>()?;
    if nums.is_empty() || nums.len() > 6 || nums.iter().any(|&n| n < 0) {
        bail!("--nums must list 1 to 6 non-negative integers");
    }
    match solve_countdown(&nums, args.target) {
        Some(eq) => {
            println!("{eq}");
            Ok(0)
        }
        None => {
            eprintln!("no equation with {:?} equals {}", nums, args.target);
            Ok(1)
        }
    }
}
