//! CUDA kernels against small host references written here (independent of the CPU backend;
//! tests/parity_cuda.rs compares with the CPU oracle). Inputs are
//! rounded to bf16 on the host first, so references see exactly what the device sees.
//! Every test skips, with a printed reason, without a GPU.
#![cfg(feature = "cuda")]

mod common;

use half::bf16;
use tz_engine::backend::cuda::{CudaBackend, CudaBuf};
use tz_engine::backend::{AdamWParams, AttnShape, Backend, Buffer, DType, SamplingParams, Seqs, View};
use tz_engine::rng::{uniform, Rng};

fn bfr(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

fn randn(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| bfr(r.normal() as f32 * scale)).collect()
}

fn up(b: &CudaBackend, dt: DType, data: &[f32]) -> CudaBuf {
    let buf = b.alloc(dt, data.len()).unwrap();
    b.upload_f32(View::all(&buf), data).unwrap();
    buf
}

fn up_u32(b: &CudaBackend, data: &[u32]) -> CudaBuf {
    let buf = b.alloc(DType::U32, data.len()).unwrap();
    b.upload_u32(View::all(&buf), data).unwrap();
    buf
}

fn down(b: &CudaBackend, buf: &CudaBuf) -> Vec<f32> {
    let mut v = vec![0f32; buf.len()];
    b.download_f32(View::all(buf), &mut v).unwrap();
    v
}

fn down_u32(b: &CudaBackend, buf: &CudaBuf) -> Vec<u32> {
    let mut v = vec![0u32; buf.len()];
    b.download_u32(View::all(buf), &mut v).unwrap();
    v
}

#[track_caller]
fn close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        assert!(err <= tol, "{what}[{i}]: got {g}, want {w} (|diff| {err} > {tol})");
    }
}

macro_rules! backend {
    () => {
        match common::cuda::cuda_or_skip() {
            Some(b) => b,
            None => return,
        }
    };
}

#[test]
fn upload_download_rounds_like_half() {
    let b = backend!();
    let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0137 + 1e-3).collect();
    let buf = up(&b, DType::BF16, &x);
    let want: Vec<f32> = x.iter().map(|&v| bfr(v)).collect();
    assert_eq!(down(&b, &buf), want);
    let f = up(&b, DType::F32, &x);
    assert_eq!(down(&b, &f), x);
    // device f32 → bf16 conversion rounds the same way as the host
    let c = b.alloc(DType::BF16, x.len()).unwrap();
    b.copy(View::all(&c), View::all(&f)).unwrap();
    assert_eq!(down(&b, &c), want);
}

#[test]
fn elementwise_ops() {
    let b = backend!();
    let n = 5000;
    let x = randn(n, 1, 1.0);
    let y = randn(n, 2, 1.0);
    let fx = up(&b, DType::F32, &x);
    let by = up(&b, DType::BF16, &y);
    b.add_assign(View::all(&fx), View::all(&by)).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, c)| a + c).collect();
    close(&down(&b, &fx), &want, 1e-6, 1e-6, "add_assign f32+=bf16");
    b.scale(View::all(&fx), 0.5).unwrap();
    let want: Vec<f32> = want.iter().map(|v| v * 0.5).collect();
    close(&down(&b, &fx), &want, 1e-6, 1e-6, "scale");
    let ss = b.sum_squares(View::all(&fx)).unwrap();
    let ref_ss: f64 = want.iter().map(|v| (*v as f64) * (*v as f64)).sum();
    assert!(((ss as f64) - ref_ss).abs() <= 1e-4 * ref_ss, "sum_squares {ss} vs {ref_ss}");
    b.fill(View::all(&by).slice(10, 20), 3.0).unwrap();
    let got = down(&b, &by);
    assert!(got[10..30].iter().all(|&v| v == 3.0) && got[9] == y[9] && got[30] == y[30]);
    // gather / scatter_add
    let c = 7;
    let rows = [3u32, 0, 5];
    let table = randn(6 * c, 3, 1.0);
    let t = up(&b, DType::BF16, &table);
    let r = up_u32(&b, &rows);
    let out = b.alloc(DType::BF16, rows.len() * c).unwrap();
    b.gather_rows(View::all(&out), View::all(&t), View::all(&r), rows.len(), c).unwrap();
    let want: Vec<f32> = rows.iter().flat_map(|&r| table[r as usize * c..(r as usize + 1) * c].to_vec()).collect();
    assert_eq!(down(&b, &out), want);
    let acc = up(&b, DType::F32, &vec![1.0; 6 * c]);
    b.scatter_add_rows(View::all(&acc), View::all(&out), View::all(&r), rows.len(), c).unwrap();
    let mut want = vec![1.0f32; 6 * c];
    for &r in &rows {
        for j in 0..c {
            want[r as usize * c + j] += table[r as usize * c + j];
        }
    }
    close(&down(&b, &acc), &want, 1e-6, 0.0, "scatter_add_rows");
}

