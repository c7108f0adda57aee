//! The benchmarked backend ops: one list shared by the criterion bench (`benches/kernels.rs`)
//! and `tz-engine bench kernels` (src/cli/bench.rs), so both time the same ops on the same
//! shapes. Each entry is an op name, a shape label, its work (bytes moved for memory-bound
//! ops, floating-point operations for GEMM and attention), the device memory it allocates, and
//! a setup that allocates and fills its buffers (not timed) and returns a closure running the
//! op once. Setups run one at a time, so only one op's buffers are live.
//!
//! Op names and shape labels are what `tools/compare_bench.py` joins with
//! `tools/bench_torch.py` (`rmsnorm_fwd` `{n}x{c}`, `logprob_fwd` `{rows}x{vocab}`,
//! `attention_fwd` `{seqs}x{seq} d{head_dim} h{heads}`, ...). On CUDA the attention rows come
//! twice: tensor cores (the default) and the FMA kernels (`*_fma`).
use super::{AdamWParams, AttnShape, Backend, DType, SamplingParams, Seqs, View};
use anyhow::{bail, Result};

/// What one call of an op does, for its throughput.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Bytes read and written (memory-bound ops: GB/s against the copy bandwidth).
    Bytes(u64),
    /// Floating-point operations (GEMM, attention: TFLOP/s against the GEMM rate).
    Flops(u64),
}

/// Runs the op once (asynchronously on devices that are: the caller synchronizes).
pub type Run<'a> = Box<dyn FnMut() -> Result<()> + 'a>;
/// Allocates and fills the op's buffers and returns its `Run`.
pub type Setup<'a> = Box<dyn FnOnce() -> Result<Run<'a>> + 'a>;

pub struct BenchOp<'a> {
    pub op: String,
    pub shape: String,
    pub work: Work,
    /// Bytes of backend memory the setup allocates (for a check before anything is allocated).
    pub mem_bytes: u64,
    pub setup: Setup<'a>,
}

/// The largest element count of one benchmarked buffer: kernels take element counts and row
/// widths as 32-bit ints.
pub const MAX_ELEMS: u64 = i32::MAX as u64;

/// The head dims of the attention rows; hidden must be a multiple of the smallest.
pub const HEAD_DIMS: [usize; 2] = [64, 128];

/// The shapes of every op, derived from tokens and the model widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shapes {
    pub tokens: usize,
    pub hidden: usize,
    pub inter: usize,
    pub vocab: usize,
    /// Tokens per packed causal sequence of the attention rows, and the decode rows' context.
    pub seq: usize,
    /// Full-vocabulary rows of the log-prob ops.
    pub logprob_rows: usize,
    /// Rows of the sampling op.
    pub sample_rows: usize,
    /// Queries of the decode-attention rows (one per KV-cache slot).
    pub decode_rows: usize,
    /// Parameters of the AdamW rows.
    pub params: usize,
}

impl Shapes {
    /// The default token count: 512 on the CPU (minutes, not hours, on two cores), 16,384 on
    /// a GPU (the target shape).
    pub fn default_tokens(gpu: bool) -> usize {
        if gpu {
            16384
        } else {
            512
        }
    }

