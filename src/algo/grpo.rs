//! GRPO (Shao et al., DeepSeekMath): G samples per prompt, advantages normalized within each
//! group, PPO-clipped ratio and a k3 KL estimate to the reference (the loss is a backend op).

/// (r − mean) / (std + 1e-6) within consecutive groups of `g` rewards, with the unbiased
/// standard deviation (torch.std, as TinyZero/veRL use). A group of one gets advantage 0.
pub fn group_advantages(rewards: &[f32], g: usize) -> Vec<f32> {
    assert!(g > 0 && rewards.len() % g == 0, "rewards must come in whole groups");
    let mut out = Vec::with_capacity(rewards.len());
    for grp in rewards.chunks(g) {
        let n = grp.len() as f64;
        let mean = grp.iter().map(|&r| r as f64).sum::<f64>() / n;
        let std = if grp.len() > 1 {
            (grp.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        out.extend(grp.iter().map(|&r| if grp.len() > 1 { ((r as f64 - mean) / (std + 1e-6)) as f32 } else { 0.0 }));
    }
    out
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
