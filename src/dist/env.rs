//! Which rank this process is, read from the environment its launcher sets: `tz-engine
//! launch` and torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`), Open MPI's mpirun (`OMPI_COMM_WORLD_RANK`, `_SIZE`,
//! `_LOCAL_RANK`, `_LOCAL_SIZE`) and Slurm's srun (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` or
//! `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_STEP_NODELIST`). The first contract present wins,
//! in that order (torchrun started by srun sets both; its ranks are torchrun's).
//!
//! Rank 0 serves the rendezvous (`super::tcp`) on its own port: `TZ_RDZV_PORT`, else
//! `MASTER_PORT + 1` under torchrun (whose agent's store owns `MASTER_PORT`), else
//! `MASTER_PORT`, else 29511. Its address: `MASTER_ADDR`, else (Slurm) the first host of the
//! step's node list, else, when every rank is on this node, 127.0.0.1.
use anyhow::{bail, Context, Result};

/// The port the rendezvous uses when nothing says otherwise.
pub const DEFAULT_RDZV_PORT: u16 = 29511;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world: usize,
    /// Rank on this node: the GPU ordinal.
    pub local_rank: usize,
    pub local_world: usize,
    /// Where rank 0's rendezvous listens.
    pub master_addr: String,
    pub rdzv_port: u16,
    /// Which contract: "tz-engine launch", "torchrun", "mpirun", "srun" or "none".
    pub launcher: &'static str,
}

impl RankEnv {
    pub fn single() -> Self {
        RankEnv {
            rank: 0,
            world: 1,
            local_rank: 0,
            local_world: 1,
            master_addr: "127.0.0.1".into(),
            rdzv_port: DEFAULT_RDZV_PORT,
            launcher: "none",
        }
    }

    /// From this process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From variables looked up by `get` (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |k: &str| -> Result<Option<usize>> {
            get(k).map(|v| v.trim().parse::<usize>().with_context(|| format!("{k}={v:?} is not a non-negative integer"))).transpose()
        };
        let port = |k: &str| -> Result<Option<u16>> {
            get(k).map(|v| v.trim().parse::<u16>().with_context(|| format!("{k}={v:?} is not a port number"))).transpose()
        };
        let (launcher, rank, world, local_rank, local_world) = if let (Some(r), Some(w)) = (num("RANK")?, num("WORLD_SIZE")?) {
            // The torchrun contract (other launchers such as DeepSpeed's use it too).
            let launcher = if get("TZ_LAUNCHER").is_some() { "tz-engine launch" } else { "torchrun" };
            (launcher, r, w, num("LOCAL_RANK")?.unwrap_or(r), num("LOCAL_WORLD_SIZE")?.unwrap_or(w))
        } else if let (Some(r), Some(w)) = (num("OMPI_COMM_WORLD_RANK")?, num("OMPI_COMM_WORLD_SIZE")?) {
            ("mpirun", r, w, num("OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(r), num("OMPI_COMM_WORLD_LOCAL_SIZE")?.unwrap_or(w))
        } else if let (Some(r), Some(_), Some(w)) =
            (num("SLURM_PROCID")?, get("SLURM_STEP_NODELIST"), num("SLURM_STEP_NUM_TASKS")?.or(num("SLURM_NTASKS")?))
        {
            // Only srun sets the step variables: a batch script's own process (SLURM_PROCID
            // 0 of a multi-task allocation) is not a rank of a multi-process run.
            let local_world = get("SLURM_STEP_TASKS_PER_NODE").and_then(|v| first_count(&v)).unwrap_or(w);
            ("srun", r, w, num("SLURM_LOCALID")?.unwrap_or(0), local_world)
        } else {
            return Ok(Self::single());
        };
        if world == 0 || rank >= world {
            bail!("{launcher}: rank {rank} of a world of {world}");
        }
        if local_world == 0 || local_rank >= local_world {
            bail!("{launcher}: local rank {local_rank} of {local_world} on this node");
        }
        let master_addr = match get("MASTER_ADDR").filter(|a| !a.trim().is_empty()) {
            Some(a) => a.trim().to_string(),
            None if launcher == "srun" => {
                let list = get("SLURM_STEP_NODELIST").unwrap_or_default();
                first_host(&list).with_context(|| format!("SLURM_STEP_NODELIST={list:?}: no host name in it"))?
            }
            None if local_world == world => "127.0.0.1".into(),
            None => bail!("{launcher}: {world} ranks over several nodes need MASTER_ADDR (rank 0's host)"),
        };
        let rdzv_port = match (port("TZ_RDZV_PORT")?, port("MASTER_PORT")?) {
            (Some(p), _) => p,
            (None, Some(p)) if launcher == "torchrun" => {
                p.checked_add(1).context("MASTER_PORT 65535 leaves no port for the rendezvous: set TZ_RDZV_PORT")?
            }
            (None, Some(p)) => p,
            (None, None) => DEFAULT_RDZV_PORT,
        };
        Ok(RankEnv { rank, world, local_rank, local_world, master_addr, rdzv_port, launcher })
    }
}

