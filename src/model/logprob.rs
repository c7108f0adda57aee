//! Per-token log-probs of packed sequences, and their backward: the scoring path of
//! `tz-engine score`, the reference model and the policy update.
//!
//! Only the rows that predict a target token go through the lm_head, in chunks of rows, so
//! logits exist for one chunk at a time (`chunk × vocab`), never for the whole batch. The
//! backward recomputes each chunk's logits instead of keeping them.
use super::arena::{Arena, ArenaPlan, Slot};
use super::grads::Grads;
use super::lora::LoraLayout;
use super::qwen2::{AttnMode, BackwardSlots, ForwardSlots, Keep, Qwen2};
use super::source::{ParamSource, Resident, Weights};
use super::Qwen2Config;
use crate::backend::{Backend, Seqs, View};
use anyhow::{bail, Result};

/// Logits held at once: about 32M elements (64 MB in bf16).
const LOGITS_BUDGET: usize = 32 << 20;

/// Sequences packed end to end, and the tokens whose log-probs are wanted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedBatch {
    pub tokens: Vec<u32>,
    /// Sequence s owns rows `[cu[s], cu[s+1])`.
    pub cu: Vec<u32>,
    /// Position of each row within its sequence.
    pub pos: Vec<u32>,
    /// Target j is token `target_tok[j]`, predicted from the hidden state at row `target_row[j]`.
    pub target_row: Vec<u32>,
    pub target_tok: Vec<u32>,
    /// Sequence s owns targets `[target_cu[s], target_cu[s+1])`.
    pub target_cu: Vec<u32>,
}

/// One sequence of a batch: a prompt, a response, and the ranges `[start, end)` of the
/// response an environment wrote (multi-turn episodes), which are context but not targets.
pub trait SeqPair {
    fn prompt(&self) -> &[u32];
    fn response(&self) -> &[u32];
    fn env_spans(&self) -> &[[u32; 2]] {
        &[]
    }
}

impl<P: AsRef<[u32]>, R: AsRef<[u32]>> SeqPair for (P, R) {
    fn prompt(&self) -> &[u32] {
        self.0.as_ref()
    }
    fn response(&self) -> &[u32] {
        self.1.as_ref()
    }
}

impl<P: AsRef<[u32]>, R: AsRef<[u32]>, E: AsRef<[[u32; 2]]>> SeqPair for (P, R, E) {
    fn prompt(&self) -> &[u32] {
        self.0.as_ref()
    }
    fn response(&self) -> &[u32] {
        self.1.as_ref()
    }
    fn env_spans(&self) -> &[[u32; 2]] {
        self.2.as_ref()
    }
}

impl<S: SeqPair> SeqPair for &S {
    fn prompt(&self) -> &[u32] {
        (*self).prompt()
    }
    fn response(&self) -> &[u32] {
        (*self).response()
    }
    fn env_spans(&self) -> &[[u32; 2]] {
        (*self).env_spans()
    }
}

/// A trajectory to train on: prompt, response (with any environment observations) and the
/// observations' spans in the response.
pub type Trajectory = (Vec<u32>, Vec<u32>, Vec<[u32; 2]>);

/// Response tokens outside the environment's spans (the ones a policy is trained on).
pub fn agent_tokens(response_len: usize, env_spans: &[[u32; 2]]) -> usize {
    response_len - env_spans.iter().map(|s| (s[1].min(response_len as u32)).saturating_sub(s[0]) as usize).sum::<usize>()
}

impl PackedBatch {
    /// Each sequence is `prompt ++ response`; the targets are every response token outside the
    /// sequence's environment spans (all of them for single-turn pairs).
    pub fn from_pairs<S: SeqPair>(pairs: &[S]) -> Result<Self> {
        let mut b = PackedBatch { cu: vec![0], target_cu: vec![0], ..Default::default() };
        for (i, pair) in pairs.iter().enumerate() {
            let (prompt, response, spans) = (pair.prompt(), pair.response(), pair.env_spans());
            if prompt.is_empty() {
                bail!("sequence {i}: the prompt is empty, so the first response token has no context");
            }
            let mut prev = 0;
            for s in spans {
                if s[0] < prev || s[0] > s[1] || s[1] as usize > response.len() {
                    bail!("sequence {i}: environment span {s:?} is not an ordered range within its {} response tokens", response.len());
                }
                prev = s[1];
            }
            let start = b.tokens.len() as u32;
            b.tokens.extend_from_slice(prompt);
            b.tokens.extend_from_slice(response);
            b.pos.extend(0..(prompt.len() + response.len()) as u32);
            let mut span = spans.iter().peekable();
            for (k, &t) in response.iter().enumerate() {
                while span.peek().is_some_and(|s| s[1] as usize <= k) {
                    span.next();
                }
                if span.peek().is_some_and(|s| s[0] as usize <= k) {
                    continue;
                }
                b.target_row.push(start + (prompt.len() + k) as u32 - 1);
                b.target_tok.push(t);
            }
            b.cu.push(b.tokens.len() as u32);
            b.target_cu.push(b.target_tok.len() as u32);
        }
        Ok(b)
    }

