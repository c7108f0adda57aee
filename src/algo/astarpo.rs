//! A*PO (Brantley et al., "Accelerating RL for LLM Reasoning with Optimal Advantage
//! Regression"): V*(x) is estimated once from N reference samples per prompt; each policy
//! step then regresses β2·log(π_θ/π_ref)(y|x) onto r(x, y) − V*(x) for one sample y.

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
}