    /// Validated shapes (`gpu`: for a GPU backend, 256 decode rows instead of 8): every size
    /// positive, hidden a multiple of 64 (the head dim), and no buffer over `MAX_ELEMS`
    /// elements. Errors are one line naming the bench arguments; nothing is allocated.
    pub fn new(gpu: bool, tokens: usize, hidden: usize, inter: usize, vocab: usize) -> Result<Self> {
        for (name, v) in [("--tokens", tokens), ("--hidden", hidden), ("--inter", inter), ("--vocab", vocab)] {
            if v == 0 {
                bail!("{name} must be positive");
            }
        }
        if !hidden.is_multiple_of(HEAD_DIMS[0]) {
            bail!("--hidden {hidden} is not a multiple of the head dim {}", HEAD_DIMS[0]);
        }
        let seq = 1024.min(tokens);
        let logprob_rows = (tokens / 4).max(1);
        let s = Shapes {
            tokens,
            hidden,
            inter,
            vocab,
            seq,
            logprob_rows,
            sample_rows: logprob_rows.min(256),
            decode_rows: if gpu { 256 } else { 8 },
            params: tokens.saturating_mul(hidden).saturating_mul(8).max(1 << 20),
        };
        let kvw = 2 * HEAD_DIMS[1].max(HEAD_DIMS[0]); // at most 2 KV heads
        let bufs: [(&str, &[usize]); 7] = [
            ("the activations (tokens x hidden)", &[tokens, hidden]),
            ("the packed qkv rows (tokens x 3 hidden)", &[tokens, 3, hidden]),
            ("the gate|up activations (tokens x 2 inter)", &[tokens, 2, inter]),
            ("the embedding table (vocab x hidden)", &[vocab, hidden]),
            ("the logits (tokens/4 x vocab)", &[logprob_rows, vocab]),
            ("the KV cache (decode rows x seq x kv width)", &[s.decode_rows, seq, kvw]),
            ("the AdamW parameters (8 x tokens x hidden)", &[tokens, hidden, 8]),
        ];
        for (what, dims) in bufs {
            let elems = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            if elems.is_none_or(|e| e > MAX_ELEMS) {
                let product = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" x ");
                bail!("--tokens {tokens} --hidden {hidden} --inter {inter} --vocab {vocab}: {what} would be {product} elements, over the {MAX_ELEMS} one buffer may hold");
            }
        }
        Ok(s)
    }

    /// The attention geometries: `hidden / head_dim` query heads for each head dim dividing
    /// hidden, with 2 KV heads (Qwen2.5's count), or 1 when the query heads are odd (e.g.
    /// hidden 896 at head dim 128: 7 query heads). The rest is `notes()`.
    pub fn attention(&self) -> Vec<AttnShape> {
        HEAD_DIMS
            .iter()
            .filter(|&&hd| self.hidden.is_multiple_of(hd))
            .map(|&hd| {
                let n_head = self.hidden / hd;
                AttnShape { n_head, n_kv_head: if n_head.is_multiple_of(2) { 2 } else { 1 }, head_dim: hd }
            })
            .collect()
    }

    /// Rows left out for these shapes, one line each.
    pub fn notes(&self) -> Vec<String> {
        HEAD_DIMS
            .iter()
            .filter(|&&hd| !self.hidden.is_multiple_of(hd))
            .map(|hd| format!("note: attention rows at head dim {hd} skipped: --hidden {} is not a multiple of {hd}", self.hidden))
            .collect()
    }
}

/// Deterministic pseudo-normal host values (splitmix64, sum of four uniforms) times `scale`.
fn host_values(len: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = z;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    (0..len)
        .map(|_| {
            let s: f64 = (0..4).map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64).sum();
            ((s - 2.0) * 3f64.sqrt()) as f32 * scale
        })
        .collect()
}

/// Host chunk size of the uploads: a buffer is filled with one repeated chunk, so host time
/// and memory stay small whatever the buffer's size.
const CHUNK: usize = 1 << 20;

/// A buffer of pseudo-normal values times `scale`.
fn filled<B: Backend>(be: &B, dt: DType, len: usize, scale: f32, seed: u64) -> Result<B::Buf> {
    let buf = be.alloc(dt, len)?;
    let chunk = host_values(len.min(CHUNK), scale, seed);
    let all = View::all(&buf);
    for off in (0..len).step_by(CHUNK) {
        let l = (len - off).min(CHUNK);
        be.upload_f32(all.slice(off, l), &chunk[..l])?;
    }
    Ok(buf)
}

/// A U32 buffer of the given values.
fn ids<B: Backend>(be: &B, values: &[u32]) -> Result<B::Buf> {
    let buf = be.alloc(DType::U32, values.len())?;
    be.upload_u32(View::all(&buf), values)?;
    Ok(buf)
}

/// `n` token ids below `below`, spread over the range.
fn spread(n: usize, below: usize) -> Vec<u32> {
    (0..n as u64).map(|i| ((i.wrapping_mul(2_654_435_761) >> 3) % below as u64) as u32).collect()
}

/// On CUDA, selects the attention implementation for the next calls: the FMA kernels (`true`)
/// or tensor cores (`false`). Nothing elsewhere.
fn attention_impl<B: Backend>(be: &B, fma: bool) {
    #[cfg(feature = "cuda")]
    if let Some(c) = (be as &dyn std::any::Any).downcast_ref::<super::cuda::CudaBackend>() {
        c.use_fma_attention(fma);
    }
    let _ = (be, fma);
}

fn is_cuda<B: Backend>(be: &B) -> bool {
    be.name() == "cuda"
}

