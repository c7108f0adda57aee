//! The Qwen2 decoder as an explicit sequence of backend calls (llm.c style), generic over
//! `Backend`. One layer loop serves training (per-layer activations kept for backward),
//! scoring and prefill (one set of buffers reused by every layer, k/v stored to a cache) and
//! decode (one query row per sequence, attention over the cache).
//!
//! Per layer l (pre-norm, residual stream r):
//!   ln1 = rms(r_l)·w_in;  qkv = ln1·Wqkv^T + b;  rope(q, k);  att = attn(qkv)
//!   r'_l = r_l + att·Wo^T;  ln2 = rms(r'_l)·w_post;  gu = ln2·Wgu^T;  h = silu(g)·u
//!   r_{l+1} = r'_l + h·Wd^T
//! Each residual add is fused into the next norm (`residual_rmsnorm_fwd`).
use super::arena::{Arena, ArenaPlan, Slot};
use super::grads::Grads;
use super::layout::Unit;
use super::lora::{Lora, LoraLayout, Place, Target};
use super::source::{ParamSource, Resident, Weights};
use super::{ParamLayout, Qwen2Config};
use crate::backend::{AttnShape, Backend, Seqs, View};
use anyhow::{bail, Result};

/// Model parameters on a backend: one act-dtype buffer in `layout` order, starting at element
/// `at` of `params` (0 unless the model lives in a region of a larger buffer: a sharded
/// model's parameters gathered for generation, `crate::train::zero3`).
pub struct Qwen2<B: Backend> {
    pub cfg: Qwen2Config,
    pub layout: ParamLayout,
    pub params: B::Buf,
    at: usize,
}

/// What a forward pass keeps for a backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Inference (scoring, prefill, decode): every layer shares one set of buffers and the
    /// residual stream is updated in place.
    Nothing,
    /// Every layer's activations (the fastest backward, the most memory).
    AllLayers,
    /// Activation checkpointing: each layer's input only; the backward recomputes a layer's
    /// forward into one shared set of buffers just before differentiating it.
    LayerInputs,
}

impl Keep {
    pub fn for_training(recompute: bool) -> Self {
        if recompute {
            Keep::LayerInputs
        } else {
            Keep::AllLayers
        }
    }
}

/// Activation slots of one decoder layer. In inference plans every layer shares one set, and
/// `resid_in`/`resid_mid` are the same slot (the residual stream is updated in place). With
/// `Keep::LayerInputs` only `resid_in` is per layer.
#[derive(Clone, Copy, Debug)]
pub struct LayerSlots {
    pub resid_in: Slot,
    pub ln1: Slot,
    pub rstd1: Slot,
    pub qkv: Slot,
    pub att: Slot,
    pub lse: Slot,
    pub resid_mid: Slot,
    pub ln2: Slot,
    pub rstd2: Slot,
    pub gu: Slot,
    pub h: Slot,
}

/// The slots every forward pass uses, sized for `rows` token rows.
#[derive(Clone, Debug)]
pub struct ForwardSlots {
    pub keep: Keep,
    pub layers: Vec<LayerSlots>,
    /// Branch output (attention or MLP projection) before its residual add.
    pub tmp: Slot,
    pub resid_final: Slot,
    pub lnf: Slot,
    pub rstdf: Slot,
    pub ids: Slot,
    pub pos: Slot,
    /// Scratch of the adapters' products when planned for a LoRA model.
    pub lora: Option<LoraSlots>,
}

/// One adapter's intermediate `x·Aᵀ` (`[rows, r]`) and, for a target inside a fused output,
/// its product before it is added into that output's columns (`[rows, widest fused out]`).
/// The backward reuses both: it recomputes `x·Aᵀ` and stages a fused output's gradient columns.
#[derive(Clone, Copy, Debug)]
pub struct LoraSlots {
    pub u: Slot,
    pub d: Slot,
    pub rank: usize,
}

impl LoraSlots {
    fn plan(p: &mut ArenaPlan, lora: &LoraLayout, rows: usize) -> Self {
        LoraSlots {
            u: p.act("adapter scratch", rows * lora.rank()),
            d: p.act("adapter scratch", rows * lora.max_fused_out().max(1)),
            rank: lora.rank(),
        }
    }
}

