//! The critic of an objective that has one (PPO): a second copy of the base model with a value
//! head (`ParamLayout::with_value_head`, initialized to zero, so the first values are 0), its
//! own AdamW state sharded over the ranks like the policy's, trained by veRL's clipped value
//! loss. It runs in the policy's training workspace and gradient slots, after the policy's
//! update (the two never hold gradients at once), so it adds its parameters and optimizer
//! state to the memory plan but no activations or gradients.
//!
//! A **shared** critic (`algo.critic = "shared"`, TRL's value head) is only that head, on the
//! policy's own trunk: the policy's layout is `with_value_head`, the value loss (weighted by
//! `vf_coef`) adds its gradients to the policy's in the same update (`value_accumulate` into
//! the policy's gradients), and there is no second model or optimizer state. Checkpoints keep
//! the policy as a plain model and the head in `critic.safetensors`; `final/` is the plain
//! policy.
use super::optim::{AdamWConfig, Optimizer};
use crate::algo::ppo::value_loss_terms;
use crate::algo::CriticSettings;
use crate::backend::Backend;
use crate::dist::Comm;
use crate::model::{agent_tokens, Grads, LogprobWorkspace, PackedBatch, ParamLayout, Qwen2, Qwen2Config, Trajectory};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// A step's critic metrics (veRL's names).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CriticStats {
    /// The value loss, mean over the updates.
    #[serde(rename = "critic/vf_loss")]
    pub vf_loss: f32,
    /// Share of tokens whose clipped value term was the larger.
    #[serde(rename = "critic/vf_clipfrac")]
    pub vf_clipfrac: f32,
    /// 1 − Var(R − V) / Var(R) over the batch's tokens, V the values before the update.
    #[serde(rename = "critic/vf_explained_var")]
    pub explained_var: f32,
    #[serde(rename = "critic/values_mean")]
    pub values_mean: f32,
    #[serde(rename = "critic/returns_mean")]
    pub returns_mean: f32,
    /// Of the last update, before clipping.
    #[serde(rename = "critic/grad_norm")]
    pub grad_norm: f32,
}

pub struct Critic<B: Backend> {
    pub model: Qwen2<B>,
    pub opt: Optimizer<B>,
    pub settings: CriticSettings,
}

/// A critic mini-batch's value loss and how many of its tokens took the clipped branch.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValueLoss {
    pub loss: f64,
    pub clipped: usize,
}

/// The critic's parameters at the start: the base model's (layout order) and a zero head.
pub fn initial_params(base: Vec<f32>, cfg: &Qwen2Config) -> Vec<f32> {
    let mut p = base;
    p.resize(ParamLayout::with_value_head(cfg).total, 0.0);
    p
}

impl<B: Backend> Critic<B> {
    /// `host`: parameters in the critic's layout (f32); `grads`: buffers in the policy's
    /// gradient slots (planned for the critic's larger layout).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &B,
        cfg: &Qwen2Config,
        host: &[f32],
        grads: Grads<B>,
        adam: AdamWConfig,
        settings: CriticSettings,
        world: usize,
        rank: usize,
    ) -> Result<Self> {
        let model = Qwen2::from_host_in(be, cfg.clone(), ParamLayout::with_value_head(cfg), host)?;
        let opt = Optimizer::with_grads(be, &model, adam, grads, world, rank)?;
        opt.init_master(be, host)?;
        Ok(Critic { model, opt, settings })
    }

    /// Values of the response tokens of pairs `which` (the others' stay empty).
    pub fn values(
        &self,
        be: &B,
        ws: &mut LogprobWorkspace<B>,
        pairs: &[Trajectory],
        which: &[usize],
        micro_batch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        values(be, &self.model, ws, pairs, which, micro_batch)
    }

    /// The critic's updates of a step: `epochs` passes over the batch `order` in mini-batches,
    /// each rank its part of each (as the policy's), regressing onto `returns` with the clipped
    /// loss around `values` (the values the targets were computed from; whole on every rank).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step(
        &mut self,
        be: &B,
        ws: &mut LogprobWorkspace<B>,
        pairs: &[Trajectory],
        order: &[usize],
        values: &[Vec<f32>],
        returns: &[Vec<f32>],
        epochs: usize,
        (mini_batch, micro_batch): (usize, usize),
        comm: &dyn Comm<B>,
    ) -> Result<CriticStats> {
        let (world, rank) = (comm.world(), comm.rank());
        let (mut loss, mut clipped, mut grad_norm, mut updates) = (0f64, 0f64, 0f32, 0usize);
        for _ in 0..epochs {
            for mini in order.chunks(mini_batch.max(1)) {
                self.opt.zero_grad(be)?;
                let ntok: usize = mini.iter().map(|&i| agent_tokens(pairs[i].1.len(), &pairs[i].2)).sum();
                for micro in mini[crate::dist::split_range(mini.len(), world, rank)].chunks(micro_batch.max(1)) {
                    let v = value_accumulate(
                        be,
                        &self.model,
                        ws,
                        &self.opt.grads,
                        pairs,
                        micro,
                        (values, returns),
                        ntok,
                        self.settings.value_clip,
                        1.0,
                    )?;
                    loss += v.loss;
                    clipped += v.clipped as f64;
                }
                grad_norm = self.opt.step_in(be, &self.model, self.settings.lr, comm)?.grad_norm;
                updates += 1;
            }
        }
        let mut sums = [loss, clipped];
        comm.all_reduce_f64(&mut sums)?;
        let tokens: usize = order.iter().map(|&i| agent_tokens(pairs[i].1.len(), &pairs[i].2)).sum::<usize>() * epochs;
        Ok(stats(sums, updates, tokens, values, returns, grad_norm))
    }
}

