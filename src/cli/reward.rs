//! `tz-engine reward --input FILE`: score JSON lines with the TinyZero-exact rewards. One
//! output line per input line, in order; malformed lines get `{"error":...}`, the run goes
//! on, and the exit code is 1 if any line was malformed. Blank lines are malformed too (they
//! get an output line, so output line k always answers input line k).
use crate::task::{self, Problem, RewardKind};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct RewardArgs {
    /// JSON lines; `-` for stdin.
    #[arg(long)]
    pub input: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    task: String,
    #[serde(default)]
    nums: Option<Vec<i64>>,
    #[serde(default)]
    target: Option<i64>,
    #[serde(default)]
    a: Option<i64>,
    #[serde(default)]
    b: Option<i64>,
    response: String,
    #[serde(default)]
    reward: Option<String>,
}

fn parse(line: &str) -> Result<(Problem, String, RewardKind)> {
    if line.trim().is_empty() {
        bail!("blank line");
    }
    let l: Line = serde_json::from_str(line).map_err(|e| anyhow!("{e}"))?;
    let kind = match l.reward.as_deref() {
        None | Some("tinyzero") => RewardKind::Tinyzero,
        Some("binary") => RewardKind::Binary,
        Some(other) => bail!("unknown reward '{other}'"),
    };
    let p = match (l.task.as_str(), l.nums, l.target, l.a, l.b) {
        ("countdown", Some(nums), Some(target), None, None) if !nums.is_empty() && nums.len() <= 6 => Problem::Countdown { nums, target },
        ("countdown", ..) => bail!("countdown lines need 'nums' (1 to 6 integers) and 'target', and no 'a'/'b'"),
        ("multiply", None, None, Some(a), Some(b)) => Problem::Multiply { a, b },
        ("multiply", ..) => bail!("multiply lines need 'a' and 'b', and no 'nums'/'target'"),
        (other, ..) => bail!("unknown task '{other}' (expected countdown or multiply)"),
    };
    Ok((p, l.response, kind))
}

pub fn run(args: RewardArgs) -> Result<i32> {
    let reader = super::jsonl::open(&args.input)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut n, mut bad) = (0usize, 0usize);
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|e| anyhow!("{}: {e}", args.input.display()))?;
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        n += 1;
        let json = match parse(text) {
            Ok((p, response, kind)) => serde_json::to_string(&task::score(&p, &response, kind))?,
            Err(e) => {
                bad += 1;
                serde_json::json!({"error": format!("line {}: {e:#}", i + 1)}).to_string()
            }
        };
        writeln!(out, "{json}")?;
    }
    out.flush()?;
    eprintln!("scored {} lines, {bad} malformed", n - bad);
    Ok(if bad > 0 { 1 } else { 0 })
}