impl ForwardSlots {
    pub fn plan(p: &mut ArenaPlan, cfg: &Qwen2Config, rows: usize, keep: Keep) -> Self {
        Self::plan_with(p, cfg, rows, keep, None)
    }

    /// `plan` with the adapters' scratch when `lora` is given.
    pub fn plan_with(p: &mut ArenaPlan, cfg: &Qwen2Config, rows: usize, keep: Keep, lora: Option<&LoraLayout>) -> Self {
        let c = cfg.hidden_size;
        let shape = cfg.attn_shape();
        let inter = cfg.intermediate_size;
        let one = |p: &mut ArenaPlan| {
            let resid_in = p.act("activations", rows * c);
            LayerSlots {
                resid_in,
                ln1: p.act("activations", rows * c),
                rstd1: p.f32("activations", rows),
                qkv: p.act("activations", rows * shape.qkv_width()),
                att: p.act("activations", rows * shape.q_width()),
                lse: p.f32("activations", rows * shape.n_head),
                resid_mid: if keep == Keep::Nothing { resid_in } else { p.act("activations", rows * c) },
                ln2: p.act("activations", rows * c),
                rstd2: p.f32("activations", rows),
                gu: p.act("activations", rows * 2 * inter),
                h: p.act("activations", rows * inter),
            }
        };
        let first = one(p);
        let mut layers = vec![first];
        for _ in 1..cfg.num_hidden_layers {
            layers.push(match keep {
                Keep::Nothing => first,
                Keep::AllLayers => one(p),
                Keep::LayerInputs => LayerSlots { resid_in: p.act("layer inputs (recompute)", rows * c), ..first },
            });
        }
        let resid_final = if keep == Keep::Nothing { first.resid_in } else { p.act("activations", rows * c) };
        ForwardSlots {
            keep,
            layers,
            tmp: p.act("activations", rows * c),
            resid_final,
            lnf: p.act("activations", rows * c),
            rstdf: p.f32("activations", rows),
            ids: p.u32("inputs", rows),
            pos: p.u32("inputs", rows),
            lora: lora.map(|l| LoraSlots::plan(p, l, rows)),
        }
    }
}

/// How attention sees the rows of a forward pass.
pub enum AttnMode<'a, B: Backend> {
    /// Packed variable-length sequences; optionally store k/v of each row into a cache at
    /// (slot[row], pos[row]).
    Packed { seqs: Seqs<'a, B>, store: Option<KvStore<'a, B>> },
    /// One new token per row; k/v stored at (slot[i], len[i] − 1), then attention over
    /// `[0, len[i])` of the slot.
    Decode { kv: KvStore<'a, B>, len: View<'a, B>, max_len: usize },
}

/// A per-layer KV cache and the per-row slot (and position) indices.
pub struct KvStore<'a, B: Backend> {
    pub kcache: &'a [View<'a, B>],
    pub vcache: &'a [View<'a, B>],
    pub slot: View<'a, B>,
    pub pos: View<'a, B>,
    pub t_max: usize,
}

impl<B: Backend> Qwen2<B> {
    /// Uploads host f32 parameters in `layout` order.
    pub fn from_host(be: &B, cfg: Qwen2Config, host: &[f32]) -> Result<Self> {
        let layout = ParamLayout::new(&cfg);
        Self::from_host_in(be, cfg, layout, host)
    }

    /// As `from_host`, in another layout of the same config (a critic's, with a value head).
    pub fn from_host_in(be: &B, cfg: Qwen2Config, layout: ParamLayout, host: &[f32]) -> Result<Self> {
        if host.len() != layout.total {
            bail!("parameter count {} does not match the config's {}", host.len(), layout.total);
        }
        let params = be.alloc(be.act_dtype(), layout.total)?;
        be.upload_f32(View::all(&params), host)?;
        Ok(Qwen2 { cfg, layout, params, at: 0 })
    }

