use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct ScoreArgs {}

pub fn run(_args: ScoreArgs) -> Result<i32> {
    anyhow::bail!("'score' is not implemented yet")
}