    pub fn n_seqs(&self) -> usize {
        self.cu.len() - 1
    }
    pub fn n_rows(&self) -> usize {
        self.tokens.len()
    }
    pub fn n_targets(&self) -> usize {
        self.target_tok.len()
    }

    /// Rejects token ids outside the vocabulary and sequences longer than the context.
    pub fn validate(&self, cfg: &Qwen2Config) -> Result<()> {
        if let Some(&t) = self.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            bail!("token id {t} is beyond the model's vocabulary ({} tokens)", cfg.vocab_size);
        }
        for (s, w) in self.cu.windows(2).enumerate() {
            let len = (w[1] - w[0]) as usize;
            if len > cfg.max_position_embeddings {
                bail!("sequence {s} has {len} tokens, longer than the model's context ({})", cfg.max_position_embeddings);
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct LogprobPlan {
    pub fwd: ForwardSlots,
    pub bwd: Option<BackwardSlots>,
    pub max_rows: usize,
    pub max_seqs: usize,
    pub max_targets: usize,
    pub chunk: usize,
    pub cu: Slot,
    pub target_row: Slot,
    pub target_tok: Slot,
    pub target_cu: Slot,
    pub hsel: Slot,
    pub logits: Slot,
    pub logp: Slot,
    pub lse: Slot,
    pub entropy: Slot,
    pub dlogp: Slot,
    pub dentropy: Slot,
}

impl LogprobPlan {
    /// `keep`: `Keep::Nothing` plans scoring only; otherwise the backward's slots too.
    pub fn new(p: &mut ArenaPlan, cfg: &Qwen2Config, max_rows: usize, max_seqs: usize, max_targets: usize, keep: Keep) -> Self {
        Self::new_with(p, cfg, max_rows, max_seqs, max_targets, keep, None)
    }

    /// `new` with the scratch of adapters (`lora`) in the forward and backward slots.
    pub fn new_with(
        p: &mut ArenaPlan,
        cfg: &Qwen2Config,
        max_rows: usize,
        max_seqs: usize,
        max_targets: usize,
        keep: Keep,
        lora: Option<&LoraLayout>,
    ) -> Self {
        let c = cfg.hidden_size;
        let chunk = (LOGITS_BUDGET / cfg.vocab_size).clamp(1, max_targets.max(1));
        LogprobPlan {
            fwd: ForwardSlots::plan_with(p, cfg, max_rows, keep, lora),
            bwd: (keep != Keep::Nothing).then(|| BackwardSlots::plan_with(p, cfg, max_rows, lora)),
            max_rows,
            max_seqs,
            max_targets,
            chunk,
            cu: p.u32("inputs", max_seqs + 1),
            target_row: p.u32("inputs", max_targets),
            target_tok: p.u32("inputs", max_targets),
            target_cu: p.u32("inputs", max_seqs + 1),
            hsel: p.act("logits", chunk * c),
            logits: p.act("logits", chunk * cfg.vocab_size),
            logp: p.f32("log-probs", max_targets),
            lse: p.f32("log-probs", max_targets),
            entropy: p.f32("log-probs", max_targets),
            dlogp: p.f32("log-probs", max_targets),
            dentropy: p.f32("log-probs", max_targets),
        }
    }
}

/// A planned arena plus the host copy of the loaded batch's sequence offsets.
pub struct LogprobWorkspace<B: Backend> {
    pub plan: LogprobPlan,
    pub arena: Arena<B>,
    pub cu_host: Vec<u32>,
    pub target_cu_host: Vec<u32>,
    pub n_rows: usize,
    pub n_targets: usize,
}

impl<B: Backend> LogprobWorkspace<B> {
    pub fn new(be: &B, cfg: &Qwen2Config, max_rows: usize, max_seqs: usize, max_targets: usize, keep: Keep) -> Result<Self> {
        Self::new_with(be, cfg, max_rows, max_seqs, max_targets, keep, None)
    }

    /// `new` with room for adapters (`lora`).
    pub fn new_with(
        be: &B,
        cfg: &Qwen2Config,
        max_rows: usize,
        max_seqs: usize,
        max_targets: usize,
        keep: Keep,
        lora: Option<&LoraLayout>,
    ) -> Result<Self> {
        let mut p = ArenaPlan::new(be.act_dtype());
        let plan = LogprobPlan::new_with(&mut p, cfg, max_rows, max_seqs, max_targets, keep, lora);
        let arena = p.allocate(be)?;
        Ok(Self::with_arena(plan, arena))
    }

    /// A workspace whose slots (`plan`, planned into `arena_plan`) live in an arena shared
    /// with other phases.
    pub fn in_arena(arena: &Arena<B>, arena_plan: &ArenaPlan, plan: LogprobPlan) -> Result<Self> {
        arena.holds(arena_plan)?;
        Ok(Self::with_arena(plan, arena.clone()))
    }

    fn with_arena(plan: LogprobPlan, arena: Arena<B>) -> Self {
        LogprobWorkspace { plan, arena, cu_host: vec![], target_cu_host: vec![], n_rows: 0, n_targets: 0 }
    }

    /// Uploads a batch's inputs into the planned slots.
    pub fn load(&mut self, be: &B, cfg: &Qwen2Config, batch: &PackedBatch) -> Result<()> {
        batch.validate(cfg)?;
        let p = &self.plan;
        if batch.n_rows() > p.max_rows || batch.n_seqs() > p.max_seqs || batch.n_targets() > p.max_targets {
            bail!(
                "batch of {} tokens / {} sequences / {} targets exceeds the planned {} / {} / {}",
                batch.n_rows(),
                batch.n_seqs(),
                batch.n_targets(),
                p.max_rows,
                p.max_seqs,
                p.max_targets
            );
        }
        let a = &self.arena;
        be.upload_u32(a.prefix(p.fwd.ids, batch.n_rows()), &batch.tokens)?;
        be.upload_u32(a.prefix(p.fwd.pos, batch.n_rows()), &batch.pos)?;
        be.upload_u32(a.prefix(p.cu, batch.cu.len()), &batch.cu)?;
        be.upload_u32(a.prefix(p.target_row, batch.n_targets()), &batch.target_row)?;
        be.upload_u32(a.prefix(p.target_tok, batch.n_targets()), &batch.target_tok)?;
        be.upload_u32(a.prefix(p.target_cu, batch.target_cu.len()), &batch.target_cu)?;
        self.cu_host.clone_from(&batch.cu);
        self.target_cu_host.clone_from(&batch.target_cu);
        self.n_rows = batch.n_rows();
        self.n_targets = batch.n_targets();
        Ok(())
    }

    pub fn seqs(&self) -> Seqs<'_, B> {
        Seqs { cu_dev: self.arena.prefix(self.plan.cu, self.cu_host.len()), cu_host: &self.cu_host }
    }
    /// Packed sequences of targets (for per-sequence losses over log-probs).
    pub fn target_seqs(&self) -> Seqs<'_, B> {
        Seqs { cu_dev: self.arena.prefix(self.plan.target_cu, self.target_cu_host.len()), cu_host: &self.target_cu_host }
    }
    pub fn logp(&self) -> View<'_, B> {
        self.arena.prefix(self.plan.logp, self.n_targets)
    }
    pub fn entropy(&self) -> View<'_, B> {
        self.arena.prefix(self.plan.entropy, self.n_targets)
    }
    pub fn dlogp(&self) -> View<'_, B> {
        self.arena.prefix(self.plan.dlogp, self.n_targets)
    }
    pub fn dentropy(&self) -> View<'_, B> {
        self.arena.prefix(self.plan.dentropy, self.n_targets)
    }
}

