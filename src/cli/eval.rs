use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> Result<i32> {
    anyhow::bail!("'eval' is not implemented yet")
}
