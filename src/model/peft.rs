//! Adapters in Hugging Face peft's format: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, tensors named as peft saves them
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, …). What we write,
//! `PeftModel.from_pretrained(base, dir)` loads; what peft writes for a Qwen2 LoRA on any of
//! the seven projections, we load. Options we do not implement (DoRA, fan_in_fan_out, trained
//! biases, per-layer rank/alpha patterns, layer subsets, extra saved modules) are refused with
//! the option's name rather than silently ignored.
use super::lora::{LoraConfig, LoraLayout, Target};
use super::weights::{convert_into, replace_dir, write_synced, write_tensors, SaveDtype};
use super::Qwen2Config;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;
use serde_json::{json, Value};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Writes `dir` (atomically: a temporary sibling renamed into place).
pub fn save_adapter(dir: &Path, layout: &LoraLayout, params: &[f32], dtype: SaveDtype, base_model: Option<&str>) -> Result<()> {
    if params.len() != layout.total {
        bail!("save_adapter: {} parameters for an adapter layout of {}", params.len(), layout.total);
    }
    replace_dir(dir, |tmp| write_adapter_files(tmp, layout, params, dtype, base_model))
}

fn adapter_config(layout: &LoraLayout, base_model: Option<&str>) -> Value {
    let c = &layout.cfg;
    let targets: Vec<&str> = c.targets.iter().map(|t| t.peft_name()).collect();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": c.rank,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": c.rslora,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    })
}

/// The two files of an adapter, written into the existing directory `dir` (a checkpoint's
/// temporary directory: a LoRA run's checkpoint is itself an adapter directory).
pub fn write_adapter_files(dir: &Path, layout: &LoraLayout, params: &[f32], dtype: SaveDtype, base_model: Option<&str>) -> Result<()> {
    if params.len() != layout.total {
        bail!("save_adapter: {} parameters for an adapter layout of {}", params.len(), layout.total);
    }
    write_tensors(&dir.join(WEIGHTS_FILE), &layout.entries, params, dtype)?;
    write_synced(&dir.join(CONFIG_FILE), serde_json::to_string_pretty(&adapter_config(layout, base_model))?.as_bytes())
}

/// The adapter's config from `adapter_config.json` (extra fields ignored, unsupported options
/// refused). Dropout is a training-time option: an adapter loaded to score, generate or merge
/// runs without it.
pub fn load_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let bad = |msg: String| anyhow!("{}: {msg}", path.display());
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = get("peft_type").and_then(|x| x.as_str()) {
        if !t.eq_ignore_ascii_case("lora") {
            return Err(bad(format!("peft_type is {t}, only LORA adapters are supported")));
        }
    }
    let rank = get("r").and_then(|x| x.as_u64()).ok_or_else(|| bad("no integer 'r' (the rank)".into()))? as usize;
    let alpha = get("lora_alpha").and_then(|x| x.as_f64()).ok_or_else(|| bad("no number 'lora_alpha'".into()))?;
    let flag = |k: &str| get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    for k in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
        if flag(k) {
            return Err(bad(format!("{k} = true is not supported")));
        }
    }
    if let Some(b) = get("bias").and_then(|x| x.as_str()).filter(|b| *b != "none") {
        return Err(bad(format!("bias = \"{b}\" is not supported (only \"none\")")));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if get(k).and_then(|x| x.as_object()).is_some_and(|m| !m.is_empty()) {
            return Err(bad(format!("a non-empty {k} is not supported")));
        }
    }
    for k in [
        "layers_to_transform",
        "modules_to_save",
        "layers_pattern",
        "exclude_modules",
        "target_parameters",
        "layer_replication",
        "trainable_token_indices",
    ] {
        if get(k).is_some_and(|x| !(x.as_array().is_some_and(|a| a.is_empty()))) {
            return Err(bad(format!("{k} is not supported")));
        }
    }
    let targets = match get("target_modules") {
        Some(Value::String(s)) if s == "all-linear" => Target::ALL.to_vec(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| {
                let name = m.as_str().ok_or_else(|| bad(format!("target_modules entry {m} is not a string")))?;
                Target::from_peft_name(name)
                    .ok_or_else(|| bad(format!("target module '{name}' is not a Qwen2 projection (q_proj … down_proj)")))
            })
            .collect::<Result<Vec<_>>>()?,
        Some(other) => return Err(bad(format!("target_modules {other} is not supported (a list of projection names or \"all-linear\")"))),
        None => return Err(bad("no target_modules".into())),
    };
    let mut sorted = targets.clone();
    sorted.sort();
    sorted.dedup();
    Ok(LoraConfig { rank, alpha, dropout: 0.0, targets: sorted, rslora: flag("use_rslora") })
}

