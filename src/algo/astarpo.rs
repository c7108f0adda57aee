//! A*PO (Brantley et al., "Accelerating RL for LLM Reasoning with Optimal Advantage
//! Regression"): V*(x) is estimated once from N reference samples per prompt (stage 1); each
//! policy step then regresses β2·log(π_θ/π_ref)(y|x) onto r(x, y) − V*(x) for one sample y.
//!
//! With `vstar = "online"` (RAGEN-style) there is no stage 1: each step samples
//! `online_samples` responses per prompt from the current policy and V*(x) is the same soft
//! maximum (log-mean-exp at β1) of their rewards; every sample is regressed onto r − V*(x).
use super::{vstar, LossInputs, Objective, Stage1};
use crate::backend::{Backend, DType, View};
use crate::nvtx;
use crate::rollout::Rollout;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AstarpoConfig {
    /// V* temperature (0 = mean reward).
    pub beta1: f32,
    /// KL-regularization strength of the regression.
    pub beta2: f32,
    /// Reference samples per prompt for V*.
    pub n_vstar: usize,
    /// Drop prompts whose reference samples all scored 0.
    pub drop_zero_prompts: bool,
    pub entropy_coeff: f32,
    /// Where V* comes from: "offline" (stage 1, reference samples; the default) or "online"
    /// (each step's samples of the current policy).
    pub vstar: VstarSource,
    /// Samples per prompt at each step with online V*.
    pub online_samples: usize,
}

/// `algo.vstar`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VstarSource {
    #[default]
    Offline,
    Online,
}

impl Default for AstarpoConfig {
    fn default() -> Self {
        // The A*PO authors' defaults.
        AstarpoConfig {
            beta1: 0.5,
            beta2: 1e-3,
            n_vstar: 8,
            drop_zero_prompts: false,
            entropy_coeff: 0.001,
            vstar: VstarSource::Offline,
            online_samples: 4,
        }
    }
}

impl AstarpoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.beta1 < 0.0 || self.beta2 <= 0.0 {
            bail!("algo.beta1 must be >= 0 and algo.beta2 > 0");
        }
        if self.n_vstar == 0 {
            bail!("algo.n_vstar must be positive");
        }
        if self.vstar == VstarSource::Online && self.online_samples < 2 {
            bail!("algo.online_samples must be at least 2 with algo.vstar = \"online\" (V* of one sample is its own reward)");
        }
        if self.vstar == VstarSource::Online && self.drop_zero_prompts {
            bail!("algo.drop_zero_prompts needs the offline V* stage (algo.vstar = \"offline\")");
        }
        Ok(())
    }

    /// Responses per prompt at each step.
    pub fn samples_per_prompt(&self) -> usize {
        match self.vstar {
            VstarSource::Offline => 1,
            VstarSource::Online => self.online_samples,
        }
    }
}

/// V*(x) = β1·log(mean_i exp(r_i/β1)) for β1 > 0 (a soft maximum of the sampled rewards),
/// or the mean reward for β1 = 0. Computed stably (max subtracted). Empty input → 0.
pub fn vstar(rewards: &[f32], beta1: f32) -> f32 {
    if rewards.is_empty() {
        return 0.0;
    }
    let n = rewards.len() as f64;
    if beta1 <= 0.0 {
        return (rewards.iter().map(|&r| r as f64).sum::<f64>() / n) as f32;
    }
    let b = beta1 as f64;
    let m = rewards.iter().fold(f64::NEG_INFINITY, |a, &r| a.max(r as f64));
    let s: f64 = rewards.iter().map(|&r| ((r as f64 - m) / b).exp()).sum();
    (m + b * (s / n).ln()) as f32
}

/// r − V*(x) per sample, V*(x) from the consecutive `k` samples of each prompt.
pub fn online_targets(rollouts: &[Rollout], k: usize, beta1: f32) -> Vec<f32> {
    rollouts
        .chunks(k)
        .flat_map(|g| {
            let r: Vec<f32> = g.iter().map(|o| o.score.score).collect();
            let v = vstar(&r, beta1);
            r.into_iter().map(move |x| x - v)
        })
        .collect()
}

pub struct Astarpo<B: Backend> {
    cfg: AstarpoConfig,
    /// V* per training prompt (stage 1).
    vstar: Vec<f32>,
    /// Per-sequence regression targets and squared errors of one micro-batch.
    target: B::Buf,
    loss: B::Buf,
}

/// F32 lengths of the loss buffers (targets, squared errors) for micro-batches of `micro_batch`.
pub fn buffer_lens(micro_batch: usize) -> [usize; 2] {
    [micro_batch.max(1); 2]
}

impl<B: Backend> Astarpo<B> {
    pub fn new(be: &B, cfg: AstarpoConfig, micro_batch: usize) -> Result<Self> {
        let [t, l] = buffer_lens(micro_batch);
        Ok(Astarpo { cfg, vstar: vec![], target: be.alloc(DType::F32, t)?, loss: be.alloc(DType::F32, l)? })
    }
}