#[test]
fn embedding_fwd_bwd() {
    let b = backend!();
    let (vocab, c, n) = (50, 24, 33);
    let table = randn(vocab * c, 4, 1.0);
    let ids: Vec<u32> = (0..n).map(|i| ((i * 7) % vocab) as u32 % 9).collect(); // repeats
    let t = up(&b, DType::BF16, &table);
    let id = up_u32(&b, &ids);
    let out = b.alloc(DType::BF16, n * c).unwrap();
    b.embedding_fwd(View::all(&out), View::all(&t), View::all(&id), n, c).unwrap();
    let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * c..(i as usize + 1) * c].to_vec()).collect();
    assert_eq!(down(&b, &out), want);
    let dout = randn(n * c, 5, 1.0);
    let d = up(&b, DType::BF16, &dout);
    let dt = b.alloc(DType::F32, vocab * c).unwrap();
    b.embedding_bwd(View::all(&dt), View::all(&d), View::all(&id), n, c).unwrap();
    let mut want = vec![0f32; vocab * c];
    for (i, &id) in ids.iter().enumerate() {
        for j in 0..c {
            want[id as usize * c + j] += dout[i * c + j];
        }
    }
    close(&down(&b, &dt), &want, 1e-5, 1e-5, "embedding_bwd");
}

#[test]
fn rmsnorm_fwd_bwd() {
    let b = backend!();
    let (n, c, eps) = (9, 200, 1e-6f32);
    let x = randn(n * c, 6, 1.0);
    let w = randn(c, 7, 1.0);
    let dout = randn(n * c, 8, 1.0);
    let (xb, wb, db) = (up(&b, DType::BF16, &x), up(&b, DType::BF16, &w), up(&b, DType::BF16, &dout));
    let out = b.alloc(DType::BF16, n * c).unwrap();
    let rstd = b.alloc(DType::F32, n).unwrap();
    b.rmsnorm_fwd(View::all(&out), View::all(&rstd), View::all(&xb), View::all(&wb), n, c, eps).unwrap();
    let mut want = vec![0f32; n * c];
    let mut rs = vec![0f32; n];
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let ms = row.iter().map(|v| v * v).sum::<f32>() / c as f32;
        rs[i] = 1.0 / (ms + eps).sqrt();
        for j in 0..c {
            want[i * c + j] = row[j] * rs[i] * w[j];
        }
    }
    close(&down(&b, &rstd), &rs, 1e-5, 1e-4, "rstd");
    close(&down(&b, &out), &want, 1e-2, 1e-2, "rmsnorm out");
    // backward: dx += ..., dw += ...
    let dx0 = randn(n * c, 9, 0.1);
    let dx = up(&b, DType::BF16, &dx0);
    let dw = up(&b, DType::F32, &vec![0.5; c]);
    b.rmsnorm_bwd(View::all(&dx), View::all(&dw), View::all(&db), View::all(&xb), View::all(&wb), View::all(&rstd), n, c).unwrap();
    let mut wdx = dx0.clone();
    let mut wdw = vec![0.5f32; c];
    for i in 0..n {
        let r = rs[i];
        let dot: f32 = (0..c).map(|j| dout[i * c + j] * w[j] * x[i * c + j]).sum();
        for j in 0..c {
            wdx[i * c + j] += r * w[j] * dout[i * c + j] - r * r * r * x[i * c + j] * dot / c as f32;
            wdw[j] += dout[i * c + j] * x[i * c + j] * r;
        }
    }
    close(&down(&b, &dx), &wdx, 2e-2, 2e-2, "rmsnorm dx");
    close(&down(&b, &dw), &wdw, 1e-3, 1e-3, "rmsnorm dw");
}

