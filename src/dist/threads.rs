//! N ranks as threads of one process. Every collective is one *round* of a shared hub: each
//! rank deposits its contribution, waits (up to the deadline) until all ranks have, computes
//! its result from the deposits in rank order, and the last rank to read clears the round.
//! Device buffers travel through the host (download, exchange, upload), so this works over
//! any backend; on the CPU backend that is a copy.
//!
//! A rank that fails calls [`Hub::abort`] (the runner does so for errors and panics): ranks
//! waiting in a collective stop at once, naming the failed rank, instead of waiting out the
//! deadline.
use super::HostComm;
use anyhow::{anyhow, bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct Round {
    /// Collectives completed so far: the number of the round now open.
    seq: u64,
    op: Option<&'static str>,
    deposits: Vec<Option<Arc<Vec<u8>>>>,
    /// Ranks that have read this round's deposits.
    taken: usize,
    /// The first rank that failed, and why.
    failed: Option<(usize, String)>,
}

/// What the ranks of one process share.
pub struct Hub {
    world: usize,
    timeout: Duration,
    round: Mutex<Round>,
    changed: Condvar,
}

impl Hub {
    pub fn new(world: usize, timeout: Duration) -> Arc<Self> {
        assert!(world > 0);
        let round = Round { seq: 0, op: None, deposits: vec![None; world], taken: 0, failed: None };
        Arc::new(Hub { world, timeout, round: Mutex::new(round), changed: Condvar::new() })
    }

    /// Marks `rank` failed: every rank in (or entering) a collective stops with an error.
    pub fn abort(&self, rank: usize, why: String) {
        let mut r = self.lock();
        if r.failed.is_none() {
            r.failed = Some((rank, why));
        }
        self.changed.notify_all();
    }

    /// The first rank that failed.
    pub fn failed(&self) -> Option<(usize, String)> {
        self.lock().failed.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        // A rank that panicked while holding the lock has already aborted the hub (the
        // runner catches the panic); the state itself is still consistent.
        self.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One collective: rank `rank`'s `seq`-th, of kind `op`. Returns every rank's deposit.
    fn exchange(&self, rank: usize, seq: u64, op: &'static str, mine: Vec<u8>) -> Result<Vec<Arc<Vec<u8>>>> {
        let deadline = Instant::now() + self.timeout;
        let stop = |r: &Round, waiting_for: &str| -> Result<()> {
            if let Some((who, _)) = &r.failed {
                bail!("rank {rank}: {op} #{seq} stopped: rank {who} failed");
            }
            if Instant::now() >= deadline {
                bail!("rank {rank}: {op} #{seq} timed out after {} s {waiting_for}", self.timeout.as_secs_f64().round());
            }
            Ok(())
        };
        let mut r = self.lock();
        // The previous round must be drained before this one opens.
        while r.seq < seq {
            stop(&r, "(the previous collective never finished)")?;
            r = self.changed.wait_timeout(r, deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|p| p.into_inner()).0;
        }
        if r.seq > seq {
            bail!("rank {rank}: {op} #{seq}: the other ranks are already at collective #{}", r.seq);
        }
        match r.op {
            Some(other) if other != op => bail!("rank {rank}: collective #{seq} is {op} here but {other} on another rank"),
            _ => r.op = Some(op),
        }
        r.deposits[rank] = Some(Arc::new(mine));
        self.changed.notify_all();
        while r.deposits.iter().any(Option::is_none) {
            let missing: Vec<String> = (0..self.world).filter(|&i| r.deposits[i].is_none()).map(|i| i.to_string()).collect();
            stop(&r, &format!("waiting for rank {}", missing.join(", ")))?;
            r = self.changed.wait_timeout(r, deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|p| p.into_inner()).0;
        }
        if let Some((who, _)) = &r.failed {
            bail!("rank {rank}: {op} #{seq} stopped: rank {who} failed");
        }
        let all: Vec<Arc<Vec<u8>>> = r.deposits.iter().map(|d| d.clone().expect("every rank deposited")).collect();
        r.taken += 1;
        if r.taken == self.world {
            r.deposits.iter_mut().for_each(|d| *d = None);
            r.taken = 0;
            r.op = None;
            r.seq += 1;
            self.changed.notify_all();
        }
        Ok(all)
    }
}

/// One rank's handle on a [`Hub`].
pub struct ThreadComm {
    hub: Arc<Hub>,
    rank: usize,
    /// Collectives this rank has called (the hub's round numbers).
    calls: AtomicU64,
}

impl ThreadComm {
    pub fn new(hub: Arc<Hub>, rank: usize) -> Self {
        assert!(rank < hub.world);
        ThreadComm { hub, rank, calls: AtomicU64::new(0) }
    }
}

/// Runs `f` on `world` ranks, each a thread with its own [`ThreadComm`], and returns their
/// results in rank order. When a rank fails (error or panic) the others stop at their next
/// collective; the error returned is the failed rank's own, prefixed with its rank.
pub fn run_ranks<T: Send>(world: usize, timeout: Duration, f: impl Fn(&ThreadComm) -> Result<T> + Sync) -> Result<Vec<T>> {
    let hub = Hub::new(world, timeout);
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (hub, f) = (hub.clone(), &f);
                std::thread::Builder::new()
                    .name(format!("rank-{rank}"))
                    .spawn_scoped(s, move || {
                        let comm = ThreadComm::new(hub.clone(), rank);
                        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&comm)))
                            .unwrap_or_else(|p| Err(anyhow!("panicked: {}", panic_text(&p))));
                        if let Err(e) = &out {
                            hub.abort(rank, format!("{e:#}"));
                        }
                        out
                    })
                    .expect("spawning a rank thread")
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("the rank thread died")))).collect()
    });
    let root = hub.failed().map(|(r, _)| r);
    let mut out = Vec::with_capacity(world);
    let mut errors: Vec<(usize, anyhow::Error)> = Vec::new();
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => errors.push((rank, e)),
        }
    }
    if errors.is_empty() {
        return Ok(out);
    }
    // The rank that failed first is the cause; the others stopped because of it.
    let i = errors.iter().position(|(r, _)| Some(*r) == root).unwrap_or(0);
    let (rank, e) = errors.swap_remove(i);
    Err(e.context(format!("rank {rank}")))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "(no message)".into())
}

