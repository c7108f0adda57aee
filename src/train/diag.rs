//! Per-step diagnostics for `metrics.jsonl`, beyond reward and loss: what the rollouts looked
//! like (token totals, finished vs truncated, accuracy on each, length of correct responses)
//! and how far the policy being trained is from the reference and from the behaviour policy
//! that sampled (KL estimates, importance ratios and the share outside the clip range, under
//! the adaptive-rollout fork's names `actor/is_ratio/*` and `actor/is_clip/outside_frac`).
//!
//! Token statistics are taken from the policy's log-probs at its training forward pass (each
//! response token is trained on once per step), summed on each rank and all-reduced, so every
//! rank reports the global batch's values.
use crate::dist::{all_gather_f32, HostComm};
use crate::rollout::{Finish, Rollout};
use anyhow::Result;

/// Rollout statistics of a step's global batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutStats {
    pub tokens_prompt: usize,
    pub tokens_response: usize,
    pub finished_frac: f32,
    /// Solve rate among responses cut at the length limit, and among the others (`None`
    /// when there are none).
    pub solve_rate_truncated: Option<f32>,
    pub solve_rate_finished: Option<f32>,
    /// Mean tokens of the solved responses.
    pub correct_len_mean: Option<f32>,
}

pub fn rollout_stats(outs: &[Rollout], prompt_len: impl Fn(&Rollout) -> usize) -> RolloutStats {
    let n = outs.len().max(1) as f32;
    let rate = |keep: &dyn Fn(&Rollout) -> bool| {
        let sel: Vec<&Rollout> = outs.iter().filter(|o| keep(o)).collect();
        (!sel.is_empty()).then(|| sel.iter().filter(|o| o.score.solved()).count() as f32 / sel.len() as f32)
    };
    let correct: Vec<usize> = outs.iter().filter(|o| o.score.solved()).map(|o| o.tokens.len()).collect();
    RolloutStats {
        tokens_prompt: outs.iter().map(&prompt_len).sum(),
        tokens_response: outs.iter().map(|o| o.tokens.len()).sum(),
        finished_frac: outs.iter().filter(|o| o.finish != Finish::Length).count() as f32 / n,
        solve_rate_truncated: rate(&|o| o.finish == Finish::Length),
        solve_rate_finished: rate(&|o| o.finish != Finish::Length),
        correct_len_mean: (!correct.is_empty()).then(|| correct.iter().sum::<usize>() as f32 / correct.len() as f32),
    }
}

/// Sums over response tokens, added micro-batch by micro-batch.
#[derive(Clone, Debug, Default)]
pub struct TokenDiag {
    n: f64,
    /// Σ (logp − ref) and Σ k3 = Σ (e^(ref−logp) − (ref−logp) − 1).
    kl_k1: f64,
    kl_k3: f64,
    /// Against the behaviour policy, when the objective has its log-probs.
    n_ratio: f64,
    log_ratio: f64,
    log_ratio_sq: f64,
    ratio: f64,
    ratio_sq: f64,
    outside: f64,
    ratios: Vec<f32>,
    clipped: bool,
}

/// The token diagnostics of a step (global batch).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenStats {
    pub kl_ref_k1: f32,
    pub kl_ref_k3: f32,
    pub ratio: Option<RatioStats>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RatioStats {
    pub log_ratio_mean: f32,
    pub log_ratio_std: f32,
    pub is_ratio_mean: f32,
    pub is_ratio_std: f32,
    pub is_ratio_p95: f32,
    /// Share of tokens whose ratio is outside `[1 − ε, 1 + ε]` (when the objective clips).
    pub outside_frac: Option<f32>,
}

