use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct InitArgs {}

pub fn run(_args: InitArgs) -> Result<i32> {
    anyhow::bail!("'init' is not implemented yet")
}
