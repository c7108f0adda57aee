//! Device collectives through host memory: each rank downloads its buffer, the host
//! collective (`HostComm::exchange`) moves the values, and each rank uploads its result. For
//! communicators without a device transport (threads, TCP); sums are in rank order, so every
//! rank gets the same bits. Costs a download and an upload per call, and every rank receives
//! every rank's whole buffer: fine for the CPU backend and the tests, not for GPUs (NCCL).
use super::{exchange_f32, HostComm};
use crate::backend::{Backend, View};
use anyhow::{ensure, Result};

fn download<B: Backend>(be: &B, v: View<B>) -> Result<Vec<f32>> {
    let mut h = vec![0f32; v.len()];
    be.download_f32(v, &mut h)?;
    Ok(h)
}

/// This rank's chunk of a buffer of `n` elements split in chunks of `chunk`.
fn own_chunk(rank: usize, chunk: usize, n: usize) -> std::ops::Range<usize> {
    (rank * chunk).min(n)..((rank + 1) * chunk).min(n)
}

fn sum_in_rank_order(c: &dyn HostComm, op: &str, all: &[Vec<f32>], n: usize, r: std::ops::Range<usize>) -> Result<Vec<f32>> {
    let mut sum = vec![0f32; r.len()];
    for (rank, v) in all.iter().enumerate() {
        ensure!(v.len() == n, "rank {}: {op} of {n} values, rank {rank} sent {}", c.rank(), v.len());
        sum.iter_mut().zip(&v[r.clone()]).for_each(|(s, x)| *s += x);
    }
    Ok(sum)
}

pub fn reduce_scatter<B: Backend>(c: &dyn HostComm, be: &B, buf: View<B>, chunk: usize) -> Result<()> {
    let n = buf.len();
    let all = exchange_f32(c, "reduce_scatter", &download(be, buf)?)?;
    let r = own_chunk(c.rank(), chunk, n);
    let sum = sum_in_rank_order(c, "reduce_scatter", &all, n, r.clone())?;
    be.upload_f32(buf.slice(r.start, r.len()), &sum)
}

pub fn all_gather<B: Backend>(c: &dyn HostComm, be: &B, buf: View<B>, chunk: usize) -> Result<()> {
    let n = buf.len();
    let r = own_chunk(c.rank(), chunk, n);
    let all = exchange_f32(c, "all_gather", &download(be, buf.slice(r.start, r.len()))?)?;
    let full: Vec<f32> = all.concat();
    ensure!(full.len() == n, "rank {}: all_gather of {n} values, the ranks sent {}", c.rank(), full.len());
    be.upload_f32(buf, &full)
}

pub fn all_reduce<B: Backend>(c: &dyn HostComm, be: &B, buf: View<B>) -> Result<()> {
    let n = buf.len();
    let all = exchange_f32(c, "all_reduce", &download(be, buf)?)?;
    let sum = sum_in_rank_order(c, "all_reduce", &all, n, 0..n)?;
    be.upload_f32(buf, &sum)
}

pub fn broadcast<B: Backend>(c: &dyn HostComm, be: &B, buf: View<B>, root: usize) -> Result<()> {
    let mine = if c.rank() == root { download(be, buf)? } else { vec![] };
    let all = exchange_f32(c, "broadcast", &mine)?;
    ensure!(all[root].len() == buf.len(), "rank {}: broadcast of {} values, the root sent {}", c.rank(), buf.len(), all[root].len());
    be.upload_f32(buf, &all[root])
}

/// `impl Comm<B> for $t` through the host, for a communicator that implements `HostComm`.
macro_rules! staged_comm {
    ($t:ty) => {
        impl<B: $crate::backend::Backend> $crate::dist::Comm<B> for $t {
            fn reduce_scatter(&self, be: &B, buf: $crate::backend::View<B>, chunk: usize) -> anyhow::Result<()> {
                $crate::dist::staged::reduce_scatter(self, be, buf, chunk)
            }
            fn all_gather(&self, be: &B, buf: $crate::backend::View<B>, chunk: usize) -> anyhow::Result<()> {
                $crate::dist::staged::all_gather(self, be, buf, chunk)
            }
            fn all_reduce(&self, be: &B, buf: $crate::backend::View<B>) -> anyhow::Result<()> {
                $crate::dist::staged::all_reduce(self, be, buf)
            }
            fn broadcast(&self, be: &B, buf: $crate::backend::View<B>, root: usize) -> anyhow::Result<()> {
                $crate::dist::staged::broadcast(self, be, buf, root)
            }
        }
    };
}
pub(crate) use staged_comm;
