//! Batched generation: prefill the prompts of a wave of sequences (packed, variable length,
//! k/v stored into a per-layer cache), then decode one token per live sequence per step,
//! dropping finished sequences from the batch. Every buffer is planned up front.
//!
//! Sequence i samples its t-th token with the Philox draw (seed_i, t), so what a sequence
//! generates does not depend on the other sequences in the batch or on the wave size.
use crate::backend::{Backend, SamplingParams, Seqs, View};
use crate::model::arena::{Arena, ArenaPlan, Slot};
use crate::model::lora::{Lora, LoraLayout};
use crate::model::qwen2::{AttnMode, ForwardSlots, KvStore, Qwen2};
use crate::model::{ParamSource, Qwen2Config, Resident, WithAdapters};
use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_token_ids: Vec<u32>,
    /// Generation stops once the decoded response contains one of these; the tokens that
    /// complete it are kept (the reward parser needs a closing `</answer>`).
    pub stop_strings: Vec<String>,
    /// Multi-turn generation: a reply ends after this many tokens (0: no per-turn limit).
    pub turn_tokens: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// Stopped on an end-of-sequence token (kept as the last token).
    Eos,
    StopString,
    /// Reached `max_new_tokens`.
    Length,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// Ranges `[start, end)` of `tokens` that an environment appended (multi-turn), in order;
    /// empty for single-turn generation.
    pub env_spans: Vec<[u32; 2]>,
}

struct GenPlan {
    fwd: ForwardSlots,
    /// Rows of one forward pass (a prefill group, or the decode batch).
    rows: usize,
    kcache: Vec<Slot>,
    vcache: Vec<Slot>,
    cu: Slot,
    slot: Slot,
    len: Slot,
    last_rows: Slot,
    hsel: Slot,
    logits: Slot,
    tokens: Slot,
}

/// A planned generation arena: `slots` sequences at once, prompts up to `max_prompt` tokens,
/// prompt + response up to `t_max` tokens.
pub struct Generator<B: Backend> {
    plan: GenPlan,
    arena: Arena<B>,
    pub slots: usize,
    pub max_prompt: usize,
    pub t_max: usize,
}

/// Prompt rows prefilled at once: a wave's prompts go through the layers in groups of at most
/// this many rows (but always a whole prompt), so prefill activations stay small next to the
/// KV cache (256 prompts of 256 tokens would otherwise need 65536 rows of activations).
const PREFILL_ROWS: usize = 8192;

/// A generator's slots, planned into `p` (possibly an arena shared with other phases).
pub struct GenLayout {
    plan: GenPlan,
    slots: usize,
    max_prompt: usize,
    t_max: usize,
}

impl GenLayout {
    pub fn plan(p: &mut ArenaPlan, cfg: &Qwen2Config, slots: usize, max_prompt: usize, t_max: usize) -> Result<Self> {
        Self::plan_with(p, cfg, slots, max_prompt, t_max, None)
    }

    /// `plan` with room for adapters (`lora`) in the forward slots.
    pub fn plan_with(
        p: &mut ArenaPlan,
        cfg: &Qwen2Config,
        slots: usize,
        max_prompt: usize,
        t_max: usize,
        lora: Option<&LoraLayout>,
    ) -> Result<Self> {
        if slots == 0 || max_prompt == 0 || t_max <= max_prompt {
            bail!("generator needs slots > 0 and max prompt ({max_prompt}) < max total length ({t_max})");
        }
        if t_max > cfg.max_position_embeddings {
            bail!("prompt + response length {t_max} exceeds the model's context ({})", cfg.max_position_embeddings);
        }
        Ok(GenLayout { plan: plan(p, cfg, slots, max_prompt, t_max, lora), slots, max_prompt, t_max })
    }
}

/// Rows of one prefill pass (also the decode pass's `slots` rows).
fn prefill_rows(slots: usize, max_prompt: usize) -> usize {
    (slots * max_prompt).min(PREFILL_ROWS.max(max_prompt)).max(slots)
}