#[test]
fn gemm_layouts_bias_and_accumulate() {
    let b = backend!();
    let (m, n, k) = (37, 45, 70);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = randn(m * k, 10, 0.5);
        let bm = randn(k * n, 11, 0.5);
        let bias = randn(n, 12, 1.0);
        let (ab, bb, biasb) = (up(&b, DType::BF16, &a), up(&b, DType::BF16, &bm), up(&b, DType::BF16, &bias));
        let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if tb { bm[j * k + p] } else { bm[p * n + j] };
        let mut prod = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                prod[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        // bf16 C with bias, beta = 0
        let c = b.alloc(DType::BF16, m * n).unwrap();
        b.gemm(View::all(&c), View::all(&ab), View::all(&bb), Some(View::all(&biasb)), m, n, k, ta, tb, 1.0, 0.0).unwrap();
        let want: Vec<f32> = (0..m * n).map(|e| prod[e] + bias[e % n]).collect();
        close(&down(&b, &c), &want, 3e-2, 1e-2, &format!("gemm bf16 ta={ta} tb={tb}"));
        // f32 C accumulating (beta = 1), alpha = 0.5
        let c0 = randn(m * n, 13, 1.0);
        let cf = up(&b, DType::F32, &c0);
        b.gemm(View::all(&cf), View::all(&ab), View::all(&bb), None, m, n, k, ta, tb, 0.5, 1.0).unwrap();
        let want: Vec<f32> = (0..m * n).map(|e| c0[e] + 0.5 * prod[e]).collect();
        close(&down(&b, &cf), &want, 1e-3, 1e-3, &format!("gemm f32 += ta={ta} tb={tb}"));
    }
}

fn attn_shape(d: usize) -> AttnShape {
    AttnShape { n_head: 4, n_kv_head: 2, head_dim: d }
}

/// Naive causal GQA attention: (out, lse).
fn attn_ref(qkv: &[f32], cu: &[u32], s: AttnShape, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let (h, kvh, d, w) = (s.n_head, s.n_kv_head, s.head_dim, s.qkv_width());
    let t = *cu.last().unwrap() as usize;
    let mut out = vec![0f32; t * h * d];
    let mut lse = vec![0f32; t * h];
    for sq in 0..cu.len() - 1 {
        let (a, z) = (cu[sq] as usize, cu[sq + 1] as usize);
        for i in a..z {
            for hh in 0..h {
                let g = hh / (h / kvh);
                let q = &qkv[i * w + hh * d..][..d];
                let sc: Vec<f32> = (a..=i).map(|j| scale * (0..d).map(|e| q[e] * qkv[j * w + (h + g) * d + e]).sum::<f32>()).collect();
                let mx = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = sc.iter().map(|v| (v - mx).exp()).sum();
                lse[i * h + hh] = mx + sum.ln();
                for (jj, j) in (a..=i).enumerate() {
                    let p = (sc[jj] - mx).exp() / sum;
                    for e in 0..d {
                        out[i * h * d + hh * d + e] += p * qkv[j * w + (h + kvh + g) * d + e];
                    }
                }
            }
        }
    }
    (out, lse)
}

