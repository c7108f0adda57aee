//! `tz-engine plot RUN_DIR`: draw a run's learning curves (curves.png, curves.svg) from metrics.jsonl.
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Default)]
pub struct PlotArgs {
    /// A run directory (runs/<name>).
    pub run_dir: PathBuf,
}

pub fn run(args: PlotArgs) -> Result<i32> {
    for p in crate::train::plot::plot_run(&args.run_dir)? {
        println!("{}", p.display());
    }
    Ok(0)
}
