use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct PlotArgs {}

pub fn run(_args: PlotArgs) -> Result<i32> {
    anyhow::bail!("'plot' is not implemented yet")
}
