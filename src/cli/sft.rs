use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct SftArgs {}

pub fn run(_args: SftArgs) -> Result<i32> {
    anyhow::bail!("'sft' is not implemented yet")
}
