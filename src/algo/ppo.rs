//! PPO with a critic, as TinyZero runs it on veRL (`algorithm.adv_estimator = gae`): a
//! separate value model initialized from the base (`crate::train::critic`), per-token
//! rewards — the task's score on the last response token and a KL-to-reference penalty
//! −β·(log π_old − log π_ref) on every token (fixed `kl_ctrl`) — GAE advantages (γ = λ = 1 by
//! default) whitened over the batch's tokens, the PPO clipped policy loss and veRL's clipped
//! value loss.
//!
//! The policy loss is GRPO's kernel with per-token advantages and no KL term (the KL is in
//! the reward); the value loss is computed on the host from the critic's values.
use super::{CriticSettings, LossAgg, LossInputs, Objective, TokenLoss, TokenTargets};
use crate::backend::{Backend, KlEstimator};
use crate::rollout::Rollout;
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

/// Where PPO's values come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CriticKind {
    /// A second model (the base plus a value head) with its own optimizer: veRL's critic.
    #[default]
    Separate,
    /// A value head on the policy's own trunk, trained with the policy by one loss
    /// `policy loss + vf_coef · value loss` (TRL's `AutoModelForCausalLMWithValueHead`): no
    /// second model or optimizer state.
    Shared,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Responses per prompt (TinyZero's PPO: 1).
    pub samples_per_prompt: usize,
    pub clip_eps: f32,
    /// β of the per-token KL penalty in the reward (veRL `algorithm.kl_ctrl.kl_coef`, fixed).
    pub kl_coef: f32,
    pub gamma: f32,
    pub lam: f32,
    /// veRL's `critic.cliprange_value`.
    pub value_clip: f32,
    /// The critic's AdamW learning rate (`train.lr` is the actor's; a shared critic trains at
    /// the actor's).
    pub critic_lr: f32,
    /// `"separate"` (veRL) or `"shared"` (a value head on the policy's trunk, TRL).
    pub critic: CriticKind,
    /// A shared critic's weight of the value loss in the joint loss (TRL's `vf_coef`).
    pub vf_coef: f32,
    /// Passes over a step's batch (veRL `ppo_epochs`).
    pub ppo_epochs: usize,
    /// Whiten the advantages over the batch's response tokens (veRL does).
    pub normalize_advantages: bool,
    pub loss_agg_mode: LossAgg,
    pub entropy_coeff: f32,
}

impl Default for PpoConfig {
    fn default() -> Self {
        // TinyZero's PPO script on veRL.
        PpoConfig {
            samples_per_prompt: 1,
            clip_eps: 0.2,
            kl_coef: 0.001,
            gamma: 1.0,
            lam: 1.0,
            value_clip: 0.5,
            critic_lr: 1e-5,
            critic: CriticKind::Separate,
            vf_coef: 0.1,
            ppo_epochs: 1,
            normalize_advantages: true,
            loss_agg_mode: LossAgg::TokenMean,
            entropy_coeff: 0.001,
        }
    }
}

impl PpoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.samples_per_prompt == 0 || self.ppo_epochs == 0 {
            bail!("algo.samples_per_prompt and algo.ppo_epochs must be positive");
        }
        let finite_nonneg = |x: f32| x.is_finite() && x >= 0.0;
        if !(finite_nonneg(self.clip_eps)
            && finite_nonneg(self.kl_coef)
            && finite_nonneg(self.value_clip)
            && finite_nonneg(self.critic_lr)
            && finite_nonneg(self.vf_coef))
        {
            bail!("algo.clip_eps, kl_coef, value_clip, critic_lr and vf_coef must be finite numbers >= 0");
        }
        if !((0.0..=1.0).contains(&self.gamma) && (0.0..=1.0).contains(&self.lam)) {
            bail!("algo.gamma and algo.lam must be in [0, 1]");
        }
        Ok(())
    }
}

/// GAE over one response: `rewards[t]` and `values[t]` per token; returns (advantages,
/// returns = advantages + values). The value after the last token is 0 (the episode ends).
pub fn gae(rewards: &[f32], values: &[f32], gamma: f32, lam: f32) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    let (g, l) = (gamma as f64, lam as f64);
    let mut adv = vec![0f32; n];
    let mut last = 0f64;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] as f64 } else { 0.0 };
        let delta = rewards[t] as f64 + g * next - values[t] as f64;
        last = delta + g * l * last;
        adv[t] = last as f32;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// (x − mean) / sqrt(var + 1e-8) over every element, with the unbiased variance (veRL's