fn plan(p: &mut ArenaPlan, cfg: &Qwen2Config, slots: usize, max_prompt: usize, t_max: usize, lora: Option<&LoraLayout>) -> GenPlan {
    let rows = prefill_rows(slots, max_prompt);
    let c = cfg.hidden_size;
    let kv_len = slots * t_max * cfg.num_key_value_heads * cfg.head_dim;
    GenPlan {
        fwd: ForwardSlots::plan_with(p, cfg, rows, crate::model::Keep::Nothing, lora),
        rows,
        kcache: (0..cfg.num_hidden_layers).map(|_| p.act("kv cache", kv_len)).collect(),
        vcache: (0..cfg.num_hidden_layers).map(|_| p.act("kv cache", kv_len)).collect(),
        cu: p.u32("inputs", slots + 1),
        slot: p.u32("inputs", rows),
        len: p.u32("inputs", slots),
        last_rows: p.u32("inputs", slots),
        hsel: p.act("logits", slots * c),
        logits: p.act("logits", slots * cfg.vocab_size),
        tokens: p.u32("inputs", slots),
    }
}

/// One sequence being generated.
struct Live {
    index: usize,
    slot: u32,
    prompt_len: usize,
    /// Response tokens so far: replies and appended observations.
    tokens: Vec<u32>,
    /// Response tokens already in the KV cache.
    fed: usize,
    /// Where the current reply starts in `tokens`.
    turn_start: usize,
    env_spans: Vec<[u32; 2]>,
}

impl<B: Backend> Generator<B> {
    pub fn new(be: &B, cfg: &Qwen2Config, slots: usize, max_prompt: usize, t_max: usize) -> Result<Self> {
        Self::new_with(be, cfg, slots, max_prompt, t_max, None)
    }

    /// `new` with room for adapters (`lora`).
    pub fn new_with(be: &B, cfg: &Qwen2Config, slots: usize, max_prompt: usize, t_max: usize, lora: Option<&LoraLayout>) -> Result<Self> {
        let mut p = ArenaPlan::new(be.act_dtype());
        let layout = GenLayout::plan_with(&mut p, cfg, slots, max_prompt, t_max, lora)?;
        Self::in_arena(&p.allocate(be)?, &p, layout)
    }

    /// A generator whose slots (`layout`, planned into `arena_plan`) live in an arena shared
    /// with phases that never run during generation.
    pub fn in_arena(arena: &Arena<B>, arena_plan: &ArenaPlan, layout: GenLayout) -> Result<Self> {
        arena.holds(arena_plan)?;
        let GenLayout { plan, slots, max_prompt, t_max } = layout;
        Ok(Generator { plan, arena: arena.clone(), slots, max_prompt, t_max })
    }

    /// Generates one response per prompt. `seeds[i]` keys sequence i's sampling stream;
    /// `decode` turns response tokens into text for stop-string checks.
    pub fn generate(
        &self,
        be: &B,
        model: &Qwen2<B>,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        gc: &GenConfig,
        decode: &dyn Fn(&[u32]) -> String,
    ) -> Result<Vec<Generation>> {
        self.generate_with(be, model, None, prompts, seeds, gc, decode)
    }