#[test]
fn attention_fwd_bwd_decode_against_naive() {
    let b = backend!();
    for d in [64usize, 128] {
        let s = attn_shape(d);
        let (h, kvh, w) = (s.n_head, s.n_kv_head, s.qkv_width());
        let cu = [0u32, 70, 103, 104];
        let t = 104;
        let scale = 1.0 / (d as f32).sqrt();
        let qkv = randn(t * w, 20 + d as u64, 1.0);
        let qb = up(&b, DType::BF16, &qkv);
        let cud = up_u32(&b, &cu);
        let seqs = Seqs::<CudaBackend> { cu_dev: View::all(&cud), cu_host: &cu };
        let out = b.alloc(DType::BF16, t * h * d).unwrap();
        let lse = b.alloc(DType::F32, t * h).unwrap();
        b.attention_fwd(View::all(&out), View::all(&lse), View::all(&qb), seqs, s, scale).unwrap();
        let (wo, wl) = attn_ref(&qkv, &cu, s, scale);
        close(&down(&b, &out), &wo, 2e-2, 2e-2, &format!("attention out d={d}"));
        close(&down(&b, &lse), &wl, 1e-3, 1e-3, &format!("attention lse d={d}"));

        // Backward against the analytic gradient of the naive attention (using the device's
        // bf16 `out`, as the kernel does).
        let dout = randn(t * h * d, 30 + d as u64, 1.0);
        let db = up(&b, DType::BF16, &dout);
        let dqkv = b.alloc(DType::BF16, t * w).unwrap();
        b.attention_bwd(View::all(&dqkv), View::all(&db), View::all(&qb), View::all(&out), View::all(&lse), seqs, s, scale).unwrap();
        let mut want = vec![0f32; t * w];
        for sq in 0..cu.len() - 1 {
            let (a, z) = (cu[sq] as usize, cu[sq + 1] as usize);
            for i in a..z {
                for hh in 0..h {
                    let g = hh / (h / kvh);
                    let q = |e: usize| qkv[i * w + hh * d + e];
                    let k = |j: usize, e: usize| qkv[j * w + (h + g) * d + e];
                    let v = |j: usize, e: usize| qkv[j * w + (h + kvh + g) * d + e];
                    let go = |e: usize| dout[i * h * d + hh * d + e];
                    let p: Vec<f32> = (a..=i).map(|j| (scale * (0..d).map(|e| q(e) * k(j, e)).sum::<f32>() - wl[i * h + hh]).exp()).collect();
                    let dp: Vec<f32> = (a..=i).map(|j| (0..d).map(|e| go(e) * v(j, e)).sum::<f32>()).collect();
                    let dd: f32 = p.iter().zip(&dp).map(|(x, y)| x * y).sum();
                    for (jj, j) in (a..=i).enumerate() {
                        let ds = p[jj] * (dp[jj] - dd);
                        for e in 0..d {
                            want[i * w + hh * d + e] += scale * ds * k(j, e);
                            want[j * w + (h + g) * d + e] += scale * ds * q(e);
                            want[j * w + (h + kvh + g) * d + e] += p[jj] * go(e);
                        }
                    }
                }
            }
        }
        close(&down(&b, &dqkv), &want, 3e-2, 3e-2, &format!("attention dqkv d={d}"));

        // Decode: cache the first sequence's k/v, then the query of its last token must give
        // the forward's last output row.
        let (slots, t_max) = (2usize, 80usize);
        let kc = b.alloc(DType::BF16, slots * t_max * s.kv_width()).unwrap();
        let vc = b.alloc(DType::BF16, slots * t_max * s.kv_width()).unwrap();
        let n0 = 70usize;
        let slot = up_u32(&b, &vec![1u32; n0]);
        let pos = up_u32(&b, &(0..n0 as u32).collect::<Vec<_>>());
        b.kv_store(View::all(&kc), View::all(&vc), View::all(&qb), View::all(&slot), View::all(&pos), n0, s, t_max).unwrap();
        let one_slot = up_u32(&b, &[1]);
        let len = up_u32(&b, &[n0 as u32]);
        let dec = b.alloc(DType::BF16, h * d).unwrap();
        let qrow = View::all(&qb).slice((n0 - 1) * w, w);
        b.attention_decode(View::all(&dec), qrow, View::all(&kc), View::all(&vc), View::all(&one_slot), View::all(&len), 1, n0, s, t_max, scale).unwrap();
        close(&down(&b, &dec), &wo[(n0 - 1) * h * d..n0 * h * d], 2e-2, 2e-2, &format!("attention decode d={d}"));
    }
}

