//! JSON-lines input: a file or `-` for stdin; each error names the file and line. Records are
//! read tolerantly: fields a reader does not use are ignored (users pipe dataset rows that
//! carry ids, prompts and expected answers), and an `id` field can be echoed into the output.
use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(BufReader::new(f)) as Box<dyn BufRead>)
}

/// One record and the `id` it carried, if any (any JSON value: number or string).
pub struct Record<T> {
    pub id: Option<serde_json::Value>,
    pub item: T,
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: Option<serde_json::Value>,
}

/// Every non-blank line parsed as `T` (extra fields ignored unless `T` denies them), with
/// its `id`; the first bad line is an error naming `file:line`.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<Record<T>>> {
    let mut reader = open(path)?;
    let mut text = String::new();
    reader.read_to_string(&mut text).with_context(|| format!("cannot read {} (is it UTF-8 text?)", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: serde_json::Error| anyhow!("{}:{}: {e}", path.display(), i + 1);
        // Parsed from the text (not from a Value) so errors say where in the line.
        let item = serde_json::from_str(line).map_err(at)?;
        let id = serde_json::from_str::<IdOnly>(line).ok().and_then(|r| r.id);
        out.push(Record { id, item });
    }
    Ok(out)
}

/// `read_records` without the ids.
pub fn read_all<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    Ok(read_records(path)?.into_iter().map(|r| r.item).collect())
}

/// `json` (one serialized JSON object) with `"id": id` put first when there is an id, the
/// other fields in their serialized order.
pub fn with_id(id: Option<&serde_json::Value>, json: String) -> String {
    match id {
        Some(id) if json.starts_with('{') => {
            let rest = &json[1..];
            let sep = if rest.trim_start().starts_with('}') { "" } else { "," };
            format!("{{\"id\":{id}{sep}{rest}")
        }
        _ => json,
    }
}

#[cfg(test)]
mod tests {
    use super::with_id;

    #[test]
    fn ids_go_first() {
        let id = serde_json::json!(7);
        assert_eq!(with_id(Some(&id), r#"{"score":1.0}"#.into()), r#"{"id":7,"score":1.0}"#);
        assert_eq!(with_id(Some(&serde_json::json!("a")), "{}".into()), r#"{"id":"a"}"#);
        assert_eq!(with_id(None, "{}".into()), "{}");
    }
}