    /// `generate` from the base `model` with `adapters` added (a generator planned for them).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_with(
        &self,
        be: &B,
        model: &Qwen2<B>,
        adapters: Option<&Lora<B>>,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        gc: &GenConfig,
        decode: &dyn Fn(&[u32]) -> String,
    ) -> Result<Vec<Generation>> {
        self.generate_turns(be, model, adapters, prompts, seeds, gc, decode, &mut |_, _, _| Ok(None))
    }

    /// Multi-turn generation. Whenever sequence i ends a reply (a stop token or string, or
    /// `gc.turn_tokens` tokens), `next_turn(i, reply, finish)` says how it goes on: `Some(tokens)`
    /// (the environment's next observation, possibly empty) is appended and the sequence
    /// generates its next reply; `None` ends it. The KV cache is kept across turns: appended
    /// tokens go through the layers once, as extra decode rows, and the history is never
    /// prefilled again. Appended tokens count against the response limit; a sequence that
    /// would exceed it ends with `Finish::Length`.
    ///
    /// Single-turn generation is the case where `next_turn` always ends the sequence.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_turns(
        &self,
        be: &B,
        model: &Qwen2<B>,
        adapters: Option<&Lora<B>>,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        gc: &GenConfig,
        decode: &dyn Fn(&[u32]) -> String,
        next_turn: &mut NextTurn,
    ) -> Result<Vec<Generation>> {
        let resident = Resident(model);
        let with = adapters.map(|lora| WithAdapters::resident(model, lora));
        let src: &dyn ParamSource<B> = match &with {
            Some(w) => w,
            None => &resident,
        };
        if seeds.len() != prompts.len() {
            bail!("{} seeds for {} prompts", seeds.len(), prompts.len());
        }
        let vocab = model.cfg.vocab_size;
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                bail!("prompt {i} is empty");
            }
            if p.len() > self.max_prompt {
                bail!("prompt {i} has {} tokens, more than the planned maximum {}", p.len(), self.max_prompt);
            }
            if let Some(&t) = p.iter().find(|&&t| t as usize >= vocab) {
                bail!("prompt {i} holds token id {t}, beyond the vocabulary ({vocab})");
            }
        }
        let max_new = gc.max_new_tokens.min(self.t_max - self.max_prompt);
        let mut out: Vec<Option<Generation>> = vec![None; prompts.len()];
        for wave_start in (0..prompts.len()).step_by(self.slots) {
            let wave: Vec<usize> = (wave_start..(wave_start + self.slots).min(prompts.len())).collect();
            let w = Wave { src, prompts, seeds, wave: &wave, gc, max_new, decode };
            self.run_wave(be, model, &w, next_turn, &mut out)?;
        }
        Ok(out.into_iter().map(|g| g.expect("every prompt generated")).collect())
    }

    fn run_wave(&self, be: &B, model: &Qwen2<B>, w: &Wave<B>, next_turn: &mut NextTurn, out: &mut [Option<Generation>]) -> Result<()> {
        let Wave { src, prompts, seeds, wave, gc, max_new, decode } = *w;
        let (a, p) = (&self.arena, &self.plan);
        let c = model.cfg.hidden_size;
        let vocab = model.cfg.vocab_size;
        let kc: Vec<View<B>> = p.kcache.iter().map(|&s| a.view(s)).collect();
        let vc: Vec<View<B>> = p.vcache.iter().map(|&s| a.view(s)).collect();

        // Prefill: the wave's prompts packed end to end, in groups of whole prompts that fit
        // the planned rows; each group's last rows go to the hsel rows of its sequences.
        let rows = p.rows;
        let b = wave.len();
        let mut k0 = 0;
        while k0 < b {
            let mut k1 = k0;
            let mut n = 0;
            while k1 < b && (k1 == k0 || n + prompts[wave[k1]].len() <= rows) {
                n += prompts[wave[k1]].len();
                k1 += 1;
            }
            let (mut ids, mut pos, mut slot, mut cu, mut last) = (vec![], vec![], vec![], vec![0u32], vec![]);
            for (k, &i) in wave.iter().enumerate().take(k1).skip(k0) {
                let pr = &prompts[i];
                ids.extend_from_slice(pr);
                pos.extend(0..pr.len() as u32);
                slot.extend(std::iter::repeat_n(k as u32, pr.len()));
                cu.push(ids.len() as u32);
                last.push(ids.len() as u32 - 1);
            }
            let g = k1 - k0;
            be.upload_u32(a.prefix(p.fwd.ids, n), &ids)?;
            be.upload_u32(a.prefix(p.fwd.pos, n), &pos)?;
            be.upload_u32(a.prefix(p.slot, n), &slot)?;
            be.upload_u32(a.prefix(p.cu, cu.len()), &cu)?;
            be.upload_u32(a.prefix(p.last_rows, g), &last)?;
            let store = KvStore { kcache: &kc, vcache: &vc, slot: a.prefix(p.slot, n), pos: a.prefix(p.fwd.pos, n), t_max: self.t_max };
            let seqs = Seqs { cu_dev: a.prefix(p.cu, cu.len()), cu_host: &cu };
            model.forward_layers_from(be, a, &p.fwd, n, &AttnMode::Packed { seqs, store: Some(store) }, src)?;
            be.gather_rows(a.view(p.hsel).slice(k0 * c, g * c), a.prefix(p.fwd.lnf, n * c), a.prefix(p.last_rows, g), g, c)?;
            k0 = k1;
        }
        model.lm_head(be, a.prefix(p.logits, b * vocab), a.prefix(p.hsel, b * c), b)?;

        let mut live: Vec<Live> = wave
            .iter()
            .enumerate()
            .map(|(k, &i)| Live {
                index: i,
                slot: k as u32,
                prompt_len: prompts[i].len(),
                tokens: Vec::with_capacity(max_new),
                fed: 0,
                turn_start: 0,
                env_spans: vec![],
            })
            .collect();
        // Live sequences whose logits row is ready, in logits-row order (all of them after the
        // prefill; later, those whose pending tokens all went through the last pass).
        let mut ready: Vec<usize> = (0..b).collect();
        let mut sampled = vec![0u32; b];
        let mut row_seeds = Vec::with_capacity(b);
        let mut counters = Vec::with_capacity(b);
        let (mut ids, mut pos, mut slot, mut len, mut last) = (vec![], vec![], vec![], vec![], vec![]);
        let mut done = vec![false; b];
        while !live.is_empty() {
            // Sample the next token of every ready sequence from its logits row.
            row_seeds.clear();
            counters.clear();
            for &k in &ready {
                row_seeds.push(seeds[live[k].index]);
                counters.push(live[k].tokens.len() as u64);
            }
            let nr = ready.len();
            if nr > 0 {
                be.sample(a.prefix(p.tokens, nr), a.prefix(p.logits, nr * vocab), nr, vocab, &gc.sampling, &row_seeds, &counters)?;
                be.download_u32(a.prefix(p.tokens, nr), &mut sampled[..nr])?;
            }
            for (&k, &tok) in ready.iter().zip(&sampled[..nr]) {
                let l = &mut live[k];
                l.tokens.push(tok);
                let reply = &l.tokens[l.turn_start..];
                let turn_end = if gc.stop_token_ids.contains(&tok) {
                    Some(Finish::Eos)
                } else if hits_stop_string(reply, &gc.stop_strings, decode) {
                    Some(Finish::StopString)
                } else if l.tokens.len() >= max_new || (gc.turn_tokens > 0 && reply.len() >= gc.turn_tokens) {
                    Some(Finish::Length)
                } else {
                    None
                };
                let Some(f) = turn_end else { continue };
                let finish = match next_turn(l.index, reply, f)? {
                    Some(_) if l.tokens.len() >= max_new => Some(Finish::Length),
                    Some(obs) if l.tokens.len() + obs.len() >= max_new => Some(Finish::Length),
                    Some(obs) => {
                        if let Some(&t) = obs.iter().find(|&&t| t as usize >= vocab) {
                            bail!("an environment observation holds token id {t}, beyond the vocabulary ({vocab})");
                        }
                        let at = l.tokens.len() as u32;
                        l.tokens.extend_from_slice(&obs);
                        if !obs.is_empty() {
                            l.env_spans.push([at, l.tokens.len() as u32]);
                        }
                        l.turn_start = l.tokens.len();
                        None
                    }
                    None => Some(f),
                };
                if let Some(f) = finish {
                    let (tokens, env_spans) = (std::mem::take(&mut l.tokens), std::mem::take(&mut l.env_spans));
                    out[l.index] = Some(Generation { tokens, finish: f, env_spans });
                    done[k] = true;
                }
            }
            if done.iter().any(|&d| d) {
                let mut k = 0;
                live.retain(|_| {
                    k += 1;
                    !done[k - 1]
                });
                done.clear();
                done.resize(live.len(), false);
            }
            if live.is_empty() {
                break;
            }
            // Decode pass: every live sequence's pending tokens (its newest sampled token, then
            // any observation appended after it) as rows at their next positions, at most
            // `slots` rows (what decode attention's scratch is planned for). k/v of all rows
            // are stored before attention, so a sequence's later rows see its earlier ones.
            ids.clear();
            pos.clear();
            slot.clear();
            len.clear();
            last.clear();
            ready.clear();
            let mut max_len = 0;
            for (k, l) in live.iter_mut().enumerate() {
                let room = self.slots - ids.len();
                let take = (l.tokens.len() - l.fed).min(room);
                for t in 0..take {
                    let p_new = l.prompt_len + l.fed + t;
                    ids.push(l.tokens[l.fed + t]);
                    pos.push(p_new as u32);
                    slot.push(l.slot);
                    len.push(p_new as u32 + 1);
                    max_len = max_len.max(p_new + 1);
                }
                l.fed += take;
                if take > 0 && l.fed == l.tokens.len() {
                    ready.push(k);
                    last.push(ids.len() as u32 - 1);
                }
            }
            let n = ids.len();
            be.upload_u32(a.prefix(p.fwd.ids, n), &ids)?;
            be.upload_u32(a.prefix(p.fwd.pos, n), &pos)?;
            be.upload_u32(a.prefix(p.slot, n), &slot)?;
            be.upload_u32(a.prefix(p.len, n), &len)?;
            let kv = KvStore { kcache: &kc, vcache: &vc, slot: a.prefix(p.slot, n), pos: a.prefix(p.fwd.pos, n), t_max: self.t_max };
            model.forward_layers_from(be, a, &p.fwd, n, &AttnMode::Decode { kv, len: a.prefix(p.len, n), max_len }, src)?;
            let nr = ready.len();
            if nr == n {
                // One row per sequence (plain decoding): the rows are the logits rows.
                model.lm_head(be, a.prefix(p.logits, n * vocab), a.prefix(p.fwd.lnf, n * c), n)?;
            } else if nr > 0 {
                be.upload_u32(a.prefix(p.last_rows, nr), &last)?;
                be.gather_rows(a.prefix(p.hsel, nr * c), a.prefix(p.fwd.lnf, n * c), a.prefix(p.last_rows, nr), nr, c)?;
                model.lm_head(be, a.prefix(p.logits, nr * vocab), a.prefix(p.hsel, nr * c), nr)?;
            }
        }
        Ok(())
    }
}

