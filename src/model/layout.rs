//! The flat parameter layout: every Qwen2 tensor at a fixed offset in one contiguous buffer
//! (parameters, gradients and both Adam moments share it), so each of those is a single
//! allocation that multi-GPU sharding can later split.
//!
//! Tensors the forward pass multiplies together are adjacent on purpose: q|k|v weights (and
//! biases) form one `[(hq + 2·hkv)·d, C]` matrix and gate|up one `[2·I, C]` matrix, so each is
//! a single GEMM. Hugging Face names map onto sub-ranges of these fused blocks.
use super::config::Qwen2Config;

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The Hugging Face tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub offset: usize,
    pub shape: Vec<usize>,
    /// Whether AdamW applies weight decay (matrices yes; norms and biases no).
    pub decay: bool,
}

impl Entry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Offsets of one decoder layer's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerOffsets {
    pub input_norm: usize,
    /// `[(hq + 2·hkv)·d, C]`: q_proj, k_proj, v_proj weights stacked.
    pub qkv_w: usize,
    /// `[(hq + 2·hkv)·d]`: q, k, v biases stacked.
    pub qkv_b: usize,
    /// `[C, hq·d]`
    pub o_w: usize,
    pub post_norm: usize,
    /// `[2·I, C]`: gate_proj then up_proj.
    pub gate_up_w: usize,
    /// `[C, I]`
    pub down_w: usize,
}

/// A group of parameters that a forward or backward pass uses together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// The embedding table (and the lm_head when tied).
    Embed,
    /// Decoder layer l.
    Layer(usize),
    /// The final norm, an untied lm_head and a critic's value head.
    Head,
}

