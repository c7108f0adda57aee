use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<i32> {
    anyhow::bail!("'bench' is not implemented yet")
}