fn entry<'a>(op: &str, shape: String, work: Work, mem_bytes: u64, setup: impl FnOnce() -> Result<Run<'a>> + 'a) -> BenchOp<'a> {
    BenchOp { op: op.to_string(), shape, work, mem_bytes, setup: Box::new(setup) }
}

/// Every benchmarked op for these shapes, in the order they are reported.
pub fn ops<'a, B: Backend>(be: &'a B, s: &Shapes) -> Vec<BenchOp<'a>> {
    let act = be.act_dtype();
    let es = act.size_bytes() as u64;
    let (n, c, inter, vocab) = (s.tokens, s.hidden, s.inter, s.vocab);
    let (nu, cu, iu, vu) = (n as u64, c as u64, inter as u64, vocab as u64);
    let f32b = 4u64;
    let mut v = Vec::new();

    // Embedding: a row gather from the [vocab, c] table, and its scatter-add into F32.
    v.push(entry("embedding_fwd", format!("{n}x{c}"), Work::Bytes(2 * nu * cu * es), vu * cu * es + nu * cu * es + 4 * nu, move || {
        let (table, tok, out) = (filled(be, act, vocab * c, 0.02, 1)?, ids(be, &spread(n, vocab))?, be.alloc(act, n * c)?);
        Ok(Box::new(move || be.embedding_fwd(View::all(&out), View::all(&table), View::all(&tok), n, c)) as Run)
    }));
    v.push(entry(
        "embedding_bwd",
        format!("{n}x{c}"),
        Work::Bytes(nu * cu * (es + 8)),
        vu * cu * f32b + nu * cu * es + 4 * nu,
        move || {
            let (dtable, tok, dout) = (be.alloc(DType::F32, vocab * c)?, ids(be, &spread(n, vocab))?, filled(be, act, n * c, 1.0, 2)?);
            Ok(Box::new(move || be.embedding_bwd(View::all(&dtable), View::all(&dout), View::all(&tok), n, c)) as Run)
        },
    ));

    // RMSNorm over [n, c]: plain, fused with the residual add (in place), backward.
    let norm_mem = 4 * nu * cu * es + cu * es + nu * f32b + cu * f32b;
    v.push(entry("rmsnorm_fwd", format!("{n}x{c}"), Work::Bytes(2 * nu * cu * es), norm_mem, move || {
        let (x, w, out, rstd) =
            (filled(be, act, n * c, 1.0, 3)?, filled(be, act, c, 1.0, 4)?, be.alloc(act, n * c)?, be.alloc(DType::F32, n)?);
        Ok(Box::new(move || be.rmsnorm_fwd(View::all(&out), View::all(&rstd), View::all(&x), View::all(&w), n, c, 1e-6)) as Run)
    }));
    v.push(entry("residual_rmsnorm_fwd", format!("{n}x{c}"), Work::Bytes(4 * nu * cu * es), norm_mem, move || {
        let (resid, delta, w) = (filled(be, act, n * c, 1.0, 5)?, filled(be, act, n * c, 1.0, 6)?, filled(be, act, c, 1.0, 4)?);
        let (out, rstd) = (be.alloc(act, n * c)?, be.alloc(DType::F32, n)?);
        Ok(Box::new(move || {
            be.residual_rmsnorm_fwd(
                View::all(&resid),
                View::all(&out),
                View::all(&rstd),
                View::all(&resid),
                View::all(&delta),
                View::all(&w),
                n,
                c,
                1e-6,
            )
        }) as Run)
    }));
    v.push(entry("rmsnorm_bwd", format!("{n}x{c}"), Work::Bytes(4 * nu * cu * es), norm_mem, move || {
        let (x, w, dout, out, rstd) = (
            filled(be, act, n * c, 1.0, 3)?,
            filled(be, act, c, 1.0, 4)?,
            filled(be, act, n * c, 1.0, 7)?,
            be.alloc(act, n * c)?,
            be.alloc(DType::F32, n)?,
        );
        be.rmsnorm_fwd(View::all(&out), View::all(&rstd), View::all(&x), View::all(&w), n, c, 1e-6)?;
        let (dx, dw) = (be.alloc(act, n * c)?, be.alloc(DType::F32, c)?);
        Ok(Box::new(move || {
            be.rmsnorm_bwd(View::all(&dx), View::all(&dw), View::all(&dout), View::all(&x), View::all(&w), View::all(&rstd), n, c)
        }) as Run)
    }));

    // GEMM: the attention output projection, [n, c] x [c, c]^T.
    v.push(entry("gemm_nt", format!("{n}x{c}x{c}"), Work::Flops(2 * nu * cu * cu), 2 * nu * cu * es + cu * cu * es, move || {
        let (x, w, out) = (filled(be, act, n * c, 1.0, 8)?, filled(be, act, c * c, 0.02, 9)?, be.alloc(act, n * c)?);
        Ok(Box::new(move || be.gemm(View::all(&out), View::all(&x), View::all(&w), None, n, c, c, false, true, 1.0, 0.0)) as Run)
    }));

    // RoPE and attention over packed causal sequences of `seq` tokens; decode attention over a
    // KV cache of `seq` positions per row.
    let attn = s.attention();
    let (seq, nseq) = (s.seq, (n / s.seq).max(1));
    let t = nseq * seq;
    let (tu, sequ) = (t as u64, seq as u64);
    if let Some(&rs) = attn.last() {
        let (qw, kvw) = (rs.q_width() as u64, rs.kv_width() as u64);
        let shape = format!("{t} h{}/{} d{}", rs.n_head, rs.n_kv_head, rs.head_dim);
        v.push(entry("rope", shape, Work::Bytes(2 * tu * (qw + kvw) * es), tu * rs.qkv_width() as u64 * es + 4 * tu, move || {
            let (qkv, pos) =
                (filled(be, act, t * rs.qkv_width(), 1.0, 10)?, ids(be, &(0..t as u32).map(|i| i % seq as u32).collect::<Vec<_>>())?);
            Ok(Box::new(move || be.rope(View::all(&qkv), View::all(&pos), t, rs, 1e6, false)) as Run)
        }));
    }
    let variants: &[(&str, bool)] = if is_cuda(be) { &[("", false), ("_fma", true)] } else { &[("", false)] };
    for sh in attn {
        let (hd, h) = (sh.head_dim, sh.n_head);
        let (w, qw, kvw) = (sh.qkv_width(), sh.q_width(), sh.kv_width());
        let scale = 1.0 / (hd as f32).sqrt();
        let cu_host: Vec<u32> = (0..=nseq as u32).map(|i| i * seq as u32).collect();
        // Causal: half of the 4·T²·d multiply-add FLOPs per head; the backward does 2.5× that
        // (dV, dP, dQ, dK GEMMs plus the recomputed scores).
        let flops = nseq as u64 * 2 * sequ * sequ * hd as u64 * h as u64;
        let shape = format!("{nseq}x{seq} d{hd} h{h}");
        let fwd_mem = tu * (w + qw) as u64 * es + tu * h as u64 * f32b;
        for &(suffix, fma) in variants {
            let cu1 = cu_host.clone();
            v.push(entry(&format!("attention_fwd{suffix}"), shape.clone(), Work::Flops(flops), fwd_mem, move || {
                let cud = ids(be, &cu1)?;
                let (qkv, o, lse) = (filled(be, act, t * w, 1.0, 11)?, be.alloc(act, t * qw)?, be.alloc(DType::F32, t * h)?);
                Ok(Box::new(move || {
                    attention_impl(be, fma);
                    let r = be.attention_fwd(
                        View::all(&o),
                        View::all(&lse),
                        View::all(&qkv),
                        Seqs { cu_dev: View::all(&cud), cu_host: &cu1 },
                        sh,
                        scale,
                    );
                    attention_impl(be, false);
                    r
                }) as Run)
            }));
            let cu2 = cu_host.clone();
            let bwd_mem = fwd_mem + tu * (qw + w) as u64 * es;
            v.push(entry(&format!("attention_bwd{suffix}"), shape.clone(), Work::Flops(flops * 5 / 2), bwd_mem, move || {
                let cud = ids(be, &cu2)?;
                let (qkv, o, lse) = (filled(be, act, t * w, 1.0, 11)?, be.alloc(act, t * qw)?, be.alloc(DType::F32, t * h)?);
                attention_impl(be, fma);
                be.attention_fwd(
                    View::all(&o),
                    View::all(&lse),
                    View::all(&qkv),
                    Seqs { cu_dev: View::all(&cud), cu_host: &cu2 },
                    sh,
                    scale,
                )?;
                attention_impl(be, false);
                let (dout, dqkv) = (filled(be, act, t * qw, 0.01, 12)?, be.alloc(act, t * w)?);
                Ok(Box::new(move || {
                    attention_impl(be, fma);
                    let seqs = Seqs { cu_dev: View::all(&cud), cu_host: &cu2 };
                    let r = be.attention_bwd(
                        View::all(&dqkv),
                        View::all(&dout),
                        View::all(&qkv),
                        View::all(&o),
                        View::all(&lse),
                        seqs,
                        sh,
                        scale,
                    );
                    attention_impl(be, false);
                    r
                }) as Run)
            }));
            // Decode: one query per row against a full KV cache (the rollout's inner loop);
            // memory bound, the bytes being the K and V rows read.
            let (b, ctx) = (s.decode_rows, seq);
            let cache = (b * ctx * kvw) as u64;
            let dec_mem = 2 * cache * es + (b * (w + qw)) as u64 * es + 8 * b as u64;
            v.push(entry(
                &format!("attention_decode{suffix}"),
                format!("{b}x{ctx} d{hd} h{h}"),
                Work::Bytes(2 * cache * es),
                dec_mem,
                move || {
                    let (kc, vc) = (filled(be, act, b * ctx * kvw, 1.0, 13)?, filled(be, act, b * ctx * kvw, 1.0, 14)?);
                    let (q, od) = (filled(be, act, b * w, 1.0, 15)?, be.alloc(act, b * qw)?);
                    let (sl, ln) = (ids(be, &(0..b as u32).collect::<Vec<_>>())?, ids(be, &vec![ctx as u32; b])?);
                    Ok(Box::new(move || {
                        attention_impl(be, fma);
                        let r = be.attention_decode(
                            View::all(&od),
                            View::all(&q),
                            View::all(&kc),
                            View::all(&vc),
                            View::all(&sl),
                            View::all(&ln),
                            b,
                            ctx,
                            sh,
                            ctx,
                            scale,
                        );
                        attention_impl(be, false);
                        r
                    }) as Run)
                },
            ));
        }
    }

    // SwiGLU over the fused gate|up projection [n, 2·inter].
    v.push(entry("swiglu_fwd", format!("{n}x{inter}"), Work::Bytes(3 * nu * iu * es), 3 * nu * iu * es, move || {
        let (gu, h) = (filled(be, act, n * 2 * inter, 1.0, 16)?, be.alloc(act, n * inter)?);
        Ok(Box::new(move || be.swiglu_fwd(View::all(&h), View::all(&gu), n, inter)) as Run)
    }));
    v.push(entry("swiglu_bwd", format!("{n}x{inter}"), Work::Bytes(5 * nu * iu * es), 5 * nu * iu * es, move || {
        let (gu, dout, dgu) =
            (filled(be, act, n * 2 * inter, 1.0, 16)?, filled(be, act, n * inter, 1.0, 17)?, be.alloc(act, n * 2 * inter)?);
        Ok(Box::new(move || be.swiglu_bwd(View::all(&dgu), View::all(&dout), View::all(&gu), n, inter)) as Run)
    }));

    // Log-prob gather over full-vocabulary rows (the lm_head GEMM excluded), without and with
    // the entropy; backward: reads the logits, writes their gradients (fused softmax − one-hot).
    let r = s.logprob_rows;
    let (ru, logits_b) = (r as u64, r as u64 * vu * es);
    for entropy in [false, true] {
        let sfx = if entropy { "_entropy" } else { "" };
        v.push(entry(&format!("logprob_fwd{sfx}"), format!("{r}x{vocab}"), Work::Bytes(logits_b), logits_b + 16 * ru, move || {
            let (logits, tgt) = (filled(be, act, r * vocab, 2.0, 18)?, ids(be, &spread(r, vocab))?);
            let (lp, lse, ent) = (be.alloc(DType::F32, r)?, be.alloc(DType::F32, r)?, be.alloc(DType::F32, r)?);
            Ok(Box::new(move || {
                be.logprob_fwd(
                    View::all(&lp),
                    View::all(&lse),
                    entropy.then(|| View::all(&ent)),
                    View::all(&logits),
                    View::all(&tgt),
                    r,
                    vocab,
                    1.0,
                )
            }) as Run)
        }));
        v.push(entry(&format!("logprob_bwd{sfx}"), format!("{r}x{vocab}"), Work::Bytes(2 * logits_b), 2 * logits_b + 28 * ru, move || {
            let (logits, tgt) = (filled(be, act, r * vocab, 2.0, 18)?, ids(be, &spread(r, vocab))?);
            let (lp, lse, ent) = (be.alloc(DType::F32, r)?, be.alloc(DType::F32, r)?, be.alloc(DType::F32, r)?);
            be.logprob_fwd(View::all(&lp), View::all(&lse), Some(View::all(&ent)), View::all(&logits), View::all(&tgt), r, vocab, 1.0)?;
            let (dlogits, dlp, dent) =
                (be.alloc(act, r * vocab)?, filled(be, DType::F32, r, 1.0, 19)?, filled(be, DType::F32, r, 1.0, 20)?);
            Ok(Box::new(move || {
                let (e, de) = if entropy { (Some(View::all(&ent)), Some(View::all(&dent))) } else { (None, None) };
                be.logprob_bwd(
                    View::all(&dlogits),
                    View::all(&logits),
                    View::all(&tgt),
                    View::all(&lse),
                    e,
                    View::all(&dlp),
                    de,
                    r,
                    vocab,
                    1.0,
                )
            }) as Run)
        }));
    }

    // Sampling with top-p 0.9 over full-vocabulary rows.
    let sr = s.sample_rows;
    let sample_b = sr as u64 * vu * es;
    v.push(entry("sample_top_p", format!("{sr}x{vocab}"), Work::Bytes(sample_b), sample_b + 4 * sr as u64, move || {
        let (logits, toks) = (filled(be, act, sr * vocab, 2.0, 21)?, be.alloc(DType::U32, sr)?);
        let seeds: Vec<u64> = (0..sr as u64).collect();
        let sp = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9 };
        Ok(Box::new(move || be.sample(View::all(&toks), View::all(&logits), sr, vocab, &sp, &seeds, &seeds)) as Run)
    }));

    // A*PO loss over the packed response tokens of 64 sequences.
    let ns = 64;
    let per = (n / ns).max(1);
    let tt = ns * per;
    v.push(entry("apo_loss", format!("{ns}x{per}"), Work::Bytes(3 * tt as u64 * f32b), (3 * tt + 2 * ns + 1) as u64 * f32b, move || {
        let cu_host: Vec<u32> = (0..=ns as u32).map(|i| i * per as u32).collect();
        let cud = ids(be, &cu_host)?;
        let (logp, refp, target) =
            (filled(be, DType::F32, tt, 1.0, 22)?, filled(be, DType::F32, tt, 1.0, 23)?, filled(be, DType::F32, ns, 1.0, 24)?);
        let (loss, dlogp) = (be.alloc(DType::F32, ns)?, be.alloc(DType::F32, tt)?);
        Ok(Box::new(move || {
            let seqs = Seqs { cu_dev: View::all(&cud), cu_host: &cu_host };
            be.apo_loss(
                View::all(&loss),
                View::all(&dlogp),
                View::all(&logp),
                View::all(&refp),
                View::all(&target),
                seqs,
                1e-3,
                1.0 / ns as f32,
            )
        }) as Run)
    }));

    // Fused AdamW over a flat parameter buffer: F32 in place, and (where the backend keeps
    // them) F32 master weights with the act-dtype cast written out, what training runs there.
    let np = s.params;
    let npu = np as u64;
    let ap = AdamWParams { lr: 1e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 1, grad_scale: 1.0 };
    v.push(entry("adamw_f32", format!("{np}"), Work::Bytes(7 * 4 * npu), 4 * 4 * npu, move || {
        let (p, gr, m, vv) = (
            filled(be, DType::F32, np, 0.02, 25)?,
            filled(be, DType::F32, np, 1.0, 26)?,
            be.alloc(DType::F32, np)?,
            be.alloc(DType::F32, np)?,
        );
        Ok(Box::new(move || be.adamw(View::all(&p), None, View::all(&gr), View::all(&m), View::all(&vv), &ap)) as Run)
    }));
    if be.needs_master_weights() {
        v.push(entry("adamw_master", format!("{np}"), Work::Bytes(7 * 4 * npu + es * npu), 4 * 4 * npu + es * npu, move || {
            let (master, gr, m, vv) = (
                filled(be, DType::F32, np, 0.02, 25)?,
                filled(be, DType::F32, np, 1.0, 26)?,
                be.alloc(DType::F32, np)?,
                be.alloc(DType::F32, np)?,
            );
            let w = be.alloc(act, np)?;
            Ok(Box::new(move || be.adamw(View::all(&w), Some(View::all(&master)), View::all(&gr), View::all(&m), View::all(&vv), &ap))
                as Run)
        }));
    }
    v
}