/// The adapter in `dir` for a base model of config `model`: its layout and parameters (f32,
/// in layout order). Every tensor must be present once with its shape; an unexpected tensor
/// (a layer the model does not have, a trained bias) is an error.
pub fn load_adapter(dir: &Path, model: &Qwen2Config) -> Result<(LoraLayout, Vec<f32>)> {
    let cfg = load_adapter_config(dir)?;
    let layout = LoraLayout::new(model, &cfg).with_context(|| format!("{}", dir.join(CONFIG_FILE).display()))?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: corrupt or truncated safetensors file: {e}", path.display()))?;
    let mut params = vec![0f32; layout.total];
    let mut seen = vec![false; layout.entries.len()];
    for (name, view) in st.tensors() {
        // peft keeps the adapter name in memory ("…lora_A.default.weight") but not on disk;
        // accept either.
        let plain = name.replace(".default.weight", ".weight");
        let Some(k) = layout.entries.iter().position(|e| e.name == plain) else {
            bail!("{}: unexpected tensor '{name}' (not an adapter of this config on this model)", path.display());
        };
        let e = &layout.entries[k];
        if view.shape() != e.shape.as_slice() {
            bail!("{}: tensor '{name}' has shape {:?}, expected {:?}", path.display(), view.shape(), e.shape);
        }
        if std::mem::replace(&mut seen[k], true) {
            bail!("{}: tensor '{name}' appears twice", path.display());
        }
        convert_into(view.dtype(), view.data(), &mut params[e.offset..e.offset + e.numel()], &path, &name)?;
    }
    if let Some(k) = seen.iter().position(|&s| !s) {
        bail!("{}: missing tensor '{}'", path.display(), layout.entries[k].name);
    }
    Ok((layout, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Qwen2Config {
        crate::model::presets::preset("tiny-2l").unwrap().cfg
    }

    #[test]
    fn save_then_load_round_trips_and_bad_adapters_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny();
        let lc = LoraConfig { rank: 3, alpha: 6.0, dropout: 0.0, targets: vec![Target::V, Target::Gate], rslora: false };
        let layout = LoraLayout::new(&cfg, &lc).unwrap();
        let params: Vec<f32> = (0..layout.total).map(|i| i as f32 * 1e-3).collect();
        let a = dir.path().join("a");
        save_adapter(&a, &layout, &params, SaveDtype::F32, Some("base")).unwrap();
        let (l2, p2) = load_adapter(&a, &cfg).unwrap();
        assert_eq!(l2, layout);
        assert_eq!(p2, params);
        // Another model shape: shapes do not match.
        let other = Qwen2Config { hidden_size: 128, head_dim: 32, ..cfg.clone() };
        assert!(load_adapter(&a, &other).unwrap_err().to_string().contains("shape"));
        // Options we do not implement.
        let text = std::fs::read_to_string(a.join(CONFIG_FILE)).unwrap();
        for (from, to, msg) in [
            ("\"use_dora\": false", "\"use_dora\": true", "use_dora"),
            ("\"bias\": \"none\"", "\"bias\": \"all\"", "bias"),
            ("\"v_proj\"", "\"c_attn\"", "c_attn"),
            ("\"r\": 3", "\"r\": 4", "shape"),
        ] {
            std::fs::write(a.join(CONFIG_FILE), text.replace(from, to)).unwrap();
            let e = format!("{:#}", load_adapter(&a, &cfg).unwrap_err());
            assert!(e.contains(msg) && !e.contains('\n'), "{from}: {e}");
        }
        std::fs::write(a.join(CONFIG_FILE), &text).unwrap();
        // A truncated weights file.
        let w = std::fs::read(a.join(WEIGHTS_FILE)).unwrap();
        std::fs::write(a.join(WEIGHTS_FILE), &w[..w.len() / 2]).unwrap();
        assert!(load_adapter(&a, &cfg).unwrap_err().to_string().contains("truncated"));
    }
}
