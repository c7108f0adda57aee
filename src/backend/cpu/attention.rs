//! Causal grouped-query attention on the CPU: packed variable-length prefill (forward and
//! backward, one parallel task per sequence) and single-query decode over a KV cache.
use super::{f, fm, u, CpuBackend};
use crate::backend::{AttnShape, Seqs, View};
use anyhow::{bail, Result};
use rayon::prelude::*;

type V<'a> = View<'a, CpuBackend>;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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

pub fn fwd(out: V, lse: V, qkv: V, seqs: Seqs<CpuBackend>, shape: AttnShape, scale: f32) -> Result<()> {
    let n = seqs.tokens();
    let (d, hq, w, qw) = (shape.head_dim, shape.n_head, shape.qkv_width(), shape.q_width());
    let group = hq / shape.n_kv_head;
    let x = f(qkv, n * w, "attention_fwd qkv")?;
    let outs = split_rows(fm(out, n * qw, "attention_fwd out")?, seqs.cu_host, qw)?;
    let lses = split_rows(fm(lse, n * hq, "attention_fwd lse")?, seqs.cu_host, hq)?;
    outs.into_par_iter().zip(lses).zip(seqs.cu_host.par_windows(2)).for_each(|((o, l), cw)| {
        let start = cw[0] as usize;
        let len = (cw[1] - cw[0]) as usize;
        let row = |t: usize| &x[(start + t) * w..(start + t + 1) * w];
        let mut p = vec![0f32; len];
        for i in 0..len {
            for h in 0..hq {
                let g = h / group;
                let q = &row(i)[h * d..(h + 1) * d];
                let mut m = f32::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate().take(i + 1) {
                    *pj = scale * dot(q, &row(j)[qw + g * d..qw + (g + 1) * d]);
                    m = m.max(*pj);
                }
                let mut sum = 0f32;
                for pj in p.iter_mut().take(i + 1) {
                    *pj = (*pj - m).exp();
                    sum += *pj;
                }
                let oh = &mut o[i * qw + h * d..i * qw + (h + 1) * d];
                oh.iter_mut().for_each(|v| *v = 0.0);
                let vo = qw + shape.kv_width() + g * d;
                for (j, &pj) in p.iter().enumerate().take(i + 1) {
                    let vj = &row(j)[vo..vo + d];
                    for (a, b) in oh.iter_mut().zip(vj) {
                        *a += pj / sum * b;
                    }
                }
                l[i * hq + h] = m + sum.ln();
            }
        }
    });
    Ok(())
}

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
        let row = |t: usize| &x[(start + t) * w..(start + t + 1) * w];
        let mut ds = vec![0f32; len];
        for h in 0..hq {
            let g = h / group;
            let (ko, vo) = (qw + g * d, qw + kw + g * d);
            for i in 0..len {
                let t = start + i;
                let q = &row(i)[h * d..(h + 1) * d];
                let dor = &dox[t * qw + h * d..t * qw + (h + 1) * d];
                let big_d = dot(dor, &o[t * qw + h * d..t * qw + (h + 1) * d]);
                let l = ls[t * hq + h];
                for j in 0..=i {
                    let p = (scale * dot(q, &row(j)[ko..ko + d]) - l).exp();
                    let dp = dot(dor, &row(j)[vo..vo + d]);
                    ds[j] = p * (dp - big_d);
                    // dV_j += p · dO_i
                    for (a, b) in dx[j * w + vo..j * w + vo + d].iter_mut().zip(dor) {
                        *a += p * b;
                    }
                }
                for j in 0..=i {
                    let s = scale * ds[j];
                    let kj = &row(j)[ko..ko + d];
                    for c in 0..d {
                        dx[i * w + h * d + c] += s * kj[c];
                        dx[j * w + ko + c] += s * q[c];
                    }
                }
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
                *pj = (*pj - m).exp();
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
