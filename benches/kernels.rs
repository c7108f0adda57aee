//! One criterion bench per backend op, the same body on every backend: the CPU backend always,
//! the CUDA backend when a GPU is present (otherwise it prints why it skipped).
//!
//! Throughput: memory-bound ops report bytes moved (criterion prints GB/s); GEMM and attention
//! report floating-point operations as "elements" (criterion's elem/s is then FLOP/s).
//! Shapes: Qwen2.5-1.5B widths (hidden 1536, intermediate 8960, 12 query / 2 KV heads of 128,
//! vocab 151,936). The CUDA side runs 16,384 tokens, the target shape; the CPU side a
//! smaller token count so `cargo bench` stays minutes, not hours, on two cores.
//! `tz-engine bench kernels` prints the same ops as a table with percent of measured peak.
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use criterion::measurement::WallTime;
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::{AdamWParams, AttnShape, Backend, DType, SamplingParams, Seqs, View};
use tz_engine::rng::Rng;

const HIDDEN: usize = 1536;
const INTER: usize = 8960;
const VOCAB: usize = 151_936;

struct Sizes {
    tokens: usize,
    /// Tokens per sequence for attention (causal, packed varlen).
    seq: usize,
    /// Rows of the log-prob gather and sampling (each a full vocabulary row).
    vocab_rows: usize,
    params: usize,
}

fn random<B: Backend>(be: &B, rng: &mut Rng, dt: DType, n: usize, scale: f32) -> B::Buf {
    let host: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * scale).collect();
    let b = be.alloc(dt, n).unwrap();
    be.upload_f32(View::all(&b), &host).unwrap();
    b
}

fn ids<B: Backend>(be: &B, rng: &mut Rng, n: usize, below: usize) -> B::Buf {
    let host: Vec<u32> = (0..n).map(|_| rng.below(below as u64) as u32).collect();
    let b = be.alloc(DType::U32, n).unwrap();
    be.upload_u32(View::all(&b), &host).unwrap();
    b
}

/// Runs `f` then waits for the device, so each iteration's time is the op's.
fn run<B: Backend>(g: &mut BenchmarkGroup<WallTime>, be: &B, name: &str, work: Throughput, mut f: impl FnMut()) {
    g.throughput(work);
    g.bench_function(name, |b| {
        b.iter(|| {
            f();
            be.synchronize().unwrap();
        })
    });
}

