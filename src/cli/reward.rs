use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct RewardArgs {}

pub fn run(_args: RewardArgs) -> Result<i32> {
    anyhow::bail!("'reward' is not implemented yet")
}
