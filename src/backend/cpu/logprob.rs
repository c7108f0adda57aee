//! Per-token log-probs (log-softmax + gather, optional entropy) and their backward, and
//! token sampling, on the CPU. Rows are independent, so each is one parallel task.
use super::exp::exp;
use super::{f, fm, u, um, CpuBackend};
use crate::backend::{SamplingParams, View};
use anyhow::{bail, Result};
use rayon::prelude::*;

type V<'a> = View<'a, CpuBackend>;

/// (log-sum-exp, Σ p·z) of z = row·inv_temp, the sums in f64. Each e^(z − max) is taken in f32
/// (`exp::exp`, within 1 ulp, vectorized): a libm f64 exp per vocabulary entry was most of the
/// CPU's log-prob time at a 151,936-token vocabulary.
fn lse_and_mean(row: &[f32], inv_temp: f32) -> (f64, f64) {
    // Sixteen lanes (l ≡ j mod 16), each its own running max and sums, then the lanes in
    // order: independent chains the compiler vectorizes, and a fixed order of additions.
    const L: usize = 16;
    let (chunks, tail) = (row.chunks_exact(L), row.chunks_exact(L).remainder());
    let mut lane_max = [f32::NEG_INFINITY; L];
    for c in chunks.clone() {
        for l in 0..L {
            lane_max[l] = lane_max[l].max(c[l] * inv_temp);
        }
    }
    let m = tail.iter().fold(lane_max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &z| a.max(z * inv_temp));
    let (mut s, mut sz) = ([0f64; L], [0f64; L]);
    for c in chunks {
        for l in 0..L {
            let z = c[l] * inv_temp;
            let e = exp(z - m) as f64;
            s[l] += e;
            sz[l] += e * z as f64;
        }
    }
    for (l, &z) in tail.iter().enumerate() {
        let z = z * inv_temp;
        let e = exp(z - m) as f64;
        s[l] += e;
        sz[l] += e * z as f64;
    }
    let (s, sz) = (s.iter().sum::<f64>(), sz.iter().sum::<f64>());
    (m as f64 + s.ln(), sz / s)
}