impl Unit {
    /// Its index in `ParamLayout::units`.
    pub fn index(self, n_layers: usize) -> usize {
        match self {
            Unit::Embed => 0,
            Unit::Layer(l) => 1 + l,
            Unit::Head => 1 + n_layers,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    pub entries: Vec<Entry>,
    pub embed: usize,
    pub layers: Vec<LayerOffsets>,
    pub final_norm: usize,
    /// Offset of the `[V, C]` output projection: the embedding table when tied.
    pub lm_head: usize,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(cfg: &Qwen2Config) -> Self {
        let c = cfg.hidden_size;
        let v = cfg.vocab_size;
        let d = cfg.head_dim;
        let (hq, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let inter = cfg.intermediate_size;
        let mut entries = Vec::new();
        let mut off = 0usize;
        let mut push = |name: String, shape: Vec<usize>, decay: bool| -> usize {
            let at = off;
            off += shape.iter().product::<usize>();
            entries.push(Entry { name, offset: at, shape, decay });
            at
        };
        let embed = push("model.embed_tokens.weight".into(), vec![v, c], true);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}.");
            let input_norm = push(format!("{p}input_layernorm.weight"), vec![c], false);
            let qkv_w = push(format!("{p}self_attn.q_proj.weight"), vec![hq * d, c], true);
            push(format!("{p}self_attn.k_proj.weight"), vec![hkv * d, c], true);
            push(format!("{p}self_attn.v_proj.weight"), vec![hkv * d, c], true);
            let qkv_b = push(format!("{p}self_attn.q_proj.bias"), vec![hq * d], false);
            push(format!("{p}self_attn.k_proj.bias"), vec![hkv * d], false);
            push(format!("{p}self_attn.v_proj.bias"), vec![hkv * d], false);
            let o_w = push(format!("{p}self_attn.o_proj.weight"), vec![c, hq * d], true);
            let post_norm = push(format!("{p}post_attention_layernorm.weight"), vec![c], false);
            let gate_up_w = push(format!("{p}mlp.gate_proj.weight"), vec![inter, c], true);
            push(format!("{p}mlp.up_proj.weight"), vec![inter, c], true);
            let down_w = push(format!("{p}mlp.down_proj.weight"), vec![c, inter], true);
            layers.push(LayerOffsets { input_norm, qkv_w, qkv_b, o_w, post_norm, gate_up_w, down_w });
        }
        let final_norm = push("model.norm.weight".into(), vec![c], false);
        let lm_head = if cfg.tie_word_embeddings { embed } else { push("lm_head.weight".into(), vec![v, c], true) };
        ParamLayout { entries, embed, layers, final_norm, lm_head, total: off }
    }

    /// A critic's layout (PPO, `crate::train::critic`): the model's, then a value head
    /// `score.weight` `[1, C]` and `score.bias` `[1]` (the names of transformers'
    /// `Qwen2ForTokenClassification` with one label).
    pub fn with_value_head(cfg: &Qwen2Config) -> Self {
        let mut l = Self::new(cfg);
        let c = cfg.hidden_size;
        l.entries.push(Entry { name: "score.weight".into(), offset: l.total, shape: vec![1, c], decay: true });
        l.entries.push(Entry { name: "score.bias".into(), offset: l.total + c, shape: vec![1], decay: false });
        l.total += c + 1;
        l
    }

    /// Offset of the value head's weight, if this layout has one.
    pub fn value_head(&self) -> Option<usize> {
        self.get("score.weight").map(|e| e.offset)
    }

    /// The groups of parameters a sharded model gathers one at a time (`dist.shard_params`,
    /// `crate::train::zero3`), in layout order: (unit, first parameter, parameter count).
    /// They tile the layout.
    pub fn units(&self) -> Vec<(Unit, usize, usize)> {
        let mut out = Vec::with_capacity(self.layers.len() + 2);
        let first_layer = self.layers.first().map_or(self.final_norm, |l| l.input_norm);
        out.push((Unit::Embed, self.embed, first_layer - self.embed));
        for (l, lo) in self.layers.iter().enumerate() {
            let end = self.layers.get(l + 1).map_or(self.final_norm, |n| n.input_norm);
            out.push((Unit::Layer(l), lo.input_norm, end - lo.input_norm));
        }
        out.push((Unit::Head, self.final_norm, self.total - self.final_norm));
        out
    }

    /// The unit holding the lm_head: the embedding's when tied.
    pub fn lm_unit(&self) -> Unit {
        if self.lm_head == self.embed {
            Unit::Embed
        } else {
            Unit::Head
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// (offset, len) ranges of parameters that take weight decay, merged where contiguous.
    pub fn decay_ranges(&self) -> Vec<(usize, usize, bool)> {
        let mut out: Vec<(usize, usize, bool)> = Vec::new();
        for e in &self.entries {
            match out.last_mut() {
                Some(last) if last.2 == e.decay && last.0 + last.1 == e.offset => last.1 += e.numel(),
                _ => out.push((e.offset, e.numel(), e.decay)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tied: bool) -> Qwen2Config {
        Qwen2Config {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 2,
            max_position_embeddings: 64,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: tied,
            bos_token_id: None,
            eos_token_ids: vec![],
            dtype: None,
        }
    }

    #[test]
    fn entries_tile_the_buffer_and_fused_blocks_are_adjacent() {
        for tied in [true, false] {
            let l = ParamLayout::new(&cfg(tied));
            let mut off = 0;
            for e in &l.entries {
                assert_eq!(e.offset, off, "{}", e.name);
                off += e.numel();
            }
            assert_eq!(off, l.total);
            let k = l.get("model.layers.1.self_attn.k_proj.weight").unwrap();
            assert_eq!(k.offset, l.layers[1].qkv_w + 4 * 2 * 8);
            let up = l.get("model.layers.0.mlp.up_proj.weight").unwrap();
            assert_eq!(up.offset, l.layers[0].gate_up_w + 12 * 8);
            assert_eq!(l.get("lm_head.weight").is_some(), !tied);
            assert_eq!(l.lm_head == l.embed, tied);
            // Units tile the layout, in order, and `index` finds each.
            let units = l.units();
            let mut at = 0;
            for (i, &(u, start, len)) in units.iter().enumerate() {
                assert_eq!((start, u.index(l.layers.len())), (at, i));
                at += len;
            }
            assert_eq!(at, l.total);
            assert_eq!(units[2].1, l.layers[1].input_norm);
        }
    }
}