/// Values of the response tokens of pairs `which` under `model` (a layout with a value head:
/// the separate critic, or a policy with a shared head); the other pairs' stay empty.
pub fn values<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    ws: &mut LogprobWorkspace<B>,
    pairs: &[Trajectory],
    which: &[usize],
    micro_batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); pairs.len()];
    for chunk in which.chunks(micro_batch.max(1)) {
        let sub: Vec<&Trajectory> = chunk.iter().map(|&i| &pairs[i]).collect();
        let batch = PackedBatch::from_pairs(&sub)?;
        ws.load(be, &model.cfg, &batch)?;
        let mut v = vec![0f32; batch.n_targets()];
        model.forward_values(be, ws, &mut v)?;
        for (&i, w) in chunk.iter().zip(batch.target_cu.windows(2)) {
            out[i] = v[w[0] as usize..w[1] as usize].to_vec();
        }
    }
    Ok(out)
}

/// Forward and backward of one micro-batch of the value loss under `model`, a token mean over
/// the mini-batch's `mini_tokens` tokens, its gradient scaled by `weight` (a shared critic's
/// `vf_coef`; 1 for a separate one): gradients accumulate into `grads`. The loss returned is
/// unweighted.
#[allow(clippy::too_many_arguments)]
pub fn value_accumulate<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    ws: &mut LogprobWorkspace<B>,
    grads: &Grads<B>,
    pairs: &[Trajectory],
    micro: &[usize],
    (old_values, returns): (&[Vec<f32>], &[Vec<f32>]),
    mini_tokens: usize,
    value_clip: f32,
    weight: f32,
) -> Result<ValueLoss> {
    let sub: Vec<&Trajectory> = micro.iter().map(|&i| &pairs[i]).collect();
    let batch = PackedBatch::from_pairs(&sub)?;
    ws.load(be, &model.cfg, &batch)?;
    let mut v = vec![0f32; batch.n_targets()];
    model.forward_values(be, ws, &mut v)?;
    let (old, ret): (Vec<f32>, Vec<f32>) =
        micro.iter().flat_map(|&i| old_values[i].iter().copied().zip(returns[i].iter().copied())).unzip();
    anyhow::ensure!(old.len() == v.len(), "critic: {} old values for {} tokens", old.len(), v.len());
    let scale = 1.0 / mini_tokens.max(1) as f64;
    let mut out = ValueLoss::default();
    let mut dv = vec![0f32; v.len()];
    for j in 0..v.len() {
        let (l, d, clipped) = value_loss_terms(v[j], old[j], ret[j], value_clip);
        out.loss += l * scale;
        out.clipped += clipped as usize;
        dv[j] = (d * scale * weight as f64) as f32;
    }
    model.backward_values(be, ws, grads, &dv)?;
    Ok(out)
}

/// The step's critic metrics from the value losses summed over the ranks' micro-batches
/// (`sums` = [loss, clipped tokens], already all-reduced), `updates` optimizer updates, and
/// the values the targets were computed from.
pub fn stats(sums: [f64; 2], updates: usize, tokens: usize, values: &[Vec<f32>], returns: &[Vec<f32>], grad_norm: f32) -> CriticStats {
    let (v, r): (Vec<f64>, Vec<f64>) = values.iter().flatten().zip(returns.iter().flatten()).map(|(&v, &r)| (v as f64, r as f64)).unzip();
    CriticStats {
        vf_loss: (sums[0] / updates.max(1) as f64) as f32,
        vf_clipfrac: (sums[1] / tokens.max(1) as f64) as f32,
        explained_var: explained_variance(&v, &r) as f32,
        values_mean: mean(&v) as f32,
        returns_mean: mean(&r) as f32,
        grad_norm,
    }
}

/// The policy of a shared-critic run: `dir`'s model (the base, or a checkpoint's plain
/// policy) with a value head — `head` (a checkpoint's, `C + 1` values) or zero.
pub fn policy_with_value_head<B: Backend>(be: &B, dir: &std::path::Path, head: Option<&[f32]>) -> Result<Qwen2<B>> {
    let cfg = crate::model::load::load_config(dir)?;
    let mut host = initial_params(crate::model::weights::load_params(dir, &cfg, &ParamLayout::new(&cfg))?, &cfg);
    if let Some(h) = head {
        let n = host.len();
        anyhow::ensure!(
            h.len() == cfg.hidden_size + 1,
            "{}: the checkpoint's critic has {} parameters, not a value head's {} (it was written with algo.critic = \"separate\")",
            dir.display(),
            h.len(),
            cfg.hidden_size + 1
        );
        host[n - h.len()..].copy_from_slice(h);
    }
    Qwen2::from_host_in(be, cfg.clone(), ParamLayout::with_value_head(&cfg), &host)
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

fn variance(x: &[f64]) -> f64 {
    let m = mean(x);
    x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / x.len().max(1) as f64
}

/// 1 − Var(returns − values) / Var(returns) (NaN-free: 0 when the returns do not vary).
pub fn explained_variance(values: &[f64], returns: &[f64]) -> f64 {
    let var_r = variance(returns);
    if var_r <= 0.0 {
        return 0.0;
    }
    let resid: Vec<f64> = returns.iter().zip(values).map(|(r, v)| r - v).collect();
    1.0 - variance(&resid) / var_r
}
