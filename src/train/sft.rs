//! Supervised fine-tuning: cross-entropy on response tokens given the prompt. The tiny preset
//! uses it to make its own base model (RL needs a policy that sometimes succeeds): train a
//! small tokenizer on task text, initialize a Qwen2 at random, then learn solver-written
//! answers for some problem sizes; RL then has to improve on what SFT left unsolved.
use super::config::TrainConfig;
use super::optim::{AdamWConfig, Optimizer};
use crate::backend::Backend;
use crate::model::weights::{save_model, SaveDtype};
use crate::model::{LogprobWorkspace, PackedBatch, Qwen2, Trajectory};
use crate::nvtx;
use crate::rng::{derive_seed, Rng};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Trains `model` on (prompt, response, environment spans) trajectories (the spans' tokens
/// are context, not targets): `steps` AdamW updates of `batch`
/// sequences each, mean token cross-entropy, learning rate decayed from `lr` to `lr / 10` on a
/// cosine. Returns the mean loss of the last 10% of steps (at least the last step).
#[allow(clippy::too_many_arguments)]
/// `master`: the parameters at full precision (f32 master weights start from them on backends
/// that keep such a copy). Returns the trained parameters at full precision too.
pub fn sft_train<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    master: Option<&[f32]>,
    pairs: &[Trajectory],
    steps: usize,
    lr: f32,
    batch: usize,
    seed: u64,
    label: &str,
) -> Result<(f32, Vec<f32>)> {
    if pairs.is_empty() || steps == 0 {
        return Ok((f32::NAN, model.to_host(be)?));
    }
    let batch = batch.min(pairs.len()).max(1);
    let max_len = pairs.iter().map(|(p, r, _)| p.len() + r.len()).max().unwrap_or(1);
    let max_resp = pairs.iter().map(|(_, r, _)| r.len()).max().unwrap_or(1).max(1);
    let mut ws = LogprobWorkspace::new(be, &model.cfg, batch * max_len, batch, batch * max_resp, crate::model::Keep::AllLayers)?;
    // A warm start from random init: no weight decay, clip at 1.
    let mut opt = Optimizer::new(be, model, AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() })?;
    if let Some(h) = master {
        opt.init_master(be, h)?;
    }
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = Rng::new(derive_seed(seed, 0x5f7, 0));
    rng.shuffle(&mut order);
    let mut cursor = 0;
    let mut tail = vec![];
    let mut host = vec![0f32; batch * max_resp];
    let started = Instant::now();
    let mut bar = crate::util::progress::Progress::new("SFT steps", steps as u64, 0, (steps as u64 / 20).max(1));
    for step in 0..steps {
        crate::util::interrupt::check("SFT (nothing was written; it starts again)")?;
        let mut sel = Vec::with_capacity(batch);
        while sel.len() < batch {
            if cursor == order.len() {
                rng.shuffle(&mut order);
                cursor = 0;
            }
            sel.push(&pairs[order[cursor]]);
            cursor += 1;
        }
        let b = PackedBatch::from_pairs(&sel)?;
        let fwd = nvtx::range("sft_forward");
        ws.load(be, &model.cfg, &b)?;
        opt.zero_grad(be)?;
        model.forward_logprobs(be, &ws, false)?;
        let nt = b.n_targets();
        be.download_f32(ws.logp(), &mut host[..nt])?;
        let loss = -host[..nt].iter().map(|&x| x as f64).sum::<f64>() / nt as f64;
        drop(fwd);
        {
            let _r = nvtx::range("sft_backward");
            be.fill(ws.dlogp(), -1.0 / nt as f32)?;
            model.backward_logprobs(be, &ws, &opt.grads, false)?;
        }
        // Cosine decay to a tenth of `lr`: a warm start from random init converges much
        // further than at a constant rate in the same number of steps.
        let frac = step as f32 / steps.max(1) as f32;
        let lr_t = lr * (0.1 + 0.45 * (1.0 + (std::f32::consts::PI * frac).cos()));
        let o = {
            let _r = nvtx::range("optimizer");
            opt.step(be, model, lr_t)?
        };
        if o.skipped {
            bail!("{label}: non-finite gradient at SFT step {step}; lower sft.lr");
        }
        if step * 10 >= steps * 9 || step + 1 == steps {
            tail.push(loss);
        }
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc();
    }
    bar.finish();
    let tail_loss = (tail.iter().sum::<f64>() / tail.len().max(1) as f64) as f32;
    eprintln!("{label}: {steps} steps in {:.1}s, final loss {tail_loss:.4}", started.elapsed().as_secs_f64());
    if !tail_loss.is_finite() {
        bail!("{label}: the loss is not finite ({tail_loss}): lower sft.lr or check the data; nothing was written");
    }
    Ok((tail_loss, opt.params_to_host(be, model)?))
}