#[test]
fn rope_roundtrip_and_reference() {
    let b = backend!();
    let s = attn_shape(64);
    let (n, w, d) = (5usize, s.qkv_width(), 64usize);
    let qkv = randn(n * w, 40, 1.0);
    let pos: Vec<u32> = vec![0, 1, 7, 100, 4000];
    let qb = up(&b, DType::BF16, &qkv);
    let pb = up_u32(&b, &pos);
    b.rope(View::all(&qb), View::all(&pb), n, s, 1e6, false).unwrap();
    let mut want = qkv.clone();
    for (i, &p) in pos.iter().enumerate() {
        for head in 0..s.n_head + s.n_kv_head {
            for j in 0..d / 2 {
                let inv = 1.0 / 1e6f64.powf(2.0 * j as f64 / d as f64);
                let a = p as f64 * inv;
                let (sn, cs) = (a.sin() as f32, a.cos() as f32);
                let base = i * w + head * d;
                let (x1, x2) = (qkv[base + j], qkv[base + j + d / 2]);
                want[base + j] = x1 * cs - x2 * sn;
                want[base + j + d / 2] = x2 * cs + x1 * sn;
            }
        }
    }
    close(&down(&b, &qb), &want, 2e-2, 1e-2, "rope fwd");
    b.rope(View::all(&qb), View::all(&pb), n, s, 1e6, true).unwrap();
    close(&down(&b, &qb), &qkv, 3e-2, 2e-2, "rope inverse");
}

#[test]
fn logprob_fwd_bwd() {
    let b = backend!();
    for v in [1000usize, 1003] {
        let n = 6;
        let inv_t = 1.0 / 0.7f32;
        let logits = randn(n * v, 50, 3.0);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97) % v as u32).collect();
        let lb = up(&b, DType::BF16, &logits);
        let tb = up_u32(&b, &targets);
        let (logp, lse, ent) = (b.alloc(DType::F32, n).unwrap(), b.alloc(DType::F32, n).unwrap(), b.alloc(DType::F32, n).unwrap());
        b.logprob_fwd(View::all(&logp), View::all(&lse), Some(View::all(&ent)), View::all(&lb), View::all(&tb), n, v, inv_t).unwrap();
        let (mut wl, mut wlse, mut went) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        for i in 0..n {
            let z: Vec<f64> = logits[i * v..(i + 1) * v].iter().map(|&x| x as f64 * inv_t as f64).collect();
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
            wlse[i] = l as f32;
            wl[i] = (z[targets[i] as usize] - l) as f32;
            went[i] = -z.iter().map(|x| (x - l).exp() * (x - l)).sum::<f64>() as f32;
        }
        close(&down(&b, &lse), &wlse, 1e-4, 1e-5, "lse");
        close(&down(&b, &logp), &wl, 1e-4, 1e-5, "logp");
        close(&down(&b, &ent), &went, 1e-4, 1e-4, "entropy");
        let dlogp = randn(n, 51, 1.0);
        let dent = randn(n, 52, 1.0);
        let (dl, de) = (up(&b, DType::F32, &dlogp), up(&b, DType::F32, &dent));
        // in place: dlogits aliases logits
        b.logprob_bwd(View::all(&lb), View::all(&lb), View::all(&tb), View::all(&lse), Some(View::all(&ent)), View::all(&dl), Some(View::all(&de)), n, v, inv_t).unwrap();
        let mut want = vec![0f32; n * v];
        for i in 0..n {
            for j in 0..v {
                let lpj = logits[i * v + j] * inv_t - wlse[i];
                let p = lpj.exp();
                let onehot = if j == targets[i] as usize { 1.0 } else { 0.0 };
                want[i * v + j] = inv_t * (dlogp[i] * (onehot - p) - dent[i] * p * (lpj + went[i]));
            }
        }
        close(&down(&b, &lb), &want, 2e-3, 1e-2, "dlogits");
    }
}

/// The `SamplingParams` semantics on the host (as the CPU oracle implements them: top-p mass
/// relative to what top-k kept; the first kept index whose cumulative mass exceeds u·kept).
fn sample_ref(logits: &[f32], p: &SamplingParams, u: f32) -> u32 {
    if p.temperature <= 0.0 {
        let mut best = 0;
        for (j, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = j;
            }
        }
        return best as u32;
    }
    let z: Vec<f64> = logits.iter().map(|&x| (x / p.temperature) as f64).collect();
    let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - mx).exp()).collect();
    let mut sorted = e.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let mut t = 0.0f64;
    if p.top_k > 0 && p.top_k < e.len() {
        t = t.max(sorted[p.top_k - 1]);
    }
    if p.top_p < 1.0 {
        // relative to the mass top-k kept
        let kept_k: f64 = sorted.iter().filter(|&&x| x >= t).sum();
        let mut cum = 0.0;
        for &v in sorted.iter().filter(|&&x| x >= t) {
            cum += v;
            if cum >= p.top_p as f64 * kept_k {
                t = t.max(v);
                break;
            }
        }
    }
    let kept: f64 = e.iter().filter(|&&v| v >= t).sum();
    let mut cum = 0.0;
    let mut last = 0;
    for (j, &v) in e.iter().enumerate() {
        if v >= t {
            cum += v;
            last = j;
            if cum > u as f64 * kept {
                return j as u32;
            }
        }
    }
    last as u32
}

