//! GRPO (Shao et al., DeepSeekMath): G samples per prompt, advantages normalized within each
//! group, PPO-clipped ratio against the behaviour policy and a k3 KL estimate to the
//! reference, averaged over the mini-batch's tokens.
use super::{LossInputs, Objective};
use crate::backend::{Backend, DType, View};
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
    pub entropy_coeff: f32,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig { group_size: 5, clip_eps: 0.2, kl_coef: 0.001, entropy_coeff: 0.001 }
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
    /// Per response token of one micro-batch: the sequence's advantage, the token's weight in
    /// the mini-batch mean, and the loss.
    adv: B::Buf,
    weight: B::Buf,
    loss: B::Buf,
}

/// F32 lengths of the per-token loss buffers (advantage, weight, loss).
pub fn buffer_lens(max_targets: usize) -> [usize; 3] {
    [max_targets.max(1); 3]
}

impl<B: Backend> Grpo<B> {
    pub fn new(be: &B, cfg: GrpoConfig, max_targets: usize) -> Result<Self> {
        let [a, w, l] = buffer_lens(max_targets);
        Ok(Grpo { cfg, adv: be.alloc(DType::F32, a)?, weight: be.alloc(DType::F32, w)?, loss: be.alloc(DType::F32, l)? })
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

    fn entropy_coeff(&self) -> f32 {
        self.cfg.entropy_coeff
    }

    fn targets(&self, rollouts: &[Rollout]) -> Vec<f32> {
        let rewards: Vec<f32> = rollouts.iter().map(|o| o.score.score).collect();
        group_advantages(&rewards, self.cfg.group_size)
    }

    fn loss(&self, be: &B, x: &LossInputs<B>) -> Result<()> {
        let Some(old) = x.old_logp else { bail!("grpo: the behaviour policy's log-probs are missing") };
        let nt = x.seqs.tokens();
        let adv: Vec<f32> =
            x.targets.iter().zip(x.seqs.cu_host.windows(2)).flat_map(|(&a, w)| std::iter::repeat_n(a, (w[1] - w[0]) as usize)).collect();
        let adv_view = View::all(&self.adv).slice(0, nt);
        be.upload_f32(adv_view, &adv)?;
        let weight = View::all(&self.weight).slice(0, nt);
        be.fill(weight, 1.0 / x.mini_tokens as f32)?;
        be.grpo_loss(
            View::all(&self.loss).slice(0, nt),
            x.dlogp,
            x.logp,
            old,
            x.ref_logp,
            adv_view,
            weight,
            nt,
            self.cfg.clip_eps,
            self.cfg.kl_coef,
        )
    }

    /// Σ_t weight·(pg + kl_coef·kl): already a mean over the mini-batch's tokens.
    fn read_loss(&self, be: &B, x: &LossInputs<B>) -> Result<f64> {
        let mut l = vec![0f32; x.seqs.tokens()];
        be.download_f32(View::all(&self.loss).slice(0, l.len()), &mut l)?;
        Ok(l.iter().map(|&v| v as f64).sum::<f64>())
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
