//! RL algorithms: A*PO (stage-1 V* estimation, stage-2 one-sample regression) and GRPO
//! (group-normalized advantages, clipped ratio, k3 KL). The per-token losses themselves are
//! backend ops (`apo_loss`, `grpo_loss`); this module holds the host-side statistics.
pub mod astarpo;
pub mod grpo;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Astarpo,
    Grpo,
}

impl std::str::FromStr for Algorithm {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "astarpo" | "a*po" | "apo" => Ok(Algorithm::Astarpo),
            "grpo" => Ok(Algorithm::Grpo),
            _ => anyhow::bail!("unknown algorithm '{s}' (expected astarpo or grpo)"),
        }
    }
}