#[test]
fn sampling_matches_host_semantics() {
    let b = backend!();
    let (rows, v) = (8usize, 5003usize);
    let logits = randn(rows * v, 60, 2.5);
    let lb = up(&b, DType::BF16, &logits);
    let out = b.alloc(DType::U32, rows).unwrap();
    let seeds: Vec<u64> = (0..rows as u64).map(|i| 1000 + i).collect();
    let counters: Vec<u64> = (0..rows as u64).map(|i| 7 * i).collect();
    for params in [
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 },
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 },
        SamplingParams { temperature: 0.8, top_k: 20, top_p: 1.0 },
        SamplingParams { temperature: 1.2, top_k: 0, top_p: 0.9 },
        SamplingParams { temperature: 1.0, top_k: 50, top_p: 0.5 },
        SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0 },
    ] {
        b.sample(View::all(&out), View::all(&lb), rows, v, &params, &seeds, &counters).unwrap();
        let got = down_u32(&b, &out);
        for i in 0..rows {
            let want = sample_ref(&logits[i * v..(i + 1) * v], &params, uniform(seeds[i], counters[i]));
            assert_eq!(got[i], want, "row {i} params {params:?}");
        }
    }
}

#[test]
fn adamw_and_losses() {
    let b = backend!();
    let n = 3000;
    let master = randn(n, 70, 1.0);
    let grads = randn(n, 71, 1.0);
    let (m0, v0) = (randn(n, 72, 0.1), randn(n, 73, 0.1).iter().map(|x| x * x).collect::<Vec<_>>());
    let p = AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 3, grad_scale: 0.5 };
    let (pb, mb, gb, m, v) = (b.alloc(DType::BF16, n).unwrap(), up(&b, DType::F32, &master), up(&b, DType::F32, &grads), up(&b, DType::F32, &m0), up(&b, DType::F32, &v0));
    b.adamw(View::all(&pb), Some(View::all(&mb)), View::all(&gb), View::all(&m), View::all(&v), &p).unwrap();
    let (bc1, bc2) = (1.0 - 0.9f32.powi(3), 1.0 - 0.95f32.powi(3));
    let mut want = vec![0f32; n];
    for i in 0..n {
        let g = grads[i] * 0.5;
        let mi = 0.9 * m0[i] + 0.1 * g;
        let vi = 0.95 * v0[i] + 0.05 * g * g;
        want[i] = master[i] * (1.0 - 1e-4) - 1e-3 * (mi / bc1) / ((vi / bc2).sqrt() + 1e-8);
    }
    close(&down(&b, &mb), &want, 1e-6, 1e-5, "adamw master");
    let wb: Vec<f32> = want.iter().map(|&x| bfr(x)).collect();
    close(&down(&b, &pb), &wb, 0.0, 1e-2, "adamw bf16 params");

    // GRPO
    let t = 257;
    let (lp, old, rf, adv) = (randn(t, 80, 0.3), randn(t, 81, 0.3), randn(t, 82, 0.3), randn(t, 83, 1.0));
    let wt: Vec<f32> = (0..t).map(|i| (i % 3) as f32 * 0.5).collect();
    let bufs: Vec<CudaBuf> = [&lp, &old, &rf, &adv, &wt].iter().map(|x| up(&b, DType::F32, x)).collect();
    let (loss, dl) = (b.alloc(DType::F32, t).unwrap(), b.alloc(DType::F32, t).unwrap());
    b.grpo_loss(View::all(&loss), View::all(&dl), View::all(&bufs[0]), View::all(&bufs[1]), View::all(&bufs[2]), View::all(&bufs[3]), View::all(&bufs[4]), t, 0.2, 0.04).unwrap();
    let (mut wl, mut wd) = (vec![0f32; t], vec![0f32; t]);
    for i in 0..t {
        let r = (lp[i] - old[i]).exp();
        let c = r.clamp(0.8, 1.2);
        let (pg, dpg) = if r * adv[i] <= c * adv[i] { (-r * adv[i], -adv[i] * r) } else { (-c * adv[i], 0.0) };
        let dif = rf[i] - lp[i];
        let kl = dif.exp() - dif - 1.0;
        wl[i] = wt[i] * (pg + 0.04 * kl);
        wd[i] = wt[i] * (dpg + 0.04 * (1.0 - dif.exp()));
    }
    close(&down(&b, &loss), &wl, 1e-5, 1e-4, "grpo loss");
    close(&down(&b, &dl), &wd, 1e-5, 1e-4, "grpo dlogp");

    // A*PO
    let cu = [0u32, 100, 101, 257];
    let cud = up_u32(&b, &cu);
    let target = [0.3f32, -0.2, 1.0];
    let tg = up(&b, DType::F32, &target);
    let (sl, sd) = (b.alloc(DType::F32, 3).unwrap(), b.alloc(DType::F32, t).unwrap());
    let seqs = Seqs::<CudaBackend> { cu_dev: View::all(&cud), cu_host: &cu };
    b.apo_loss(View::all(&sl), View::all(&sd), View::all(&bufs[0]), View::all(&bufs[2]), View::all(&tg), seqs, 0.5, 2.0).unwrap();
    let (mut wl, mut wd) = (vec![0f32; 3], vec![0f32; t]);
    for s in 0..3 {
        let sum: f32 = (cu[s]..cu[s + 1]).map(|i| lp[i as usize] - rf[i as usize]).sum();
        let d = 0.5 * sum - target[s];
        wl[s] = d * d;
        for i in cu[s]..cu[s + 1] {
            wd[i as usize] = 2.0 * 0.5 * d * 2.0;
        }
    }
    close(&down(&b, &sl), &wl, 1e-4, 1e-4, "apo loss");
    close(&down(&b, &sd), &wd, 1e-4, 1e-4, "apo dlogp");
}

