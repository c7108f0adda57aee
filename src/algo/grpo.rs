//! GRPO (Shao et al., DeepSeekMath): G samples per prompt, advantages normalized within each
//! group, PPO-clipped ratio against the behaviour policy and a KL estimate to the reference
//! (k3 by default, or k1), averaged over the mini-batch's tokens (or per sequence:
//! `loss_agg_mode`).
use super::{LossAgg, LossInputs, Objective, TokenLoss};
use crate::backend::{Backend, KlEstimator};
use crate::rollout::Rollout;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Samples per prompt.
    pub group_size: usize,
    pub clip_eps: f32,
    pub kl_coef: f32,
    /// veRL's `kl_loss_type`: "low_var_kl" (k3, the default) or "kl" (k1).
    pub kl_loss_type: KlEstimator,
    /// veRL's `loss_agg_mode`: "token-mean" (the default), "seq-mean-token-sum",
    /// "seq-mean-token-mean".
    pub loss_agg_mode: LossAgg,
    pub entropy_coeff: f32,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            group_size: 5,
            clip_eps: 0.2,
            kl_coef: 0.001,
            kl_loss_type: KlEstimator::K3,
            loss_agg_mode: LossAgg::TokenMean,
            entropy_coeff: 0.001,
        }
    }
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.group_size == 0 {
            bail!("algo.group_size must be positive");
        }
        if self.clip_eps.is_nan() || self.clip_eps < 0.0 {
            bail!("algo.clip_eps must be >= 0");
        }
        Ok(())
    }
}

/// (r − mean) / (std + 1e-6) within consecutive groups of `g` rewards, with the unbiased
/// standard deviation (torch.std, as TinyZero/veRL use). A group of one gets advantage 0.
pub fn group_advantages(rewards: &[f32], g: usize) -> Vec<f32> {
    assert!(g > 0 && rewards.len().is_multiple_of(g), "rewards must come in whole groups");
    let mut out = Vec::with_capacity(rewards.len());
    for grp in rewards.chunks(g) {
        let n = grp.len() as f64;
        let mean = grp.iter().map(|&r| r as f64).sum::<f64>() / n;
        let std = if grp.len() > 1 { (grp.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        out.extend(grp.iter().map(|&r| if grp.len() > 1 { ((r as f64 - mean) / (std + 1e-6)) as f32 } else { 0.0 }));
    }
    out
}

pub struct Grpo<B: Backend> {
    cfg: GrpoConfig,
    bufs: TokenLoss<B>,
}

impl<B: Backend> Grpo<B> {
    pub fn new(be: &B, cfg: GrpoConfig, max_targets: usize) -> Result<Self> {
        Ok(Grpo { cfg, bufs: TokenLoss::new(be, max_targets)? })
    }
}

impl<B: Backend> Objective<B> for Grpo<B> {
    fn name(&self) -> &'static str {
        "grpo"
    }

    fn samples_per_prompt(&self) -> usize {
        self.cfg.group_size
    }

    fn needs_old_logprobs(&self) -> bool {
        true
    }

    fn ratio_clip(&self) -> Option<f32> {
        Some(self.cfg.clip_eps)
    }

    fn entropy_coeff(&self) -> f32 {
        self.cfg.entropy_coeff
    }

    fn targets(&self, rollouts: &[Rollout]) -> Vec<f32> {
        let rewards: Vec<f32> = rollouts.iter().map(|o| o.score.score).collect();
        group_advantages(&rewards, self.cfg.group_size)
    }

    fn loss(&self, be: &B, x: &LossInputs<B>) -> Result<()> {
        let Some(old) = x.old_logp else { bail!("grpo: the behaviour policy's log-probs are missing") };
        let [loss, adv, weight] = self.bufs.stage(be, x, self.cfg.loss_agg_mode)?;
        let c = &self.cfg;
        be.grpo_loss(loss, x.dlogp, x.logp, old, x.ref_logp, adv, weight, x.seqs.tokens(), c.clip_eps, c.kl_coef, c.kl_loss_type)
    }

    /// Σ_t weight·(pg + kl_coef·kl): already the mini-batch's aggregate.
    fn read_loss(&self, be: &B, x: &LossInputs<B>) -> Result<f64> {
        self.bufs.total(be, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_normalized_per_group() {
        let a = group_advantages(&[1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5], 4);
        assert!((a[0] - 1.5).abs() < 1e-4, "{a:?}");
        assert!((a[1] + 0.5).abs() < 1e-4);
        assert!(a[4..].iter().all(|&x| x == 0.0));
        assert_eq!(group_advantages(&[3.0], 1), vec![0.0]);
    }
}