/// `masked_whiten`).
pub fn whiten(xs: &mut [Vec<f32>]) {
    let n = xs.iter().map(Vec::len).sum::<usize>();
    if n < 2 {
        return;
    }
    let mean = xs.iter().flatten().map(|&x| x as f64).sum::<f64>() / n as f64;
    let var = xs.iter().flatten().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let inv = 1.0 / (var + 1e-8).sqrt();
    for x in xs.iter_mut().flatten() {
        *x = ((*x as f64 - mean) * inv) as f32;
    }
}

/// veRL's clipped value loss over tokens: `0.5 · max((v − R)², (clip(v, v_old ± c) − R)²)`
/// per token; returns (the per-token terms, ∂term/∂v, whether the clipped branch was taken).
pub fn value_loss_terms(v: f32, v_old: f32, ret: f32, clip: f32) -> (f64, f64, bool) {
    let (v, v_old, ret, c) = (v as f64, v_old as f64, ret as f64, clip as f64);
    let unclipped = (v - ret).powi(2);
    let vc = v.clamp(v_old - c, v_old + c);
    let clipped = (vc - ret).powi(2);
    if clipped > unclipped {
        // The clipped branch: v is outside v_old ± c (else vc = v), where clip has no slope.
        (0.5 * clipped, 0.0, true)
    } else {
        (0.5 * unclipped, v - ret, false)
    }
}

pub struct Ppo<B: Backend> {
    cfg: PpoConfig,
    bufs: TokenLoss<B>,
}

impl<B: Backend> Ppo<B> {
    pub fn new(be: &B, cfg: PpoConfig, max_targets: usize) -> Result<Self> {
        Ok(Ppo { cfg, bufs: TokenLoss::new(be, max_targets)? })
    }
}

