//! Low-rank adapters (LoRA, Hu et al. 2021, as Hugging Face peft implements them): for each
//! targeted projection `y = x·Wᵀ (+ b)` of every decoder layer, `y += (α/r) · (x·Aᵀ)·Bᵀ` with
//! A `[r, in]` and B `[out, r]`. The base weights stay frozen; only A and B train.
//!
//! The adapters live in one flat buffer of their own (`LoraLayout`: per layer, per target in
//! `Target::ALL` order, A then B), so their gradients and optimizer state are flat buffers
//! too and the base model needs no gradient, master copy or Adam state. The base's fused
//! GEMMs (q|k|v, gate|up) stay fused; each adapter adds two small GEMMs, and for a target
//! inside a fused output its product goes into that output's column range
//! (`Backend::copy_block`). Tensor names are peft's
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, …), so an adapter
//! saved here loads into peft and the other way round (`crate::model::peft`).
//!
//! Disabling the adapters — the graph given a source without them — is the base model, which
//! is how a LoRA run gets its reference policy without a second copy of the model.
use super::config::Qwen2Config;
use super::layout::Entry;
use crate::backend::{Backend, View};
use crate::rng::Rng;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A projection an adapter can target, by peft's module name without `_proj`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// Where a target's output goes in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The whole output of its GEMM (o_proj, down_proj).
    Whole,
    /// Columns `[col, col + out)` of a fused output `ld` wide (q|k|v, gate|up).
    Fused { ld: usize, col: usize },
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    pub fn index(self) -> usize {
        Target::ALL.iter().position(|&t| t == self).expect("in ALL")
    }

    /// peft's `target_modules` name.
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    pub fn from_peft_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.peft_name() == name)
    }

    /// The module path inside a decoder layer.
    pub fn module(self) -> String {
        let block = if matches!(self, Target::Q | Target::K | Target::V | Target::O) { "self_attn" } else { "mlp" };
        format!("{block}.{}", self.peft_name())
    }

    /// (in features, out features).
    pub fn dims(self, cfg: &Qwen2Config) -> (usize, usize) {
        let s = cfg.attn_shape();
        let (c, inter) = (cfg.hidden_size, cfg.intermediate_size);
        match self {
            Target::Q => (c, s.q_width()),
            Target::K | Target::V => (c, s.kv_width()),
            Target::O => (s.q_width(), c),
            Target::Gate | Target::Up => (c, inter),
            Target::Down => (inter, c),
        }
    }

    /// Rows `[start, start + out)` of the base's fused weight this target is (`layout`'s
    /// q|k|v and gate|up blocks), also the column range of the fused output.
    pub fn place(self, cfg: &Qwen2Config) -> Place {
        let s = cfg.attn_shape();
        let inter = cfg.intermediate_size;
        match self {
            Target::Q => Place::Fused { ld: s.qkv_width(), col: 0 },
            Target::K => Place::Fused { ld: s.qkv_width(), col: s.q_width() },
            Target::V => Place::Fused { ld: s.qkv_width(), col: s.q_width() + s.kv_width() },
            Target::Gate => Place::Fused { ld: 2 * inter, col: 0 },
            Target::Up => Place::Fused { ld: 2 * inter, col: inter },
            Target::O | Target::Down => Place::Whole,
        }
    }
}

fn all_targets() -> Vec<Target> {
    Target::ALL.to_vec()
}

/// `model.lora` in a training config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    /// Only 0 is supported (the default of a run that trains the adapters; peft's own
    /// default is 0 as well).
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "all_targets")]
    pub targets: Vec<Target>,
    /// rsLoRA scaling α/√r instead of α/r (peft's `use_rslora`).
    #[serde(default)]
    pub rslora: bool,
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("model.lora.rank must be at least 1");
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            bail!("model.lora.alpha must be a positive number, got {}", self.alpha);
        }
        if self.dropout != 0.0 {
            bail!("model.lora.dropout = {} is not supported (only 0)", self.dropout);
        }
        if self.targets.is_empty() {
            bail!("model.lora.targets is empty: name at least one of q, k, v, o, gate, up, down");
        }
        let mut t = self.targets.clone();
        t.sort();
        t.dedup();
        if t.len() != self.targets.len() {
            bail!("model.lora.targets names a projection twice");
        }
        Ok(())
    }

    /// The factor the low-rank product is multiplied by.
    pub fn scale(&self) -> f32 {
        let r = self.rank as f64;
        (if self.rslora { self.alpha / r.sqrt() } else { self.alpha / r }) as f32
    }
}

