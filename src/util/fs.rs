//! Files that are never seen half-written.
use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename. A crash leaves
/// either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().ok_or_else(|| anyhow!("{} is not a file path", path.display()))?;
    if path.is_dir() {
        bail!("{} is a directory: give a file path", path.display());
    }
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let written = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        // A half-written temp file (disk full) must not stay behind to fill the disk further.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// An exclusive advisory lock on a directory (`DIR/.lock`, holding the owner's pid), held until
/// dropped — for the whole life of the process that trains, fine-tunes or evaluates into it.
pub struct DirLock {
    _file: std::fs::File,
}

/// Takes `dir`'s lock, creating `dir` if needed; a directory another live process holds is an
/// error naming that process.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            let owner = owner.trim();
            bail!(
                "{} is in use by {} (another tz-engine run holds its lock)",
                dir.display(),
                if owner.is_empty() { "another process".to_string() } else { format!("pid {owner}") }
            );
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(anyhow!("cannot lock {}: {e}", path.display())),
    }
    file.set_len(0)?;
    file.write_all(std::process::id().to_string().as_bytes())?;
    file.sync_all()?;
    Ok(DirLock { _file: file })
}

/// Removes temp files and directories our writers leave behind when a process dies mid-write
/// (`write_atomic`'s `.NAME.tmpPID`, a checkpoint's `.step-NNNNNN.tmp/`) from `dir` — one of
/// our own directories, held under the run's lock. Best effort: what cannot be removed stays.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp") {
            let p = e.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

/// Removes `dir` if it holds nothing but the run lock (a run that failed before writing).
pub fn remove_if_only_lock(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    if names.iter().all(|n| n == ".lock") {
        let _ = std::fs::remove_file(dir.join(".lock"));
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::lock_dir;

    #[test]
    fn a_locked_directory_is_refused_until_released() {
        let dir = std::env::temp_dir().join(format!("tz-lock-test-{}", std::process::id()));
        let held = lock_dir(&dir).unwrap();
        let e = format!("{:#}", lock_dir(&dir).err().expect("a second lock must fail"));
        assert!(e.contains("in use by pid") && e.contains(&std::process::id().to_string()), "{e}");
        drop(held);
        lock_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