impl<B: Backend> Objective<B> for Astarpo<B> {
    fn name(&self) -> &'static str {
        "astarpo"
    }

    /// One response per prompt (V* stands in for the group baseline), or with online V* the
    /// samples it is estimated from.
    fn samples_per_prompt(&self) -> usize {
        self.cfg.samples_per_prompt()
    }

    fn entropy_coeff(&self) -> f32 {
        self.cfg.entropy_coeff
    }

    /// Stage 1 (cached): V* per training prompt from the reference policy.
    fn prepare(&mut self, s: Stage1<B>) -> Result<()> {
        if self.cfg.vstar == VstarSource::Online {
            if s.comm.is_root() {
                eprintln!("V*: online, from {} samples of the current policy per prompt at each step", self.cfg.online_samples);
            }
            return Ok(());
        }
        let _r = nvtx::range("vstar");
        let started = Instant::now();
        let cache_dir = s.cache_dir.join("vstar-cache");
        let root = s.comm.is_root();
        let report = |done, total| {
            if root {
                eprint!("\rV* estimation: {done}/{total} prompts");
            }
        };
        let table = vstar::compute_or_load(&s.reference, s.train, &cache_dir, self.cfg.n_vstar, self.cfg.beta1, s.seed, report, s.comm)?;
        if !table.from_cache && root {
            eprintln!(" ({:.1}s)", started.elapsed().as_secs_f64());
        }
        if self.cfg.drop_zero_prompts {
            s.pool.retain(|&i| table.nonzero[i] > 0);
            if s.pool.is_empty() {
                bail!("every training prompt's reference samples scored 0: nothing to learn from (algo.drop_zero_prompts)");
            }
        }
        let mean = table.vstar.iter().sum::<f32>() / table.vstar.len().max(1) as f32;
        if root {
            eprintln!(
                "V*: mean {mean:.3} over {} prompts{}; {} prompts in the training pool",
                table.vstar.len(),
                if table.from_cache { " (cached)" } else { "" },
                s.pool.len()
            );
        }
        self.vstar = table.vstar;
        Ok(())
    }

    /// V* of self-play prompts, from the same reference samples as stage 1 (not cached: there
    /// are few, and a resumed run samples them again, to the same values).
    fn add_prompts(&mut self, s: Stage1<B>, first: usize) -> Result<()> {
        if self.cfg.vstar == VstarSource::Online {
            return Ok(());
        }
        anyhow::ensure!(first == self.vstar.len(), "V* holds {} prompts, not the {first} before the added ones", self.vstar.len());
        let (v, _) =
            vstar::sample(&s.reference, s.train, first..s.train.len(), self.cfg.n_vstar, self.cfg.beta1, s.seed, &mut |_, _| {}, s.comm)?;
        self.vstar.extend(v);
        Ok(())
    }

    fn targets(&self, rollouts: &[Rollout]) -> Vec<f32> {
        match self.cfg.vstar {
            VstarSource::Offline => rollouts.iter().map(|o| o.score.score - self.vstar[o.idx]).collect(),
            VstarSource::Online => online_targets(rollouts, self.cfg.online_samples, self.cfg.beta1),
        }
    }

    fn loss(&self, be: &B, x: &LossInputs<B>) -> Result<()> {
        let ns = x.targets.len();
        let target = View::all(&self.target).slice(0, ns);
        be.upload_f32(target, x.targets)?;
        be.apo_loss(
            View::all(&self.loss).slice(0, ns),
            x.dlogp,
            x.logp,
            x.ref_logp,
            target,
            x.seqs,
            self.cfg.beta2,
            1.0 / x.mini_seqs as f32,
        )
    }

    /// Σ_s (β2·log-ratio_s − target_s)² / mini-batch sequences.
    fn read_loss(&self, be: &B, x: &LossInputs<B>) -> Result<f64> {
        let mut l = vec![0f32; x.targets.len()];
        be.download_f32(View::all(&self.loss).slice(0, l.len()), &mut l)?;
        Ok(l.iter().map(|&v| v as f64).sum::<f64>() / x.mini_seqs as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vstar_limits() {
        let r = [0.0, 0.1, 1.0, 0.1];
        // β1 → 0 tends to the max, large β1 to the mean; β1 = 0 is defined as the mean.
        assert!((vstar(&r, 1e-4) - 1.0).abs() < 1e-3);
        assert!((vstar(&r, 1e4) - 0.3).abs() < 1e-3);
        assert!((vstar(&r, 0.0) - 0.3).abs() < 1e-6);
        let direct = 0.5 * ((r.iter().map(|x| (x / 0.5f32).exp()).sum::<f32>()) / 4.0).ln();
        assert!((vstar(&r, 0.5) - direct).abs() < 1e-6);
        assert_eq!(vstar(&[], 0.5), 0.0);
        assert!((vstar(&[0.7; 8], 0.5) - 0.7).abs() < 1e-6);
    }

    #[test]
    fn online_targets_use_each_prompts_samples() {
        use crate::rollout::{Finish, Rollout};
        use crate::task::{Reason, Score};
        let ro = |idx: usize, score: f32| Rollout {
            idx,
            tokens: vec![],
            text: String::new(),
            score: Score { score, reason: Reason::WrongValue },
            finish: Finish::Eos,
            env_spans: vec![],
            turns: 0,
            invalid: 0,
        };
        let outs = [ro(0, 1.0), ro(0, 0.0), ro(5, 0.1), ro(5, 0.1)];
        let t = online_targets(&outs, 2, 0.5);
        let v0 = vstar(&[1.0, 0.0], 0.5);
        assert!((t[0] - (1.0 - v0)).abs() < 1e-6 && (t[1] + v0).abs() < 1e-6, "{t:?}");
        // All samples alike: V* is their reward, nothing to regress onto.
        assert!(t[2].abs() < 1e-6 && t[3].abs() < 1e-6);
        let c = AstarpoConfig { vstar: VstarSource::Online, online_samples: 1, ..Default::default() };
        assert!(c.validate().is_err());
        assert_eq!(AstarpoConfig { vstar: VstarSource::Online, ..Default::default() }.samples_per_prompt(), 4);
    }
}