/// Offsets of one adapter's A `[r, in]` and B `[out, r]` in the adapter buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterOffsets {
    pub a: usize,
    pub b: usize,
}

/// The flat adapter layout: per layer, per targeted projection (in `Target::ALL` order), A
/// then B.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraLayout {
    pub cfg: LoraConfig,
    pub model: Qwen2Config,
    pub entries: Vec<Entry>,
    /// `layers[l][t.index()]`: the adapter of target t in layer l, if targeted.
    pub layers: Vec<[Option<AdapterOffsets>; 7]>,
    pub total: usize,
}

/// peft's name of a tensor of layer `l`'s adapter on `t` (`which` is "A" or "B").
pub fn peft_tensor_name(l: usize, t: Target, which: &str) -> String {
    format!("base_model.model.model.layers.{l}.{}.lora_{which}.weight", t.module())
}

impl LoraLayout {
    pub fn new(model: &Qwen2Config, cfg: &LoraConfig) -> Result<Self> {
        cfg.validate()?;
        let r = cfg.rank;
        let (mut entries, mut layers, mut off) = (vec![], vec![], 0usize);
        for l in 0..model.num_hidden_layers {
            let mut slots = [None; 7];
            for t in Target::ALL.into_iter().filter(|t| cfg.targets.contains(t)) {
                let (inp, out) = t.dims(model);
                let a = off;
                entries.push(Entry { name: peft_tensor_name(l, t, "A"), offset: a, shape: vec![r, inp], decay: true });
                let b = a + r * inp;
                entries.push(Entry { name: peft_tensor_name(l, t, "B"), offset: b, shape: vec![out, r], decay: true });
                off = b + out * r;
                slots[t.index()] = Some(AdapterOffsets { a, b });
            }
            layers.push(slots);
        }
        Ok(LoraLayout { cfg: cfg.clone(), model: model.clone(), entries, layers, total: off })
    }

    pub fn rank(&self) -> usize {
        self.cfg.rank
    }

    pub fn scale(&self) -> f32 {
        self.cfg.scale()
    }

    /// The widest output of a targeted projection inside a fused GEMM (0 if none): the
    /// scratch a pass needs to stage one adapter's product.
    pub fn max_fused_out(&self) -> usize {
        self.cfg
            .targets
            .iter()
            .filter(|t| matches!(t.place(&self.model), Place::Fused { .. }))
            .map(|t| t.dims(&self.model).1)
            .max()
            .unwrap_or(0)
    }