/// Tokenized (prompt, response) pairs from a JSONL file of `{"prompt":..., "response":...}`.
pub fn load_pairs(path: &Path, tok: &Tokenizer) -> Result<Vec<Trajectory>> {
    #[derive(serde::Deserialize)]
    struct Item {
        prompt: String,
        response: String,
    }
    let items: Vec<Item> = crate::util::jsonl::read_all(path)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let p = tok.encode(&it.prompt)?;
        let r = tok.encode(&it.response)?;
        if p.is_empty() || r.is_empty() {
            bail!("{}: item {}: prompt and response must both be non-empty", path.display(), i + 1);
        }
        out.push((p, r, vec![]));
    }
    Ok(out)
}

/// A prompt and response segments tokenized one by one (as a rollout appends observations),
/// the environment's segments marked as spans.
fn trajectory(tok: &Tokenizer, prompt: &str, segments: &[(String, bool)]) -> Result<Trajectory> {
    let mut response = vec![];
    let mut spans = vec![];
    for (text, by_agent) in segments {
        let at = response.len() as u32;
        response.extend(tok.encode(text)?);
        if !by_agent {
            spans.push([at, response.len() as u32]);
        }
    }
    Ok((tok.encode(prompt)?, response, spans))
}

/// The run's base model for a preset: `runs/<name>/base`, built once (tokenizer trained on task
/// text, random init, SFT warm start) and reused by later runs and resumes.
/// Where `ensure_preset_base` puts (or finds) the base model of a preset config: keyed by
/// everything that shapes the base model, so changing the SFT settings builds anew.
pub fn preset_base_dir(cfg: &TrainConfig) -> PathBuf {
    // The held-out set shapes the base too (its problems are left out of the SFT examples).
    let d = &cfg.data;
    let held_out = format!("{:?}|{:?}|{:?}|{}|{:?}", d.train, d.test, d.test_rows, d.generate_test, d.counts);
    let key = format!("{:?}|{:?}|{}|{}|{}|{}|{held_out}", cfg.sft, cfg.task, cfg.model.preset, cfg.seed, d.max_number, d.max_target);
    let hash = crate::util::fnv1a(crate::util::FNV_OFFSET, key.as_bytes());
    cfg.out_dir.join(format!("base-{}-{:08x}", cfg.model.preset, hash as u32))
}

/// A prompt and its response segments (text, written by the model?).
type SftText = (String, Vec<(String, bool)>);

