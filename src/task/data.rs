//! Task datasets: TinyZero's parquet (`target`, `nums` columns), JSON lines, and seeded
//! generators.
use super::solver::solve_countdown;
use super::Problem;
use crate::rng::Rng;
use anyhow::{anyhow, bail, Context, Result};
use std::ops::Range;
use std::path::Path;

/// Problems from a `.parquet` or `.jsonl` file, optionally only rows `rows`.
pub fn load_problems(path: &Path, rows: Option<Range<usize>>) -> Result<Vec<Problem>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let all = match ext {
        "parquet" => read_parquet(path, rows.clone())?,
        "jsonl" | "json" => read_jsonl(path)?,
        _ => bail!("{}: expected a .parquet or .jsonl file", path.display()),
    };
    Ok(match (ext, rows) {
        ("parquet", _) | (_, None) => all,
        (_, Some(r)) => {
            if r.end > all.len() {
                bail!("{}: rows {}..{} requested but the file has {} rows", path.display(), r.start, r.end, all.len());
            }
            all[r].to_vec()
        }
    })
}

fn from_json(v: &serde_json::Value) -> Result<Problem> {
    let int = |k: &str| -> Result<i64> { v.get(k).and_then(|x| x.as_i64()).ok_or_else(|| anyhow!("'{k}' must be an integer")) };
    if v.get("nums").is_some() {
        let nums = v["nums"]
            .as_array()
            .ok_or_else(|| anyhow!("'nums' must be a list of integers"))?
            .iter()
            .map(|x| x.as_i64().ok_or_else(|| anyhow!("'nums' must be a list of integers")))
            .collect::<Result<Vec<_>>>()?;
        if nums.is_empty() || nums.len() > 6 {
            bail!("'nums' must hold 1 to 6 numbers");
        }
        Ok(Problem::Countdown { nums, target: int("target")? })
    } else if v.get("a").is_some() {
        Ok(Problem::Multiply { a: int("a")?, b: int("b")? })
    } else {
        bail!("expected {{\"nums\":[..],\"target\":N}} or {{\"a\":A,\"b\":B}}")
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(from_json(&v).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?);
    }
    Ok(out)
}

fn field_i64(f: &parquet::record::Field) -> Option<i64> {
    use parquet::record::Field;
    match f {
        Field::Byte(x) => Some(*x as i64),
        Field::Short(x) => Some(*x as i64),
        Field::Int(x) => Some(*x as i64),
        Field::Long(x) => Some(*x),
        Field::UByte(x) => Some(*x as i64),
        Field::UShort(x) => Some(*x as i64),
        Field::UInt(x) => Some(*x as i64),
        Field::ULong(x) => i64::try_from(*x).ok(),
        _ => None,
    }
}

fn read_parquet(path: &Path, rows: Option<Range<usize>>) -> Result<Vec<Problem>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = SerializedFileReader::new(file).map_err(|e| anyhow!("{}: not a readable parquet file: {e}", path.display()))?;
    let total = reader.metadata().file_metadata().num_rows().max(0) as usize;
    let range = rows.unwrap_or(0..total);
    if range.end > total {
        bail!("{}: rows {}..{} requested but the file has {total} rows", path.display(), range.start, range.end);
    }
    let iter = reader.get_row_iter(None).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::with_capacity(range.len());
    for (i, row) in iter.enumerate().skip(range.start).take(range.len()) {
        let row = row.map_err(|e| anyhow!("{}: row {i}: {e}", path.display()))?;
        let (mut target, mut nums) = (None, None);
        for (name, field) in row.get_column_iter() {
            match (name.as_str(), field) {
                ("target", f) => target = field_i64(f),
                ("nums", Field::ListInternal(list)) => nums = list.elements().iter().map(field_i64).collect::<Option<Vec<i64>>>(),
                _ => {}
            }
        }
        match (target, nums) {
            (Some(target), Some(nums)) if !nums.is_empty() && nums.len() <= 6 => out.push(Problem::Countdown { nums, target }),
            _ => bail!("{}: row {i}: needs an integer 'target' and a list of 1 to 6 integers 'nums'", path.display()),
        }
    }
    Ok(out)
}

/// How generated Countdown problems look: how many numbers (chosen uniformly among `counts`),
/// numbers uniform in 1..=max_number, targets uniform in 1..=max_target. TinyZero's dataset uses
/// 3 or 4 numbers and targets below 100; smaller ranges make an easier curriculum for tiny models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountdownSpec {
    pub counts: Vec<usize>,
    pub max_number: i64,
    pub max_target: i64,
}

impl Default for CountdownSpec {
    fn default() -> Self {
        CountdownSpec { counts: vec![3, 4], max_number: 99, max_target: 99 }
    }
}

/// Countdown problems drawn from `spec`, kept only when the solver finds a solution; sizes are
/// uniform over `spec.counts`.
pub fn generate_countdown(n: usize, seed: u64, spec: &CountdownSpec) -> Vec<Problem> {
    let counts: Vec<usize> = if spec.counts.is_empty() { vec![3, 4] } else { spec.counts.clone() };
    let (max_number, max_target) = (spec.max_number.max(1) as u64, spec.max_target.max(1) as u64);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // The size is drawn first and kept while redrawing unsolvable instances, so sizes stay
        // uniform over `counts` even though small instances are less often solvable.
        let k = counts[rng.below(counts.len() as u64) as usize].clamp(2, 6);
        for _ in 0..10_000 {
            let nums: Vec<i64> = (0..k).map(|_| 1 + rng.below(max_number) as i64).collect();
            let target = 1 + rng.below(max_target) as i64;
            if solve_countdown(&nums, target).is_some() {
                out.push(Problem::Countdown { nums, target });
                break;
            }
        }
    }
    out
}

/// 3-digit multiplication problems, without repeats.
pub fn generate_multiply(n: usize, seed: u64) -> Vec<Problem> {
    let mut rng = Rng::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n.min(900 * 900) {
        let (a, b) = (100 + rng.below(900) as i64, 100 + rng.below(900) as i64);
        if seen.insert((a, b)) {
            out.push(Problem::Multiply { a, b });
        }
    }
    out
}