fn check_targets(t: &[u32], v: usize) -> Result<()> {
    if let Some(&bad) = t.iter().find(|&&x| x as usize >= v) {
        bail!("logprob: target token {bad} beyond the vocabulary ({v})");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn fwd(logp: V, lse: V, entropy: Option<V>, logits: V, targets: V, n: usize, v: usize, inv_temp: f32) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (z, t) = (f(logits, n * v, "logprob_fwd logits")?, u(targets, n, "logprob_fwd targets")?);
    check_targets(t, v)?;
    let (lp, ls) = (fm(logp, n, "logprob_fwd logp")?, fm(lse, n, "logprob_fwd lse")?);
    let mut ent_buf = entropy.map(|e| fm(e, n, "logprob_fwd entropy")).transpose()?;
    let rows: Vec<(f32, f32, f32)> = z
        .par_chunks(v)
        .zip(t.par_iter())
        .map(|(row, &ti)| {
            let (l, mean) = lse_and_mean(row, inv_temp);
            ((row[ti as usize] * inv_temp) as f64 - l, l, l - mean)
        })
        .map(|(a, b, c)| (a as f32, b as f32, c as f32))
        .collect();
    for (i, (a, b, c)) in rows.into_iter().enumerate() {
        lp[i] = a;
        ls[i] = b;
        if let Some(e) = ent_buf.as_deref_mut() {
            e[i] = c;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn bwd(
    dlogits: V,
    logits: V,
    targets: V,
    lse: V,
    entropy: Option<V>,
    dlogp: V,
    dentropy: Option<V>,
    n: usize,
    v: usize,
    inv_temp: f32,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let t = u(targets, n, "logprob_bwd targets")?;
    check_targets(t, v)?;
    let (ls, dl) = (f(lse, n, "logprob_bwd lse")?, f(dlogp, n, "logprob_bwd dlogp")?);
    let ent = entropy.map(|e| f(e, n, "logprob_bwd entropy")).transpose()?;
    let dent = dentropy.map(|e| f(e, n, "logprob_bwd dentropy")).transpose()?;
    if ent.is_some() != dent.is_some() {
        bail!("logprob_bwd: entropy and dentropy go together");
    }
    // dlogits may alias logits: each element is read before it is written, row by row.
    let src: Option<&[f32]> = if super::same(&dlogits, &logits) { None } else { Some(f(logits, n * v, "logprob_bwd logits")?) };
    let out = fm(dlogits, n * v, "logprob_bwd dlogits")?;
    out.par_chunks_mut(v).enumerate().for_each(|(i, row)| {
        let (l, g) = (ls[i] as f64, dl[i] as f64);
        let (h, gh) = match (ent, dent) {
            (Some(e), Some(de)) => (e[i] as f64, de[i] as f64),
            _ => (0.0, 0.0),
        };
        for j in 0..v {
            let z = src.map_or(row[j], |s| s[i * v + j]);
            let logp = (z * inv_temp) as f64 - l;
            let p = exp(logp as f32) as f64;
            let onehot = if j == t[i] as usize { 1.0 } else { 0.0 };
            row[j] = (inv_temp as f64 * (g * (onehot - p) - gh * p * (logp + h))) as f32;
        }
    });
    Ok(())
}

/// Index of the largest value (lowest index on ties).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, &z) in row.iter().enumerate() {
        if z > row[best] {
            best = j;
        }
    }
    best
}

/// The token for one row under `SamplingParams`' documented semantics.
fn sample_row(row: &[f32], p: &SamplingParams, uniform: f32) -> usize {
    if p.temperature <= 0.0 {
        return argmax(row);
    }
    let inv = 1.0 / p.temperature as f64;
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &z| a.max(z)) as f64;
    let probs: Vec<f64> = row.iter().map(|&z| ((z as f64 - m) * inv).exp()).collect();
    let filtering = (p.top_k > 0 && p.top_k < row.len()) || p.top_p < 1.0;
    let threshold = if filtering {
        let mut sorted = probs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut t = 0.0;
        if p.top_k > 0 && p.top_k < sorted.len() {
            t = sorted[p.top_k - 1];
        }
        if p.top_p < 1.0 {
            // Mass relative to what top-k kept; the smallest prefix reaching top_p.
            let kept: f64 = sorted.iter().filter(|&&x| x >= t).sum();
            let mut cum = 0.0;
            for &x in sorted.iter().filter(|&&x| x >= t) {
                cum += x;
                if cum >= p.top_p as f64 * kept {
                    t = t.max(x);
                    break;
                }
            }
        }
        t
    } else {
        0.0
    };
    let total: f64 = probs.iter().filter(|&&x| x >= threshold).sum();
    let target = uniform as f64 * total;
    let mut cum = 0.0;
    let mut last = 0;
    for (j, &x) in probs.iter().enumerate() {
        if x >= threshold {
            cum += x;
            last = j;
            if cum > target {
                return j;
            }
        }
    }
    last
}

pub fn sample(out: V, logits: V, b: usize, v: usize, params: &SamplingParams, seeds: &[u64], counters: &[u64]) -> Result<()> {
    if seeds.len() < b || counters.len() < b {
        bail!("sample: {b} rows need {b} seeds and counters");
    }
    let z = f(logits, b * v, "sample logits")?;
    let o = um(out, b, "sample out")?;
    let toks: Vec<u32> = (0..b)
        .into_par_iter()
        .map(|i| sample_row(&z[i * v..(i + 1) * v], params, crate::rng::uniform(seeds[i], counters[i])) as u32)
        .collect();
    o.copy_from_slice(&toks);
    Ok(())
}