pub fn ensure_preset_base<B: Backend>(be: &B, cfg: &TrainConfig) -> Result<PathBuf> {
    let dir = preset_base_dir(cfg);
    if dir.join("config.json").is_file() {
        eprintln!("base model: reusing {}", dir.display());
        return Ok(dir);
    }
    let template = cfg.task.template;
    let s = &cfg.sft;
    let task = crate::task::by_name(&cfg.task.name)?;
    // The held-out problems are never demonstrated (`crate::train::data`): the base's held-out
    // rate measures reading the task, not remembering it.
    let held = super::data::identities(&super::data::load_test(cfg)?);
    let problems = super::data::generate_excluding(task, s.examples, derive_seed(cfg.seed, 0x5f7, 1), &cfg.problem_spec(&s.counts), &held)?;
    // (prompt, response segments): one segment written by the model for a single-turn task;
    // an environment's demonstration alternates the agent's replies with observations.
    // Written in parallel (a solver run per problem), then the answer styles drawn in order
    // from one stream, so the examples do not depend on the thread count.
    let written: Vec<Option<SftText>> = problems
        .par_iter()
        .enumerate()
        .map(|(i, p)| match task.environment() {
            Some(env) => Some((task.prompt(p, template), env.demonstration(p, template, i as u64, s.random_moves))),
            None => task.sft_response(p, template).map(|r| (task.prompt(p, template), vec![(r, true)])),
        })
        .collect();
    let mut style = Rng::new(derive_seed(cfg.seed, 0x5f7, 2));
    // Self-play warm start: a share of the examples asks for a new problem instead and is
    // answered with the example's own problem (its own stream: 0 leaves the rest unchanged).
    // The request the run's self-play sends (its ranges are the run's, `data.counts`).
    let proposal_prompt = task.proposal_prompt(&cfg.problem_spec(&cfg.data.counts), template);
    if s.proposal_fraction > 0.0 && proposal_prompt.is_none() {
        bail!("sft.proposal_fraction: task {} takes no proposals", task.name());
    }
    let mut proposing = Rng::new(derive_seed(cfg.seed, 0x5f7, 3));
    let texts: Vec<SftText> = problems
        .iter()
        .zip(written)
        .filter_map(|(p, w)| {
            let (prompt, mut segments) = w?;
            if task.environment().is_none() && style.next_f64() < s.equals_fraction as f64 {
                segments[0].0 = task.base_model_style(p, &segments[0].0);
            }
            if s.proposal_fraction > 0.0 && proposing.next_f64() < s.proposal_fraction as f64 {
                if let (Some(ask), Some(reply)) = (&proposal_prompt, task.proposal_reply(p, template)) {
                    return Some((ask.clone(), vec![(reply, true)]));
                }
            }
            Some((prompt, segments))
        })
        .collect();
    if texts.is_empty() {
        bail!("no SFT examples could be written for task {}", cfg.task.name);
    }
    let corpus: Vec<String> = texts.iter().map(|(p, r)| r.iter().fold(p.clone(), |acc, (seg, _)| acc + seg)).collect();
    let preset = crate::model::presets::preset(&cfg.model.preset)?;
    let tokenizer = crate::model::presets::train_tiny_tokenizer(&corpus, preset.tokenizer_vocab)?;
    let tok = Tokenizer::from_tokenizers(tokenizer);
    let mut mcfg = preset.cfg.clone();
    mcfg.vocab_size = tok.vocab_size();
    mcfg.eos_token_ids = tok.eos_ids(&[]);
    let host = crate::model::presets::init_params(&mcfg, cfg.seed);
    let model = Qwen2::from_host(be, mcfg.clone(), &host)?;
    let pairs: Vec<Trajectory> = texts.par_iter().map(|(p, segments)| trajectory(&tok, p, segments)).collect::<Result<_>>()?;

    eprintln!(
        "base model: preset {} ({} parameters, vocab {}), SFT on {} {}",
        cfg.model.preset,
        model.layout.total,
        mcfg.vocab_size,
        pairs.len(),
        match task.environment() {
            Some(_) => format!("demonstrated episodes ({:.0}% random moves)", 100.0 * s.random_moves),
            None => format!("examples ({:?} numbers)", s.counts),
        }
    );
    let (_, trained) = sft_train(be, &model, Some(&host), &pairs, s.steps, s.lr, s.batch, cfg.seed, "SFT warm start")?;
    save_model(&dir, &mcfg, &model.layout, &trained, SaveDtype::F32, Some(&tok.to_json_string()?))?;
    Ok(dir)
}
