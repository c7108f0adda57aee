//! Causal grouped-query attention on the CPU: packed variable-length prefill (forward and
//! backward, one parallel task per sequence, GEMMs over each head's score matrix) and
//! single-query decode over a KV cache.
use super::exp::exp;
use super::sgemm::{sgemm, Operand};
use super::{f, fm, u, CpuBackend};
use crate::backend::{AttnShape, Seqs, View};
use anyhow::{bail, Result};
use rayon::prelude::*;

type V<'a> = View<'a, CpuBackend>;

/// Eight partial sums: a single running sum is a chain of dependent adds the compiler may not
/// reorder (so it cannot vectorize it); eight independent lanes vectorize, and attention's
/// inner products are most of the CPU's time on long sequences.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Splits `data` (rows of `width`) into one mutable chunk per sequence.
fn split_rows<'a>(mut data: &'a mut [f32], cu: &[u32], width: usize) -> Result<Vec<&'a mut [f32]>> {
    let mut out = Vec::with_capacity(cu.len());
    for w in cu.windows(2) {
        if w[1] < w[0] {
            bail!("attention: sequence offsets must not decrease");
        }
        let (head, tail) = std::mem::take(&mut data).split_at_mut((w[1] - w[0]) as usize * width);
        out.push(head);
        data = tail;
    }
    Ok(out)
}

/// C[m×n] = alpha · A[m×k] · B[k×n] + beta · C, each matrix given by its slice and its
/// (row, column) strides, so heads are read and written in place inside the packed rows.
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    (a, rsa, csa): (&[f32], usize, usize),
    (b, rsb, csb): (&[f32], usize, usize),
    beta: f32,
    (c, rsc, csc): (&mut [f32], usize, usize),
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, k, rsa, csa) < a.len() && last(k, n, rsb, csb) < b.len() && last(m, n, rsc, csc) < c.len(),
        "attention gemm out of bounds"
    );
    // SAFETY: the asserts above keep every addressed element inside its slice; C does not
    // alias A or B (a mutable borrow).
    unsafe {
        let (a, b) = (
            Operand { ptr: a.as_ptr(), rs: rsa as isize, cs: csa as isize },
            Operand { ptr: b.as_ptr(), rs: rsb as isize, cs: csb as isize },
        );
        sgemm(m, k, n, alpha, a, b, beta, c.as_mut_ptr(), rsc as isize, csc as isize);
    }
}

/// Row i of `s` (scores scaled, length `len`) turned in place into the causal softmax
/// exp(s_ij − lse_i) for j ≤ i and 0 after; returns lse_i.
fn causal_softmax_row(s: &mut [f32], i: usize) -> f32 {
    let m = s[..=i].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0f32;
    for v in &mut s[..=i] {
        *v = exp(*v - m);
        sum += *v;
    }
    let inv = 1.0 / sum;
    s[..=i].iter_mut().for_each(|v| *v *= inv);
    s[i + 1..].iter_mut().for_each(|v| *v = 0.0);
    m + sum.ln()
}

/// Query rows per block of the score matrix: block b (rows r0..r0 + qb) needs keys 0..r0 + qb
/// only, so the blocks skip most of the causal upper triangle (a quarter of the work at 128
/// tokens, over 40% at 512) while each stays a GEMM, which on a CPU beats a scalar loop over
/// the exact triangle.
const QUERY_BLOCK: usize = 64;

/// (first row, rows, keys) of each query block of a `len`-token sequence.
fn query_blocks(len: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..len).step_by(QUERY_BLOCK).map(move |r0| {
        let qb = QUERY_BLOCK.min(len - r0);
        (r0, qb, r0 + qb)
    })
}

