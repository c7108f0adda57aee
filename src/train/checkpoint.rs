//! Checkpoints: `runs/<name>/checkpoints/step-NNNNNN/` holds the policy in Hugging Face format
//! (f32, so a resume is exact), `optimizer.safetensors` (Adam moments, master weights) and
//! `trainer_state.json`; `runs/<name>/latest` names the newest. Every file and directory is
//! written under a temporary name and renamed into place, so a crash never leaves a
//! half-written checkpoint behind a valid name. `checksums.json` records each file's size and
//! CRC-32: a resume validates the checkpoint it would use (and the trainer state against the
//! directory's step) and falls back to the newest older intact one, saying why.
use super::optim::OptimizerState;
use crate::model::weights::{save_model, SaveDtype};
use crate::model::{LoraLayout, ParamLayout, Qwen2Config};
use crate::rng::Rng;
use crate::util::fs::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides weights and optimizer moments that a resume needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// RL steps completed.
    pub step: usize,
    /// Position in the training data: epoch and index into that epoch's permutation.
    pub epoch: u64,
    pub cursor: usize,
    pub rng: Rng,
    pub skipped_steps: usize,
    pub bad_in_a_row: usize,
    pub base_solve_rate: Option<f32>,
    pub base_reward_mean: Option<f32>,
    pub elapsed_s: f64,
    /// Ranks of the run that wrote the checkpoint. Its optimizer state is whole (gathered on
    /// save), so it resumes at any world size; older checkpoints are single-rank.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Σ of every reward sampled by the steps so far (the metrics' `reward_cumulative`).
    #[serde(default)]
    pub reward_cumulative: f64,
    /// The adaptive response window's state.
    #[serde(default)]
    pub window: super::schedule::WindowState,
    /// The curriculum's stage and recent solve rates.
    #[serde(default)]
    pub curriculum: super::curriculum::CurriculumState,
    /// Self-play problems accepted so far, in order (`[selfplay]`).
    #[serde(default)]
    pub selfplay: Vec<crate::task::Problem>,
}

fn one() -> usize {
    1
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    pub opt: OptimizerState,
    /// A PPO run's critic: its parameters (its layout, f32) and optimizer state.
    pub critic: Option<(Vec<f32>, OptimizerState)>,
}

/// An optimizer state (and, for a critic, its parameters) as one safetensors file of flat
/// f32 tensors `m`, `v`, `step`, optionally `master` and `params`.
fn state_file(path: &Path, opt: &OptimizerState, params: Option<&[f32]>) -> Result<()> {
    let step = vec![opt.step as f32];
    let mut tensors: Vec<(&str, &[f32])> = vec![("m", &opt.m), ("v", &opt.v), ("step", &step)];
    if let Some(mw) = &opt.master {
        tensors.push(("master", mw));
    }
    if let Some(p) = params {
        tensors.push(("params", p));
    }
    let data: Vec<(String, Vec<u8>, usize)> = tensors.iter().map(|(k, v)| (k.to_string(), f32_bytes(v), v.len())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, b, len)| Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow!("optimizer state: {e}"))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| anyhow!("optimizer state: {e}"))?;
    write_atomic(path, &bytes)
}

