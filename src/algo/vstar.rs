//! A*PO stage 1: V*(x) for every training prompt from N samples of the reference policy
//! (temperature 1, top-p 1), cached on disk keyed by the prompts, the reference model's
//! weights and the sampling settings, so runs sharing them compute it once.
use super::astarpo::vstar;
use crate::backend::{Backend, SamplingParams};
use crate::dist::{all_gather_json, split_range, HostComm};
use crate::rollout::{PromptSet, RolloutCtx};
use crate::util::fs::write_atomic;
use crate::util::{fnv1a, FNV_OFFSET};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Serialize, Deserialize)]
struct VstarFile {
    key: String,
    /// Per prompt: V* and how many of the N samples scored above 0.
    vstar: Vec<f32>,
    nonzero: Vec<u32>,
}

pub struct VstarTable {
    pub vstar: Vec<f32>,
    pub nonzero: Vec<u32>,
    pub from_cache: bool,
}

/// `scoring`: how responses are scored and episodes played (the reward and its settings, the
/// per-reply limit): a FrozenLake prompt does not show its turn limit or slipperiness, so the
/// problems are hashed too.
pub fn cache_key(set: &PromptSet, ref_params: &[f32], n: usize, beta1: f32, max_new: usize, seed: u64, scoring: &str) -> String {
    let mut h = FNV_OFFSET;
    for t in &set.tokens {
        for x in t {
            h = fnv1a(h, &x.to_le_bytes());
        }
        h = fnv1a(h, b"|");
    }
    for p in &set.prompts {
        h = fnv1a(h, p.as_bytes());
    }
    for p in &set.problems {
        h = fnv1a(h, format!("{p:?}").as_bytes());
    }
    h = fnv1a(h, scoring.as_bytes());
    for x in ref_params {
        h = fnv1a(h, &x.to_bits().to_le_bytes());
    }
    h = fnv1a(h, format!("{n}/{beta1}/{max_new}/{seed}").as_bytes());
    format!("{h:016x}")
}

/// V* of every prompt of `set` from `n` samples each of `reference` (its model: the reference
/// policy) at temperature 1; `progress(done, total)` after each chunk.
///
/// Every rank of `comm` calls this: each samples its contiguous part of the prompts (a
/// sample's stream is keyed by its prompt, so the table does not depend on the split), the
/// parts are gathered, and rank 0 writes the cache.
#[allow(clippy::too_many_arguments)]
pub fn compute_or_load<B: Backend>(
    reference: &RolloutCtx<B>,
    set: &PromptSet,
    cache_dir: &Path,
    n: usize,
    beta1: f32,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
    comm: &dyn HostComm,
) -> Result<VstarTable> {
    let ref_host = reference.model.to_host(reference.be)?;
    let scoring = format!("{:?}|{}", reference.reward, reference.settings.turn_tokens);
    let key = cache_key(set, &ref_host, n, beta1, reference.settings.max_new_tokens, seed, &scoring);
    let path = cache_dir.join(format!("vstar-{key}.json"));
    let cached = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str::<VstarFile>(&text).ok())
        .filter(|f| f.key == key && f.vstar.len() == set.len());
    // Every rank takes the same branch, even if the cache appeared while they looked.
    if !crate::dist::any(comm, cached.is_none())? {
        let f = cached.expect("every rank found the cache");
        return Ok(VstarTable { vstar: f.vstar, nonzero: f.nonzero, from_cache: true });
    }
    let (vstar, nonzero) = sample(reference, set, 0..set.len(), n, beta1, seed, &mut progress, comm)?;
    let table = VstarTable { vstar, nonzero, from_cache: false };
    if comm.is_root() {
        std::fs::create_dir_all(cache_dir).with_context(|| format!("cannot create {}", cache_dir.display()))?;
        let f = VstarFile { key, vstar: table.vstar.clone(), nonzero: table.nonzero.clone() };
        write_atomic(&path, serde_json::to_string(&f)?.as_bytes())?;
    }
    Ok(table)
}

/// V* and the count of samples above 0 for the prompts `range` of `set`, from `n` samples
/// each of `reference` at temperature 1 (what `compute_or_load` caches; self-play prompts
/// added during a run get theirs from it directly). Every rank of `comm` calls this and
/// samples its contiguous part; the parts are gathered in rank order.
#[allow(clippy::too_many_arguments)]
pub fn sample<B: Backend>(
    reference: &RolloutCtx<B>,
    set: &PromptSet,
    range: std::ops::Range<usize>,
    n: usize,
    beta1: f32,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
    comm: &dyn HostComm,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let ctx = reference.with_sampling(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 }, None);
    let (mut vstars, mut nonzero) = (Vec::with_capacity(range.len()), Vec::with_capacity(range.len()));
    let part = split_range(range.len(), comm.world(), comm.rank());
    let mine = range.start + part.start..range.start + part.end;
    // Chunks of whole prompts, N samples each, sized to fill the generator.
    let per_chunk = (ctx.gen.slots / n).max(1) * 4;
    for start in mine.clone().step_by(per_chunk) {
        crate::util::interrupt::check("V* estimation (finished chunks are not cached; it starts again on --resume)")?;
        let end = (start + per_chunk).min(mine.end);
        let idx: Vec<usize> = (start..end).flat_map(|i| std::iter::repeat_n(i, n)).collect();
        let seeds: Vec<u64> =
            idx.iter().enumerate().map(|(j, &i)| crate::rng::derive_seed(seed ^ 0x5a5a, i as u64, (j % n) as u64)).collect();
        let outs = ctx.rollout(set, &idx, &seeds)?;
        for group in outs.chunks(n) {
            let r: Vec<f32> = group.iter().map(|o| o.score.score).collect();
            vstars.push(vstar(&r, beta1));
            nonzero.push(r.iter().filter(|&&x| x > 0.0).count() as u32);
        }
        progress(end - mine.start, mine.len());
    }
    if comm.world() > 1 {
        let parts = all_gather_json(comm, (vstars, nonzero))?;
        vstars = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
        nonzero = parts.iter().flat_map(|p| p.1.iter().copied()).collect();
    }
    Ok((vstars, nonzero))
}
