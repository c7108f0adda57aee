use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct DataArgs {}

pub fn run(_args: DataArgs) -> Result<i32> {
    anyhow::bail!("'data' is not implemented yet")
}