/// What a multi-turn generation does when a sequence ends a reply (`Generator::generate_turns`).
pub type NextTurn<'f> = dyn FnMut(usize, &[u32], Finish) -> Result<Option<Vec<u32>>> + 'f;

/// One wave's inputs.
struct Wave<'w, B: Backend> {
    src: &'w dyn ParamSource<B>,
    prompts: &'w [Vec<u32>],
    seeds: &'w [u64],
    wave: &'w [usize],
    gc: &'w GenConfig,
    max_new: usize,
    decode: &'w dyn Fn(&[u32]) -> String,
}

impl<B: Backend> Clone for Wave<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Wave<'_, B> {}

/// Whether the response's newest tokens complete a stop string. Only a short tail is decoded
/// (enough tokens to cover the longest stop string), keeping the check O(1) per token.
fn hits_stop_string(tokens: &[u32], stops: &[String], decode: &dyn Fn(&[u32]) -> String) -> bool {
    if stops.is_empty() {
        return false;
    }
    let longest = stops.iter().map(|s| s.len()).max().unwrap_or(0);
    let tail = &tokens[tokens.len().saturating_sub(longest + 2)..];
    let text = decode(tail);
    stops.iter().any(|s| !s.is_empty() && text.contains(s.as_str()))
}

#[cfg(test)]
mod tests {
    use super::hits_stop_string;

    #[test]
    fn stop_strings_are_found_across_token_boundaries() {
        // A fake detokenizer: token t is the t-th piece.
        let pieces = ["<ans", "wer>", "1+2", "</", "ans", "wer>", "x"];
        let decode = |ids: &[u32]| ids.iter().map(|&i| pieces[i as usize]).collect::<String>();
        let stops = vec!["</answer>".to_string()];
        assert!(!hits_stop_string(&[0, 1, 2, 3, 4], &stops, &decode));
        assert!(hits_stop_string(&[0, 1, 2, 3, 4, 5], &stops, &decode));
        assert!(!hits_stop_string(&[0, 1, 2], &[], &decode));
    }
}