impl<B: Backend> Qwen2<B> {
    /// Log-probs (and optionally entropies) of the loaded batch's targets into `ws.logp()`.
    pub fn forward_logprobs(&self, be: &B, ws: &LogprobWorkspace<B>, with_entropy: bool) -> Result<()> {
        self.forward_logprobs_from(be, ws, with_entropy, &Resident(self))
    }

    /// `forward_logprobs` with the parameters from `src` (`crate::model::source`).
    pub fn forward_logprobs_from(&self, be: &B, ws: &LogprobWorkspace<B>, with_entropy: bool, src: &dyn ParamSource<B>) -> Result<()> {
        let mode = AttnMode::Packed { seqs: ws.seqs(), store: None };
        self.forward_layers_from(be, &ws.arena, &ws.plan.fwd, ws.n_rows, &mode, src)?;
        let w = src.fetch(be, self.layout.lm_unit())?;
        self.for_each_chunk(ws, |j0, nc| {
            let (a, p) = (&ws.arena, &ws.plan);
            self.chunk_logits(be, ws, j0, nc, &w)?;
            let ent = with_entropy.then(|| a.view(p.entropy).slice(j0, nc));
            be.logprob_fwd(
                a.view(p.logp).slice(j0, nc),
                a.view(p.lse).slice(j0, nc),
                ent,
                a.prefix(p.logits, nc * self.cfg.vocab_size),
                a.view(p.target_tok).slice(j0, nc),
                nc,
                self.cfg.vocab_size,
                1.0,
            )
        })
    }

