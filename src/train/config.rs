//! Training configuration: a TOML file, then `--set section.key=value` overrides, then
//! validation. Unknown keys are errors (a typo must not silently train with a default).
use crate::algo::AlgoConfig;
use crate::backend::Device;
use crate::task::rewards::{CosineParams, RewardParams, RewardSpec};
use crate::task::Template;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Run name: outputs go to `<out_dir>/<name>/`.
    pub name: String,
    pub out_dir: PathBuf,
    pub seed: u64,
    pub device: Device,
    pub model: ModelSection,
    pub task: TaskSection,
    pub data: DataSection,
    pub algo: AlgoConfig,
    pub train: TrainSection,
    /// Sampling schedules: temperature annealing, the adaptive response window.
    pub rollout: super::schedule::RolloutSection,
    /// Countdown difficulty stages.
    pub curriculum: super::curriculum::CurriculumSection,
    /// Problems proposed by a model during the run (`crate::train::selfplay`).
    pub selfplay: super::selfplay::SelfPlaySection,
    pub sft: SftSection,
    pub dist: DistSection,
}

/// `[dist]`: data-parallel settings (the world size comes from the launch: `--world-size`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistSection {
    /// Seconds a collective waits for the other ranks before the run stops naming it.
    pub timeout_s: u64,
    /// Shard the parameters too, per unit (embedding, each layer, head; ZeRO-3/FSDP style,
    /// `crate::train::zero3`): each rank keeps 1/N of the policy and the reference, gathers a
    /// unit just before a pass uses it and reduce-scatters its gradients right after its
    /// backward. For models whose whole parameters, reference and gradients do not fit a GPU.
    pub shard_params: bool,
}

