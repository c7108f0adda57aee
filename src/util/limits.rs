//! Limits on sizes that come from files and flags, checked before anything is allocated, so
//! an absurd value is an error naming it — not an abort on a failed allocation. Counts are
//! capped at what a run could use; memory is checked against what the machine has.
use anyhow::{bail, Result};

/// Problems, samples or responses one command generates or holds at once.
pub const MAX_ITEMS: usize = 100_000_000;
/// A model dimension (hidden, intermediate, head): far above any Qwen2 (72B: 29568).
pub const MAX_DIM: usize = 1 << 20;
/// Vocabulary entries (Qwen2.5: 151936).
pub const MAX_VOCAB: usize = 1 << 24;
/// Decoder layers, attention heads.
pub const MAX_LAYERS: usize = 4096;

/// `what = value` must be at most `limit`; the error names the setting.
pub fn at_most(what: &str, value: usize, limit: usize) -> Result<()> {
    if value > limit {
        bail!("{what} = {value} is over the limit of {limit}");
    }
    Ok(())
}

/// `a · b` items (e.g. prompts × samples per prompt) within `MAX_ITEMS`.
pub fn items(what: &str, a: usize, b: usize) -> Result<usize> {
    let n = a.saturating_mul(b);
    at_most(what, n, MAX_ITEMS)?;
    Ok(n)
}

/// Memory this machine can still give (`MemAvailable` in /proc/meminfo), if it says.
pub fn host_available_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Total host memory (`MemTotal`), if the machine says.
pub fn host_total_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` of host memory for `what` must fit what the machine has available.
pub fn host_fits(what: &str, bytes: usize) -> Result<()> {
    if let Some(avail) = host_available_bytes() {
        if bytes > avail {
            let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
            bail!("{what} needs {:.2} GiB of memory, more than this machine has available ({:.2} GiB)", gib(bytes), gib(avail));
        }
    }
    Ok(())
}