fn bench_ops<B: Backend>(c: &mut Criterion, be: &B, s: &Sizes) {
    let mut rng = Rng::new(7);
    let act = be.act_dtype();
    let es = act.size_bytes() as u64;
    let (n, hc) = (s.tokens, HIDDEN);
    let bytes = |x: usize| Throughput::Bytes(x as u64);
    let mut g = c.benchmark_group(format!("{}_{}tok", be.name(), n));
    g.sample_size(10);

    // Embedding.
    let table = random(be, &mut rng, act, VOCAB * hc, 0.02);
    let tok = ids(be, &mut rng, n, VOCAB);
    let x = random(be, &mut rng, act, n * hc, 1.0);
    run(&mut g, be, "embedding_fwd", bytes(2 * n * hc * es as usize), || be.embedding_fwd(View::all(&x), View::all(&table), View::all(&tok), n, hc).unwrap());
    drop(table);
    let dtable = be.alloc(DType::F32, VOCAB * hc).unwrap();
    run(&mut g, be, "embedding_bwd", bytes(n * hc * (es as usize + 8)), || be.embedding_bwd(View::all(&dtable), View::all(&x), View::all(&tok), n, hc).unwrap());
    drop(dtable);

    // RMSNorm, plain and fused with the residual add; backward.
    let (w, out, rstd) = (random(be, &mut rng, act, hc, 1.0), be.alloc(act, n * hc).unwrap(), be.alloc(DType::F32, n).unwrap());
    let delta = random(be, &mut rng, act, n * hc, 1.0);
    let resid = random(be, &mut rng, act, n * hc, 1.0);
    run(&mut g, be, "rmsnorm_fwd", bytes(2 * n * hc * es as usize), || be.rmsnorm_fwd(View::all(&out), View::all(&rstd), View::all(&x), View::all(&w), n, hc, 1e-6).unwrap());
    run(&mut g, be, "residual_rmsnorm_fwd", bytes(4 * n * hc * es as usize), || {
        be.residual_rmsnorm_fwd(View::all(&resid), View::all(&out), View::all(&rstd), View::all(&resid), View::all(&delta), View::all(&w), n, hc, 1e-6).unwrap()
    });
    let (dx, dw) = (be.alloc(act, n * hc).unwrap(), be.alloc(DType::F32, hc).unwrap());
    run(&mut g, be, "rmsnorm_bwd", bytes(4 * n * hc * es as usize), || {
        be.rmsnorm_bwd(View::all(&dx), View::all(&dw), View::all(&delta), View::all(&x), View::all(&w), View::all(&rstd), n, hc).unwrap()
    });
    drop((w, out, rstd, delta, resid, dw));

    // GEMM: the attention output projection, [n, c] x [c, c]^T.
    let wo = random(be, &mut rng, act, hc * hc, 0.02);
    run(&mut g, be, "gemm_nt", Throughput::Elements((2 * n * hc * hc) as u64), || {
        be.gemm(View::all(&dx), View::all(&x), View::all(&wo), None, n, hc, hc, false, true, 1.0, 0.0).unwrap()
    });
    drop((wo, x, dx));

    // RoPE and attention over packed causal sequences of `seq` tokens.
    let shape = AttnShape { n_head: 12, n_kv_head: 2, head_dim: 128 };
    let nseq = (n / s.seq).max(1);
    let t = nseq * s.seq;
    let cu: Vec<u32> = (0..=nseq as u32).map(|i| i * s.seq as u32).collect();
    let cud = be.alloc(DType::U32, cu.len()).unwrap();
    be.upload_u32(View::all(&cud), &cu).unwrap();
    let seqs = || Seqs { cu_dev: View::all(&cud), cu_host: &cu };
    let pos_host: Vec<u32> = (0..t as u32).map(|i| i % s.seq as u32).collect();
    let pos = be.alloc(DType::U32, t).unwrap();
    be.upload_u32(View::all(&pos), &pos_host).unwrap();
    let qkv = random(be, &mut rng, act, t * shape.qkv_width(), 1.0);
    run(&mut g, be, "rope", bytes(2 * t * (shape.q_width() + shape.kv_width()) * es as usize), || {
        be.rope(View::all(&qkv), View::all(&pos), t, shape, 1e6, false).unwrap()
    });
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let (o, lse) = (be.alloc(act, t * shape.q_width()).unwrap(), be.alloc(DType::F32, t * shape.n_head).unwrap());
    // Causal: half of the 4·T²·d multiply-add FLOPs per head; the backward does 2.5× the forward.
    let fwd_flops = (nseq * 2 * s.seq * s.seq * shape.head_dim * shape.n_head) as u64;
    run(&mut g, be, "attention_fwd_d128", Throughput::Elements(fwd_flops), || {
        be.attention_fwd(View::all(&o), View::all(&lse), View::all(&qkv), seqs(), shape, scale).unwrap()
    });
    let dout = random(be, &mut rng, act, t * shape.q_width(), 1.0);
    let dqkv = be.alloc(act, t * shape.qkv_width()).unwrap();
    run(&mut g, be, "attention_bwd_d128", Throughput::Elements(fwd_flops * 5 / 2), || {
        be.attention_bwd(View::all(&dqkv), View::all(&dout), View::all(&qkv), View::all(&o), View::all(&lse), seqs(), shape, scale).unwrap()
    });
    drop((dout, dqkv, lse));

    // Decode attention: one query per sequence over a KV cache of `seq` positions.
    let (b, t_max) = (nseq.max(8), s.seq);
    let kvw = shape.kv_width();
    let (kc, vc) = (random(be, &mut rng, act, b * t_max * kvw, 1.0), random(be, &mut rng, act, b * t_max * kvw, 1.0));
    let slots: Vec<u32> = (0..b as u32).collect();
    let lens: Vec<u32> = vec![t_max as u32; b];
    let (sl, ln) = (be.alloc(DType::U32, b).unwrap(), be.alloc(DType::U32, b).unwrap());
    be.upload_u32(View::all(&sl), &slots).unwrap();
    be.upload_u32(View::all(&ln), &lens).unwrap();
    let qd = View::all(&qkv).slice(0, b * shape.qkv_width());
    let od = View::all(&o).slice(0, b * shape.q_width());
    run(&mut g, be, "attention_decode_d128", bytes(2 * b * t_max * kvw * es as usize), || {
        be.attention_decode(od, qd, View::all(&kc), View::all(&vc), View::all(&sl), View::all(&ln), b, t_max, shape, t_max, scale).unwrap()
    });
    drop((kc, vc, qkv, o));

    // SwiGLU over the fused gate|up projection.
    let gu = random(be, &mut rng, act, n * 2 * INTER, 1.0);
    let h = random(be, &mut rng, act, n * INTER, 1.0);
    run(&mut g, be, "swiglu_fwd", bytes(3 * n * INTER * es as usize), || be.swiglu_fwd(View::all(&h), View::all(&gu), n, INTER).unwrap());
    let dgu = be.alloc(act, n * 2 * INTER).unwrap();
    run(&mut g, be, "swiglu_bwd", bytes(5 * n * INTER * es as usize), || be.swiglu_bwd(View::all(&dgu), View::all(&h), View::all(&gu), n, INTER).unwrap());
    drop((gu, h, dgu));

    // Log-prob gather with entropy over full-vocabulary rows (the lm_head GEMM excluded).
    let r = s.vocab_rows;
    let logits = random(be, &mut rng, act, r * VOCAB, 2.0);
    let tgt = ids(be, &mut rng, r, VOCAB);
    let (lp, lse, ent) = (be.alloc(DType::F32, r).unwrap(), be.alloc(DType::F32, r).unwrap(), be.alloc(DType::F32, r).unwrap());
    run(&mut g, be, "logprob_fwd_entropy", bytes(r * VOCAB * es as usize), || {
        be.logprob_fwd(View::all(&lp), View::all(&lse), Some(View::all(&ent)), View::all(&logits), View::all(&tgt), r, VOCAB, 1.0).unwrap()
    });
    let dlogits = be.alloc(act, r * VOCAB).unwrap();
    let (dlp, dent) = (random(be, &mut rng, DType::F32, r, 1.0), random(be, &mut rng, DType::F32, r, 1.0));
    run(&mut g, be, "logprob_bwd_entropy", bytes(2 * r * VOCAB * es as usize), || {
        be.logprob_bwd(View::all(&dlogits), View::all(&logits), View::all(&tgt), View::all(&lse), Some(View::all(&ent)), View::all(&dlp), Some(View::all(&dent)), r, VOCAB, 1.0)
            .unwrap()
    });
    drop(dlogits);

    // Sampling with top-p 0.9 over the same rows.
    let rs = r.min(256);
    let out_tok = be.alloc(DType::U32, rs).unwrap();
    let seeds: Vec<u64> = (0..rs as u64).collect();
    let sp = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9 };
    let rows = View::all(&logits).slice(0, rs * VOCAB);
    run(&mut g, be, "sample_top_p", bytes(rs * VOCAB * es as usize), || be.sample(View::all(&out_tok), rows, rs, VOCAB, &sp, &seeds, &seeds).unwrap());
    drop((logits, tgt, lp, lse, ent, dlp, dent, out_tok));

    // A*PO loss over packed response tokens (64 sequences).
    let ns = 64;
    let per = (n / ns).max(1);
    let cu2: Vec<u32> = (0..=ns as u32).map(|i| i * per as u32).collect();
    let cu2d = be.alloc(DType::U32, cu2.len()).unwrap();
    be.upload_u32(View::all(&cu2d), &cu2).unwrap();
    let tt = ns * per;
    let (logp, refp, target) = (random(be, &mut rng, DType::F32, tt, 1.0), random(be, &mut rng, DType::F32, tt, 1.0), random(be, &mut rng, DType::F32, ns, 1.0));
    let (loss, dlogp) = (be.alloc(DType::F32, ns).unwrap(), be.alloc(DType::F32, tt).unwrap());
    run(&mut g, be, "apo_loss", bytes(3 * tt * 4), || {
        let seqs = Seqs { cu_dev: View::all(&cu2d), cu_host: &cu2 };
        be.apo_loss(View::all(&loss), View::all(&dlogp), View::all(&logp), View::all(&refp), View::all(&target), seqs, 1e-3, 1.0 / ns as f32).unwrap()
    });
    drop((logp, refp, target, loss, dlogp));

    // Fused AdamW over a flat parameter buffer (fp32 master weights where the backend keeps them).
    let np = s.params;
    let master = be.needs_master_weights().then(|| random(be, &mut rng, DType::F32, np, 0.02));
    let p = random(be, &mut rng, if master.is_some() { act } else { DType::F32 }, np, 0.02);
    let (gr, m, v) = (random(be, &mut rng, DType::F32, np, 1.0), be.alloc(DType::F32, np).unwrap(), be.alloc(DType::F32, np).unwrap());
    be.fill(View::all(&m), 0.0).unwrap();
    be.fill(View::all(&v), 0.0).unwrap();
    let ap = AdamWParams { lr: 1e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1, grad_scale: 1.0 };
    let moved = if master.is_some() { np * (7 * 4 + es as usize) } else { np * 7 * 4 };
    run(&mut g, be, "adamw", bytes(moved), || be.adamw(View::all(&p), master.as_ref().map(View::all), View::all(&gr), View::all(&m), View::all(&v), &ap).unwrap());
    g.finish();
}

fn cpu(c: &mut Criterion) {
    let be = CpuBackend::new();
    bench_ops(c, &be, &Sizes { tokens: 512, seq: 256, vocab_rows: 16, params: 1 << 22 });
}

#[cfg(feature = "cuda")]
fn cuda(c: &mut Criterion) {
    match tz_engine::backend::cuda::CudaBackend::new(0) {
        Ok(be) => bench_ops(c, &be, &Sizes { tokens: 16384, seq: 1024, vocab_rows: 4096, params: 1_543_714_304 / 4 }),
        Err(e) => eprintln!("cuda benches skipped: {e:#}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: &mut Criterion) {
    eprintln!("cuda benches skipped: built without the `cuda` feature");
}

criterion_group!(benches, cpu, cuda);
criterion_main!(benches);