#[test]
fn swiglu_and_bias_bwd() {
    let b = backend!();
    let (n, inter) = (13, 40);
    let gu = randn(n * 2 * inter, 90, 2.0);
    let dout = randn(n * inter, 91, 1.0);
    let (gb, db) = (up(&b, DType::BF16, &gu), up(&b, DType::BF16, &dout));
    let out = b.alloc(DType::BF16, n * inter).unwrap();
    b.swiglu_fwd(View::all(&out), View::all(&gb), n, inter).unwrap();
    let dgu = b.alloc(DType::BF16, n * 2 * inter).unwrap();
    b.swiglu_bwd(View::all(&dgu), View::all(&db), View::all(&gb), n, inter).unwrap();
    let (mut wo, mut wd) = (vec![0f32; n * inter], vec![0f32; n * 2 * inter]);
    for i in 0..n {
        for j in 0..inter {
            let (g, u) = (gu[i * 2 * inter + j], gu[i * 2 * inter + inter + j]);
            let s = 1.0 / (1.0 + (-g).exp());
            wo[i * inter + j] = g * s * u;
            let dy = dout[i * inter + j];
            wd[i * 2 * inter + j] = dy * u * s * (1.0 + g * (1.0 - s));
            wd[i * 2 * inter + inter + j] = dy * g * s;
        }
    }
    close(&down(&b, &out), &wo, 1e-2, 1e-2, "swiglu out");
    close(&down(&b, &dgu), &wd, 1e-2, 1e-2, "swiglu dgu");
    let dbias = up(&b, DType::F32, &vec![1.0; inter]);
    b.bias_bwd(View::all(&dbias), View::all(&out), n, inter).unwrap();
    let got_out = down(&b, &out);
    let want: Vec<f32> = (0..inter).map(|j| 1.0 + (0..n).map(|i| got_out[i * inter + j]).sum::<f32>()).collect();
    close(&down(&b, &dbias), &want, 1e-4, 1e-4, "bias_bwd");
}