    /// Backward from `ws.dlogp()` (and `ws.dentropy()` when `with_entropy`), after
    /// `forward_logprobs` on the same batch. Parameter gradients accumulate into `grads`.
    pub fn backward_logprobs(&self, be: &B, ws: &LogprobWorkspace<B>, grads: &Grads<B>, with_entropy: bool) -> Result<()> {
        self.backward_logprobs_from(be, ws, grads, with_entropy, &Resident(self))
    }

    /// `backward_logprobs` with the parameters from `src`, each unit's gradients handed back
    /// to it as soon as they are complete.
    pub fn backward_logprobs_from(
        &self,
        be: &B,
        ws: &LogprobWorkspace<B>,
        grads: &Grads<B>,
        with_entropy: bool,
        src: &dyn ParamSource<B>,
    ) -> Result<()> {
        let (a, p) = (&ws.arena, &ws.plan);
        let Some(d) = &p.bwd else { bail!("this workspace was planned for inference only") };
        let (c, vocab) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let dln = a.prefix(d.dln, ws.n_rows * c);
        be.fill(dln, 0.0)?;
        let w = src.fetch(be, self.layout.lm_unit())?;
        self.for_each_chunk(ws, |j0, nc| {
            self.chunk_logits(be, ws, j0, nc, &w)?;
            let logits = a.prefix(p.logits, nc * vocab);
            let (ent, dent) =
                if with_entropy { (Some(a.view(p.entropy).slice(j0, nc)), Some(a.view(p.dentropy).slice(j0, nc))) } else { (None, None) };
            be.logprob_bwd(
                logits,
                logits,
                a.view(p.target_tok).slice(j0, nc),
                a.view(p.lse).slice(j0, nc),
                ent,
                a.view(p.dlogp).slice(j0, nc),
                dent,
                nc,
                vocab,
                1.0,
            )?;
            let hsel = a.prefix(p.hsel, nc * c);
            // dW_lm += dlogits^T · h, then dh = dlogits · W_lm, scattered back to the rows.
            let wl = w.w(self.layout.lm_head, vocab * c);
            // (A frozen base with adapters has no lm_head gradient.)
            if src.adapters().is_none() {
                be.gemm(grads.view(self.layout.lm_head, vocab * c)?, logits, hsel, None, vocab, c, nc, true, false, 1.0, 1.0)?;
            }
            be.gemm(hsel, logits, wl, None, nc, c, vocab, false, false, 1.0, 0.0)?;
            be.scatter_add_rows(dln, hsel, a.view(p.target_row).slice(j0, nc), nc, c)
        })?;
        self.backward_layers_from(be, a, &p.fwd, d, grads, ws.n_rows, ws.seqs(), src)
    }

    pub(crate) fn for_each_chunk(&self, ws: &LogprobWorkspace<B>, mut f: impl FnMut(usize, usize) -> Result<()>) -> Result<()> {
        let mut j0 = 0;
        while j0 < ws.n_targets {
            let nc = ws.plan.chunk.min(ws.n_targets - j0);
            f(j0, nc)?;
            j0 += nc;
        }
        Ok(())
    }

    /// Logits of targets `[j0, j0 + nc)` into the logits slot (hidden rows gathered into hsel).
    fn chunk_logits(&self, be: &B, ws: &LogprobWorkspace<B>, j0: usize, nc: usize, w: &Weights<B>) -> Result<()> {
        let (a, p) = (&ws.arena, &ws.plan);
        let c = self.cfg.hidden_size;
        let hsel = a.prefix(p.hsel, nc * c);
        be.gather_rows(hsel, a.prefix(p.fwd.lnf, ws.n_rows * c), a.view(p.target_row).slice(j0, nc), nc, c)?;
        self.lm_head_with(be, a.prefix(p.logits, nc * self.cfg.vocab_size), hsel, nc, w)
    }
}