impl HostComm for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.hub.world
    }
    /// Threads of one process share its memory.
    fn ranks_sharing_memory(&self) -> usize {
        self.hub.world
    }
    fn exchange(&self, op: &'static str, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let seq = self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.hub.exchange(self.rank, seq, op, mine.to_vec())?.iter().map(|b| b.to_vec()).collect())
    }
}

super::staged::staged_comm!(ThreadComm);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{Backend, DType, View};
    use crate::dist::{Comm, ShardLayout};

    #[test]
    fn collectives_match_their_definitions() {
        let out = run_ranks(3, Duration::from_secs(30), |c| {
            let be = CpuBackend::new();
            let r = c.rank();
            // 10 elements over 3 ranks: chunks of 4, 4, 2.
            let buf = be.alloc(DType::F32, 10)?;
            let mine: Vec<f32> = (0..10).map(|i| (i * 10 + r) as f32).collect();
            be.upload_f32(View::all(&buf), &mine)?;
            let s = ShardLayout::new(10, 3, r);
            Comm::<CpuBackend>::reduce_scatter(c, &be, View::all(&buf), s.chunk())?;
            let mut h = vec![0f32; 10];
            be.download_f32(View::all(&buf), &mut h)?;
            for i in 0..10 {
                let want = if (s.off()..s.off() + s.len()).contains(&i) { (30 * i + 3) as f32 } else { mine[i] };
                assert_eq!(h[i], want, "rank {r} element {i}");
            }
            // Every rank writes its own chunk as rank·100 + i, then gathers.
            let own: Vec<f32> = (s.off()..s.off() + s.len()).map(|i| (r * 100 + i) as f32).collect();
            be.upload_f32(View::all(&buf).slice(s.off(), s.len()), &own)?;
            Comm::<CpuBackend>::all_gather(c, &be, View::all(&buf), s.chunk())?;
            be.download_f32(View::all(&buf), &mut h)?;
            let owner = |i: usize| i / 4;
            assert!((0..10).all(|i| h[i] == (owner(i) * 100 + i) as f32), "{h:?}");
            let mut x = [r as f64, 1.0];
            c.all_reduce_f64(&mut x)?;
            assert_eq!(x, [3.0, 3.0]);
            let g = c.all_gather_bytes(&[r as u8; 2])?;
            assert_eq!(g, vec![vec![0, 0], vec![1, 1], vec![2, 2]]);
            be.upload_f32(View::all(&buf), &[r as f32; 10])?;
            Comm::<CpuBackend>::broadcast(c, &be, View::all(&buf), 2)?;
            be.download_f32(View::all(&buf), &mut h)?;
            assert!(h.iter().all(|&x| x == 2.0));
            c.barrier()?;
            Ok(r)
        })
        .unwrap();
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn a_rank_that_never_arrives_times_out_naming_the_operation() {
        let e = run_ranks(2, Duration::from_millis(300), |c| {
            if c.rank() == 1 {
                // Hangs (longer than the deadline) instead of joining the collective.
                std::thread::sleep(Duration::from_millis(1500));
                return Ok(());
            }
            c.barrier()?;
            let mut x = [1.0];
            c.all_reduce_f64(&mut x)
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("rank 0: barrier #0 timed out after 0 s waiting for rank 1"), "{msg}");
    }

    #[test]
    fn a_failed_rank_stops_the_others_at_once_with_its_own_error() {
        let started = Instant::now();
        let e = run_ranks(3, Duration::from_secs(60), |c| {
            c.barrier()?;
            if c.rank() == 2 {
                bail!("the data file is truncated");
            }
            c.barrier()
        })
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "the others waited out the deadline");
        assert_eq!(format!("{e:#}"), "rank 2: the data file is truncated");
        // A panic is a failure like any other.
        let e = run_ranks(2, Duration::from_secs(60), |c| {
            if c.rank() == 0 {
                panic!("boom");
            }
            c.barrier()
        })
        .unwrap_err();
        assert_eq!(format!("{e:#}"), "rank 0: panicked: boom");
    }

    #[test]
    fn mismatched_collectives_are_named() {
        let e = run_ranks(2, Duration::from_secs(60), |c| if c.rank() == 0 { c.barrier() } else { c.all_gather_bytes(&[]).map(|_| ()) })
            .unwrap_err();
        assert!(format!("{e:#}").contains("collective #0 is"), "{e:#}");
    }
}
