//! CPU backend ops that the whole-model checks do not reach, against plain references:
//! GEMM in every transpose combination, sampling semantics, the A*PO and GRPO losses (values
//! and gradients by finite differences), and AdamW against a scalar implementation.
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::{AdamWParams, Backend, DType, SamplingParams, Seqs, View};
use tz_engine::rng::Rng;

fn buf(be: &CpuBackend, xs: &[f32]) -> <CpuBackend as Backend>::Buf {
    let b = be.alloc(DType::F32, xs.len()).unwrap();
    be.upload_f32(View::all(&b), xs).unwrap();
    b
}

fn get(be: &CpuBackend, b: &<CpuBackend as Backend>::Buf) -> Vec<f32> {
    let mut out = vec![0f32; b.len()];
    be.download_f32(View::all(b), &mut out).unwrap();
    out
}

use tz_engine::backend::Buffer;

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[test]
fn gemm_all_transposes_alpha_beta_bias() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(1);
    let (m, n, k) = (7, 5, 9);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = randn(&mut rng, m * k);
        let b = randn(&mut rng, k * n);
        let c0 = randn(&mut rng, m * n);
        let bias = randn(&mut rng, n);
        let (ab, bb, cb, biasb) = (buf(&be, &a), buf(&be, &b), buf(&be, &c0), buf(&be, &bias));
        be.gemm(View::all(&cb), View::all(&ab), View::all(&bb), Some(View::all(&biasb)), m, n, k, ta, tb, 0.5, 2.0).unwrap();
        let got = get(&be, &cb);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av as f64 * bv as f64;
                }
                let want = 0.5 * s + 2.0 * c0[i * n + j] as f64 + bias[j] as f64;
                assert!((got[i * n + j] as f64 - want).abs() < 1e-4, "ta={ta} tb={tb} ({i},{j})");
            }
        }
    }
}

fn sample(be: &CpuBackend, logits: &[f32], v: usize, p: SamplingParams, seed: u64, counter: u64) -> u32 {
    let lb = buf(be, logits);
    let out = be.alloc(DType::U32, 1).unwrap();
    be.sample(View::all(&out), View::all(&lb), 1, v, &p, &[seed], &[counter]).unwrap();
    let mut t = [0u32];
    be.download_u32(View::all(&out), &mut t).unwrap();
    t[0]
}

#[test]
fn sampling_semantics() {
    let be = CpuBackend::new();
    let logits = [1.0f32, 3.0, 3.0, 0.5, 2.0];
    let greedy = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 };
    assert_eq!(sample(&be, &logits, 5, greedy, 0, 0), 1, "argmax, lowest index on ties");
    let top1 = SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0 };
    let tiny_p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.01 };
    for c in 0..50 {
        // Ties at the threshold are kept: tokens 1 and 2 only.
        assert!([1, 2].contains(&sample(&be, &logits, 5, top1, 9, c)));
        assert!([1, 2].contains(&sample(&be, &logits, 5, tiny_p, 9, c)));
    }
    // Empirical frequencies follow softmax(logits / T).
    let t = 0.7f32;
    let p = SamplingParams { temperature: t, top_k: 0, top_p: 1.0 };
    let z: Vec<f64> = logits.iter().map(|&x| ((x / t) as f64).exp()).collect();
    let total: f64 = z.iter().sum();
    let mut counts = [0usize; 5];
    let n = 20_000;
    for c in 0..n {
        counts[sample(&be, &logits, 5, p, 42, c) as usize] += 1;
    }
    for j in 0..5 {
        let want = z[j] / total;
        let got = counts[j] as f64 / n as f64;
        assert!((got - want).abs() < 0.015, "token {j}: {got} vs {want}");
    }
    // top-k = 3 keeps tokens 1, 2 and 4 and renormalizes over them.
    let k3 = SamplingParams { temperature: 1.0, top_k: 3, top_p: 1.0 };
    let mut seen = [0usize; 5];
    for c in 0..2000 {
        seen[sample(&be, &logits, 5, k3, 3, c) as usize] += 1;
    }
    assert_eq!(seen[0] + seen[3], 0);
    assert!(seen[4] > 0 && seen[1] > 0 && seen[2] > 0);
}

fn seqs(be: &CpuBackend, cu: &[u32]) -> <CpuBackend as Backend>::Buf {
    let b = be.alloc(DType::U32, cu.len()).unwrap();
    be.upload_u32(View::all(&b), cu).unwrap();
    b
}

