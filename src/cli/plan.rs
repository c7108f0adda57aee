use anyhow::Result;
use clap::Args;

#[derive(Args, Default)]
pub struct PlanArgs {}

pub fn run(_args: PlanArgs) -> Result<i32> {
    anyhow::bail!("'plan' is not implemented yet")
}
