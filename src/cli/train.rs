//! `tz-engine train`: RL training. With no arguments it runs the tiny CPU preset end to end
//! (tokenizer + base model built by SFT, A*PO, evaluation), the README's main command.
use crate::backend::Backend;
use crate::dist::tcp::{Hello, TcpComm};
use crate::dist::{threads::run_ranks, Comm, HostComm, Single};
use crate::train::run::{Summary, Trainer};
use crate::train::{sft, TrainConfig};
use crate::util::fs::write_atomic;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// The configuration `tz-engine train` uses when given none.
pub const TINY_CPU_CONFIG: &str = include_str!("../../configs/tiny-cpu.toml");

#[derive(Args, Default)]
pub struct TrainArgs {
    /// TOML config (default: the tiny CPU preset, configs/tiny-cpu.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. `--set train.lr=1e-5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue the run in this directory from its latest checkpoint (its saved config is used;
    /// --set still applies on top).
    #[arg(long, conflicts_with = "restart")]
    pub resume: Option<PathBuf>,
    /// Start the run over: its checkpoints, metrics, samples, summary, curves and final model
    /// are removed first (without this, a run with checkpoints is never overwritten).
    #[arg(long)]
    pub restart: bool,
    /// Data-parallel ranks. On the CPU backend they run as threads of this process, each
    /// with its slice of every batch; the result is the one-rank run's up to rounding.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub world_size: u32,
}

pub fn load_config(config: Option<&PathBuf>, sets: &[String], resume: Option<&PathBuf>) -> Result<TrainConfig> {
    if let Some(dir) = resume {
        let saved = dir.join("config.toml");
        if !saved.is_file() {
            bail!("{} is not a run directory (no config.toml)", dir.display());
        }
        if config.is_some() {
            bail!("--resume uses the run's saved config; drop --config (use --set to change values)");
        }
        return TrainConfig::load(Some(&saved), sets);
    }
    match config {
        Some(p) => TrainConfig::load(Some(p), sets),
        None => TrainConfig::load_text(TINY_CPU_CONFIG, "configs/tiny-cpu.toml (built in)", sets),
    }
}

pub fn run(args: TrainArgs) -> Result<i32> {
    let mut cfg = load_config(args.config.as_ref(), &args.sets, args.resume.as_ref())?;
    if let Some(dir) = &args.resume {
        // The saved out_dir may be relative to wherever the run started; the directory being
        // resumed says where the run is (its parent holds the run, the base model, V* cache).
        let abs = std::path::absolute(dir)?;
        match (abs.file_name(), abs.parent()) {
            (Some(n), Some(parent)) if n == cfg.name.as_str() => cfg.out_dir = parent.to_path_buf(),
            _ => bail!("{} holds run '{}' (its config's name): resume from a directory of that name", dir.display(), cfg.name),
        }
    }
    let threads = args.world_size as usize;
    let env = crate::dist::env::RankEnv::from_env()?;
    if env.world > 1 {
        if threads > 1 {
            bail!(
                "--world-size starts thread ranks in one process, but this process is rank {} of {} started by {}: drop --world-size",
                env.rank,
                env.world,
                env.launcher
            );
        }
        return process_rank(cfg, &env, args.resume.is_some(), args.restart);
    }
    if threads > 1 && cfg.device != crate::backend::Device::Cpu {
        bail!("--world-size {threads} runs ranks as CPU threads; on GPUs start one process per GPU (`tz-engine launch --nproc-per-node {threads} -- train ...`)");
    }
    crate::with_backend!(cfg.device, be => {
        let ranks = if threads > 1 { Ranks::Threads(threads) } else { Ranks::One };
        train(&be, cfg, args.resume.is_some(), args.restart, ranks)
    })
}

/// How this process's ranks run.
enum Ranks<'a, B: Backend> {
    One,
    /// N ranks as threads of this process.
    Threads(usize),
    /// This process is one rank of a multi-process run.
    Process(&'a dyn Comm<B>),
}

impl<B: Backend> Clone for Ranks<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Ranks<'_, B> {}

