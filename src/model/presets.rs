//! Model presets: tiny Qwen2s for the CPU (with their own small byte-level BPE tokenizer
//! trained on a corpus the caller gives: task text) and the Qwen2.5 0.5B/1.5B/3B shapes for benchmarks and planning.
use super::{ParamLayout, Qwen2Config};
use crate::rng::Rng;
use anyhow::{anyhow, bail, Result};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, TokenizerBuilder,
};

/// Qwen2's pre-tokenizer split: digits one at a time, words with their leading space.
pub const QWEN2_SPLIT_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub cfg: Qwen2Config,
    /// Vocabulary size of the preset's own tokenizer (tiny presets), trained on task text.
    pub tokenizer_vocab: usize,
}

pub fn preset_names() -> &'static [&'static str] {
    &["tiny", "tiny-2l", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"]
}

#[allow(clippy::too_many_arguments)]
fn shape(vocab: usize, hidden: usize, inter: usize, layers: usize, heads: usize, kv: usize, ctx: usize, theta: f64) -> Qwen2Config {
    Qwen2Config {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: hidden / heads,
        max_position_embeddings: ctx,
        rope_theta: theta,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
        dtype: None,
    }
}

pub fn preset(name: &str) -> Result<Preset> {
    let (name, cfg, tv): (&'static str, Qwen2Config, usize) = match name {
        "tiny" => ("tiny", shape(384, 128, 384, 4, 4, 2, 512, 10000.0), 384),
        "tiny-2l" => ("tiny-2l", shape(384, 64, 192, 2, 4, 2, 512, 10000.0), 384),
        "qwen2.5-0.5b" => ("qwen2.5-0.5b", shape(151936, 896, 4864, 24, 14, 2, 32768, 1e6), 0),
        "qwen2.5-1.5b" => ("qwen2.5-1.5b", shape(151936, 1536, 8960, 28, 12, 2, 32768, 1e6), 0),
        "qwen2.5-3b" => ("qwen2.5-3b", shape(151936, 2048, 11008, 36, 16, 2, 32768, 1e6), 0),
        // The published shape; unlike the smaller ones, its embeddings are not tied.
        "qwen2.5-7b" => ("qwen2.5-7b", Qwen2Config { tie_word_embeddings: false, ..shape(152064, 3584, 18944, 28, 28, 4, 131072, 1e6) }, 0),
        other => bail!("unknown preset '{other}' (known: {})", preset_names().join(", ")),
    };
    let mut cfg = cfg;
    if name.starts_with("qwen2.5") {
        cfg.bos_token_id = Some(151643);
        cfg.eos_token_ids = vec![151643];
    }
    Ok(Preset { name, cfg, tokenizer_vocab: tv })
}

/// Trains a byte-level BPE with Qwen2's tokenizer.json structure (NFC, regex split + byte
/// level, Qwen's special tokens) on `corpus`. Deterministic for a given corpus.
pub fn train_tiny_tokenizer(corpus: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials)
        .build();
    let split =
        Split::new(SplitPattern::Regex(QWEN2_SPLIT_REGEX.into()), SplitDelimiterBehavior::Isolated, false).map_err(|e| anyhow!("{e}"))?;
    let pre = Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]);
    let mut tk = TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
        .with_model(BPE::default())
        .with_normalizer(Some(NFC.into()))
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
        .with_decoder(Some(ByteLevel::default().into()))
        .build()
        .map_err(|e| anyhow!("tokenizer: {e}"))?;
    tk.train(&mut trainer, corpus.iter()).map_err(|e| anyhow!("tokenizer training: {e}"))?;
    Ok(tokenizers::Tokenizer::from(tk))
}

/// Random parameters like transformers' Qwen2 init: N(0, 0.02) matrices and embedding,
/// norms 1, biases 0: the normals of one Philox stream, drawn in layout order.
///
/// Filled in parallel (a 1.5B-parameter shape took over two minutes on one core): every normal
/// takes exactly two counters of the stream, so a chunk that starts at the n-th normal starts
/// at counter 2n and the values are the ones a sequential loop draws, on any thread count.
pub fn init_params(cfg: &Qwen2Config, seed: u64) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let layout = ParamLayout::new(cfg);
    let mut p = vec![0f32; layout.total];
    let mut drawn = 0u64;
    for e in &layout.entries {
        let xs = &mut p[e.offset..e.offset + e.numel()];
        if e.name.ends_with("norm.weight") {
            xs.fill(1.0);
        } else if !e.name.ends_with(".bias") {
            let first = drawn;
            xs.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
                let mut rng = Rng { seed, counter: 2 * (first + (c * CHUNK) as u64) };
                chunk.iter_mut().for_each(|x| *x = 0.02 * rng.normal() as f32);
            });
            drawn += xs.len() as u64;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel fill draws exactly what one sequential pass over the stream draws (the
    /// tensors here span one to several chunks), so presets and every number measured
    /// on them stay as they were.
    #[test]
    fn parallel_init_equals_sequential_draws() {
        let tiny = preset("tiny").unwrap().cfg;
        let cfg = Qwen2Config { hidden_size: 256, intermediate_size: 768, head_dim: 64, ..tiny };
        let layout = ParamLayout::new(&cfg);
        let mut rng = Rng::new(5);
        let mut want = vec![0f32; layout.total];
        for e in &layout.entries {
            let xs = &mut want[e.offset..e.offset + e.numel()];
            if e.name.ends_with("norm.weight") {
                xs.fill(1.0);
            } else if !e.name.ends_with(".bias") {
                xs.iter_mut().for_each(|x| *x = 0.02 * rng.normal() as f32);
            }
        }
        assert!(layout.entries.iter().any(|e| e.numel() > 1 << 16));
        assert_eq!(init_params(&cfg, 5), want);
    }
}
