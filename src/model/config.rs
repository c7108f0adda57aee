//! Hugging Face `config.json` for Qwen2, as written by transformers 4.x and 5.x:
//! `rope_theta` at the top level or inside `rope_parameters`; `torch_dtype` or `dtype`;
//! `sliding_window` null or absent; `head_dim` absent (= hidden / heads) or present.
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint declares ("float32", "bfloat16", ...), if any.
    pub dtype: Option<String>,
}

fn get_usize(obj: &Map<String, Value>, key: &str) -> Result<usize> {
    match obj.get(key) {
        None => bail!("missing field '{key}'"),
        Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| anyhow!("field '{key}' must be a non-negative integer, got {v}")),
    }
}

fn get_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| anyhow!("field '{key}' must be a number, got {v}")),
    }
}

fn token_ids(v: Option<&Value>, key: &str) -> Result<Vec<u32>> {
    let as_id = |x: &Value| x.as_u64().filter(|&i| i <= u32::MAX as u64).map(|i| i as u32);
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(xs)) => xs.iter().map(|x| as_id(x).ok_or_else(|| anyhow!("field '{key}' holds a non-integer {x}"))).collect(),
        Some(x) => Ok(vec![as_id(x).ok_or_else(|| anyhow!("field '{key}' must be an integer, got {x}"))?]),
    }
}

impl Qwen2Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("bad model config {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or_else(|| anyhow!("top level must be a JSON object"))?;
        let model_type = obj.get("model_type").and_then(Value::as_str);
        let archs: Vec<&str> =
            obj.get("architectures").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let qwen2 = model_type == Some("qwen2") || archs.iter().any(|a| a.starts_with("Qwen2"));
        if !qwen2 {
            bail!(
                "unsupported architecture (model_type {:?}, architectures {:?}); only Qwen2 is supported",
                model_type.unwrap_or("absent"),
                archs
            );
        }
        let hidden_size = get_usize(obj, "hidden_size")?;
        let num_attention_heads = get_usize(obj, "num_attention_heads")?;
        let num_key_value_heads = match obj.get("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            Some(_) => get_usize(obj, "num_key_value_heads")?,
        };
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!("num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})");
        }
        let head_dim = match obj.get("head_dim") {
            None | Some(Value::Null) => {
                if hidden_size % num_attention_heads != 0 {
                    bail!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}");
                }
                hidden_size / num_attention_heads
            }
            Some(_) => get_usize(obj, "head_dim")?,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            bail!("head_dim must be even and positive, got {head_dim}");
        }
        let rope_theta = match get_f64(obj, "rope_theta")? {
            Some(t) => t,
            None => {
                let params = obj.get("rope_parameters").and_then(Value::as_object);
                params.map(|p| get_f64(p, "rope_theta")).transpose()?.flatten().unwrap_or(10000.0)
            }
        };
        if let Some(rt) = obj
            .get("rope_parameters")
            .or_else(|| obj.get("rope_scaling"))
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str)
        {
            if rt != "default" {
                bail!("rope_type '{rt}' is not supported (only the default RoPE)");
            }
        }
        let dtype = obj.get("dtype").or_else(|| obj.get("torch_dtype")).and_then(Value::as_str).map(str::to_string);
        let cfg = Qwen2Config {
            vocab_size: get_usize(obj, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(obj, "intermediate_size")?,
            num_hidden_layers: get_usize(obj, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: get_usize(obj, "max_position_embeddings").unwrap_or(32768),
            rope_theta,
            rms_norm_eps: get_f64(obj, "rms_norm_eps")?.unwrap_or(1e-6),
            tie_word_embeddings: obj.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: token_ids(obj.get("bos_token_id"), "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(obj.get("eos_token_id"), "eos_token_id")?,
            dtype,
        };
        for (name, x) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("num_hidden_layers", cfg.num_hidden_layers),
        ] {
            if x == 0 {
                bail!("{name} must be positive");
            }
        }
        use crate::util::limits::{at_most, MAX_DIM, MAX_LAYERS, MAX_VOCAB};
        at_most("vocab_size", cfg.vocab_size, MAX_VOCAB)?;
        at_most("hidden_size", cfg.hidden_size, MAX_DIM)?;
        at_most("intermediate_size", cfg.intermediate_size, MAX_DIM)?;
        at_most("head_dim", cfg.head_dim, MAX_DIM)?;
        at_most("num_hidden_layers", cfg.num_hidden_layers, MAX_LAYERS)?;
        at_most("num_attention_heads", cfg.num_attention_heads, MAX_LAYERS)?;
        at_most("max_position_embeddings", cfg.max_position_embeddings, MAX_DIM)?;
        if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
            bail!("rope_theta must be a positive number, got {}", cfg.rope_theta);
        }
        if !(cfg.rms_norm_eps.is_finite() && cfg.rms_norm_eps >= 0.0) {
            bail!("rms_norm_eps must be a number >= 0, got {}", cfg.rms_norm_eps);
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                bail!("hidden_act '{act}' is not supported (Qwen2 uses silu)");
            }
        }
        Ok(cfg)
    }

    /// The config.json we write: transformers 4.x field names (5.x reads them too).
    pub fn to_json(&self, dtype: &str) -> Value {
        let eos: Value = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "head_dim": self.head_dim,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": null,
            "use_sliding_window": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": dtype,
            "use_cache": true,
            "vocab_size": self.vocab_size,
        })
    }

    pub fn attn_shape(&self) -> crate::backend::AttnShape {
        crate::backend::AttnShape { n_head: self.num_attention_heads, n_kv_head: self.num_key_value_heads, head_dim: self.head_dim }
    }
}