impl TokenDiag {
    /// One micro-batch's tokens: the policy's, the reference's and (if any) the behaviour
    /// policy's log-probs, and the objective's clip range ε.
    pub fn add(&mut self, logp: &[f32], ref_lp: &[f32], old_lp: Option<&[f32]>, clip: Option<f32>) {
        for (i, (&lp, &rf)) in logp.iter().zip(ref_lp).enumerate() {
            let d = (rf - lp) as f64;
            self.n += 1.0;
            self.kl_k1 -= d;
            self.kl_k3 += d.exp() - d - 1.0;
            if let Some(old) = old_lp {
                let lr = (lp - old[i]) as f64;
                let r = lr.exp();
                self.n_ratio += 1.0;
                self.log_ratio += lr;
                self.log_ratio_sq += lr * lr;
                self.ratio += r;
                self.ratio_sq += r * r;
                if clip.is_some_and(|e| (r - 1.0).abs() > e as f64) {
                    self.outside += 1.0;
                }
                self.ratios.push(r as f32);
            }
        }
        self.clipped |= clip.is_some();
    }

    /// The global batch's statistics (a collective: every rank calls it).
    pub fn finish(self, comm: &dyn HostComm) -> Result<TokenStats> {
        let mut s =
            [self.n, self.kl_k1, self.kl_k3, self.n_ratio, self.log_ratio, self.log_ratio_sq, self.ratio, self.ratio_sq, self.outside];
        comm.all_reduce_f64(&mut s)?;
        let [n, k1, k3, nr, lr, lr2, r, r2, out] = s;
        let ratio = if nr > 0.0 {
            let mut all = if comm.world() > 1 { all_gather_f32(comm, &self.ratios)?.concat() } else { self.ratios };
            all.sort_unstable_by(f32::total_cmp);
            let p95 = all[((all.len() as f64 * 0.95).ceil() as usize).clamp(1, all.len()) - 1];
            let std = |sum: f64, sq: f64| ((sq / nr - (sum / nr).powi(2)).max(0.0)).sqrt() as f32;
            Some(RatioStats {
                log_ratio_mean: (lr / nr) as f32,
                log_ratio_std: std(lr, lr2),
                is_ratio_mean: (r / nr) as f32,
                is_ratio_std: std(r, r2),
                is_ratio_p95: p95,
                outside_frac: self.clipped.then(|| (out / nr) as f32),
            })
        } else {
            None
        };
        let n = n.max(1.0);
        Ok(TokenStats { kl_ref_k1: (k1 / n) as f32, kl_ref_k3: (k3 / n) as f32, ratio })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::threads::run_ranks;

    #[test]
    fn statistics_of_known_tokens_on_one_and_two_ranks() {
        let logp = [-1.0f32, -2.0, -0.5, -3.0];
        let reference = [-1.0f32, -1.5, -0.7, -3.2];
        let old = [-1.0f32, -2.5, -0.5, -2.0];
        let ratios: Vec<f64> = logp.iter().zip(&old).map(|(a, b)| ((a - b) as f64).exp()).collect();
        let mean = ratios.iter().sum::<f64>() / 4.0;
        let k1 = logp.iter().zip(&reference).map(|(a, b)| (a - b) as f64).sum::<f64>() / 4.0;
        for world in [1usize, 2] {
            let out = run_ranks(world, std::time::Duration::from_secs(30), |comm| {
                let mut d = TokenDiag::default();
                let half = 4 / world;
                let r = comm.rank() * half..(comm.rank() + 1) * half;
                d.add(&logp[r.clone()], &reference[r.clone()], Some(&old[r]), Some(0.2));
                d.finish(comm)
            })
            .unwrap();
            let s = &out[0];
            assert!(out.iter().all(|o| o == s), "ranks agree");
            let ratio = s.ratio.as_ref().unwrap();
            assert!((s.kl_ref_k1 as f64 - k1).abs() < 1e-6 && s.kl_ref_k3 > 0.0);
            assert!((ratio.is_ratio_mean as f64 - mean).abs() < 1e-6);
            // Ratios 1, e^0.5, 1, e^-1: two outside [0.8, 1.2]; the 95th percentile is the largest.
            assert_eq!(ratio.outside_frac, Some(0.5));
            assert!((ratio.is_ratio_p95 - 0.5f32.exp()).abs() < 1e-6);
        }
        // Without behaviour log-probs there is no ratio.
        let mut d = TokenDiag::default();
        d.add(&logp, &reference, None, None);
        assert_eq!(d.finish(&crate::dist::Single).unwrap().ratio, None);
    }
}
