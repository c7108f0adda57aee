use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct SolveArgs {}

pub fn run(_args: SolveArgs) -> Result<i32> {
    anyhow::bail!("'solve' is not implemented yet")
}