impl<B: Backend> Objective<B> for Ppo<B> {
    fn name(&self) -> &'static str {
        "ppo"
    }

    fn samples_per_prompt(&self) -> usize {
        self.cfg.samples_per_prompt
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

    fn epochs(&self) -> usize {
        self.cfg.ppo_epochs
    }

    fn critic(&self) -> Option<CriticSettings> {
        Some(CriticSettings {
            lr: self.cfg.critic_lr,
            value_clip: self.cfg.value_clip,
            shared: (self.cfg.critic == CriticKind::Shared).then_some(self.cfg.vf_coef),
        })
    }

    /// Unused: PPO's targets are per token (`token_targets`).
    fn targets(&self, rollouts: &[Rollout]) -> Vec<f32> {
        vec![0.0; rollouts.len()]
    }

    fn token_targets(&self, rollouts: &[Rollout], ref_lp: &[Vec<f32>], old_lp: &[Vec<f32>], values: &[Vec<f32>]) -> Result<TokenTargets> {
        let c = &self.cfg;
        let (mut advantages, mut returns) = (Vec::with_capacity(rollouts.len()), Vec::with_capacity(rollouts.len()));
        for (i, o) in rollouts.iter().enumerate() {
            // Log-probs and values cover the policy's tokens only (not observations).
            let n = o.agent_tokens();
            ensure!(
                ref_lp[i].len() == n && old_lp[i].len() == n && values[i].len() == n,
                "ppo: sequence {i} has {n} tokens but {}/{}/{} log-probs/values",
                ref_lp[i].len(),
                old_lp[i].len(),
                values[i].len()
            );
            let mut r: Vec<f32> = old_lp[i].iter().zip(&ref_lp[i]).map(|(o, rf)| -c.kl_coef * (o - rf)).collect();
            if let Some(last) = r.last_mut() {
                *last += o.score.score;
            }
            let (a, ret) = gae(&r, &values[i], c.gamma, c.lam);
            advantages.push(a);
            returns.push(ret);
        }
        if c.normalize_advantages {
            whiten(&mut advantages);
        }
        Ok(TokenTargets { advantages, returns })
    }

    fn loss(&self, be: &B, x: &LossInputs<B>) -> Result<()> {
        let Some(old) = x.old_logp else { bail!("ppo: the behaviour policy's log-probs are missing") };
        ensure!(x.token_advantages.is_some(), "ppo: per-token advantages are missing");
        let [loss, adv, weight] = self.bufs.stage(be, x, self.cfg.loss_agg_mode)?;
        // No KL term in the loss: PPO puts it in the reward.
        be.grpo_loss(loss, x.dlogp, x.logp, old, x.ref_logp, adv, weight, x.seqs.tokens(), self.cfg.clip_eps, 0.0, KlEstimator::K1)
    }

    fn read_loss(&self, be: &B, x: &LossInputs<B>) -> Result<f64> {
        self.bufs.total(be, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value() {
        let r = [0.1f32, -0.2, 1.0];
        let v = [0.5f32, 0.4, 0.3];
        let (a, ret) = gae(&r, &v, 1.0, 1.0);
        let want_ret = [0.9f32, 0.8, 1.0];
        for t in 0..3 {
            assert!((ret[t] - want_ret[t]).abs() < 1e-6 && (a[t] - (want_ret[t] - v[t])).abs() < 1e-6, "t={t}: {a:?} {ret:?}");
        }
        // λ = 0: one-step TD errors.
        let (a0, _) = gae(&r, &v, 0.9, 0.0);
        assert!((a0[0] - (0.1 + 0.9 * 0.4 - 0.5)).abs() < 1e-6 && (a0[2] - (1.0 - 0.3)).abs() < 1e-6);
    }

    #[test]
    fn whitening_and_the_clipped_value_loss() {
        let mut xs = vec![vec![1.0f32, 2.0], vec![3.0]];
        whiten(&mut xs);
        let flat: Vec<f32> = xs.concat();
        assert!((flat.iter().sum::<f32>()).abs() < 1e-6 && (flat[2] - 1.0).abs() < 1e-4, "{flat:?}");
        // Inside the clip range: plain squared error and its slope.
        let (l, d, clipped) = value_loss_terms(1.2, 1.0, 2.0, 0.5);
        assert!(!clipped && (l - 0.32).abs() < 1e-6 && (d + 0.8).abs() < 1e-6);
        // Moved away from the return: the unclipped term is the larger, with its slope.
        let (l, d, clipped) = value_loss_terms(3.0, 1.0, 1.0, 0.5);
        assert!(!clipped && (l - 2.0).abs() < 1e-9 && (d - 2.0).abs() < 1e-9);
        // Moved toward the return past v_old + c: the clipped term is larger, no slope.
        let (l, d, clipped) = value_loss_terms(2.0, 1.0, 3.0, 0.5);
        assert!(clipped && d == 0.0 && (l - 0.5 * 2.25).abs() < 1e-9);
    }

    #[test]
    fn token_rewards_are_the_kl_penalty_plus_the_score_at_the_last_token() {
        use crate::rollout::{Finish, Rollout};
        use crate::task::{Reason, Score};
        let be = crate::backend::cpu::CpuBackend::new();
        let cfg = PpoConfig { kl_coef: 0.5, normalize_advantages: false, ..Default::default() };
        let ppo = Ppo::new(&be, cfg, 4).unwrap();
        let o = Rollout {
            idx: 0,
            tokens: vec![3, 4],
            text: String::new(),
            score: Score { score: 1.0, reason: Reason::Correct },
            finish: Finish::Eos,
            env_spans: vec![],
            turns: 0,
            invalid: 0,
        };
        let (old, reference, values) = (vec![vec![-1.0f32, -2.0]], vec![vec![-1.5f32, -2.0]], vec![vec![0.25f32, 0.5]]);
        let t = <Ppo<_> as Objective<crate::backend::cpu::CpuBackend>>::token_targets(&ppo, &[o], &reference, &old, &values).unwrap();
        // r = [−0.5·0.5, 1.0]; with γ = λ = 1 the returns are the rewards to go.
        assert_eq!(t.returns, vec![vec![0.75, 1.0]]);
        assert_eq!(t.advantages, vec![vec![0.5, 0.5]]);
        assert!(<Ppo<_> as Objective<crate::backend::cpu::CpuBackend>>::token_targets(&ppo, &[], &[], &[], &[])
            .unwrap()
            .returns
            .is_empty());
    }
}