/// Reads `state_file`'s tensors back: the state and the `params` tensor if present.
fn read_state_file(op: &Path) -> Result<(OptimizerState, Option<Vec<f32>>)> {
    let bytes = std::fs::read(op).with_context(|| format!("cannot read {}", op.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: {e}", op.display()))?;
    let get = |k: &str| -> Result<Option<Vec<f32>>> {
        match st.tensor(k) {
            Ok(t) if t.dtype() == safetensors::Dtype::F32 => Ok(Some(f32_from_bytes(t.data()))),
            Ok(_) => bail!("{}: tensor '{k}' is not f32", op.display()),
            Err(_) => Ok(None),
        }
    };
    let m = get("m")?.ok_or_else(|| anyhow!("{}: missing 'm'", op.display()))?;
    let v = get("v")?.ok_or_else(|| anyhow!("{}: missing 'v'", op.display()))?;
    let step = get("step")?.and_then(|s| s.first().copied()).ok_or_else(|| anyhow!("{}: missing 'step'", op.display()))? as u32;
    let master = get("master")?;
    Ok((OptimizerState { step, m, v, master }, get("params")?))
}

const CRITIC_FILE: &str = "critic.safetensors";

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// What a checkpoint holds of the policy.
pub enum PolicyWeights<'a> {
    /// The whole model (config.json, model.safetensors, tokenizer.json), f32.
    Model { cfg: &'a Qwen2Config, layout: &'a ParamLayout, params: &'a [f32] },
    /// A LoRA run's adapters (the base is the run's base model): peft's two files, f32, so
    /// the checkpoint directory is itself an adapter directory (`--adapter`).
    Adapter { layout: &'a LoraLayout, params: &'a [f32] },
}

impl PolicyWeights<'_> {
    fn len(&self) -> usize {
        match self {
            PolicyWeights::Model { layout, .. } => layout.total,
            PolicyWeights::Adapter { layout, .. } => layout.total,
        }
    }
}

pub fn save(
    run_dir: &Path,
    policy: PolicyWeights,
    tokenizer_json: &str,
    opt: &OptimizerState,
    critic: Option<(&[f32], &OptimizerState)>,
    state: &TrainerState,
) -> Result<PathBuf> {
    let ckpts = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpts).with_context(|| format!("cannot create {}", ckpts.display()))?;
    let name = format!("step-{:06}", state.step);
    let tmp = ckpts.join(format!(".{name}.tmp"));
    let dst = ckpts.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    match &policy {
        PolicyWeights::Model { cfg, layout, params } => save_model(&tmp, cfg, layout, params, SaveDtype::F32, Some(tokenizer_json))?,
        PolicyWeights::Adapter { layout, params } => {
            std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            crate::model::peft::write_adapter_files(&tmp, layout, params, SaveDtype::F32, None)?;
        }
    }
    let n = opt.m.len();
    state_file(&tmp.join("optimizer.safetensors"), opt, None)?;
    if let Some((params, copt)) = critic {
        state_file(&tmp.join(CRITIC_FILE), copt, Some(params))?;
    }
    write_atomic(&tmp.join("trainer_state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    // The optimizer state covers the policy, and a shared critic's value head (saved in the
    // critic file, with no optimizer state of its own).
    let head = critic.filter(|(_, c)| c.m.is_empty()).map_or(0, |(p, _)| p.len());
    debug_assert_eq!(n, policy.len() + head);
    let mut sums = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&tmp).with_context(|| format!("cannot list {}", tmp.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            sums.insert(e.file_name().to_string_lossy().to_string(), file_sum(&e.path())?);
        }
    }
    write_atomic(&tmp.join(CHECKSUMS), serde_json::to_string_pretty(&sums)?.as_bytes())?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).with_context(|| format!("cannot replace {}", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst).with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
    write_atomic(&run_dir.join("latest"), name.as_bytes())?;
    Ok(dst)
}

const CHECKSUMS: &str = "checksums.json";

/// A file's size and CRC-32, recorded at save.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileSum {
    bytes: u64,
    crc32: u32,
}

fn file_sum(path: &Path) -> Result<FileSum> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let k = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        bytes += k as u64;
    }
    Ok(FileSum { bytes, crc32: h.finalize() })
}

/// Checks a checkpoint before a resume uses it: every file against the checksums recorded at
/// save (checkpoints written before checksums existed are checked for structure only), and
/// the trainer state's step against the directory's.
pub fn validate(dir: &Path) -> Result<()> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) else {
        bail!("{} is not a checkpoint directory (step-NNNNNN)", dir.display())
    };
    let sums_path = dir.join(CHECKSUMS);
    if let Ok(text) = std::fs::read_to_string(&sums_path) {
        let sums: std::collections::BTreeMap<String, FileSum> =
            serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", sums_path.display()))?;
        for (file, want) in &sums {
            let got = file_sum(&dir.join(file))?;
            if got != *want {
                bail!("{file} does not match its checksum ({} bytes, expected {}): the file is corrupt", got.bytes, want.bytes);
            }
        }
    }
    let sp = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&sp).with_context(|| format!("cannot read {}", sp.display()))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", sp.display()))?;
    if state.step != step {
        bail!("{} says step {} in the checkpoint of step {step}", sp.display(), state.step);
    }
    Ok(())
}