    /// A model whose parameters are elements `[at, at + layout.total)` of `buf` (a region
    /// of the activation arena; the caller fills it).
    pub fn in_region(cfg: Qwen2Config, layout: ParamLayout, buf: B::Buf, at: usize) -> Result<Self> {
        View::<B>::new(&buf, at, layout.total)?;
        Ok(Qwen2 { cfg, layout, params: buf, at })
    }

    /// Parameters back on the host as f32, in `layout` order.
    pub fn to_host(&self, be: &B) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.layout.total];
        be.download_f32(self.all_params(), &mut out)?;
        Ok(out)
    }

    /// Every parameter, in `layout` order.
    pub fn all_params(&self) -> View<'_, B> {
        View::all(&self.params).slice(self.at, self.layout.total)
    }

    pub fn shape(&self) -> AttnShape {
        self.cfg.attn_shape()
    }

    pub(crate) fn w(&self, off: usize, len: usize) -> View<'_, B> {
        self.all_params().slice(off, len)
    }

    fn eps(&self) -> f32 {
        self.cfg.rms_norm_eps as f32
    }

    fn scale(&self) -> f32 {
        1.0 / (self.cfg.head_dim as f32).sqrt()
    }

    /// Embedding, every decoder layer and the final norm over `n` rows whose ids and positions
    /// are already in `s.ids`/`s.pos`. Leaves the normalized final hidden states in `s.lnf`.
    pub fn forward_layers(&self, be: &B, a: &Arena<B>, s: &ForwardSlots, n: usize, mode: &AttnMode<B>) -> Result<()> {
        self.forward_layers_from(be, a, s, n, mode, &Resident(self))
    }

    /// `forward_layers` with the parameters of each unit fetched from `src` just before use.
    pub fn forward_layers_from(
        &self,
        be: &B,
        a: &Arena<B>,
        s: &ForwardSlots,
        n: usize,
        mode: &AttnMode<B>,
        src: &dyn ParamSource<B>,
    ) -> Result<()> {
        let c = self.cfg.hidden_size;
        let v = |slot: Slot, width: usize| a.prefix(slot, n * width);
        let w = src.fetch(be, Unit::Embed)?;
        be.embedding_fwd(v(s.layers[0].resid_in, c), w.w(self.layout.embed, self.cfg.vocab_size * c), a.prefix(s.ids, n), n, c)?;
        for l in 0..s.layers.len() {
            let w = src.fetch(be, Unit::Layer(l))?;
            self.layer_fwd(be, a, s, l, n, mode, false, &w, src.adapters())?;
        }
        let w = src.fetch(be, Unit::Head)?;
        let last = s.layers.last().expect("at least one layer");
        be.residual_rmsnorm_fwd(
            v(s.resid_final, c),
            v(s.lnf, c),
            a.prefix(s.rstdf, n),
            v(last.resid_mid, c),
            v(s.tmp, c),
            w.w(self.layout.final_norm, c),
            n,
            c,
            self.eps(),
        )?;
        Ok(())
    }

    /// Decoder layer `l`. Its input is `resid_in` for the first layer or on `recompute`, else
    /// the previous layer's `resid_mid + tmp` (the residual add fused into the norm, which
    /// writes `resid_in`). Leaves the MLP branch's output in `tmp`, except on `recompute`:
    /// the backward needs the layer's activations, not its output.
    #[allow(clippy::too_many_arguments)]
    fn layer_fwd(
        &self,
        be: &B,
        a: &Arena<B>,
        s: &ForwardSlots,
        l: usize,
        n: usize,
        mode: &AttnMode<B>,
        recompute: bool,
        w: &Weights<B>,
        ad: Option<&Lora<B>>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (c, inter, eps) = (cfg.hidden_size, cfg.intermediate_size, self.eps());
        let shape = self.shape();
        let (qkvw, qw) = (shape.qkv_width(), shape.q_width());
        let v = |slot: Slot, width: usize| a.prefix(slot, n * width);
        let tmp = v(s.tmp, c);
        let (ls, lo) = (&s.layers[l], &self.layout.layers[l]);
        let w_in = w.w(lo.input_norm, c);
        if l == 0 || recompute {
            // The same arithmetic as the fused add + norm on the stored sum (bit-identical on
            // the CPU backend).
            be.rmsnorm_fwd(v(ls.ln1, c), a.prefix(ls.rstd1, n), v(ls.resid_in, c), w_in, n, c, eps)?;
        } else {
            let prev = &s.layers[l - 1];
            be.residual_rmsnorm_fwd(v(ls.resid_in, c), v(ls.ln1, c), a.prefix(ls.rstd1, n), v(prev.resid_mid, c), tmp, w_in, n, c, eps)?;
        }
        let qkv = v(ls.qkv, qkvw);
        be.gemm(qkv, v(ls.ln1, c), w.w(lo.qkv_w, qkvw * c), Some(w.w(lo.qkv_b, qkvw)), n, qkvw, c, false, true, 1.0, 0.0)?;
        for t in [Target::Q, Target::K, Target::V] {
            self.adapter_fwd(be, a, s, ad, l, t, v(ls.ln1, c), qkv, n)?;
        }
        be.rope(qkv, a.prefix(s.pos, n), n, shape, cfg.rope_theta as f32, false)?;
        let att = v(ls.att, qw);
        match mode {
            AttnMode::Packed { seqs, store } => {
                be.attention_fwd(att, a.prefix(ls.lse, n * shape.n_head), qkv, *seqs, shape, self.scale())?;
                if let Some(kv) = store {
                    be.kv_store(kv.kcache[l], kv.vcache[l], qkv, kv.slot, kv.pos, n, shape, kv.t_max)?;
                }
            }
            AttnMode::Decode { kv, len, max_len } => {
                be.kv_store(kv.kcache[l], kv.vcache[l], qkv, kv.slot, kv.pos, n, shape, kv.t_max)?;
                be.attention_decode(att, qkv, kv.kcache[l], kv.vcache[l], kv.slot, *len, n, *max_len, shape, kv.t_max, self.scale())?;
            }
        }
        be.gemm(tmp, att, w.w(lo.o_w, c * qw), None, n, c, qw, false, true, 1.0, 0.0)?;
        self.adapter_fwd(be, a, s, ad, l, Target::O, att, tmp, n)?;
        let (resid_in, post) = (v(ls.resid_in, c), w.w(lo.post_norm, c));
        be.residual_rmsnorm_fwd(v(ls.resid_mid, c), v(ls.ln2, c), a.prefix(ls.rstd2, n), resid_in, tmp, post, n, c, eps)?;
        let gu = v(ls.gu, 2 * inter);
        be.gemm(gu, v(ls.ln2, c), w.w(lo.gate_up_w, 2 * inter * c), None, n, 2 * inter, c, false, true, 1.0, 0.0)?;
        for t in [Target::Gate, Target::Up] {
            self.adapter_fwd(be, a, s, ad, l, t, v(ls.ln2, c), gu, n)?;
        }
        be.swiglu_fwd(v(ls.h, inter), gu, n, inter)?;
        if !recompute {
            be.gemm(tmp, v(ls.h, inter), w.w(lo.down_w, c * inter), None, n, c, inter, false, true, 1.0, 0.0)?;
            self.adapter_fwd(be, a, s, ad, l, Target::Down, v(ls.h, inter), tmp, n)?;
        }
        Ok(())
    }

    /// `out += scale · (x·Aᵀ)·Bᵀ` for layer `l`'s adapter on `t` (nothing if `t` has none).
    /// `out` is the whole output of `t`'s GEMM, or the fused output `t` is a column range of.
    #[allow(clippy::too_many_arguments)]
    fn adapter_fwd(
        &self,
        be: &B,
        a: &Arena<B>,
        s: &ForwardSlots,
        ad: Option<&Lora<B>>,
        l: usize,
        t: Target,
        x: View<B>,
        out: View<B>,
        n: usize,
    ) -> Result<()> {
        let Some((wa, wb, _)) = ad.and_then(|ad| ad.adapter(l, t)) else { return Ok(()) };
        if n == 0 {
            return Ok(());
        }
        let ls = lora_slots(s)?;
        let (r, scale) = (ls.rank, ad.expect("adapter found").layout.scale());
        let (inp, outw) = t.dims(&self.cfg);
        let u = a.prefix(ls.u, n * r);
        be.gemm(u, x, wa, None, n, r, inp, false, true, 1.0, 0.0)?;
        match t.place(&self.cfg) {
            Place::Whole => be.gemm(out, u, wb, None, n, outw, r, false, true, scale, 1.0),
            Place::Fused { ld, col } => {
                let d = a.prefix(ls.d, n * outw);
                be.gemm(d, u, wb, None, n, outw, r, false, true, scale, 0.0)?;
                be.copy_block(out.slice(col, (n - 1) * ld + outw), ld, d, outw, n, outw, true)
            }
        }
    }

    /// The backward of `adapter_fwd` given `gout`, the gradient of `out` (the fused output's
    /// when `t` is a column range of one): `dA += scale·(Bᵀ·G_tᵀ)·x`, `dB += scale·G_tᵀ·(x·Aᵀ)`
    /// into `grads` (the adapters'), `dx += scale·(G_t·B)·A`.
    #[allow(clippy::too_many_arguments)]
    fn adapter_bwd(
        &self,
        be: &B,
        a: &Arena<B>,
        s: &ForwardSlots,
        d: &BackwardSlots,
        ad: &Lora<B>,
        grads: &Grads<B>,
        l: usize,
        t: Target,
        x: View<B>,
        gout: View<B>,
        dx: View<B>,
        n: usize,
    ) -> Result<()> {
        let Some((wa, wb, o)) = ad.adapter(l, t) else { return Ok(()) };
        if n == 0 {
            return Ok(());
        }
        let ls = lora_slots(s)?;
        let du = a.prefix(d.lora.ok_or_else(|| anyhow::anyhow!("backward planned without adapter scratch"))?.du, n * ls.rank);
        let (r, scale) = (ls.rank, ad.layout.scale());
        let (inp, outw) = t.dims(&self.cfg);
        let u = a.prefix(ls.u, n * r);
        be.gemm(u, x, wa, None, n, r, inp, false, true, 1.0, 0.0)?;
        let g = match t.place(&self.cfg) {
            Place::Whole => gout,
            Place::Fused { ld, col } => {
                let g = a.prefix(ls.d, n * outw);
                be.copy_block(g, outw, gout.slice(col, (n - 1) * ld + outw), ld, n, outw, false)?;
                g
            }
        };
        be.gemm(grads.view(o.b, outw * r)?, g, u, None, outw, r, n, true, false, scale, 1.0)?;
        be.gemm(du, g, wb, None, n, r, outw, false, false, scale, 0.0)?;
        be.gemm(grads.view(o.a, r * inp)?, du, x, None, r, inp, n, true, false, 1.0, 1.0)?;
        be.gemm(dx, du, wa, None, n, inp, r, false, false, 1.0, 1.0)
    }

    /// `logits[rows, V] = h[rows, C] · W_lm^T`.
    pub fn lm_head(&self, be: &B, logits: View<B>, h: View<B>, rows: usize) -> Result<()> {
        self.lm_head_with(be, logits, h, rows, &Weights::new(self.all_params(), 0))
    }

    /// `lm_head` with its weight from `w` (the fetched `layout.lm_unit()`).
    pub fn lm_head_with(&self, be: &B, logits: View<B>, h: View<B>, rows: usize, w: &Weights<B>) -> Result<()> {
        let (c, vocab) = (self.cfg.hidden_size, self.cfg.vocab_size);
        be.gemm(logits, h, w.w(self.layout.lm_head, vocab * c), None, rows, vocab, c, false, true, 1.0, 0.0)
    }
}

