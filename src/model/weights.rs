//! safetensors I/O in Hugging Face layout: `model.safetensors` or a sharded
//! `model.safetensors.index.json`, memory-mapped; F32/BF16/F16 converted to f32. Every layout
//! tensor must appear exactly once with its shape. Saving writes a whole model directory
//! under a temporary name and renames it into place.
use super::layout::Entry;
use super::{ParamLayout, Qwen2Config};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    BF16,
}

impl SaveDtype {
    pub fn hf_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::BF16 => "bfloat16",
        }
    }
}

/// The safetensors files of a model directory, in a stable order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON: {e}", index.display()))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| anyhow!("{}: no 'weight_map' object", index.display()))?;
        let mut files = BTreeSet::new();
        for (name, f) in map {
            let f = f.as_str().ok_or_else(|| anyhow!("{}: shard of '{name}' is not a string", index.display()))?;
            if f.contains('/') || f.contains('\\') || f == ".." {
                bail!("{}: shard name '{f}' must be a plain file name", index.display());
            }
            files.insert(f.to_string());
        }
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = files.iter().find(|p| !p.is_file()) {
            bail!("{}: shard {} is missing", index.display(), missing.display());
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if !single.is_file() {
        bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display());
    }
    Ok(vec![single])
}

/// Elements per parallel conversion task (256 KB of f32 written per task).
const CONVERT_CHUNK: usize = 1 << 16;

/// `data` (little-endian `dtype` values) converted into `dst`, in parallel over fixed chunks:
/// loading writes each weight once, straight into the parameter buffer, and the first-touch
/// page faults of that buffer are spread over the threads too (issue #20: loading a 0.5B model
/// was 2.2× slower than transformers with a serial per-tensor copy).
pub(crate) fn convert_into(dtype: Dtype, data: &[u8], dst: &mut [f32], file: &Path, name: &str) -> Result<()> {
    use rayon::prelude::*;
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::BF16 | Dtype::F16 => 2,
        other => bail!("{}: tensor '{name}' has unsupported dtype {other:?} (expected F32, BF16 or F16)", file.display()),
    };
    if data.len() != dst.len() * width {
        bail!("{}: tensor '{name}' holds {} bytes, expected {}", file.display(), data.len(), dst.len() * width);
    }
    let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    dst.par_chunks_mut(CONVERT_CHUNK).zip(data.par_chunks(CONVERT_CHUNK * width)).for_each(|(d, bytes)| {
        let src = bytes.chunks_exact(width);
        match dtype {
            Dtype::F32 => d.iter_mut().zip(src).for_each(|(x, c)| *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            Dtype::BF16 => d.iter_mut().zip(src).for_each(|(x, c)| *x = half::bf16::from_bits(le2(c)).to_f32()),
            _ => d.iter_mut().zip(src).for_each(|(x, c)| *x = half::f16::from_bits(le2(c)).to_f32()),
        }
    });
    Ok(())
}

/// Calls `f` once per layout tensor with its raw little-endian values, their dtype, and the
/// file they are in, reading shard by shard (`convert_into` turns them into f32).
pub fn for_each_tensor(dir: &Path, layout: &ParamLayout, mut f: impl FnMut(&Entry, Dtype, &[u8], &Path) -> Result<()>) -> Result<()> {
    let tied = layout.lm_head == layout.embed;
    let mut seen = vec![false; layout.entries.len()];
    for file in weight_files(dir)? {
        let fh = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
        // SAFETY: the map is read-only and lives only within this iteration; safetensors
        // validates the header and every offset against the mapped length before we read.
        let map = unsafe { memmap2::Mmap::map(&fh) }.with_context(|| format!("cannot map {}", file.display()))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| anyhow!("{}: corrupt or truncated safetensors file: {e}", file.display()))?;
        for (name, view) in st.tensors() {
            if name.ends_with("rotary_emb.inv_freq") || (tied && name == "lm_head.weight") {
                continue; // recomputed buffers; a tied lm_head is the embedding itself
            }
            let Some(k) = layout.entries.iter().position(|e| e.name == name) else {
                bail!("{}: unexpected tensor '{name}' (not part of a Qwen2 model with this config)", file.display());
            };
            let e = &layout.entries[k];
            if view.shape() != e.shape.as_slice() {
                bail!("{}: tensor '{name}' has shape {:?}, expected {:?}", file.display(), view.shape(), e.shape);
            }
            if seen[k] {
                bail!("{}: tensor '{name}' appears twice", file.display());
            }
            seen[k] = true;
            f(e, view.dtype(), view.data(), &file)?;
        }
    }
    if let Some(k) = seen.iter().position(|&s| !s) {
        bail!("{}: missing tensor '{}'", dir.display(), layout.entries[k].name);
    }
    Ok(())
}