    /// peft's initialization: A Kaiming-uniform with a = √5 (uniform in ±1/√in), B zero, so
    /// the adapted model starts as the base.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut p = vec![0f32; self.total];
        for e in self.entries.iter().filter(|e| e.name.ends_with("lora_A.weight")) {
            let bound = 1.0 / (e.shape[1] as f64).sqrt();
            for x in &mut p[e.offset..e.offset + e.numel()] {
                *x = ((2.0 * rng.next_f64() - 1.0) * bound) as f32;
            }
        }
        p
    }

    /// Adds `scale · B·A` of every adapter to the base parameters (`base` in the model's
    /// `ParamLayout`): the merged model computes what base + adapters compute.
    pub fn merge_into(&self, base: &mut [f32], base_layout: &super::ParamLayout, adapters: &[f32]) -> Result<()> {
        if base.len() != base_layout.total || adapters.len() != self.total {
            bail!(
                "merge: {} base and {} adapter parameters for layouts of {} and {}",
                base.len(),
                adapters.len(),
                base_layout.total,
                self.total
            );
        }
        let (r, scale) = (self.rank(), self.scale());
        for (l, slots) in self.layers.iter().enumerate() {
            let lo = &base_layout.layers[l];
            for t in Target::ALL {
                let Some(o) = slots[t.index()] else { continue };
                let (inp, out) = t.dims(&self.model);
                // Row `start` of the weight matrix this target's rows are in.
                let (w0, row0) = match t {
                    Target::O => (lo.o_w, 0),
                    Target::Down => (lo.down_w, 0),
                    Target::Q | Target::K | Target::V => (lo.qkv_w, cols_of(t.place(&self.model))),
                    Target::Gate | Target::Up => (lo.gate_up_w, cols_of(t.place(&self.model))),
                };
                let (a, b) = (&adapters[o.a..o.a + r * inp], &adapters[o.b..o.b + out * r]);
                for i in 0..out {
                    let row = &mut base[w0 + (row0 + i) * inp..w0 + (row0 + i + 1) * inp];
                    for k in 0..r {
                        let bik = scale * b[i * r + k];
                        for (w, &akj) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                            *w += bik * akj;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn cols_of(p: Place) -> usize {
    match p {
        Place::Whole => 0,
        Place::Fused { col, .. } => col,
    }
}

/// Adapters on a backend: one act-dtype buffer in `LoraLayout` order.
pub struct Lora<B: Backend> {
    pub layout: LoraLayout,
    pub params: B::Buf,
}

impl<B: Backend> Lora<B> {
    pub fn from_host(be: &B, layout: LoraLayout, host: &[f32]) -> Result<Self> {
        if host.len() != layout.total {
            bail!("adapter parameter count {} does not match the layout's {}", host.len(), layout.total);
        }
        let params = be.alloc(be.act_dtype(), layout.total.max(1))?;
        be.upload_f32(View::all(&params).slice(0, layout.total), host)?;
        Ok(Lora { layout, params })
    }

    pub fn to_host(&self, be: &B) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.layout.total];
        be.download_f32(self.all_params(), &mut out)?;
        Ok(out)
    }

    pub fn all_params(&self) -> View<'_, B> {
        View::all(&self.params).slice(0, self.layout.total)
    }

    /// (A, B, offsets) of layer `l`'s adapter on `t`, if targeted.
    pub fn adapter(&self, l: usize, t: Target) -> Option<(View<'_, B>, View<'_, B>, AdapterOffsets)> {
        let o = self.layout.layers[l][t.index()]?;
        let (inp, out) = t.dims(&self.layout.model);
        let r = self.layout.rank();
        Some((self.all_params().slice(o.a, r * inp), self.all_params().slice(o.b, out * r), o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Qwen2Config {
        crate::model::presets::preset("tiny-2l").unwrap().cfg
    }

    #[test]
    fn layout_names_shapes_and_offsets_tile_the_buffer() {
        let cfg = tiny();
        let lc = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![Target::Down, Target::Q], rslora: false };
        let lay = LoraLayout::new(&cfg, &lc).unwrap();
        assert_eq!(lay.entries.len(), 4 * cfg.num_hidden_layers);
        assert_eq!(lay.entries[0].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        assert_eq!(lay.entries[0].shape, vec![4, cfg.hidden_size]);
        assert_eq!(lay.entries[3].name, "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight");
        assert_eq!(lay.entries[3].shape, vec![cfg.hidden_size, 4]);
        let mut end = 0;
        for e in &lay.entries {
            assert_eq!(e.offset, end);
            end += e.numel();
        }
        assert_eq!(end, lay.total);
        assert_eq!(lay.scale(), 2.0);
        assert_eq!(lay.max_fused_out(), cfg.attn_shape().q_width());
        let p = lay.init_params(3);
        let a = &lay.entries[0];
        let bound = 1.0 / (cfg.hidden_size as f32).sqrt();
        assert!(p[a.offset..a.offset + a.numel()].iter().all(|x| x.abs() <= bound) && p[a.offset] != 0.0);
        let b = &lay.entries[1];
        assert!(p[b.offset..b.offset + b.numel()].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn bad_configs_are_refused() {
        let cfg = tiny();
        let ok = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: all_targets(), rslora: false };
        for (bad, msg) in [
            (LoraConfig { rank: 0, ..ok.clone() }, "rank"),
            (LoraConfig { alpha: -1.0, ..ok.clone() }, "alpha"),
            (LoraConfig { dropout: 0.05, ..ok.clone() }, "dropout"),
            (LoraConfig { targets: vec![], ..ok.clone() }, "targets"),
            (LoraConfig { targets: vec![Target::Q, Target::Q], ..ok.clone() }, "twice"),
        ] {
            let e = LoraLayout::new(&cfg, &bad).unwrap_err().to_string();
            assert!(e.contains(msg), "{e}");
        }
        let t: Result<LoraConfig, _> = toml::from_str("rank = 4\nalpha = 8\ntargets = [\"qq\"]");
        assert!(t.is_err());
        let t: Result<LoraConfig, _> = toml::from_str("rank = 4\nalpha = 8\nbogus = 1");
        assert!(t.is_err());
        let t: LoraConfig = toml::from_str("rank = 4\nalpha = 8").unwrap();
        assert_eq!(t.targets, all_targets());
    }
}
