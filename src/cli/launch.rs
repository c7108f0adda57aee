//! `tz-engine launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A
//! --master-port P] -- train ARGS…`: starts one `tz-engine train` process per local rank
//! (GPU) with torchrun's environment contract (`crate::dist::env`), and watches them.
//!
//! Rank 0 of node 0 serves the rendezvous on `--master-port`; on several nodes, run the same
//! command on each with its `--node-rank`. Ctrl-C is forwarded once to every rank (they stop
//! together at a step boundary and write one checkpoint); a second Ctrl-C is forwarded again
//! (they exit at once). When a rank fails the others stop on their own at their next
//! collective; any still running `--kill-after-s` seconds later are killed. The exit code is
//! the first failed rank's (130 after an interrupt), else 0.
use anyhow::{bail, Context, Result};
use clap::Args;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct LaunchArgs {
    /// Ranks (processes, one per GPU) on this node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub nproc_per_node: u32,
    /// Nodes in the run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub nnodes: u32,
    /// This node's index (0 hosts rank 0).
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// Rank 0's host.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// The rendezvous port on rank 0's host.
    #[arg(long, default_value_t = crate::dist::env::DEFAULT_RDZV_PORT)]
    pub master_port: u16,
    /// Seconds to wait, once a rank has failed, before killing ranks that have not exited.
    #[arg(long, default_value_t = 60)]
    pub kill_after_s: u64,
    /// The command every rank runs: `train` and its arguments.
    #[arg(last = true, required = true, value_name = "train ARGS")]
    pub command: Vec<String>,
}

/// Ctrl-C presses the launcher has seen (the handler forwards them).
static PRESSES: AtomicUsize = AtomicUsize::new(0);

pub fn run(a: LaunchArgs) -> Result<i32> {
    if a.command.first().map(String::as_str) != Some("train") {
        bail!("launch runs `train` on every rank: `tz-engine launch --nproc-per-node N -- train ARGS`");
    }
    if a.node_rank >= a.nnodes {
        bail!("--node-rank {} of --nnodes {}", a.node_rank, a.nnodes);
    }
    if a.command.iter().any(|s| s == "--world-size" || s.starts_with("--world-size=")) {
        bail!("the launched ranks take their world size from launch: drop --world-size from the train command");
    }
    let (local, world) = (a.nproc_per_node as usize, (a.nproc_per_node * a.nnodes) as usize);
    let exe = std::env::current_exe().context("cannot find the tz-engine executable")?;
    ctrlc::set_handler(|| {
        PRESSES.fetch_add(1, Ordering::SeqCst);
    })
    .context("cannot install the Ctrl-C handler")?;
    // The GPUs the launcher was given (all, if CUDA_VISIBLE_DEVICES is unset): rank i gets
    // the i-th, and sees only it.
    let gpus: Vec<String> = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    if !gpus.is_empty() && gpus.len() < local {
        bail!("--nproc-per-node {local} but CUDA_VISIBLE_DEVICES names {} GPU(s)", gpus.len());
    }
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(local);
    for i in 0..local {
        let rank = a.node_rank as usize * local + i;
        let mut cmd = Command::new(&exe);
        cmd.args(&a.command)
            .env("TZ_LAUNCHER", "1")
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", i.to_string())
            .env("LOCAL_WORLD_SIZE", local.to_string())
            .env("MASTER_ADDR", &a.master_addr)
            .env("MASTER_PORT", a.master_port.to_string())
            .env("TZ_RDZV_PORT", a.master_port.to_string())
            // One GPU per rank: the i-th of the GPUs this launcher may use.
            .env("CUDA_VISIBLE_DEVICES", gpus.get(i).cloned().unwrap_or_else(|| i.to_string()))
            // Their own process group: a terminal's Ctrl-C reaches only the launcher, which
            // forwards it once (a second SIGINT would make a rank exit without a checkpoint).
            .process_group(0);
        match cmd.spawn() {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                for (_, c) in &mut children {
                    let _ = c.kill();
                }
                bail!("cannot start rank {rank}: {e}");
            }
        }
    }
    eprintln!(
        "launch: {local} rank(s) on this node (ranks {}..{} of {world}), rendezvous at {}:{}",
        a.node_rank as usize * local,
        a.node_rank as usize * local + local,
        a.master_addr,
        a.master_port
    );
    let mut forwarded = 0;
    let mut first_failure: Option<(usize, i32)> = None;
    let mut failed_at: Option<Instant> = None;
    let mut running: Vec<(usize, Child)> = children;
    while !running.is_empty() {
        let presses = PRESSES.load(Ordering::SeqCst);
        while forwarded < presses {
            for (_, c) in &running {
                signal(c, libc::SIGINT);
            }
            forwarded += 1;
        }
        let mut still = Vec::with_capacity(running.len());
        for (rank, mut c) in running {
            match c.try_wait() {
                Ok(Some(status)) => {
                    let code = exit_code(status);
                    if code != 0 && first_failure.is_none() {
                        first_failure = Some((rank, code));
                        failed_at = Some(Instant::now());
                    }
                }
                Ok(None) => still.push((rank, c)),
                Err(e) => {
                    eprintln!("launch: cannot wait for rank {rank}: {e}");
                    still.push((rank, c));
                }
            }
        }
        running = still;
        if let Some(t) = failed_at {
            if t.elapsed() >= Duration::from_secs(a.kill_after_s) && !running.is_empty() {
                let ranks: Vec<String> = running.iter().map(|(r, _)| r.to_string()).collect();
                eprintln!("launch: rank {} still running {} s after a rank failed: killing", ranks.join(", "), a.kill_after_s);
                for (_, c) in &mut running {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                running.clear();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(match first_failure {
        Some((rank, code)) => {
            if code != 130 {
                eprintln!("launch: rank {rank} failed (exit code {code})");
            }
            code
        }
        None => 0,
    })
}

fn signal(c: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a child we started and have not reaped (its pid is ours to signal).
    unsafe {
        libc::kill(c.id() as libc::pid_t, sig);
    }
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}
