//! `tz-engine bench kernels`: per op and shape, time per call, achieved GB/s (memory-bound
//! ops) or TFLOP/s (GEMM, attention), and the percentage of this device's *measured* copy
//! bandwidth or GEMM rate, so the numbers mean something on any machine. The ops and shapes
//! are `backend::bench_ops`, the list the criterion bench (`benches/kernels.rs`) runs too.
use crate::backend::bench_ops::{self, Shapes, Work};
use crate::backend::{Backend, DType, Device, View};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub suite: Suite,
}

#[derive(Subcommand)]
pub enum Suite {
    /// Every backend op: ms per call, GB/s or TFLOP/s, % of the measured copy bandwidth / GEMM rate.
    Kernels(KernelArgs),
    /// Score, generate and train-step throughput of a model directory (load time apart), the
    /// phases `tools/bench_cpu_torch.py` runs in PyTorch.
    Phases(super::bench_phases::PhaseArgs),
}

#[derive(Args, Default)]
pub struct KernelArgs {
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Tokens per op (default 16384 on a GPU, the target shape; 512 on the CPU).
    #[arg(long)]
    pub tokens: Option<usize>,
    /// Hidden size / intermediate size / vocab of the shapes (default: Qwen2.5-1.5B).
    #[arg(long, default_value_t = 1536)]
    pub hidden: usize,
    #[arg(long, default_value_t = 8960)]
    pub inter: usize,
    #[arg(long, default_value_t = 151936)]
    pub vocab: usize,
    /// Timed repetitions per op (after one warm-up call).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Write the results as JSON lines to this file as well.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(serde::Serialize)]
struct Row {
    op: String,
    shape: String,
    ms: f64,
    gbps: Option<f64>,
    tflops: Option<f64>,
    pct_of_peak: f64,
}

pub fn run(args: BenchArgs) -> Result<i32> {
    match args.suite {
        Suite::Kernels(a) => kernels(a),
        Suite::Phases(a) => super::bench_phases::run(a),
    }
}

fn kernels(a: KernelArgs) -> Result<i32> {
    if a.reps == 0 {
        bail!("--reps must be positive");
    }
    // Every shape is validated before a backend exists or anything is allocated.
    let gpu = a.device != Device::Cpu;
    let shapes = Shapes::new(gpu, a.tokens.unwrap_or(Shapes::default_tokens(gpu)), a.hidden, a.inter, a.vocab)?;
    crate::with_backend!(a.device, be => bench(&be, &a, &shapes))
}

/// Mean seconds per call of `f` over `reps` calls after a warm-up; synchronizes around it.
pub(super) fn time<B: Backend>(be: &B, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    be.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    be.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

/// Bytes the host can still give (Linux `MemAvailable`), for the CPU backend's memory check.
fn host_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// A rate with three significant digits at least two decimals (CPU attention is well below
/// 0.01 TFLOP/s).
fn rate(v: f64) -> String {
    if !v.is_finite() || v <= 0.0 {
        return format!("{v:.2}");
    }
    let decimals = (2 - v.log10().floor() as i32).max(2) as usize;
    format!("{v:.decimals$}")
}

fn bench<B: Backend>(be: &B, a: &KernelArgs, shapes: &Shapes) -> Result<i32> {
    let ops = bench_ops::ops(be, shapes);
    // The reference rates' buffers: two 256 MiB copies and three g×g act matrices.
    let big = 64 << 20;
    let g = 2048.min(4 * shapes.tokens).max(256);
    let reference = (2 * 4 * big + 3 * g * g * be.act_dtype().size_bytes()) as u64;
    let avail = be.mem_info().map(|(free, _)| free as u64).or_else(|| if be.name() == "cpu" { host_available() } else { None });
    if let Some(avail) = avail {
        // Checked before anything is allocated: a failed host allocation aborts the process.
        let budget = avail / 10 * 9;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let need = ops
            .iter()
            .map(|o| (o.mem_bytes, format!("{} {}", o.op, o.shape)))
            .chain([(reference, "the reference copy and GEMM".to_string())])
            .max_by_key(|(b, _)| *b);
        if let Some((bytes, what)) = need.filter(|(b, _)| *b > budget) {
            bail!(
                "{what} needs {:.2} GiB of {} memory, {:.2} GiB are available: use smaller --tokens/--hidden/--inter/--vocab",
                gib(bytes),
                be.name(),
                gib(avail)
            );
        }
    }

    // Reference rates of this device: a large copy and a large GEMM.
    let (x, y) = (be.alloc(DType::F32, big)?, be.alloc(DType::F32, big)?);
    let s = time(be, a.reps, || be.copy(View::all(&y), View::all(&x)))?;
    let copy_gbps = 2.0 * 4.0 * big as f64 / s / 1e9;
    let act = be.act_dtype();
    let (ga, gb, gc) = (be.alloc(act, g * g)?, be.alloc(act, g * g)?, be.alloc(act, g * g)?);
    let s = time(be, a.reps, || be.gemm(View::all(&gc), View::all(&ga), View::all(&gb), None, g, g, g, false, true, 1.0, 0.0))?;
    let gemm_tflops = 2.0 * (g * g * g) as f64 / s / 1e12;
    println!("tz-engine commit {}", env!("TZ_GIT_COMMIT"));
    #[cfg(feature = "cuda")]
    if let Some(c) = (be as &dyn std::any::Any).downcast_ref::<crate::backend::cuda::CudaBackend>() {
        println!(
            "gpu: {} (compute capability {}.{}, {} SMs)",
            c.device_name(),
            c.compute_capability().0,
            c.compute_capability().1,
            c.multiprocessors()
        );
    }
    println!("device {}: measured copy {copy_gbps:.1} GB/s, GEMM {} TFLOP/s ({g}^3)", be.name(), rate(gemm_tflops));
    drop((x, y, ga, gb, gc));
    for note in shapes.notes() {
        println!("{note}");
    }

    let mut rows: Vec<Row> = vec![];
    for op in ops {
        let mut f = (op.setup)()?;
        let s = time(be, a.reps, &mut f)?;
        drop(f);
        let row = match op.work {
            Work::Bytes(b) => {
                let gbps = b as f64 / s / 1e9;
                Row { op: op.op, shape: op.shape, ms: s * 1e3, gbps: Some(gbps), tflops: None, pct_of_peak: 100.0 * gbps / copy_gbps }
            }
            Work::Flops(f) => {
                let tf = f as f64 / s / 1e12;
                Row { op: op.op, shape: op.shape, ms: s * 1e3, gbps: None, tflops: Some(tf), pct_of_peak: 100.0 * tf / gemm_tflops }
            }
        };
        rows.push(row);
    }

    println!("{:<22} {:<28} {:>10} {:>10} {:>10} {:>8}", "op", "shape", "ms", "GB/s", "TFLOP/s", "% peak");
    for r in &rows {
        let f = |x: Option<f64>| x.map(rate).unwrap_or_else(|| "-".into());
        println!("{:<22} {:<28} {:>10.3} {:>10} {:>10} {:>7.1}%", r.op, r.shape, r.ms, f(r.gbps), f(r.tflops), r.pct_of_peak);
    }
    if let Some(path) = &a.json {
        let text: String = rows.iter().map(|r| serde_json::to_string(r).map(|s| s + "\n")).collect::<Result<_, _>>()?;
        std::fs::write(path, text)?;
    }
    Ok(0)
}
