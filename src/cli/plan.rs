//! `tz-engine plan`: the device memory a training run will allocate, line by line, computed by
//! the planner the trainer allocates from (`train::plan`), and which GPUs it fits — so a user
//! knows before launching whether a model and its settings fit.
use crate::backend::{DType, Device};
use crate::model::{ParamLayout, Qwen2Config};
use crate::train::plan::{gib, RunPlan};
use crate::train::TrainConfig;
use anyhow::{bail, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Default)]
pub struct PlanArgs {
    /// The training config to plan (default: the built-in tiny CPU config).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config value, as for `train` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Plan this model directory's shape (its config.json) instead of the config's model.
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Or a preset's shape (e.g. qwen2.5-3b).
    #[arg(long)]
    pub preset: Option<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Data-parallel ranks (GPUs): the plan is per GPU, with the optimizer state sharded.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub world_size: u32,
}

/// GPUs a plan is checked against: (label, bytes).
const GPUS: [(&str, usize); 3] =
    [("80 GB (H100/A100)", 80_000_000_000), ("141 GB (H200)", 141_000_000_000), ("24 GB (L4/4090)", 24_000_000_000)];

/// The model shape a config plans for: its model directory's config.json, or its preset; a
/// model directory that is not there yet (a config written for a download) is planned with
/// the preset of the same name.
fn model_shape(cfg: &TrainConfig, args: &PlanArgs) -> Result<(Qwen2Config, String)> {
    if let Some(dir) = &args.model {
        return Ok((crate::model::load::load_config(dir)?, dir.display().to_string()));
    }
    if let Some(name) = &args.preset {
        return Ok((crate::model::presets::preset(name)?.cfg, format!("preset {name}")));
    }
    let dir = &cfg.model.path;
    if dir.as_os_str().is_empty() {
        // A preset run trains its own tokenizer, whose vocabulary may be smaller than the
        // preset's: the base model it built, when there, has the exact shape.
        let built = crate::train::sft::preset_base_dir(cfg);
        if built.join("config.json").is_file() {
            return Ok((crate::model::load::load_config(&built)?, built.display().to_string()));
        }
        let name = &cfg.model.preset;
        let p = crate::model::presets::preset(name)?;
        let note = if p.tokenizer_vocab > 0 { " (an upper bound until its base model and tokenizer are built)" } else { "" };
        return Ok((p.cfg, format!("preset {name}{note}")));
    }
    if dir.join("config.json").is_file() {
        return Ok((crate::model::load::load_config(dir)?, dir.display().to_string()));
    }
    let stem = Path::new(dir).file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    match crate::model::presets::preset(&stem) {
        Ok(p) => Ok((p.cfg, format!("preset {stem} ({} not found; same name)", dir.join("config.json").display()))),
        Err(_) => bail!("{} not found: pass --model DIR or --preset NAME to plan for a model's shape", dir.join("config.json").display()),
    }
}

pub fn run(args: PlanArgs) -> Result<i32> {
    let cfg = crate::cli::train::load_config(args.config.as_ref(), &args.sets, None)?;
    let (model, source) = model_shape(&cfg, &args)?;
    let cuda = cfg.device == Device::Cuda;
    let act = if cuda { DType::BF16 } else { DType::F32 };
    // The CUDA backend's own workspace as on a Hopper GPU (the larger cuBLASLt workspace).
    let workspace = |n: &crate::backend::ScratchNeeds| if cuda { crate::backend::workspace::cuda_workspace(n, true) } else { vec![] };
    let world = args.world_size as usize;
    let plan = RunPlan::new(&cfg, &model, act, cuda, &workspace, world)?;
    let total = plan.total();
    if args.json {
        let v = serde_json::json!({
            "model": source,
            "device": cfg.device,
            "world_size": world,
            "shard_params": cfg.dist.shard_params,
            "traffic_per_step": plan.traffic,
            "parameters": ParamLayout::new(&model).total,
            "recompute": plan.shape.recompute(),
            "lines": plan.lines,
            "total_bytes": total,
            "phases": plan.phases,
            "flops_per_step": plan.flops,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let s = &plan.shape;
    let t = &cfg.train;
    let per = if world > 1 { format!(" per rank, {world} ranks") } else { String::new() };
    println!(
        "memory plan{per} on {} ({}): {source}, {:.2} B parameters",
        cfg.device,
        if cuda { "bf16 weights and activations, f32 master weights" } else { "f32" },
        ParamLayout::new(&model).total as f64 / 1e9
    );
    println!(
        "  micro-batch {} x {} tokens, {} sequences generated at once (prompt {} + response {} tokens), recompute {}",
        s.micro_batch,
        s.t_max,
        s.slots,
        s.max_prompt,
        s.t_max - s.max_prompt,
        if s.recompute() { "layers" } else { "none" }
    );
    for l in &plan.lines {
        println!("  {:<46} {:>9.3} GiB", l.what, gib(l.bytes));
    }
    println!("  {:<46} {:>9.3} GiB ({total} bytes)", "total", gib(total));
    println!("  the shared activations hold the larger phase:");
    for p in &plan.phases {
        let parts: Vec<String> = p.categories.iter().map(|(c, b)| format!("{c} {:.3}", gib(*b))).collect();
        println!("    {:<9} {:>9.3} GiB  ({})", p.phase, gib(p.bytes), parts.join(", "));
    }
    let f = &plan.flops;
    println!(
        "  training FLOPs per step ({} sequences at full length): {:.3} PFLOP without recompute, {:.3} with (+{:.0}%; one forward is {:.0}%)",
        t.batch_prompts * cfg.algo.samples_per_prompt(),
        f.without_recompute / 1e15,
        f.with_recompute / 1e15,
        100.0 * (f.with_recompute / f.without_recompute - 1.0),
        100.0 * f.one_forward / f.without_recompute
    );
    if world > 1 && cfg.dist.shard_params {
        let x = &plan.traffic;
        println!(
            "  collectives per step (parameters sharded per unit): every pass all-gathers the units it uses and every training pass reduce-scatters each unit's gradients, {:.2} GiB gathered and {:.2} GiB reduce-scattered per update ({} updates; the rollout gathers the whole model once); each rank sends {:.2} GiB per step (ring)",
            gib(x.all_gather_bytes),
            gib(x.reduce_scatter_bytes),
            x.updates,
            gib(x.sent_per_rank_bytes)
        );
    } else if world > 1 {
        let x = &plan.traffic;
        println!(
            "  collectives per step: {} updates, each reduce-scatters {:.3} GiB of gradients and all-gathers {:.3} GiB of parameters; each rank sends {:.2} GiB per step (ring)",
            x.updates,
            gib(x.reduce_scatter_bytes),
            gib(x.all_gather_bytes),
            gib(x.sent_per_rank_bytes)
        );
    }
    if cuda {
        for (label, bytes) in GPUS {
            if total <= bytes {
                println!("  fits {label}: {:.2} GiB headroom", gib(bytes - total));
            } else {
                println!("  does not fit {label}: {:.2} GiB over", gib(total - bytes));
            }
        }
        println!("  (outside the plan: the CUDA context, a few hundred MiB)");
    }
    Ok(0)
}
