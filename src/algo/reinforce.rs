//! REINFORCE with a KL penalty, as the "TinyZero with A*PO" Modal project trains: several
//! samples per prompt, advantage A = r − mean of the prompt's rewards (optionally divided by
//! their standard deviation), loss −E[A · log π(y|x)] + β · KL(π‖π_ref) against the fixed
//! reference, β = 0.1.
//!
//! On the device this is GRPO's kernel with the behaviour policy equal to the current one: at
//! ratio exp(logp − logp) = 1 the clipped surrogate's gradient is −A·∂log π, the REINFORCE
//! gradient, and its KL term is the same k3 estimate of KL(π‖π_ref). What differs is the
//! weighting: REINFORCE sums a sequence's token terms (log π(y|x) is the sum of its token
//! log-probs) and averages over sequences (`loss_agg_mode = "seq-mean-token-sum"`, the
//! default); "token-mean" and "seq-mean-token-mean" are there as for GRPO.
use super::grpo::group_advantages;
use super::{LossAgg, LossInputs, Objective, TokenLoss};
use crate::backend::{Backend, KlEstimator};
use crate::rollout::Rollout;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReinforceConfig {
    /// Samples per prompt (the baseline is their mean reward).
    pub samples_per_prompt: usize,
    /// β of the KL(π‖π_ref) penalty.
    pub kl_coef: f32,
    /// Divide advantages by the group's standard deviation (GRPO-style) as well.
    pub normalize_advantages: bool,
    /// "seq-mean-token-sum" (the default: −E[A · log π(y|x)]), "token-mean" or
    /// "seq-mean-token-mean".
    pub loss_agg_mode: LossAgg,
    /// "low_var_kl" (k3, the default) or "kl" (k1).
    pub kl_loss_type: KlEstimator,
    pub entropy_coeff: f32,
}

impl Default for ReinforceConfig {
    fn default() -> Self {
        ReinforceConfig {
            samples_per_prompt: 4,
            kl_coef: 0.1,
            normalize_advantages: false,
            loss_agg_mode: LossAgg::SeqMeanTokenSum,
            kl_loss_type: KlEstimator::K3,
            entropy_coeff: 0.0,
        }
    }
}

impl ReinforceConfig {
    pub fn validate(&self) -> Result<()> {
        if self.samples_per_prompt == 0 {
            bail!("algo.samples_per_prompt must be positive");
        }
        if !(self.kl_coef >= 0.0 && self.kl_coef.is_finite()) {
            bail!("algo.kl_coef must be a finite number >= 0");
        }
        Ok(())
    }
}

/// r − mean of each consecutive group of `g` rewards (a group of one: 0).
pub fn mean_baseline(rewards: &[f32], g: usize) -> Vec<f32> {
    assert!(g > 0 && rewards.len().is_multiple_of(g), "rewards must come in whole groups");
    let mut out = Vec::with_capacity(rewards.len());
    for grp in rewards.chunks(g) {
        let mean = grp.iter().map(|&r| r as f64).sum::<f64>() / grp.len() as f64;
        out.extend(grp.iter().map(|&r| if grp.len() > 1 { (r as f64 - mean) as f32 } else { 0.0 }));
    }
    out
}

pub struct Reinforce<B: Backend> {
    cfg: ReinforceConfig,
    bufs: TokenLoss<B>,
}

impl<B: Backend> Reinforce<B> {
    pub fn new(be: &B, cfg: ReinforceConfig, max_targets: usize) -> Result<Self> {
        Ok(Reinforce { cfg, bufs: TokenLoss::new(be, max_targets)? })
    }
}