/// Backward scratch: one set of activation-gradient buffers reused by every layer.
#[derive(Clone, Copy, Debug)]
pub struct BackwardSlots {
    pub dresid: Slot,
    pub dln: Slot,
    pub dqkv: Slot,
    pub datt: Slot,
    pub dgu: Slot,
    pub dh: Slot,
    /// With adapters: the gradient of one adapter's `x·Aᵀ`, and where the frozen base's norm
    /// weight gradients go (the norm backward computes them along with its input gradient).
    pub lora: Option<LoraBackSlots>,
}

#[derive(Clone, Copy, Debug)]
pub struct LoraBackSlots {
    pub du: Slot,
    pub discard: Slot,
}

impl BackwardSlots {
    pub fn plan(p: &mut ArenaPlan, cfg: &Qwen2Config, rows: usize) -> Self {
        Self::plan_with(p, cfg, rows, None)
    }

    pub fn plan_with(p: &mut ArenaPlan, cfg: &Qwen2Config, rows: usize, lora: Option<&LoraLayout>) -> Self {
        let c = cfg.hidden_size;
        let shape = cfg.attn_shape();
        let inter = cfg.intermediate_size;
        BackwardSlots {
            dresid: p.act("gradient scratch", rows * c),
            dln: p.act("gradient scratch", rows * c),
            dqkv: p.act("gradient scratch", rows * shape.qkv_width()),
            datt: p.act("gradient scratch", rows * shape.q_width()),
            dgu: p.act("gradient scratch", rows * 2 * inter),
            dh: p.act("gradient scratch", rows * inter),
            lora: lora.map(|l| LoraBackSlots { du: p.act("adapter scratch", rows * l.rank()), discard: p.f32("adapter scratch", c) }),
        }
    }
}

