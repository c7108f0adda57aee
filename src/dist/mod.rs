//! Data-parallel training: the communicator every rank of a run talks through, and how flat
//! buffers are sharded over ranks.
//!
//! A rank calls the collectives of [`HostComm`] (host values: reward statistics, rollouts,
//! evaluation results) and [`Comm`] (device buffers: gradients, parameters) in the same order
//! as every other rank; each call carries a deadline, so a rank that died or hangs makes the
//! others fail with a message naming the operation (`rank 1: reduce_scatter #412 timed out
//! after 600 s`) instead of waiting forever. Sums are taken in rank order, so every rank ends
//! with the same bits.
//!
//! Implementations: [`Single`] (one rank, every collective a no-op: the default),
//! [`threads::ThreadComm`] (N ranks as threads of one process: `train --device cpu
//! --world-size N` and the tests) and [`tcp::TcpComm`] (one process per rank, started by
//! `tz-engine launch`, torchrun, Slurm or mpirun: rank 0's TCP rendezvous checks that every
//! rank runs the same binary, config and checkpoint, then carries the host collectives). The
//! last two move device buffers through the host (`staged`); NCCL does it on the GPU.
pub mod env;
pub mod nccl;
pub mod staged;
pub mod tcp;
pub mod threads;

use crate::backend::{Backend, View};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a collective waits for the other ranks by default (`dist.timeout_s`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Collectives over host values. An implementation provides one primitive, `exchange`
/// (every rank's bytes to every rank); the others are built on it.
pub trait HostComm: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Every rank's bytes, in rank order: the collective named `op` (errors name it, with
    /// its sequence number).
    fn exchange(&self, op: &'static str, mine: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// `x ← Σ_r x_r` elementwise, summed in rank order (the same bits on every rank).
    fn all_reduce_f64(&self, x: &mut [f64]) -> Result<()> {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all = self.exchange("all_reduce", &bytes)?;
        x.fill(0.0);
        for (r, b) in all.iter().enumerate() {
            anyhow::ensure!(
                b.len() == bytes.len(),
                "rank {}: all_reduce of {} values, rank {r} sent {}",
                self.rank(),
                x.len(),
                b.len() / 8
            );
            for (a, c) in x.iter_mut().zip(b.chunks_exact(8)) {
                *a += f64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
        }
        Ok(())
    }
    /// Every rank's bytes, in rank order.
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.exchange("all_gather", mine)
    }
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", &[]).map(|_| ())
    }

    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Ranks of this communicator that share one device's memory (and so its memory plan).
    fn ranks_sharing_memory(&self) -> usize {
        1
    }
}

/// Collectives over device buffers, in place. A buffer of `len` elements is split into
/// `world` chunks of `chunk` elements (`ShardLayout`); the last chunks may be short or empty
/// when `len` is not padded to `world * chunk` (the thread communicator allows that; NCCL
/// needs padded buffers).
pub trait Comm<B: Backend>: HostComm {
    /// F32 sum: afterwards this rank's chunk holds the rank-order sum of every rank's chunk.
    /// Other chunks are left as they were.
    fn reduce_scatter(&self, be: &B, buf: View<B>, chunk: usize) -> Result<()>;
    /// Every chunk r is replaced by rank r's chunk r (any float dtype).
    fn all_gather(&self, be: &B, buf: View<B>, chunk: usize) -> Result<()>;
    /// F32 sum of the whole buffer, in rank order.
    fn all_reduce(&self, be: &B, buf: View<B>) -> Result<()>;
    /// The root's buffer on every rank.
    fn broadcast(&self, be: &B, buf: View<B>, root: usize) -> Result<()>;
}

/// Typed helpers over the byte collectives.
pub fn all_gather_f32(comm: &dyn HostComm, mine: &[f32]) -> Result<Vec<Vec<f32>>> {
    exchange_f32(comm, "all_gather", mine)
}

