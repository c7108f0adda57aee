//! Task datasets: TinyZero's parquet (`target`, `nums` columns), JSON lines, and seeded
//! generators. Each record is read by the task whose shape it has (`Task::parse`); fields no
//! task uses are ignored.
use super::Problem;
use anyhow::{anyhow, bail, Context, Result};
use std::ops::Range;
use std::path::Path;

pub use super::countdown::generate_countdown;
pub use super::multiply::generate_multiply;
pub use super::ProblemSpec;

/// Parses "a..b" into a row range; empty means none.
pub fn parse_rows(s: &str) -> Result<Option<Range<usize>>> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    let (a, b) = s.split_once("..").ok_or_else(|| anyhow!("row range '{s}' must look like start..end"))?;
    let a: usize = a.trim().parse().map_err(|_| anyhow!("row range '{s}': bad start"))?;
    let b: usize = b.trim().parse().map_err(|_| anyhow!("row range '{s}': bad end"))?;
    if a >= b {
        bail!("row range '{s}' is empty");
    }
    Ok(Some(a..b))
}

/// Problems from a `.parquet` or `.jsonl` file, optionally only rows `rows`.
pub fn load_problems(path: &Path, rows: Option<Range<usize>>) -> Result<Vec<Problem>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let all = match ext {
        "parquet" => read_parquet_guarded(path, rows.clone())?,
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

fn read_jsonl(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(super::parse_any(&v).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?);
    }
    Ok(out)
}

/// A parquet value as JSON: integers, floats, strings, booleans, lists and groups; anything
/// else (bytes, dates, decimals) as null, which no task reads.
fn field_json(f: &parquet::record::Field) -> serde_json::Value {
    use parquet::record::Field;
    use serde_json::Value;
    match f {
        Field::Bool(x) => Value::Bool(*x),
        Field::Byte(x) => (*x).into(),
        Field::Short(x) => (*x).into(),
        Field::Int(x) => (*x).into(),
        Field::Long(x) => (*x).into(),
        Field::UByte(x) => (*x).into(),
        Field::UShort(x) => (*x).into(),
        Field::UInt(x) => (*x).into(),
        Field::ULong(x) => (*x).into(),
        Field::Float(x) => serde_json::Number::from_f64(*x as f64).map_or(Value::Null, Value::Number),
        Field::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Field::Str(s) => Value::String(s.clone()),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        Field::Group(row) => Value::Object(row.get_column_iter().map(|(k, v)| (k.clone(), field_json(v))).collect()),
        _ => Value::Null,
    }
}

/// `read_parquet`, with a panic inside the parquet crate (it panics on some corrupt pages
/// instead of returning an error) turned into an error naming the file; the panic message is
/// kept out of the output.
fn read_parquet_guarded(path: &Path, rows: Option<Range<usize>>) -> Result<Vec<Problem>> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_parquet(path, rows)));
    std::panic::set_hook(quiet);
    r.unwrap_or_else(|_| bail!("{}: corrupt parquet file (the reader failed on a damaged page)", path.display()))
}

fn read_parquet(path: &Path, rows: Option<Range<usize>>) -> Result<Vec<Problem>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
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
        let record = serde_json::Value::Object(row.get_column_iter().map(|(k, v)| (k.clone(), field_json(v))).collect());
        out.push(super::parse_any(&record).map_err(|e| anyhow!("{}: row {i}: {e}", path.display()))?);
    }
    Ok(out)
}

/// Writes Countdown problems (target, nums) as a parquet file in TinyZero's layout — the one
/// pyarrow writes for its dataset: an optional int64 `target` and a nullable `LIST<int64>`
/// `nums` (3-level list). What the tests and the parquet fuzz target read back.
pub fn write_countdown_parquet(path: &Path, rows: &[(i64, Vec<i64>)]) -> Result<()> {
    use parquet::data_type::Int64Type;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let err = |e: parquet::errors::ParquetError| anyhow!("{}: {e}", path.display());
    let schema = parquet::schema::parser::parse_message_type(
        "message schema { optional int64 target; optional group nums (LIST) { repeated group list { optional int64 element; } } }",
    )
    .map_err(err)?;
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(WriterProperties::builder().build())).map_err(err)?;
    let mut rg = w.next_row_group().map_err(err)?;
    let targets: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let (mut vals, mut defs, mut reps) = (vec![], vec![], vec![]);
    for (_, nums) in rows {
        for (k, &x) in nums.iter().enumerate() {
            vals.push(x);
            defs.push(3);
            reps.push(if k == 0 { 0 } else { 1 });
        }
    }
    // (values, definition levels, repetition levels) of the two columns.
    type Column<'a> = (&'a [i64], Vec<i16>, Option<&'a [i16]>);
    let columns: [Column; 2] = [(&targets, vec![1; rows.len()], None), (&vals, defs, Some(reps.as_slice()))];
    for (values, defs, reps) in columns {
        let mut col = rg.next_column().map_err(err)?.ok_or_else(|| anyhow!("{}: schema has too few columns", path.display()))?;
        col.typed::<Int64Type>().write_batch(values, Some(&defs), reps).map_err(err)?;
        col.close().map_err(err)?;
    }
    rg.close().map_err(err)?;
    w.close().map_err(err)?;
    Ok(())
}