/// All parameters as one host f32 buffer in layout order.
pub fn load_params(dir: &Path, _cfg: &Qwen2Config, layout: &ParamLayout) -> Result<Vec<f32>> {
    crate::util::limits::host_fits(&format!("{}'s {} parameters as f32", dir.display(), layout.total), layout.total.saturating_mul(4))?;
    let mut out = vec![0f32; layout.total];
    for_each_tensor(dir, layout, |e, dtype, data, file| {
        convert_into(dtype, data, &mut out[e.offset..e.offset + e.numel()], file, &e.name)
    })?;
    Ok(out)
}

pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

/// Writes config.json, model.safetensors (a tied lm_head is not stored, as transformers
/// does), tokenizer.json and generation_config.json into `dir`, atomically: everything goes
/// into a temporary sibling directory that is then renamed over `dir`.
pub fn save_model(
    dir: &Path,
    cfg: &Qwen2Config,
    layout: &ParamLayout,
    params: &[f32],
    dtype: SaveDtype,
    tokenizer_json: Option<&str>,
) -> Result<()> {
    if params.len() != layout.total {
        bail!("save_model: {} parameters for a layout of {}", params.len(), layout.total);
    }
    replace_dir(dir, |tmp| {
        let st_path = tmp.join("model.safetensors");
        write_tensors(&st_path, &layout.entries, params, dtype)?;
        write_synced(&tmp.join("config.json"), serde_json::to_string_pretty(&cfg.to_json(dtype.hf_name()))?.as_bytes())?;
        let gen = serde_json::json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_ids, "do_sample": true});
        write_synced(&tmp.join("generation_config.json"), serde_json::to_string_pretty(&gen)?.as_bytes())?;
        if let Some(t) = tokenizer_json {
            write_synced(&tmp.join("tokenizer.json"), t.as_bytes())?;
        }
        Ok(())
    })
}

/// Fills a temporary sibling directory with `fill` and renames it over `dir` (replacing an
/// existing one): a crash leaves either the old directory or the new one, never a mix.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir.file_name().ok_or_else(|| anyhow!("{} is not a directory path", dir.display()))?.to_string_lossy().to_string();
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    fill(&tmp)?;
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).with_context(|| format!("cannot move aside {}", dir.display()))?;
        std::fs::rename(&tmp, dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    } else {
        std::fs::rename(&tmp, dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    }
    Ok(())
}

/// `entries` of `params` as one safetensors file in `dtype`, streamed to the file (no second
/// whole-model copy in memory: a 3B model is 6 GB in bf16) and synced.
pub fn write_tensors(path: &Path, entries: &[Entry], params: &[f32], dtype: SaveDtype) -> Result<()> {
    let mut bytes: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(entries.len());
    for e in entries {
        let vals = &params[e.offset..e.offset + e.numel()];
        let b: Vec<u8> = match dtype {
            SaveDtype::F32 => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
            SaveDtype::BF16 => vals.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        };
        bytes.push((e.name.clone(), b, e.shape.clone()));
    }
    let st_dtype = if dtype == SaveDtype::F32 { Dtype::F32 } else { Dtype::BF16 };
    let views = bytes
        .iter()
        .map(|(n, b, s)| safetensors::tensor::TensorView::new(st_dtype, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    std::fs::File::open(path)?.sync_all()?;
    Ok(())
}