impl Default for DistSection {
    fn default() -> Self {
        DistSection { timeout_s: crate::dist::DEFAULT_TIMEOUT.as_secs(), shard_params: false }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face model directory. Empty: build one from `preset` (init + SFT warm start).
    pub path: PathBuf,
    pub preset: String,
    /// Train low-rank adapters instead of every parameter (`[model.lora]`: rank, alpha,
    /// targets; `crate::model::lora`). The base stays frozen and is also the reference policy.
    pub lora: Option<crate::model::LoraConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSection {
    /// A registered task (`crate::task::TASKS`): countdown | multiply.
    pub name: String,
    /// base | qwen-instruct | compact
    pub template: Template,
    /// A reward or a weighted sum (`crate::task::rewards`): "tinyzero", "equation,strict_format",
    /// "equation=1,strict_format=0.5" or { equation = 1.0, strict_format = 0.5 }.
    pub reward: RewardSpec,
    /// The `cosine` reward's settings.
    pub cosine: CosineParams,
    /// FrozenLake's maps and episodes (`[task.frozenlake]`, `crate::task::LakeSpec`).
    pub frozenlake: crate::task::LakeSpec,
}

impl TaskSection {
    /// Tokens per reply of an episode (0: single-turn, no per-reply limit).
    pub fn turn_tokens(&self) -> Result<usize> {
        Ok(match crate::task::by_name(&self.name)?.environment() {
            Some(_) => self.frozenlake.reply_tokens,
            None => 0,
        })
    }

    /// The run's reward with its settings, for responses of at most `max_response` tokens.
    pub fn reward_spec(&self, max_response: usize) -> RewardSpec {
        let params = RewardParams { cosine: self.cosine.clone(), invalid_move_penalty: self.frozenlake.invalid_penalty };
        self.reward.clone().with_params(params).for_responses(max_response)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Parquet or JSONL; empty = generated with the seeded generator.
    pub train: PathBuf,
    pub test: PathBuf,
    /// Row ranges, "start..end" (TinyZero: train 0..327680, test 327680..328704 of one file).
    pub train_rows: String,
    pub test_rows: String,
    /// Sizes of generated sets.
    pub generate_train: usize,
    pub generate_test: usize,
    /// How many numbers generated Countdown problems use.
    pub counts: Vec<usize>,
    /// Generated Countdown numbers lie in 1..=max_number, targets in 1..=max_target (the SFT
    /// warm start draws from the same ranges).
    pub max_number: i64,
    pub max_target: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    pub steps: usize,
    /// Prompts per RL step.
    pub batch_prompts: usize,
    /// Sequences per optimizer update.
    pub mini_batch: usize,
    /// Sequences per forward/backward pass (gradient accumulation within a mini-batch).
    pub micro_batch: usize,
    pub lr: f32,
    /// The policy's learning rate at the last step, reached from `lr` by `lr_schedule`
    /// (linear or cosine; unset: `lr` throughout), after `lr_warmup_steps` of linear warm-up
    /// from 0 (veRL's `lr_warmup_steps`, `warmup_style`, `min_lr_ratio` × lr).
    pub lr_end: Option<f32>,
    pub lr_schedule: super::schedule::Anneal,
    pub lr_warmup_steps: usize,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub max_prompt_tokens: usize,
    pub max_response_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Sequences generated at once.
    pub rollout_batch: usize,
    /// Activation checkpointing: "none" | "layers" | "auto" (layers on CUDA for models of
    /// 1B parameters and more).
    pub recompute: super::plan::Recompute,
    /// Gradient buffers of the decoder layers' weight matrices: "f32" | "bf16" (CUDA: half
    /// their memory, fp32 accumulation inside each GEMM; no effect on the CPU backend).
    pub grad_dtype: crate::model::GradDtype,
    pub eval_every: usize,
    pub save_every: usize,
    /// Checkpoints kept (the newest; 0 = all); `final/` is separate.
    pub keep_checkpoints: usize,
    pub sample_every: usize,
    /// Consecutive non-finite steps that stop the run.
    pub max_bad_steps: usize,
    /// pass@k reported by evaluation (k samples at temperature 1).
    pub eval_pass_k: usize,
    /// Held-out problems evaluated during training (0 = all).
    pub eval_limit: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftSection {
    /// Supervised warm start of a preset model (0 = none).
    pub steps: usize,
    pub lr: f32,
    pub batch: usize,
    /// Countdown sizes the warm start sees (e.g. [3]: the model must discover 4 by RL).
    pub counts: Vec<usize>,
    pub examples: usize,
    /// Fraction of warm-start answers written as `expr=target` inside the answer tag, the way
    /// base language models often answer. TinyZero's reward scores those as format-only (the
    /// target joins the numbers used), so RL must discover the bare-equation style.
    pub equals_fraction: f32,
    /// Environments: the chance that a demonstrated move is replaced by a random one (the
    /// warm start then sometimes errs, leaving RL something to fix).
    pub random_moves: f32,
    /// Share of warm-start examples that demonstrate proposing a problem (`[selfplay]`: the
    /// request `Task::proposal_prompt`, answered with the example's own problem).
    pub proposal_fraction: f32,
    /// `tz-engine sft`: JSONL of {"prompt", "response"} to train on.
    pub data: PathBuf,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            name: "tiny-astarpo".into(),
            out_dir: "runs".into(),
            seed: 1,
            device: Device::Cpu,
            model: ModelSection::default(),
            task: TaskSection::default(),
            data: DataSection::default(),
            algo: AlgoConfig::default(),
            train: TrainSection::default(),
            rollout: Default::default(),
            curriculum: Default::default(),
            selfplay: Default::default(),
            sft: SftSection::default(),
            dist: DistSection::default(),
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection { path: PathBuf::new(), preset: "tiny".into(), lora: None }
    }
}

impl Default for TaskSection {
    fn default() -> Self {
        TaskSection {
            name: "countdown".into(),
            template: Template::Compact,
            reward: RewardSpec::default(),
            cosine: CosineParams::default(),
            frozenlake: Default::default(),
        }
    }
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            train: PathBuf::new(),
            test: PathBuf::new(),
            train_rows: String::new(),
            test_rows: String::new(),
            generate_train: 4096,
            generate_test: 256,
            counts: vec![3, 4],
            max_number: 99,
            max_target: 99,
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            steps: 100,
            batch_prompts: 256,
            mini_batch: 128,
            micro_batch: 32,
            lr: 1e-6,
            lr_end: None,
            lr_schedule: super::schedule::Anneal::Cosine,
            lr_warmup_steps: 0,
            weight_decay: 0.01,
            grad_clip: 1.0,
            max_prompt_tokens: 256,
            max_response_tokens: 1024,
            temperature: 1.0,
            top_p: 1.0,
            rollout_batch: 256,
            recompute: super::plan::Recompute::Auto,
            grad_dtype: crate::model::GradDtype::F32,
            eval_every: 10,
            save_every: 50,
            keep_checkpoints: 2,
            sample_every: 10,
            max_bad_steps: 5,
            eval_pass_k: 4,
            eval_limit: 0,
        }
    }
}

impl Default for SftSection {
    fn default() -> Self {
        SftSection {
            steps: 0,
            lr: 1e-3,
            batch: 64,
            counts: vec![3],
            examples: 20000,
            equals_fraction: 0.0,
            random_moves: 0.0,
            proposal_fraction: 0.0,
            data: PathBuf::new(),
        }
    }
}

pub use crate::task::parse_rows;

impl TrainConfig {
    /// Reads `path` (if any), applies `--set` overrides, validates.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<Self> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
                Self::load_text(&text, &p.display().to_string(), sets)
            }
            None => Self::from_table(toml::Table::new(), "--set", sets),
        }
    }

    /// `load` for config text; errors name it `origin`.
    pub fn load_text(text: &str, origin: &str, sets: &[String]) -> Result<Self> {
        let doc: toml::Table = text.parse().map_err(|e| anyhow!("{origin}: {e}"))?;
        Self::from_table(doc, origin, sets)
    }

    fn from_table(mut doc: toml::Table, origin: &str, sets: &[String]) -> Result<Self> {
        for s in sets {
            switch_algorithm(&mut doc, s);
            apply_set(&mut doc, s)?;
        }
        // `[algo]` without a name is A*PO, the default algorithm.
        if let Some(toml::Value::Table(algo)) = doc.get_mut("algo") {
            algo.entry("name").or_insert_with(|| toml::Value::String("astarpo".into()));
        }
        let cfg: TrainConfig = toml::Value::Table(doc).try_into().map_err(|e| anyhow!("{origin}: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if self.dist.timeout_s == 0 {
            bail!("dist.timeout_s must be positive");
        }
        if let Some(l) = &self.model.lora {
            l.validate()?;
            if self.dist.shard_params {
                bail!("model.lora with dist.shard_params: the frozen base is not sharded yet (adapters need no sharding): drop dist.shard_params");
            }
            if t.grad_dtype != crate::model::GradDtype::F32 {
                bail!("train.grad_dtype = \"bf16\" applies to a full model's gradients; a LoRA run's adapter gradients are f32: drop it");
            }
        }
        if self.algo.policy_value_head() && (self.model.lora.is_some() || self.dist.shard_params) {
            bail!("algo.critic = \"shared\" puts a value head on the policy's own parameters: not with model.lora or dist.shard_params yet (use algo.critic = \"separate\")");
        }
        if self.dist.shard_params {
            if self.algo.has_critic() {
                bail!("dist.shard_params does not shard a critic yet: run {} with dist.shard_params = false", self.algo.name());
            }
            if t.grad_dtype != crate::model::GradDtype::F32 {
                bail!("train.grad_dtype = \"bf16\" applies to whole gradients; with dist.shard_params the per-unit gradient buckets are f32: drop one of the two");
            }
        }
        if t.batch_prompts == 0 || t.mini_batch == 0 || t.micro_batch == 0 || t.rollout_batch == 0 {
            bail!("train.batch_prompts, mini_batch, micro_batch and rollout_batch must be positive");
        }
        if !(t.lr >= 0.0 && t.lr.is_finite()) || t.lr_end.is_some_and(|e| !(e >= 0.0 && e.is_finite())) {
            bail!("train.lr and train.lr_end must be finite numbers >= 0");
        }
        if t.lr_warmup_steps >= t.steps.max(1) && t.lr_warmup_steps > 0 {
            bail!("train.lr_warmup_steps ({}) must be fewer than train.steps ({})", t.lr_warmup_steps, t.steps);
        }
        if t.max_prompt_tokens == 0 || t.max_response_tokens == 0 {
            bail!("train.max_prompt_tokens and max_response_tokens must be positive");
        }
        if !(0.0..=1.0).contains(&t.top_p) || t.top_p == 0.0 || t.temperature.is_nan() || t.temperature <= 0.0 {
            bail!("train.temperature must be > 0 and train.top_p in (0, 1]");
        }
        self.algo.validate()?;
        self.rollout.validate(t.max_response_tokens)?;
        self.curriculum.validate(&self.task.name)?;
        self.selfplay.validate(crate::task::by_name(&self.task.name).map_err(|e| anyhow!("task.name: {e}"))?, t.max_response_tokens)?;
        {
            use crate::util::limits::{at_most, items, MAX_ITEMS};
            at_most("data.generate_train", self.data.generate_train, MAX_ITEMS)?;
            at_most("data.generate_test", self.data.generate_test, MAX_ITEMS)?;
            at_most("sft.examples", self.sft.examples, MAX_ITEMS)?;
            items("train.batch_prompts × samples per prompt", t.batch_prompts, self.algo.samples_per_prompt())?;
            // Memory-bound sizes (rollout_batch, micro_batch, token limits) are checked by the
            // memory plan against the device before anything is allocated.
            at_most(
                "train.max_prompt_tokens + train.max_response_tokens",
                t.max_prompt_tokens.saturating_add(t.max_response_tokens),
                1 << 24,
            )?;
        }
        let task = crate::task::by_name(&self.task.name).map_err(|e| anyhow!("task.name: {e}"))?;
        self.task.frozenlake.validate()?;
        if task.environment().is_some() && self.task.reward != RewardSpec::default() {
            bail!("task.reward: {} scores an episode by its return; leave task.reward at \"tinyzero\"", task.name());
        }
        self.task.reward_spec(t.max_response_tokens).check(&self.task.name).map_err(|e| anyhow!("task.reward: {e}"))?;
        if self.model.path.as_os_str().is_empty() {
            // Checked now, not after minutes of data generation.
            crate::model::presets::preset(&self.model.preset).map_err(|e| anyhow!("model.preset: {e}"))?;
        }
        if self.data.counts.iter().any(|&c| !(2..=6).contains(&c)) || self.data.counts.is_empty() {
            bail!("data.counts must list Countdown sizes between 2 and 6");
        }
        if !(0.0..=1.0).contains(&self.sft.equals_fraction) {
            bail!("sft.equals_fraction must lie in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.sft.random_moves) {
            bail!("sft.random_moves must lie in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.sft.proposal_fraction) {
            bail!("sft.proposal_fraction must lie in [0, 1]");
        }
        if !(1..=1_000_000).contains(&self.data.max_number) || !(1..=1_000_000).contains(&self.data.max_target) {
            bail!("data.max_number and data.max_target must lie in 1..=1000000");
        }
        parse_rows(&self.data.train_rows)?;
        parse_rows(&self.data.test_rows)?;
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            bail!("name must be a non-empty file name");
        }
        Ok(())
    }

    /// The generators' settings, with Countdown problems of `counts` numbers.
    pub fn problem_spec(&self, counts: &[usize]) -> crate::task::ProblemSpec {
        crate::task::ProblemSpec {
            counts: counts.to_vec(),
            max_number: self.data.max_number,
            max_target: self.data.max_target,
            lake: self.task.frozenlake.clone(),
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }
}

/// `--set algo.name=X` naming another algorithm than the config's starts X's section afresh:
/// the config's `[algo]` keys belong to the algorithm it named (each algorithm has its own
/// keys), so `--set algo.name=grpo --set algo.group_size=8` works on an A*PO config file.
fn switch_algorithm(doc: &mut toml::Table, set: &str) {
    let Some(("algo.name", name)) = set.split_once('=').map(|(k, v)| (k.trim(), v.trim().trim_matches('"'))) else { return };
    if let Some(toml::Value::Table(algo)) = doc.get_mut("algo") {
        let current = algo.get("name").and_then(|v| v.as_str()).unwrap_or("astarpo");
        if current != name && algo.keys().any(|k| k != "name") {
            eprintln!("note: --set algo.name={name} replaces the config's [algo] settings (they were {current}'s)");
            algo.clear();
        }
    }
}

/// `a.b.c=value`: value parsed as a TOML literal (number, bool, array, quoted string), or taken
/// as a bare string.
fn apply_set(doc: &mut toml::Table, s: &str) -> Result<()> {
    let (key, raw) = s.split_once('=').ok_or_else(|| anyhow!("--set '{s}' must look like key=value"))?;
    let value: toml::Value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set '{s}': bad key");
    }
    let mut table = doc;
    for p in &parts[..parts.len() - 1] {
        let entry = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| anyhow!("--set '{s}': '{p}' is not a section"))?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_errors() {
        let c = TrainConfig::load(None, &["train.lr=3e-4".into(), "algo.name=grpo".into(), "name=x".into()]).unwrap();
        assert_eq!(c.train.lr, 3e-4);
        assert!(matches!(c.algo, AlgoConfig::Grpo(_)));
        assert_eq!(c.name, "x");
        let e = TrainConfig::load(None, &["train.lrr=1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("lrr"), "{e:#}");
        assert!(TrainConfig::load(None, &["train.lr=-1".into()]).is_err());
        assert!(TrainConfig::load(None, &["nonsense".into()]).is_err());
        assert_eq!(parse_rows("0..327680").unwrap(), Some(0..327680));
        assert!(parse_rows("5..1").is_err());
    }

    #[test]
    fn algorithm_sections_are_typed() {
        // Each algorithm has its own keys: GRPO's group size is not an A*PO setting.
        let e = TrainConfig::load(None, &["algo.group_size=8".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("group_size"), "{e:#}");
        let c = TrainConfig::load(None, &["algo.beta2=0.05".into()]).unwrap();
        assert!(matches!(c.algo, AlgoConfig::Astarpo(ref a) if a.beta2 == 0.05));
        let c = TrainConfig::load(None, &["algo.name=grpo".into(), "algo.group_size=8".into()]).unwrap();
        assert!(matches!(c.algo, AlgoConfig::Grpo(ref g) if g.group_size == 8));
        assert!(TrainConfig::load(None, &["algo.name=grpo".into(), "algo.beta2=1".into()]).is_err());
        assert!(TrainConfig::load(None, &["algo.name=ppo2".into()]).is_err());
        // Switching the algorithm of a config file with --set starts the new one's section.
        let dir = std::env::temp_dir().join(format!("tz-cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[algo]\nname = \"astarpo\"\nbeta2 = 0.05\n").unwrap();
        let c = TrainConfig::load(Some(&file), &["algo.name=grpo".into(), "algo.group_size=8".into()]).unwrap();
        assert_eq!(c.algo, AlgoConfig::Grpo(crate::algo::grpo::GrpoConfig { group_size: 8, ..Default::default() }));
        let c = TrainConfig::load(Some(&file), &["algo.name=astarpo".into()]).unwrap();
        assert!(matches!(c.algo, AlgoConfig::Astarpo(ref a) if a.beta2 == 0.05));
        std::fs::remove_dir_all(&dir).unwrap();
        // Templates and rewards are parsed when the config is read.
        assert!(TrainConfig::load(None, &["task.template=fancy".into()]).is_err());
        assert!(TrainConfig::load(None, &["task.reward=dense2".into()]).is_err());
        assert!(TrainConfig::load(None, &["task.name=sudoku".into()]).is_err());
        let c = TrainConfig::load(None, &["task.template=qwen-instruct".into(), "task.reward=binary".into()]).unwrap();
        assert_eq!((c.task.template, c.task.reward.to_string()), (Template::QwenInstruct, "binary".to_string()));
        // A saved config reads back as itself.
        let text = toml::to_string(&c).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