impl<B: Backend> Ranks<'_, B> {
    fn count(&self) -> usize {
        match self {
            Ranks::One => 1,
            Ranks::Threads(n) => *n,
            Ranks::Process(c) => c.world(),
        }
    }
    /// Whether this process writes the run's files (lock, restart, SFT base, config).
    fn writes(&self) -> bool {
        !matches!(self, Ranks::Process(c) if !c.is_root())
    }
    /// Ranks sharing this process's device memory (CPU thread ranks share the host's).
    fn sharing(&self) -> usize {
        match self {
            Ranks::Threads(n) => *n,
            Ranks::Process(c) => c.ranks_sharing_memory(),
            Ranks::One => 1,
        }
    }
    /// Waits for every process (after rank 0 prepared the run directory).
    fn barrier(&self) -> Result<()> {
        match self {
            Ranks::Process(c) => c.barrier(),
            _ => Ok(()),
        }
    }
}

/// One rank of a run started by `tz-engine launch`, torchrun, srun or mpirun: the rendezvous
/// (every rank runs the same binary, config and checkpoint), then training; an error here is
/// sent to the other ranks, which stop.
fn process_rank(cfg: TrainConfig, env: &crate::dist::env::RankEnv, resume: bool, restart: bool) -> Result<i32> {
    let hello = Hello {
        rank: env.rank,
        world: env.world,
        host: crate::dist::env::hostname(),
        binary: crate::dist::env::binary_fingerprint(),
        config: toml::to_string(&cfg)?,
        checkpoint: if resume { crate::train::checkpoint::identity(&cfg.run_dir()) } else { "none (a fresh run)".into() },
    };
    let timeout = std::time::Duration::from_secs(cfg.dist.timeout_s);
    match cfg.device {
        crate::backend::Device::Cpu => {
            let comm = TcpComm::rendezvous(&env.master_addr, env.rdzv_port, &hello, timeout)?;
            // CPU ranks on one node share its memory.
            let comm = comm.sharing_memory(env.local_world);
            let be = crate::backend::cpu::CpuBackend::new();
            rank_outcome(train(&be, cfg, resume, restart, Ranks::Process(&comm)), env.rank, &comm)
        }
        crate::backend::Device::Cuda => cuda_rank(cfg, env, resume, restart, &hello, timeout),
    }
}

/// A process rank's result: an error (not an interrupt, which every rank decided together)
/// is sent to the other ranks so they stop, and is prefixed with this rank.
fn rank_outcome(result: Result<i32>, rank: usize, host: &TcpComm) -> Result<i32> {
    result.map_err(|e| {
        if !crate::util::interrupt::is_interrupt(&e) {
            host.abort(&format!("{e:#}"));
        }
        if rank == 0 {
            e
        } else {
            e.context(format!("rank {rank}"))
        }
    })
}

/// A GPU rank: the rendezvous, then every rank loads NCCL and opens its GPU and they compare
/// notes (one rank's missing library or GPU stops all of them at once, naming it), then
/// rank 0's NCCL unique id goes to every rank and they join the NCCL communicator.
#[cfg(feature = "cuda")]
fn cuda_rank(
    cfg: TrainConfig,
    env: &crate::dist::env::RankEnv,
    resume: bool,
    restart: bool,
    hello: &Hello,
    timeout: std::time::Duration,
) -> Result<i32> {
    use crate::backend::cuda::CudaBackend;
    use crate::dist::nccl::{Nccl, NcclComm};
    let rank = env.rank;
    let host = TcpComm::rendezvous(&env.master_addr, env.rdzv_port, hello, timeout)?;
    let ready = (|| -> Result<(Nccl, CudaBackend)> {
        let nccl = Nccl::load()?;
        let ordinal = crate::dist::env::gpu_ordinal(env, CudaBackend::device_count()?)?;
        Ok((nccl, CudaBackend::new(ordinal)?))
    })();
    let notes = crate::dist::all_gather_json(&host, ready.as_ref().err().map(|e| format!("{e:#}")))?;
    // This rank's own problem first, else the first rank's that has one.
    let own = notes[rank].as_ref().map(|w| (rank, w));
    if let Some((r, why)) = own.or_else(|| notes.iter().enumerate().find_map(|(r, n)| n.as_ref().map(|w| (r, w)))) {
        bail!("rank {rank}: {}", if r == rank { why.clone() } else { format!("stopping: rank {r} cannot start: {why}") });
    }
    let (nccl, be) = ready.expect("every rank is ready");
    let id = match rank {
        0 => match nccl.unique_id() {
            Ok(id) => id,
            Err(e) => return rank_outcome(Err(e), rank, &host),
        },
        _ => vec![],
    };
    let id = host.all_gather_bytes(&id)?.swap_remove(0);
    if rank == 0 {
        eprintln!("NCCL {} ({}), {} ranks", crate::dist::nccl::version_string(nccl.version), nccl.path, env.world);
    }
    let comm = NcclComm::init(nccl, &be, host, &id, timeout)?;
    rank_outcome(train(&be, cfg, resume, restart, Ranks::Process(&comm)), rank, comm.host())
}