/// Per sequence, head and query block: S = scale·Q Kᵀ, P = causal softmax(S), O = P V — GEMMs
/// over the block's rows of the score matrix (the part of the upper triangle inside a block
/// computed and discarded).
pub fn fwd(out: V, lse: V, qkv: V, seqs: Seqs<CpuBackend>, shape: AttnShape, scale: f32) -> Result<()> {
    let n = seqs.tokens();
    let (d, hq, w, qw, kw) = (shape.head_dim, shape.n_head, shape.qkv_width(), shape.q_width(), shape.kv_width());
    let group = hq / shape.n_kv_head;
    let x = f(qkv, n * w, "attention_fwd qkv")?;
    let outs = split_rows(fm(out, n * qw, "attention_fwd out")?, seqs.cu_host, qw)?;
    let lses = split_rows(fm(lse, n * hq, "attention_fwd lse")?, seqs.cu_host, hq)?;
    outs.into_par_iter().zip(lses).zip(seqs.cu_host.par_windows(2)).for_each(|((o, l), cw)| {
        let start = cw[0] as usize;
        let len = (cw[1] - cw[0]) as usize;
        if len == 0 {
            return;
        }
        let xs = &x[start * w..(start + len) * w];
        let mut p = vec![0f32; QUERY_BLOCK.min(len) * len];
        for h in 0..hq {
            let g = h / group;
            let (ko, vo) = (qw + g * d, qw + kw + g * d);
            for (r0, qb, kl) in query_blocks(len) {
                let pb = &mut p[..qb * kl];
                gemm_strided((qb, d, kl), scale, (&xs[r0 * w + h * d..], w, 1), (&xs[ko..], 1, w), 0.0, (pb, kl, 1));
                for (i, row) in pb.chunks_mut(kl).enumerate() {
                    l[(r0 + i) * hq + h] = causal_softmax_row(row, r0 + i);
                }
                gemm_strided((qb, kl, d), 1.0, (pb, kl, 1), (&xs[vo..], w, 1), 0.0, (&mut o[r0 * qw + h * d..], qw, 1));
            }
        }
    });
    Ok(())
}

