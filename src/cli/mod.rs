//! The `tz-engine` command line: one clap subcommand per file. Every error reaches the user as
//! one line on stderr and a non-zero exit code, never a panic.
use clap::{Parser, Subcommand};

pub mod bench;
pub mod bench_phases;
pub mod data;
pub mod eval;
pub mod generate;
pub mod init;
pub mod launch;
pub mod merge;
pub mod plan;
pub mod play;
pub mod plot;
pub mod reward;
pub mod score;
pub mod sft;
pub mod solve;
pub mod train;

#[derive(Parser)]
#[command(name = "tz-engine", version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TZ_GIT_COMMIT"), ")"), about = "TinyZero-style RL (A*PO, GRPO) for Qwen2 models on CPU or CUDA")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make task datasets: Countdown (generated or from TinyZero's parquet) and multiplication.
    Data(data::DataArgs),
    /// Score model responses with the TinyZero-exact rule-based rewards (JSON lines in/out).
    Reward(reward::RewardArgs),
    /// Solve a Countdown instance exhaustively.
    Solve(solve::SolveArgs),
    /// Write a randomly initialized Qwen2 model (tiny presets or Qwen2.5 shapes) in HF format.
    Init(init::InitArgs),
    /// Per-token log-probs of responses given prompts.
    Score(score::ScoreArgs),
    /// Sample responses to prompts.
    Generate(generate::GenerateArgs),
    /// RL training (A*PO or GRPO). With no arguments: the tiny CPU preset end to end.
    Train(train::TrainArgs),
    /// Start one `train` process per GPU of this node (torchrun-style), and watch them.
    Launch(launch::LaunchArgs),
    /// Merge a LoRA adapter (peft format) into its base model's weights.
    Merge(merge::MergeArgs),
    /// Supervised fine-tuning on prompt/response JSON lines.
    Sft(sft::SftArgs),
    /// Evaluate a model on a task dataset: mean reward, solve rate, pass@k.
    Eval(eval::EvalArgs),
    /// Play one episode of an environment (FrozenLake) with a model, printed turn by turn.
    Play(play::PlayArgs),
    /// Draw a run's learning curves (curves.png, curves.svg).
    Plot(plot::PlotArgs),
    /// Print the planned device memory for a model, batch and sequence length.
    Plan(plan::PlanArgs),
    /// Kernel and throughput benchmarks.
    Bench(bench::BenchArgs),
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            // A bare `tz-engine` must not start a long training run: say what there is.
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            println!();
            return 2;
        }
        Some(Command::Data(a)) => data::run(a),
        Some(Command::Reward(a)) => reward::run(a),
        Some(Command::Solve(a)) => solve::run(a),
        Some(Command::Init(a)) => init::run(a),
        Some(Command::Score(a)) => score::run(a),
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Launch(a)) => launch::run(a),
        Some(Command::Merge(a)) => merge::run(a),
        Some(Command::Sft(a)) => sft::run(a),
        Some(Command::Eval(a)) => eval::run(a),
        Some(Command::Play(a)) => play::run(a),
        Some(Command::Plot(a)) => plot::run(a),
        Some(Command::Plan(a)) => plan::run(a),
        Some(Command::Bench(a)) => bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) if crate::util::interrupt::is_interrupt(&e) => {
            eprintln!("{}", one_line(&e));
            130
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            1
        }
    }
}

/// The whole error chain on one line: "outer: cause: root cause".
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