/// `exchange` of f32 values.
pub fn exchange_f32(comm: &dyn HostComm, op: &'static str, mine: &[f32]) -> Result<Vec<Vec<f32>>> {
    let bytes: Vec<u8> = mine.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(comm
        .exchange(op, &bytes)?
        .iter()
        .map(|b| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        .collect())
}

/// Every rank's value, in rank order (serialized as JSON: rollouts, evaluation results).
pub fn all_gather_json<T: Serialize + serde::de::DeserializeOwned>(comm: &dyn HostComm, mine: T) -> Result<Vec<T>> {
    if comm.world() == 1 {
        return Ok(vec![mine]);
    }
    comm.all_gather_bytes(&serde_json::to_vec(&mine)?)?
        .iter()
        .enumerate()
        .map(|(r, b)| serde_json::from_slice(b).map_err(|e| anyhow::anyhow!("rank {r} sent a malformed message: {e}")))
        .collect()
}

/// Whether any rank says `flag` (so every rank takes the same branch).
pub fn any(comm: &dyn HostComm, flag: bool) -> Result<bool> {
    let mut x = [flag as u8 as f64];
    comm.all_reduce_f64(&mut x)?;
    Ok(x[0] > 0.0)
}

/// The one-rank communicator.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl HostComm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn exchange(&self, _op: &'static str, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn all_reduce_f64(&self, _x: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

impl<B: Backend> Comm<B> for Single {
    fn reduce_scatter(&self, _be: &B, _buf: View<B>, _chunk: usize) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, _be: &B, _buf: View<B>, _chunk: usize) -> Result<()> {
        Ok(())
    }
    fn all_reduce(&self, _be: &B, _buf: View<B>) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _be: &B, _buf: View<B>, _root: usize) -> Result<()> {
        Ok(())
    }
}

/// How a flat buffer of `total` elements is split over `world` ranks: rank r owns the
/// contiguous range `[r·chunk, min((r+1)·chunk, total))`, `chunk = ⌈total / world⌉`, so
/// the buffer padded to `world · chunk` splits evenly (what NCCL's collectives need).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLayout {
    pub total: usize,
    pub world: usize,
    pub rank: usize,
}

impl ShardLayout {
    pub fn new(total: usize, world: usize, rank: usize) -> Self {
        assert!(world > 0 && rank < world, "rank {rank} of world {world}");
        ShardLayout { total, world, rank }
    }

    /// The whole buffer on one rank.
    pub fn whole(total: usize) -> Self {
        Self::new(total, 1, 0)
    }

    pub fn chunk(&self) -> usize {
        self.total.div_ceil(self.world)
    }

    pub fn padded(&self) -> usize {
        self.chunk() * self.world
    }

    /// Start of rank r's range.
    pub fn off_of(&self, r: usize) -> usize {
        (r * self.chunk()).min(self.total)
    }

    pub fn off(&self) -> usize {
        self.off_of(self.rank)
    }

    /// Elements this rank owns (the last ranks may own fewer, or none).
    pub fn len(&self) -> usize {
        self.off_of(self.rank + 1) - self.off()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[off, off + len)` ∩ this rank's range, as (offset, length), if not empty.
    pub fn intersect(&self, off: usize, len: usize) -> Option<(usize, usize)> {
        let (a, b) = (off.max(self.off()), (off + len).min(self.off() + self.len()));
        (a < b).then(|| (a, b - a))
    }
}

/// The part of `n` items (contiguous, in order) that `rank` of `world` takes: balanced to
/// within one item, earlier ranks taking the larger parts.
pub fn split_range(n: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_buffer_once() {
        for (total, world) in [(10, 1), (10, 3), (9, 3), (2, 4), (0, 2), (1_000_003, 8)] {
            let mut covered = 0;
            for r in 0..world {
                let s = ShardLayout::new(total, world, r);
                assert_eq!(s.off(), covered);
                assert!(s.len() <= s.chunk());
                covered += s.len();
                assert_eq!(s.padded() % world, 0);
            }
            assert_eq!(covered, total);
        }
        let s = ShardLayout::new(10, 3, 1); // owns 4..8
        assert_eq!(s.intersect(0, 5), Some((4, 1)));
        assert_eq!(s.intersect(6, 10), Some((6, 2)));
        assert_eq!(s.intersect(8, 2), None);
    }

    #[test]
    fn split_range_is_balanced_and_complete() {
        for (n, w) in [(7, 3), (2, 3), (0, 2), (64, 2)] {
            let parts: Vec<_> = (0..w).map(|r| split_range(n, w, r)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[w - 1].end, n);
            for p in parts.windows(2) {
                assert_eq!(p[0].end, p[1].start);
                assert!(p[0].len() >= p[1].len() && p[0].len() <= p[1].len() + 1);
            }
        }
    }
}