/// Per sequence, head and query block, from P recomputed with the saved lse: dP = dO Vᵀ,
/// dS = P ∘ (dP − rowsum(dO ∘ O)), dQ = scale·dS K, dK += scale·dSᵀ Q, dV += Pᵀ dO (the K
/// and V gradients summed over the heads of a group).
#[allow(clippy::too_many_arguments)]
pub fn bwd(dqkv: V, dout: V, qkv: V, out: V, lse: V, seqs: Seqs<CpuBackend>, shape: AttnShape, scale: f32) -> Result<()> {
    let n = seqs.tokens();
    let (d, hq, w, qw, kw) = (shape.head_dim, shape.n_head, shape.qkv_width(), shape.q_width(), shape.kv_width());
    let group = hq / shape.n_kv_head;
    let (x, o, dox, ls) = (
        f(qkv, n * w, "attention_bwd qkv")?,
        f(out, n * qw, "attention_bwd out")?,
        f(dout, n * qw, "attention_bwd dout")?,
        f(lse, n * hq, "attention_bwd lse")?,
    );
    let grads = split_rows(fm(dqkv, n * w, "attention_bwd dqkv")?, seqs.cu_host, w)?;
    grads.into_par_iter().zip(seqs.cu_host.par_windows(2)).for_each(|(dx, cw)| {
        let start = cw[0] as usize;
        let len = (cw[1] - cw[0]) as usize;
        dx.iter_mut().for_each(|v| *v = 0.0);
        if len == 0 {
            return;
        }
        let xs = &x[start * w..(start + len) * w];
        let (os, dos) = (&o[start * qw..(start + len) * qw], &dox[start * qw..(start + len) * qw]);
        let block = QUERY_BLOCK.min(len) * len;
        let (mut p, mut ds) = (vec![0f32; block], vec![0f32; block]);
        for h in 0..hq {
            let g = h / group;
            let (ko, vo) = (qw + g * d, qw + kw + g * d);
            for (r0, qb, kl) in query_blocks(len) {
                let (pb, db) = (&mut p[..qb * kl], &mut ds[..qb * kl]);
                let (q_rows, do_rows) = (&xs[r0 * w + h * d..], &dos[r0 * qw + h * d..]);
                gemm_strided((qb, d, kl), scale, (q_rows, w, 1), (&xs[ko..], 1, w), 0.0, (&mut *pb, kl, 1));
                gemm_strided((qb, d, kl), 1.0, (do_rows, qw, 1), (&xs[vo..], 1, w), 0.0, (&mut *db, kl, 1));
                for i in 0..qb {
                    let gi = r0 + i; // the query's position in the sequence
                    let l = ls[(start + gi) * hq + h];
                    let big_d = dot(&dos[gi * qw + h * d..gi * qw + (h + 1) * d], &os[gi * qw + h * d..gi * qw + (h + 1) * d]);
                    let (pr, dr) = (&mut pb[i * kl..(i + 1) * kl], &mut db[i * kl..(i + 1) * kl]);
                    for (pj, dj) in pr[..=gi].iter_mut().zip(&mut dr[..=gi]) {
                        *pj = exp(*pj - l);
                        *dj = scale * *pj * (*dj - big_d);
                    }
                    pr[gi + 1..].fill(0.0);
                    dr[gi + 1..].fill(0.0);
                }
                gemm_strided((qb, kl, d), 1.0, (&*db, kl, 1), (&xs[ko..], w, 1), 0.0, (&mut dx[r0 * w + h * d..], w, 1));
                gemm_strided((kl, qb, d), 1.0, (&*db, 1, kl), (q_rows, w, 1), 1.0, (&mut dx[ko..], w, 1));
                gemm_strided((kl, qb, d), 1.0, (&*pb, 1, kl), (do_rows, qw, 1), 1.0, (&mut dx[vo..], w, 1));
            }
        }
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn kv_store(kcache: V, vcache: V, qkv: V, slot: V, pos: V, n: usize, shape: AttnShape, t_max: usize) -> Result<()> {
    let (w, qw, kw) = (shape.qkv_width(), shape.q_width(), shape.kv_width());
    let (x, sl, ps) = (f(qkv, n * w, "kv_store qkv")?, u(slot, n, "kv_store slot")?, u(pos, n, "kv_store pos")?);
    let (kc, vc) = (fm(kcache, kcache.len(), "kv_store kcache")?, fm(vcache, vcache.len(), "kv_store vcache")?);
    for i in 0..n {
        let at = (sl[i] as usize * t_max + ps[i] as usize) * kw;
        if ps[i] as usize >= t_max || at + kw > kc.len() || at + kw > vc.len() {
            bail!("kv_store: slot {} position {} outside the cache", sl[i], ps[i]);
        }
        kc[at..at + kw].copy_from_slice(&x[i * w + qw..i * w + qw + kw]);
        vc[at..at + kw].copy_from_slice(&x[i * w + qw + kw..i * w + qw + 2 * kw]);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn decode(
    out: V,
    qkv: V,
    kcache: V,
    vcache: V,
    slot: V,
    len: V,
    b: usize,
    max_len: usize,
    shape: AttnShape,
    t_max: usize,
    scale: f32,
) -> Result<()> {
    let (d, hq, w, qw, kw) = (shape.head_dim, shape.n_head, shape.qkv_width(), shape.q_width(), shape.kv_width());
    let group = hq / shape.n_kv_head;
    let (x, sl, ln) = (f(qkv, b * w, "attention_decode qkv")?, u(slot, b, "attention_decode slot")?, u(len, b, "attention_decode len")?);
    let (kc, vc) = (f(kcache, kcache.len(), "attention_decode kcache")?, f(vcache, vcache.len(), "attention_decode vcache")?);
    for i in 0..b {
        let l = ln[i] as usize;
        if l == 0 || l > max_len || l > t_max || (sl[i] as usize * t_max + l) * kw > kc.len() {
            bail!("attention_decode: row {i} length {l} / slot {} outside the cache", sl[i]);
        }
    }
    fm(out, b * qw, "attention_decode out")?.par_chunks_mut(qw).enumerate().for_each(|(i, o)| {
        let base = sl[i] as usize * t_max;
        let l = ln[i] as usize;
        let mut p = vec![0f32; l];
        for h in 0..hq {
            let g = h / group;
            let q = &x[i * w + h * d..i * w + (h + 1) * d];
            let mut m = f32::NEG_INFINITY;
            for (j, pj) in p.iter_mut().enumerate() {
                let at = (base + j) * kw + g * d;
                *pj = scale * dot(q, &kc[at..at + d]);
                m = m.max(*pj);
            }
            let mut sum = 0f32;
            for pj in p.iter_mut() {
                *pj = exp(*pj - m);
                sum += *pj;
            }
            let oh = &mut o[h * d..(h + 1) * d];
            oh.iter_mut().for_each(|v| *v = 0.0);
            for (j, &pj) in p.iter().enumerate() {
                let at = (base + j) * kw + g * d;
                for (a, b) in oh.iter_mut().zip(&vc[at..at + d]) {
                    *a += pj / sum * b;
                }
            }
        }
    });
    Ok(())
}