/// Whether the run has any complete checkpoint (a run that does is not started over).
pub fn has_checkpoints(run_dir: &Path) -> bool {
    !complete_checkpoints(run_dir).is_empty() || run_dir.join("latest").is_file()
}

/// The run's complete checkpoints (`checkpoints/step-NNNNNN/` holding trainer_state.json),
/// oldest first.
fn complete_checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else { return vec![] };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step = e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()?;
            e.path().join("trainer_state.json").is_file().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The checkpoint a resume continues from: the one `latest` names (or, when `latest` is
/// missing — deleted, or lost with a crash before it was written — the newest complete one),
/// validated; if it is corrupt, the newest older one that validates, with a warning naming
/// what was wrong. `None` when the run has no checkpoint.
/// What a resume of `run_dir` would start from, as ranks compare it at the rendezvous: the
/// checkpoint `latest` names and a fingerprint of its checksums (ranks on nodes with their
/// own disks must see the same files).
pub fn identity(run_dir: &Path) -> String {
    let Ok(name) = std::fs::read_to_string(run_dir.join("latest")) else { return "no checkpoint".into() };
    let name = name.trim();
    let sums = std::fs::read(run_dir.join("checkpoints").join(name).join("checksums.json")).unwrap_or_default();
    format!("{name} (checksums {:016x})", crate::util::fnv1a(crate::util::FNV_OFFSET, &sums))
}

pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    let p = run_dir.join("latest");
    let mut all = complete_checkpoints(run_dir);
    let named = std::fs::read_to_string(&p).ok().map(|n| run_dir.join("checkpoints").join(n.trim()));
    let mut candidates: Vec<PathBuf> = vec![];
    match &named {
        Some(dir) => {
            // Only checkpoints older than the one `latest` names are fallbacks.
            let step = all.iter().find(|(_, d)| d == dir).map(|(s, _)| *s);
            if step.is_none() {
                eprintln!("warning: {} names {}, which is not a complete checkpoint", p.display(), dir.display());
            }
            all.retain(|(s, _)| step.is_none_or(|n| *s < n));
            candidates.extend(step.map(|_| dir.clone()));
        }
        None if !all.is_empty() => eprintln!("note: {} is missing; using the newest complete checkpoint that validates", p.display()),
        None => {}
    }
    candidates.extend(all.into_iter().rev().map(|(_, d)| d));
    let mut first_err: Option<String> = None;
    for dir in &candidates {
        match validate(dir) {
            Ok(()) => {
                if let Some(e) = &first_err {
                    eprintln!("warning: falling back to {}: {e}", dir.display());
                }
                return Ok(Some(dir.clone()));
            }
            Err(e) => {
                let msg = format!("{} is unusable ({e:#})", dir.display());
                eprintln!("warning: {msg}");
                first_err.get_or_insert(msg);
            }
        }
    }
    match first_err {
        Some(e) => bail!("no intact checkpoint in {}: {e}", run_dir.display()),
        None if named.is_some() => bail!("{} names a checkpoint that does not exist and there is no other", p.display()),
        None => Ok(None),
    }
}

/// Removes all but the newest `keep` complete checkpoints (0 keeps all). The one `latest`
/// names is always among the newest, since it is the last written.
pub fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = complete_checkpoints(run_dir);
    for (_, dir) in &all[..all.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove old checkpoint {}", dir.display()))?;
    }
    Ok(())
}

/// Reads a checkpoint's trainer and optimizer state (the weights load like any model dir).
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let sp = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&sp).with_context(|| format!("cannot read {}", sp.display()))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", sp.display()))?;
    let (opt, _) = read_state_file(&dir.join("optimizer.safetensors"))?;
    let cp = dir.join(CRITIC_FILE);
    let critic = if cp.exists() {
        let (copt, params) = read_state_file(&cp)?;
        Some((params.ok_or_else(|| anyhow!("{}: missing 'params'", cp.display()))?, copt))
    } else {
        None
    };
    Ok(Checkpoint { dir: dir.to_path_buf(), state, opt, critic })
}
