//! `tz-engine reward --input FILE`: score JSON lines with the TinyZero-exact rewards. One
//! output line per input line, in order; malformed lines get `{"error":...}`, the run goes
//! on, and the exit code is 1 if any line was malformed. Blank lines are malformed too (they
//! get an output line, so output line k always answers input line k). Fields a line carries
//! beyond what scoring needs are ignored, and an `id` field is copied into its output line.
use crate::task::{self, Problem, RewardKind};
use crate::util::jsonl::{self, with_id};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct RewardArgs {
    /// JSON lines `{"task":"countdown","nums":[..],"target":N,"response":"..."}` (or
    /// `"task":"multiply","a":A,"b":B`); `-` for stdin.
    #[arg(long)]
    pub input: PathBuf,
    /// The reward for lines that name none (`"reward"`): tinyzero or binary.
    #[arg(long, default_value = "tinyzero")]
    pub reward: RewardKind,
}

/// A line's problem, response and reward; the error names what is wrong.
fn parse(v: &serde_json::Value, default_reward: RewardKind) -> Result<(Problem, String, RewardKind)> {
    let field = |k: &str| v.get(k).ok_or_else(|| anyhow!("missing field `{k}`"));
    let name = field("task")?.as_str().ok_or_else(|| anyhow!("`task` must be a string"))?;
    let t = task::by_name(name)?;
    let problem = match t.parse(v) {
        Some(p) => p?,
        None => bail!("{name} lines need {}", t.record_shape()),
    };
    let response = field("response")?.as_str().ok_or_else(|| anyhow!("`response` must be a string"))?.to_string();
    let reward = match v.get("reward") {
        None | Some(serde_json::Value::Null) => default_reward,
        Some(r) => r.as_str().ok_or_else(|| anyhow!("`reward` must be a string"))?.parse()?,
    };
    Ok((problem, response, reward))
}

pub fn run(args: RewardArgs) -> Result<i32> {
    let reader = jsonl::open(&args.input)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut n, mut bad) = (0usize, 0usize);
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|e| anyhow!("{}: {e}", args.input.display()))?;
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        n += 1;
        let value: Result<serde_json::Value> =
            if text.trim().is_empty() { Err(anyhow!("blank line")) } else { serde_json::from_str(text).map_err(|e| anyhow!("{e}")) };
        let id = value.as_ref().ok().and_then(|v| v.get("id").cloned());
        let json = match value.and_then(|v| parse(&v, args.reward)) {
            Ok((p, response, kind)) => serde_json::to_string(&task::score(&p, &response, kind))?,
            Err(e) => {
                bad += 1;
                serde_json::json!({"error": format!("line {}: {e:#}", i + 1)}).to_string()
            }
        };
        writeln!(out, "{}", with_id(id.as_ref(), json))?;
    }
    out.flush()?;
    eprintln!("scored {} lines, {bad} malformed", n - bad);
    Ok(if bad > 0 { 1 } else { 0 })
}
