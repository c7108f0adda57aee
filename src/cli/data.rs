//! `tz-engine data`: task datasets as JSON lines — Countdown generated or converted from
//! TinyZero's parquet, and 3-digit multiplication.
use crate::task::parse_rows;
use crate::task::{self, Problem};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct DataArgs {
    #[command(subcommand)]
    pub which: Option<Which>,
}

#[derive(Subcommand)]
pub enum Which {
    /// Countdown: `--n N --seed S` generates solvable instances; `--from-parquet FILE --rows A..B`
    /// converts TinyZero's Countdown-Tasks-3to4 parquet.
    Countdown(CountdownArgs),
    /// 3-digit multiplication, de-duplicated.
    Multiply(MultiplyArgs),
}

#[derive(Args)]
pub struct CountdownArgs {
    #[arg(long, conflicts_with = "from_parquet")]
    pub n: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How many numbers per instance, e.g. 3,4.
    #[arg(long, default_value = "3,4")]
    pub counts: String,
    /// Numbers are drawn from 1..=max-number
    #[arg(long, default_value_t = 99)]
    pub max_number: i64,
    /// Targets are drawn from 1..=max-target
    #[arg(long, default_value_t = 99)]
    pub max_target: i64,
    #[arg(long)]
    pub from_parquet: Option<PathBuf>,
    /// Row range of the parquet file, e.g. 0..327680 (TinyZero's train split).
    #[arg(long, default_value = "")]
    pub rows: String,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct MultiplyArgs {
    #[arg(long)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

fn write_jsonl(path: &std::path::Path, problems: &[Problem]) -> Result<()> {
    let mut text = String::new();
    for p in problems {
        text.push_str(&serde_json::to_string(p)?);
        text.push('\n');
    }
    crate::util::fs::write_atomic(path, text.as_bytes())?;
    eprintln!("wrote {} problems to {}", problems.len(), path.display());
    Ok(())
}

pub fn run(args: DataArgs) -> Result<i32> {
    match args.which {
        None => bail!("say which dataset: `tz-engine data countdown ...` or `tz-engine data multiply ...`"),
        Some(Which::Countdown(a)) => {
            if let Some(n) = a.n {
                crate::util::limits::at_most("--n", n, crate::util::limits::MAX_ITEMS)?;
            }
            let problems = match (&a.from_parquet, a.n) {
                (Some(path), _) => task::load_problems(path, parse_rows(&a.rows)?)?,
                (None, Some(n)) => {
                    let counts: Vec<usize> = a
                        .counts
                        .split(',')
                        .map(|s| s.trim().parse::<usize>().ok().filter(|c| (2..=6).contains(c)))
                        .collect::<Option<_>>()
                        .ok_or_else(|| anyhow::anyhow!("--counts must list sizes between 2 and 6, e.g. 3,4"))?;
                    if a.max_number < 1 || a.max_target < 1 {
                        bail!("--max-number and --max-target must be at least 1");
                    }
                    task::generate_countdown(
                        n,
                        a.seed,
                        &task::ProblemSpec { counts, max_number: a.max_number, max_target: a.max_target, ..Default::default() },
                    )?
                }
                (None, None) => bail!("give --n N (generate) or --from-parquet FILE (convert)"),
            };
            write_jsonl(&a.out, &problems)?;
        }
        Some(Which::Multiply(a)) => {
            // There are only 900 × 900 distinct 3-digit products: say so instead of stopping short.
            if a.n > 900 * 900 {
                bail!("--n {}: there are only {} distinct 3-digit multiplication problems", a.n, 900 * 900);
            }
            write_jsonl(&a.out, &task::generate_multiply(a.n, a.seed))?
        }
    }
    Ok(0)
}
