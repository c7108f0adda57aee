use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct GenerateArgs {}

pub fn run(_args: GenerateArgs) -> Result<i32> {
    anyhow::bail!("'generate' is not implemented yet")
}