impl<B: Backend> Objective<B> for Reinforce<B> {
    fn name(&self) -> &'static str {
        "reinforce"
    }

    fn samples_per_prompt(&self) -> usize {
        self.cfg.samples_per_prompt
    }

    fn entropy_coeff(&self) -> f32 {
        self.cfg.entropy_coeff
    }

    fn targets(&self, rollouts: &[Rollout]) -> Vec<f32> {
        let rewards: Vec<f32> = rollouts.iter().map(|o| o.score.score).collect();
        match self.cfg.normalize_advantages {
            true => group_advantages(&rewards, self.cfg.samples_per_prompt),
            false => mean_baseline(&rewards, self.cfg.samples_per_prompt),
        }
    }

    fn loss(&self, be: &B, x: &LossInputs<B>) -> Result<()> {
        let [loss, adv, weight] = self.bufs.stage(be, x, self.cfg.loss_agg_mode)?;
        // The behaviour policy is the current one: ratio 1, the clip never binds.
        let c = &self.cfg;
        be.grpo_loss(loss, x.dlogp, x.logp, x.logp, x.ref_logp, adv, weight, x.seqs.tokens(), f32::INFINITY, c.kl_coef, c.kl_loss_type)
    }

    /// Σ_t weight·(−A + β·kl): the surrogate's value at ratio 1 (its gradient is REINFORCE's;
    /// its value is −A per token, not −A·log π).
    fn read_loss(&self, be: &B, x: &LossInputs<B>) -> Result<f64> {
        self.bufs.total(be, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{DType, Seqs, View};

    #[test]
    fn baselines_are_group_means() {
        assert_eq!(mean_baseline(&[1.0, 0.0, 0.5, 0.5], 2), vec![0.5, -0.5, 0.0, 0.0]);
        assert_eq!(mean_baseline(&[3.0], 1), vec![0.0]);
    }

    /// ∂loss/∂logp is the REINFORCE gradient plus β times the k3 KL's, per token, with each
    /// aggregation's weights (finite differences are not needed: the closed form is known).
    #[test]
    fn the_gradient_is_reinforces() {
        let be = CpuBackend::new();
        let (logp_h, ref_h) = (vec![-1.0f32, -0.5, -2.0, -0.1, -0.3], vec![-1.2f32, -0.5, -1.0, -0.2, -0.9]);
        let cu = vec![0u32, 2, 5];
        let f = |h: &[f32]| {
            let b = be.alloc(DType::F32, h.len()).unwrap();
            be.upload_f32(View::all(&b), h).unwrap();
            b
        };
        let (logp, refp, dlogp) = (f(&logp_h), f(&ref_h), f(&[f32::NAN; 5]));
        let cu_dev = be.alloc(DType::U32, 3).unwrap();
        be.upload_u32(View::all(&cu_dev), &cu).unwrap();
        // Sequences of 2 and 3 tokens; the weight of token t under each aggregation.
        let weights = |agg: LossAgg, t: usize| match agg {
            LossAgg::SeqMeanTokenSum => 1.0 / 2.0,
            LossAgg::TokenMean => 1.0 / 5.0,
            LossAgg::SeqMeanTokenMean => 1.0 / (2.0 * if t < 2 { 2.0 } else { 3.0 }),
        };
        for agg in [LossAgg::SeqMeanTokenSum, LossAgg::TokenMean, LossAgg::SeqMeanTokenMean] {
            let cfg = ReinforceConfig { kl_coef: 0.1, loss_agg_mode: agg, ..Default::default() };
            let r = Reinforce::new(&be, cfg, 5).unwrap();
            let seqs = Seqs { cu_dev: View::all(&cu_dev), cu_host: &cu };
            let targets = [1.0f32, -0.5];
            let x = LossInputs {
                logp: View::all(&logp),
                dlogp: View::all(&dlogp),
                ref_logp: View::all(&refp),
                old_logp: None,
                seqs,
                targets: &targets,
                token_advantages: None,
                mini_seqs: 2,
                mini_tokens: 5,
            };
            r.loss(&be, &x).unwrap();
            let mut d = vec![0f32; 5];
            be.download_f32(View::all(&dlogp), &mut d).unwrap();
            for t in 0..5 {
                let a = if t < 2 { 1.0 } else { -0.5 };
                // k3 = e^(ref−logp) − (ref−logp) − 1: ∂/∂logp = 1 − e^(ref−logp).
                let dkl = 1.0 - ((ref_h[t] - logp_h[t]) as f64).exp();
                let want = weights(agg, t) * (-a + 0.1 * dkl);
                assert!((d[t] as f64 - want).abs() < 1e-6, "{agg:?} token {t}: {} vs {want}", d[t]);
            }
        }
    }
}
