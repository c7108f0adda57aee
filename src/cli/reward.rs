//! `tz-engine reward --input FILE`: score JSON lines with any reward (`crate::task::rewards`). One
//! output line per input line, in order; malformed lines get `{"error":...}`, the run goes
//! on, and the exit code is 1 if any line was malformed. Blank lines are malformed too (they
//! get an output line, so output line k always answers input line k). Fields a line carries
//! beyond what scoring needs are ignored, and an `id` field is copied into its output line.
use crate::task::rewards::{CosineParams, RewardParams, RewardSpec};
use crate::task::{self, Problem};
use crate::util::jsonl::{self, with_id};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct RewardArgs {
    /// JSON lines `{"task":"countdown","nums":[..],"target":N,"response":"..."}` (or
    /// `"task":"multiply","a":A,"b":B`); `-` for stdin. A line may name its own `"reward"` (as
    /// `--reward` does, or an object of weights) and must give `"length"` (response tokens)
    /// when a `cosine` term scores it.
    #[arg(long)]
    pub input: PathBuf,
    /// The reward for lines that name none: tinyzero, binary, strict_format, equation, dense,
    /// cosine, or a weighted sum `name[=weight],…`.
    #[arg(long, default_value = "tinyzero")]
    pub reward: RewardSpec,
    /// The `cosine` reward's `max_len` (tokens).
    #[arg(long, default_value_t = 1024)]
    pub cosine_max_len: usize,
}

/// A line's problem, response, reward and response length; the error names what is wrong.
fn parse(v: &serde_json::Value, default_reward: &RewardSpec) -> Result<(Problem, String, RewardSpec, usize)> {
    let field = |k: &str| v.get(k).ok_or_else(|| anyhow!("missing field `{k}`"));
    let name = field("task")?.as_str().ok_or_else(|| anyhow!("`task` must be a string"))?;
    let t = task::by_name(name)?;
    let problem = match t.parse(v) {
        Some(p) => p?,
        None => bail!("{name} lines need {}", t.record_shape()),
    };
    let response = field("response")?.as_str().ok_or_else(|| anyhow!("`response` must be a string"))?.to_string();
    let reward = match v.get("reward") {
        None | Some(serde_json::Value::Null) => default_reward.clone(),
        Some(r) => RewardSpec::deserialize(r.clone()).map_err(|e| anyhow!("`reward`: {e}"))?.with_params(default_reward.params.clone()),
    };
    reward.check(name)?;
    let length = match v.get("length") {
        Some(l) => l.as_u64().ok_or_else(|| anyhow!("`length` must be a token count"))? as usize,
        None if reward.needs_length() => bail!("the cosine reward needs the response's `length` in tokens"),
        None => 0,
    };
    Ok((problem, response, reward, length))
}

/// One output line: the score and reason, and each term's value when there are several.
fn scored(p: &Problem, response: &str, reward: &RewardSpec, length: usize) -> Result<String> {
    let (score, parts) = reward.score_parts(p, response, length);
    if parts.len() == 1 {
        return Ok(serde_json::to_string(&score)?);
    }
    let rewards: serde_json::Map<_, _> = parts.iter().map(|(n, x)| (n.to_string(), serde_json::json!(x))).collect();
    Ok(serde_json::json!({"score": score.score, "reason": score.reason, "rewards": rewards}).to_string())
}

pub fn run(args: RewardArgs) -> Result<i32> {
    let reader = jsonl::open(&args.input)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut n, mut bad) = (0usize, 0usize);
    let cosine = CosineParams { max_len: args.cosine_max_len.max(1), ..CosineParams::default() };
    let default_reward = args.reward.clone().with_params(RewardParams { cosine, ..Default::default() });
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|e| anyhow!("{}: {e}", args.input.display()))?;
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        n += 1;
        let value: Result<serde_json::Value> =
            if text.trim().is_empty() { Err(anyhow!("blank line")) } else { serde_json::from_str(text).map_err(|e| anyhow!("{e}")) };
        let id = value.as_ref().ok().and_then(|v| v.get("id").cloned());
        let json = match value.and_then(|v| parse(&v, &default_reward)) {
            Ok((p, response, reward, length)) => scored(&p, &response, &reward, length)?,
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
