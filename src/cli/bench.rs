//! `tz-engine bench kernels`: per op and shape, time per call, achieved GB/s (memory-bound
//! ops) or TFLOP/s (GEMM, attention), and the percentage of this device's *measured* copy
//! bandwidth or GEMM rate, so the numbers mean something on any machine.
use crate::backend::{AdamWParams, AttnShape, Backend, DType, Device, SamplingParams, Seqs, View};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use std::time::Instant;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    #[default]
    Kernels,
}

#[derive(Args, Default)]
pub struct BenchArgs {
    #[arg(value_enum, default_value_t = Suite::Kernels)]
    pub suite: Suite,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Tokens per op (the targets use 16384 on a GPU; the CPU default is smaller).
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
    if args.reps == 0 || args.hidden == 0 || args.inter == 0 || args.vocab == 0 {
        bail!("--reps, --hidden, --inter and --vocab must be positive");
    }
    crate::with_backend!(args.device, be => bench(&be, &args))
}

/// Mean seconds per call of `f` over `reps` calls after a warm-up; synchronizes around it.
fn time<B: Backend>(be: &B, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    be.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    be.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn bench<B: Backend + 'static>(be: &B, a: &BenchArgs) -> Result<i32> {
    let n = a.tokens.unwrap_or(if be.name() == "cpu" { 512 } else { 16384 });
    let (c, inter, vocab) = (a.hidden, a.inter, a.vocab);
    let act = be.act_dtype();
    let es = act.size_bytes() as f64;
    let buf = |dt: DType, len: usize| be.alloc(dt, len.max(1));
    let mut rows: Vec<Row> = vec![];

    // Reference rates of this device: a large copy and a large GEMM.
    let big = 64 << 20;
    let (x, y) = (buf(DType::F32, big)?, buf(DType::F32, big)?);
    let s = time(be, a.reps, || be.copy(View::all(&y), View::all(&x)))?;
    let copy_gbps = 2.0 * 4.0 * big as f64 / s / 1e9;
    let g = 2048.min(4 * n).max(256);
    let (ga, gb, gc) = (buf(act, g * g)?, buf(act, g * g)?, buf(act, g * g)?);
    let s = time(be, a.reps, || be.gemm(View::all(&gc), View::all(&ga), View::all(&gb), None, g, g, g, false, true, 1.0, 0.0))?;
    let gemm_tflops = 2.0 * (g * g * g) as f64 / s / 1e12;
    println!("tz-engine commit {}", env!("TZ_GIT_COMMIT"));
    #[cfg(feature = "cuda")]
    if let Some(c) = (be as &dyn std::any::Any).downcast_ref::<crate::backend::cuda::CudaBackend>() {
        println!("gpu: {} (compute capability {}.{}, {} SMs)", c.device_name(), c.compute_capability().0, c.compute_capability().1, c.multiprocessors());
    }
    println!("device {}: measured copy {copy_gbps:.1} GB/s, GEMM {gemm_tflops:.2} TFLOP/s ({g}^3)", be.name());
    drop((x, y, ga, gb, gc));

    let mut mem = |op: &str, shape: String, s: f64, bytes: f64| {
        let gbps = bytes / s / 1e9;
        rows.push(Row { op: op.into(), shape, ms: s * 1e3, gbps: Some(gbps), tflops: None, pct_of_peak: 100.0 * gbps / copy_gbps });
    };

    // RMSNorm over [n, c].
    let (xin, out, w, rstd) = (buf(act, n * c)?, buf(act, n * c)?, buf(act, c)?, buf(DType::F32, n)?);
    be.fill(View::all(&xin), 0.5)?;
    be.fill(View::all(&w), 1.0)?;
    let s = time(be, a.reps, || be.rmsnorm_fwd(View::all(&out), View::all(&rstd), View::all(&xin), View::all(&w), n, c, 1e-6))?;
    mem("rmsnorm_fwd", format!("{n}x{c}"), s, 2.0 * (n * c) as f64 * es);

    // SwiGLU over [n, 2·inter].
    let (gu, h) = (buf(act, n * 2 * inter)?, buf(act, n * inter)?);
    let s = time(be, a.reps, || be.swiglu_fwd(View::all(&h), View::all(&gu), n, inter))?;
    mem("swiglu_fwd", format!("{n}x{inter}"), s, 3.0 * (n * inter) as f64 * es);

    // Log-prob gather over [rows, vocab] (the lm_head GEMM excluded).
    let lrows = (n / 4).max(1);
    let (logits, tgt, lp, lse) = (buf(act, lrows * vocab)?, buf(DType::U32, lrows)?, buf(DType::F32, lrows)?, buf(DType::F32, lrows)?);
    let s = time(be, a.reps, || be.logprob_fwd(View::all(&lp), View::all(&lse), None, View::all(&logits), View::all(&tgt), lrows, vocab, 1.0))?;
    mem("logprob_fwd", format!("{lrows}x{vocab}"), s, (lrows * vocab) as f64 * es);
    // Backward: reads the logits, writes the logit gradients (fused softmax − one-hot).
    let (dlogits, dlp) = (buf(act, lrows * vocab)?, buf(DType::F32, lrows)?);
    be.fill(View::all(&dlp), 1.0)?;
    let s = time(be, a.reps, || be.logprob_bwd(View::all(&dlogits), View::all(&logits), View::all(&tgt), View::all(&lse), None, View::all(&dlp), None, lrows, vocab, 1.0))?;
    mem("logprob_bwd", format!("{lrows}x{vocab}"), s, 2.0 * (lrows * vocab) as f64 * es);
    drop((dlogits, dlp));

    // Sampling over [rows, vocab] with top-p.
    let srows = lrows.min(256);
    let toks = buf(DType::U32, srows)?;
    let seeds: Vec<u64> = (0..srows as u64).collect();
    let sp = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9 };
    let s = time(be, a.reps, || be.sample(View::all(&toks), View::all(&logits).slice(0, srows * vocab), srows, vocab, &sp, &seeds, &seeds))?;
    mem("sample_top_p", format!("{srows}x{vocab}"), s, (srows * vocab) as f64 * es);
    drop((logits, lp, lse, toks));

    // AdamW over a 1.5B-like parameter count scaled to the token budget.
    let np = (n * c * 8).max(1 << 20);
    let (p, gr, m, v) = (buf(DType::F32, np)?, buf(DType::F32, np)?, buf(DType::F32, np)?, buf(DType::F32, np)?);
    let ap = AdamWParams { lr: 1e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1, grad_scale: 1.0 };
    let s = time(be, a.reps, || be.adamw(View::all(&p), None, View::all(&gr), View::all(&m), View::all(&v), &ap))?;
    mem("adamw_f32", format!("{np}"), s, 7.0 * 4.0 * np as f64);
    if be.needs_master_weights() {
        // What training runs on this backend: f32 master + moments, activation-dtype weights out.
        let w = buf(act, np)?;
        let s = time(be, a.reps, || be.adamw(View::all(&w), Some(View::all(&p)), View::all(&gr), View::all(&m), View::all(&v), &ap))?;
        mem("adamw_master", format!("{np}"), s, 7.0 * 4.0 * np as f64 + es * np as f64);
    }
    drop((p, gr, m, v));

    // Causal attention forward and backward, sequences of 1024 tokens. On CUDA both
    // implementations: tensor cores (the default) and the FMA kernels (rows `*_fma`).
    #[cfg(feature = "cuda")]
    let cuda = (be as &dyn std::any::Any).downcast_ref::<crate::backend::cuda::CudaBackend>();
    #[cfg(not(feature = "cuda"))]
    let cuda: Option<&()> = None;
    let variants: &[(&str, bool)] = if cuda.is_some() { &[("", false), ("_fma", true)] } else { &[("", false)] };
    for (hd, &(suffix, fma)) in [64usize, 128].into_iter().flat_map(|hd| variants.iter().map(move |v| (hd, v))) {
        #[cfg(feature = "cuda")]
        if let Some(c) = cuda {
            c.use_fma_attention(fma);
        }
        let _ = fma;
        let shape = AttnShape { n_head: c / hd, n_kv_head: 2.min(c / hd), head_dim: hd };
        let seq = 1024.min(n);
        let nseq = (n / seq).max(1);
        let tok = nseq * seq;
        let cu: Vec<u32> = (0..=nseq as u32).map(|i| i * seq as u32).collect();
        let cud = buf(DType::U32, cu.len())?;
        be.upload_u32(View::all(&cud), &cu)?;
        let (qkv, o, l) = (buf(act, tok * shape.qkv_width())?, buf(act, tok * shape.q_width())?, buf(DType::F32, tok * shape.n_head)?);
        let seqs = Seqs { cu_dev: View::all(&cud), cu_host: &cu };
        let s = time(be, a.reps, || be.attention_fwd(View::all(&o), View::all(&l), View::all(&qkv), seqs, shape, 1.0 / (hd as f32).sqrt()))?;
        // Causal: half of the 4·T²·d·heads multiply-adds.
        let flops = nseq as f64 * 2.0 * (seq * seq) as f64 * hd as f64 * shape.n_head as f64;
        let tf = flops / s / 1e12;
        rows.push(Row { op: format!("attention_fwd{suffix}"), shape: format!("{nseq}x{seq} d{hd} h{}", shape.n_head), ms: s * 1e3, gbps: None, tflops: Some(tf), pct_of_peak: 100.0 * tf / gemm_tflops });
        // Backward: 2.5× the forward's FLOPs (dV, dP, dQ, dK GEMMs plus the recomputed scores).
        let (dout, dqkv) = (buf(act, tok * shape.q_width())?, buf(act, tok * shape.qkv_width())?);
        be.fill(View::all(&dout), 0.01)?;
        let s = time(be, a.reps, || be.attention_bwd(View::all(&dqkv), View::all(&dout), View::all(&qkv), View::all(&o), View::all(&l), seqs, shape, 1.0 / (hd as f32).sqrt()))?;
        let tf = 2.5 * flops / s / 1e12;
        rows.push(Row { op: format!("attention_bwd{suffix}"), shape: format!("{nseq}x{seq} d{hd} h{}", shape.n_head), ms: s * 1e3, gbps: None, tflops: Some(tf), pct_of_peak: 100.0 * tf / gemm_tflops });
        drop((qkv, o, l, dout, dqkv));
        // Decode: one query per row against a full KV cache (the rollout's inner loop); memory
        // bound, the bytes being the K and V rows read.
        let (rows_b, ctx) = (if be.name() == "cpu" { 8 } else { 256 }, seq);
        let kvw = shape.kv_width();
        let (kc, vc) = (buf(act, rows_b * ctx * kvw)?, buf(act, rows_b * ctx * kvw)?);
        be.fill(View::all(&kc), 0.01)?;
        be.fill(View::all(&vc), 0.01)?;
        let (q, od) = (buf(act, rows_b * shape.qkv_width())?, buf(act, rows_b * shape.q_width())?);
        be.fill(View::all(&q), 0.01)?;
        let (sl, ln) = (buf(DType::U32, rows_b)?, buf(DType::U32, rows_b)?);
        be.upload_u32(View::all(&sl), &(0..rows_b as u32).collect::<Vec<_>>())?;
        be.upload_u32(View::all(&ln), &vec![ctx as u32; rows_b])?;
        let s = time(be, a.reps, || {
            be.attention_decode(View::all(&od), View::all(&q), View::all(&kc), View::all(&vc), View::all(&sl), View::all(&ln), rows_b, ctx, shape, ctx, 1.0 / (hd as f32).sqrt())
        })?;
        let gbps = 2.0 * (rows_b * ctx * kvw) as f64 * es / s / 1e9;
        rows.push(Row { op: format!("attention_decode{suffix}"), shape: format!("{rows_b}x{ctx} d{hd} h{}", shape.n_head), ms: s * 1e3, gbps: Some(gbps), tflops: None, pct_of_peak: 100.0 * gbps / copy_gbps });
    }
    #[cfg(feature = "cuda")]
    if let Some(c) = cuda {
        c.use_fma_attention(false);
    }

    println!("{:<16} {:<28} {:>10} {:>10} {:>10} {:>8}", "op", "shape", "ms", "GB/s", "TFLOP/s", "% peak");
    for r in &rows {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!("{:<16} {:<28} {:>10.3} {:>10} {:>10} {:>7.1}%", r.op, r.shape, r.ms, f(r.gbps), f(r.tflops), r.pct_of_peak);
    }
    if let Some(path) = &a.json {
        let text: String = rows.iter().map(|r| serde_json::to_string(r).map(|s| s + "\n")).collect::<Result<_, _>>()?;
        std::fs::write(path, text)?;
    }
    Ok(0)
}