impl<B: Backend> Qwen2<B> {
    /// Backward through the final norm, every layer and the embedding, starting from the
    /// gradient w.r.t. the final normalized hidden states already in `d.dln` (rows `[0, n)`).
    /// Parameter gradients accumulate (`+=`) into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_layers(
        &self,
        be: &B,
        a: &Arena<B>,
        s: &ForwardSlots,
        d: &BackwardSlots,
        grads: &Grads<B>,
        n: usize,
        seqs: Seqs<B>,
    ) -> Result<()> {
        self.backward_layers_from(be, a, s, d, grads, n, seqs, &Resident(self))
    }

    /// `backward_layers` with each unit's parameters fetched from `src` before its backward
    /// and its gradients handed back (`grads_ready`) right after.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_layers_from(
        &self,
        be: &B,
        a: &Arena<B>,
        s: &ForwardSlots,
        d: &BackwardSlots,
        grads: &Grads<B>,
        n: usize,
        seqs: Seqs<B>,
        src: &dyn ParamSource<B>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (c, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let shape = self.shape();
        let (qkvw, qw) = (shape.qkv_width(), shape.q_width());
        let v = |slot: Slot, width: usize| a.prefix(slot, n * width);
        let dresid = v(d.dresid, c);
        let dln = v(d.dln, c);
        be.fill(dresid, 0.0)?;
        if s.keep == Keep::Nothing {
            bail!("backward needs a forward planned for training (activations kept)");
        }
        // With adapters the base is frozen: no base weight gradient is computed (`grads` are
        // the adapters'); a norm's weight gradient, which its backward computes anyway, goes
        // to a scratch slot.
        let ad = src.adapters();
        let discard = match (ad, d.lora) {
            (None, _) => None,
            (Some(_), Some(ls)) => Some(a.prefix(ls.discard, c)),
            (Some(_), None) => bail!("a model with adapters run in a backward planned without adapter scratch"),
        };
        let gview = |off: usize, len: usize| -> Result<View<B>> {
            match discard {
                Some(dw) => Ok(dw.slice(0, len)),
                None => grads.view(off, len),
            }
        };
        let fnorm = self.layout.final_norm;
        {
            let w = src.fetch(be, Unit::Head)?;
            be.rmsnorm_bwd(dresid, gview(fnorm, c)?, dln, v(s.resid_final, c), w.w(fnorm, c), a.prefix(s.rstdf, n), n, c)?;
        }
        src.grads_ready(be, Unit::Head, grads)?;
        let recompute = s.keep == Keep::LayerInputs;
        for (l, (ls, lo)) in s.layers.iter().zip(&self.layout.layers).enumerate().rev() {
            let w = src.fetch(be, Unit::Layer(l))?;
            if recompute {
                self.layer_fwd(be, a, s, l, n, &AttnMode::Packed { seqs, store: None }, true, &w, ad)?;
            }
            // MLP branch: dresid is the gradient of its output.
            let (dh, dgu) = (v(d.dh, inter), v(d.dgu, 2 * inter));
            be.gemm(dh, dresid, w.w(lo.down_w, c * inter), None, n, inter, c, false, false, 1.0, 0.0)?;
            if let Some(ad) = ad {
                self.adapter_bwd(be, a, s, d, ad, grads, l, Target::Down, v(ls.h, inter), dresid, dh, n)?;
            } else {
                be.gemm(grads.view(lo.down_w, c * inter)?, dresid, v(ls.h, inter), None, c, inter, n, true, false, 1.0, 1.0)?;
            }
            be.swiglu_bwd(dgu, dh, v(ls.gu, 2 * inter), n, inter)?;
            be.gemm(dln, dgu, w.w(lo.gate_up_w, 2 * inter * c), None, n, c, 2 * inter, false, false, 1.0, 0.0)?;
            if let Some(ad) = ad {
                for t in [Target::Gate, Target::Up] {
                    self.adapter_bwd(be, a, s, d, ad, grads, l, t, v(ls.ln2, c), dgu, dln, n)?;
                }
            } else {
                be.gemm(grads.view(lo.gate_up_w, 2 * inter * c)?, dgu, v(ls.ln2, c), None, 2 * inter, c, n, true, false, 1.0, 1.0)?;
            }
            be.rmsnorm_bwd(dresid, gview(lo.post_norm, c)?, dln, v(ls.resid_mid, c), w.w(lo.post_norm, c), a.prefix(ls.rstd2, n), n, c)?;
            // Attention branch.
            let (datt, dqkv) = (v(d.datt, qw), v(d.dqkv, qkvw));
            be.gemm(datt, dresid, w.w(lo.o_w, c * qw), None, n, qw, c, false, false, 1.0, 0.0)?;
            if let Some(ad) = ad {
                self.adapter_bwd(be, a, s, d, ad, grads, l, Target::O, v(ls.att, qw), dresid, datt, n)?;
            } else {
                be.gemm(grads.view(lo.o_w, c * qw)?, dresid, v(ls.att, qw), None, c, qw, n, true, false, 1.0, 1.0)?;
            }
            be.attention_bwd(dqkv, datt, v(ls.qkv, qkvw), v(ls.att, qw), a.prefix(ls.lse, n * shape.n_head), seqs, shape, self.scale())?;
            be.rope(dqkv, a.prefix(s.pos, n), n, shape, cfg.rope_theta as f32, true)?;
            be.gemm(dln, dqkv, w.w(lo.qkv_w, qkvw * c), None, n, c, qkvw, false, false, 1.0, 0.0)?;
            if let Some(ad) = ad {
                for t in [Target::Q, Target::K, Target::V] {
                    self.adapter_bwd(be, a, s, d, ad, grads, l, t, v(ls.ln1, c), dqkv, dln, n)?;
                }
            } else {
                be.bias_bwd(grads.view(lo.qkv_b, qkvw)?, dqkv, n, qkvw)?;
                be.gemm(grads.view(lo.qkv_w, qkvw * c)?, dqkv, v(ls.ln1, c), None, qkvw, c, n, true, false, 1.0, 1.0)?;
            }
            be.rmsnorm_bwd(dresid, gview(lo.input_norm, c)?, dln, v(ls.resid_in, c), w.w(lo.input_norm, c), a.prefix(ls.rstd1, n), n, c)?;
            src.grads_ready(be, Unit::Layer(l), grads)?;
        }
        if ad.is_none() {
            be.embedding_bwd(grads.view(self.layout.embed, cfg.vocab_size * c)?, dresid, a.prefix(s.ids, n), n, c)?;
        }
        src.grads_ready(be, Unit::Embed, grads)?;
        Ok(())
    }
}

fn lora_slots(s: &ForwardSlots) -> Result<LoraSlots> {
    s.lora.ok_or_else(|| anyhow::anyhow!("a model with adapters run in a workspace planned without adapter scratch"))
}
