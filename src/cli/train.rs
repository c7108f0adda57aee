use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> Result<i32> {
    anyhow::bail!("'train' is not implemented yet")
}