/// The GPU a rank uses, of the `count` this process sees: the only one, when
/// `CUDA_VISIBLE_DEVICES` leaves one per process (as `tz-engine launch` and Slurm's
/// `--gpus-per-task` do), else the one numbered by its local rank (torchrun's contract).
pub fn gpu_ordinal(env: &RankEnv, count: usize) -> Result<usize> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let one_visible = visible.as_deref().is_some_and(|v| !v.trim().is_empty() && !v.contains(','));
    match (one_visible, env.local_rank < count) {
        (true, _) if count >= 1 => Ok(0),
        (_, true) => Ok(env.local_rank),
        _ => bail!(
            "local rank {} needs GPU {} but this process sees {count} GPU(s){}",
            env.local_rank,
            env.local_rank,
            visible.map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})")).unwrap_or_default()
        ),
    }
}

/// This machine's name (for messages).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

/// tz-engine's version and a fingerprint of the running executable's bytes: ranks must run
/// the same build, not only the same version number.
pub fn binary_fingerprint() -> String {
    let bytes = std::env::current_exe().and_then(std::fs::read).unwrap_or_default();
    format!("tz-engine {}, build {:016x}", env!("CARGO_PKG_VERSION"), crate::util::fnv1a(crate::util::FNV_OFFSET, &bytes))
}

/// The first host of a Slurm node list: "gpu[03-04,07],cpu1" → "gpu03", "a,b" → "a".
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    // The first entry ends at a comma outside brackets.
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = &list[..end];
    if entry.is_empty() {
        return None;
    }
    match entry.find('[') {
        None => Some(entry.to_string()),
        Some(open) => {
            let (prefix, rest) = entry.split_at(open);
            let inner = rest.trim_start_matches('[').trim_end_matches(']');
            let first = inner.split(',').next()?.split('-').next()?.trim();
            if first.is_empty() {
                return None;
            }
            Some(format!("{prefix}{first}"))
        }
    }
}

/// Tasks on the first node of `SLURM_STEP_TASKS_PER_NODE` ("4(x2),3" → 4).
fn first_count(v: &str) -> Option<usize> {
    v.split(',').next()?.split('(').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<RankEnv> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RankEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn each_launchers_contract() {
        assert_eq!(env(&[]).unwrap(), RankEnv::single());
        let t = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "3"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "n0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "x"),
        ])
        .unwrap();
        assert_eq!((t.rank, t.world, t.local_rank, t.local_world, t.launcher), (3, 8, 3, 4, "torchrun"));
        // torchrun's agent owns MASTER_PORT: the rendezvous takes the next one.
        assert_eq!((t.master_addr.as_str(), t.rdzv_port), ("n0", 29501));
        let ours =
            env(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("TZ_LAUNCHER", "1"), ("MASTER_PORT", "4000"), ("TZ_RDZV_PORT", "4000")]).unwrap();
        assert_eq!((ours.launcher, ours.master_addr.as_str(), ours.rdzv_port), ("tz-engine launch", "127.0.0.1", 4000));
        let m = env(&[
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("OMPI_COMM_WORLD_SIZE", "16"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "8"),
            ("MASTER_ADDR", "h"),
        ])
        .unwrap();
        assert_eq!((m.rank, m.world, m.local_rank, m.launcher, m.rdzv_port), (5, 16, 1, "mpirun", DEFAULT_RDZV_PORT));
        let s = env(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_STEP_NODELIST", "gpu[07-08]"),
            ("SLURM_STEP_TASKS_PER_NODE", "4(x2)"),
        ])
        .unwrap();
        assert_eq!((s.rank, s.world, s.local_rank, s.local_world, s.master_addr.as_str(), s.launcher), (6, 8, 2, 4, "gpu07", "srun"));
        // A batch script's own process (no step) is a single rank.
        assert_eq!(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]).unwrap(), RankEnv::single());
        // torchrun inside srun: torchrun's ranks.
        let both =
            env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "1"), ("SLURM_STEP_NODELIST", "a"), ("SLURM_NTASKS", "2")]).unwrap();
        assert_eq!((both.rank, both.launcher), (0, "torchrun"));
    }

    #[test]
    fn bad_environments_are_one_line_errors() {
        let msg = |p: &[(&str, &str)]| format!("{:#}", env(p).unwrap_err());
        assert!(msg(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("rank 2 of a world of 2"));
        assert!(msg(&[("RANK", "x"), ("WORLD_SIZE", "2")]).contains("RANK=\"x\""));
        assert!(msg(&[("RANK", "0"), ("WORLD_SIZE", "4"), ("LOCAL_WORLD_SIZE", "2"), ("LOCAL_RANK", "0")]).contains("need MASTER_ADDR"));
        assert!(msg(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "65535")]).contains("TZ_RDZV_PORT"));
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("gpu[03-04,07],cpu1").as_deref(), Some("gpu03"));
        assert_eq!(first_host("a,b").as_deref(), Some("a"));
        assert_eq!(first_host("node17").as_deref(), Some("node17"));
        assert_eq!(first_host("rack1-n[9,10]").as_deref(), Some("rack1-n9"));
        assert_eq!(first_host(""), None);
        assert_eq!(first_count("4(x2),3"), Some(4));
    }
}
