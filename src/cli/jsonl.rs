//! JSON-lines input shared by the model commands: a file or `-` for stdin; each error names
//! the file and line.
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

/// Every non-blank line parsed as `T`; the first bad line is an error naming `file:line`.
pub fn read_all<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let mut reader = open(path)?;
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} (is it UTF-8 text?)", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(item);
    }
    Ok(out)
}