#[cfg(not(feature = "cuda"))]
fn cuda_rank(_: TrainConfig, env: &crate::dist::env::RankEnv, _: bool, _: bool, _: &Hello, _: std::time::Duration) -> Result<i32> {
    bail!("rank {}: this tz-engine was built without the CUDA backend (cargo feature `cuda`)", env.rank)
}

/// What a run directory holds that `--restart` removes (the lock and the run's config stay).
const RUN_OUTPUTS: [&str; 9] =
    ["checkpoints", "latest", "metrics.jsonl", "samples.jsonl", "proposals.jsonl", "summary.json", "final", "curves.png", "curves.svg"];

fn train<B: Backend>(be: &B, cfg: TrainConfig, resume: bool, restart: bool, ranks: Ranks<B>) -> Result<i32> {
    // Ctrl-C stops SFT, V*, evaluations and training steps at their next batch boundary.
    crate::util::interrupt::install();
    let run_dir = cfg.run_dir();
    let existed = run_dir.exists();
    // Held until training ends: a second process on the same run would interleave its steps
    // and checkpoints with this one's. Of a multi-process run, rank 0 holds it for all.
    let _lock = if ranks.writes() { Some(crate::util::fs::lock_dir(&run_dir)?) } else { None };
    if restart && ranks.writes() {
        for name in RUN_OUTPUTS {
            let p = run_dir.join(name);
            let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            if let Err(e) = removed.or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
                bail!("--restart: cannot remove {}: {e}", p.display());
            }
        }
        eprintln!("--restart: {} starts over", run_dir.display());
    }
    if ranks.writes() {
        // Temp files a crashed write of ours left behind (named .NAME.tmp or NAME.tmp.PID).
        crate::util::fs::remove_stale_temps(&run_dir);
        crate::util::fs::remove_stale_temps(&run_dir.join("checkpoints"));
    }
    ranks.barrier()?;
    let result = train_in(be, &cfg, resume, &run_dir, ranks);
    // A run that failed before writing anything leaves no empty directory behind.
    if result.is_err() && !existed && ranks.writes() {
        crate::util::fs::remove_if_only_lock(&run_dir);
    }
    result
}

fn train_in<B: Backend>(be: &B, cfg: &TrainConfig, resume: bool, run_dir: &std::path::Path, ranks: Ranks<B>) -> Result<i32> {
    let cfg = cfg.clone();
    let base_dir = if cfg.model.path.as_os_str().is_empty() {
        if ranks.writes() {
            // Checked before minutes of SFT, with the preset's shape (its vocabulary bounds the
            // tokenizer's); the trainer checks the built model's exact plan again.
            crate::train::run::check_fits(
                be,
                &cfg,
                &crate::model::presets::preset(&cfg.model.preset)?.cfg,
                ranks.count(),
                ranks.sharing(),
            )?;
            let dir = sft::ensure_preset_base(be, &cfg)?;
            ranks.barrier()?;
            dir
        } else {
            // Rank 0 builds the base model; the others use it once it is there.
            ranks.barrier()?;
            crate::train::sft::preset_base_dir(&cfg)
        }
    } else {
        cfg.model.path.clone()
    };
    let rank = |comm: &dyn Comm<B>| -> Result<Summary> {
        let trainer = Trainer::new(be, cfg.clone(), &base_dir, resume, comm)?;
        if comm.is_root() {
            write_atomic(&run_dir.join("config.toml"), toml::to_string(&cfg)?.as_bytes())?;
        }
        trainer.run()
    };
    let s = match ranks {
        Ranks::One => rank(&Single)?,
        // The CPU backend holds no state of its own: the ranks share it, each with its buffers.
        Ranks::Threads(n) => run_ranks(n, std::time::Duration::from_secs(cfg.dist.timeout_s), |c| rank(c))?.swap_remove(0),
        Ranks::Process(c) => rank(c)?,
    };
    if !ranks.writes() {
        return Ok(0);
    }
    println!(
        "{}: {} steps in {:.0}s; held-out solve rate {:.3} -> {:.3} (base -> final), mean reward {:.3} -> {:.3}; {} skipped steps. Outputs in {}",
        s.name, s.steps, s.wall_time_s, s.base_solve_rate, s.final_solve_rate, s.base_reward_mean, s.final_reward_mean, s.skipped_steps, run_dir.display()
    );
    Ok(0)
}