#[test]
fn apo_loss_values_and_gradient() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(2);
    let cu = [0u32, 3, 4, 8];
    let (lp, rl) = (randn(&mut rng, 8), randn(&mut rng, 8));
    let tg = [0.3f32, -0.2, 0.9];
    let (beta2, scale) = (0.1f32, 0.5f32);
    let f = |lp: &[f32]| -> f64 {
        (0..3).map(|s| {
            let r: f64 = (cu[s] as usize..cu[s + 1] as usize).map(|t| (lp[t] - rl[t]) as f64).sum();
            (beta2 as f64 * r - tg[s] as f64).powi(2)
        }).sum()
    };
    let cub = seqs(&be, &cu);
    let (loss, dl) = (be.alloc(DType::F32, 3).unwrap(), be.alloc(DType::F32, 8).unwrap());
    let (lpb, rlb, tgb) = (buf(&be, &lp), buf(&be, &rl), buf(&be, &tg));
    be.apo_loss(View::all(&loss), View::all(&dl), View::all(&lpb), View::all(&rlb), View::all(&tgb), Seqs { cu_dev: View::all(&cub), cu_host: &cu }, beta2, scale).unwrap();
    let l = get(&be, &loss);
    assert!((l.iter().map(|&x| x as f64).sum::<f64>() - f(&lp)).abs() < 1e-5);
    let g = get(&be, &dl);
    for t in 0..8 {
        let mut p = lp.clone();
        p[t] += 1e-2;
        let up = f(&p);
        p[t] -= 2e-2;
        let fd = (up - f(&p)) / 2e-2 * scale as f64;
        assert!((fd - g[t] as f64).abs() < 1e-4, "token {t}: {fd} vs {}", g[t]);
    }
}

#[test]
fn grpo_loss_values_and_gradient() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(3);
    let n = 40;
    let lp: Vec<f32> = randn(&mut rng, n).iter().map(|x| x * 0.3 - 1.0).collect();
    let old: Vec<f32> = lp.iter().map(|x| x + 0.3 * rng.normal() as f32).collect();
    let rl: Vec<f32> = lp.iter().map(|x| x + 0.2 * rng.normal() as f32).collect();
    let adv = randn(&mut rng, n);
    let w: Vec<f32> = (0..n).map(|_| 1.0 / n as f32).collect();
    let (eps, kl) = (0.2f32, 0.05f32);
    let f = |t: usize, x: f32| -> f64 {
        let r = ((x - old[t]) as f64).exp();
        let a = adv[t] as f64;
        let pg = (-a * r).max(-a * r.clamp(1.0 - eps as f64, 1.0 + eps as f64));
        let d = (rl[t] - x) as f64;
        w[t] as f64 * (pg + kl as f64 * (d.exp() - d - 1.0))
    };
    let (lb, dl) = (be.alloc(DType::F32, n).unwrap(), be.alloc(DType::F32, n).unwrap());
    let (lpb, ob, rb, ab, wb) = (buf(&be, &lp), buf(&be, &old), buf(&be, &rl), buf(&be, &adv), buf(&be, &w));
    be.grpo_loss(View::all(&lb), View::all(&dl), View::all(&lpb), View::all(&ob), View::all(&rb), View::all(&ab), View::all(&wb), n, eps, kl).unwrap();
    let (l, g) = (get(&be, &lb), get(&be, &dl));
    for t in 0..n {
        assert!((l[t] as f64 - f(t, lp[t])).abs() < 1e-6);
        let h = 1e-3f32;
        let fd = (f(t, lp[t] + h) - f(t, lp[t] - h)) / (2.0 * h as f64);
        // Away from the clip boundary the one-sided slopes agree.
        let ratio = ((lp[t] - old[t]) as f64).exp();
        if ((ratio - 0.8).abs() > 0.01) && ((ratio - 1.2).abs() > 0.01) {
            assert!((fd - g[t] as f64).abs() < 1e-4, "token {t}: {fd} vs {}", g[t]);
        }
    }
}

#[test]
fn adamw_matches_scalar_reference() {
    let be = CpuBackend::new();
    let mut rng = Rng::new(4);
    let n = 1000;
    let (p0, g) = (randn(&mut rng, n), randn(&mut rng, n));
    let (m0, v0): (Vec<f32>, Vec<f32>) = (randn(&mut rng, n).iter().map(|x| x * 0.1).collect(), randn(&mut rng, n).iter().map(|x| x * x * 0.01).collect());
    let hp = AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, step: 3, grad_scale: 0.5 };
    for with_master in [false, true] {
        let (pb, gb, mb, vb) = (buf(&be, &p0), buf(&be, &g), buf(&be, &m0), buf(&be, &v0));
        let master = buf(&be, &p0);
        be.adamw(View::all(&pb), with_master.then(|| View::all(&master)), View::all(&gb), View::all(&mb), View::all(&vb), &hp).unwrap();
        let (p, m, v) = (get(&be, &pb), get(&be, &mb), get(&be, &vb));
        for i in 0..n {
            let gi = g[i] as f64 * 0.5;
            let mi = 0.9 * m0[i] as f64 + 0.1 * gi;
            let vi = 0.99 * v0[i] as f64 + 0.01 * gi * gi;
            let mh = mi / (1.0 - 0.9f64.powi(3));
            let vh = vi / (1.0 - 0.99f64.powi(3));
            let want = p0[i] as f64 * (1.0 - 1e-2 * 0.1) - 1e-2 * mh / (vh.sqrt() + 1e-8);
            assert!((p[i] as f64 - want).abs() < 1e-6, "param {i}");
            assert!((m[i] as f64 - mi).abs() < 1e-7 && (v[i] as f64 - vi).abs() < 1e-7);
        }
        if with_master {
            assert_eq!(get(&be, &master), p);
        }
    }
}
