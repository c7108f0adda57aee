//! The parity suite: every CUDA op against the CPU oracle on fresh random inputs.
//!
//! Each test draws inputs, rounds the activation-dtype ones to bf16 on the host (so both
//! backends see exactly the same numbers), runs the op on the CPU backend (f32) and on the
//! CUDA backend (bf16 activations, f32 accumulation), and compares. Outputs on the device are
//! poisoned with NaN (u32::MAX for token ids) first, so an element a kernel forgets to write
//! fails; NaN or Inf never passes. Shapes include ones that are not multiples of any tile
//! size (1, 7, 37, 130, ...), Qwen2.5's head ratios (7:1 and 8:1), head_dim 64 and 128 (and the small presets' 32 and 16), and
//! Qwen2.5's 151,936-token vocabulary.
//!
//! Tolerances (`assert_close`): relative L2 error of the whole tensor, and every element within
//! `4·tol·max(|want|, rms(want))`. bf16 outputs: tol 1e-2 (a bf16 ulp is 2^-8 ≈ 3.9e-3);
//! f32 outputs computed from bf16 inputs with f32 accumulation: 1e-3 or tighter; exact ops
//! (gathers, greedy sampling): equality.
//!
//! Every test skips, with a printed reason, when no GPU is present (`TZ_REQUIRE_GPU=1` makes
//! that a failure, as `tools/gpu-check.sh` sets it).
#![cfg(feature = "cuda")]

mod common;

use half::bf16;
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::cuda::CudaBackend;
use tz_engine::backend::{AdamWParams, AttnShape, Backend, DType, SamplingParams, Seqs, View};
use tz_engine::rng::Rng;

/// The backend pair for one test, or return (skip) when there is no GPU.
macro_rules! pair {
    () => {
        match common::cuda::cuda_or_skip() {
            Some(dev) => (CpuBackend::new(), dev),
            None => return,
        }
    };
}

fn bfr(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// Fresh normal draws scaled by `scale`, rounded to bf16 (exactly representable on both sides).
fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| bfr(rng.normal() as f32 * scale)).collect()
}

use common::bufs::{down, down_u32, poisoned, up, up_u32};

/// Uploads the same host data to the CPU (f32) and the device (`dev_dt`).
fn both(cpu: &CpuBackend, dev: &CudaBackend, dev_dt: DType, data: &[f32]) -> (<CpuBackend as Backend>::Buf, <CudaBackend as Backend>::Buf) {
    (up(cpu, DType::F32, data), up(dev, dev_dt, data))
}

fn both_u32(cpu: &CpuBackend, dev: &CudaBackend, data: &[u32]) -> (<CpuBackend as Backend>::Buf, <CudaBackend as Backend>::Buf) {
    (up_u32(cpu, data), up_u32(dev, data))
}

const BF16_TOL: f32 = 1e-2;

#[track_caller]
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = want.iter().position(|w| !w.is_finite()) {
        panic!("{what}: the CPU oracle produced a non-finite value at {i}: test inputs are wrong");
    }
    if let Some(i) = got.iter().position(|g| !g.is_finite()) {
        panic!("{what}[{i}] = {} (unwritten or overflowed)", got[i]);
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += ((g - w) as f64).powi(2);
        den += (*w as f64).powi(2);
    }
    let rms = (den / want.len().max(1) as f64).sqrt() as f32;
    let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() } as f32;
    assert!(rel <= tol, "{what}: relative L2 error {rel:.3e} > {tol:.1e}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = 4.0 * tol * w.abs().max(rms).max(1e-30);
        assert!((g - w).abs() <= bound, "{what}[{i}]: got {g}, want {w} (|diff| {} > {bound:.3e})", (g - w).abs());
    }
}

#[test]
fn elementwise_and_row_ops() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(11);
    for n in [1usize, 1000, 65_537 + 3] {
        let x = randn(&mut rng, n, 1.0);
        let y = randn(&mut rng, n, 1.0);
        // f32 → bf16 → f32 copies round like the host.
        let (_, xd) = both(&cpu, &dev, DType::F32, &x);
        let xb = poisoned(&dev, DType::BF16, n);
        dev.copy(View::all(&xb), View::all(&xd)).unwrap();
        assert_eq!(down(&dev, &xb), x, "copy f32→bf16 of bf16-exact values (n={n})");
        // add_assign (f32 += bf16 and bf16 += bf16), scale, sum_squares.
        let (xc, xd) = both(&cpu, &dev, DType::F32, &x);
        let (yc, yd) = both(&cpu, &dev, DType::BF16, &y);
        cpu.add_assign(View::all(&xc), View::all(&yc)).unwrap();
        dev.add_assign(View::all(&xd), View::all(&yd)).unwrap();
        cpu.scale(View::all(&xc), -0.75).unwrap();
        dev.scale(View::all(&xd), -0.75).unwrap();
        assert_close(&down(&dev, &xd), &down(&cpu, &xc), 1e-6, &format!("f32 add_assign+scale n={n}"));
        let (ac, ad) = both(&cpu, &dev, DType::BF16, &x);
        cpu.add_assign(View::all(&ac), View::all(&yc)).unwrap();
        dev.add_assign(View::all(&ad), View::all(&yd)).unwrap();
        assert_close(&down(&dev, &ad), &down(&cpu, &ac), BF16_TOL, &format!("bf16 add_assign n={n}"));
        let (sc, sd) = (cpu.sum_squares(View::all(&xc)).unwrap(), dev.sum_squares(View::all(&xd)).unwrap());
        assert_close(&[sd], &[sc], 1e-5, &format!("sum_squares n={n}"));
        // A NaN anywhere must reach the gradient norm.
        dev.fill(View::all(&xd).slice(n / 2, 1), f32::NAN).unwrap();
        assert!(dev.sum_squares(View::all(&xd)).unwrap().is_nan(), "sum_squares must propagate NaN");
    }
    // gather_rows / scatter_add_rows, width not a multiple of any vector size.
    let (rows_total, c) = (300usize, 37usize);
    let table = randn(&mut rng, rows_total * c, 1.0);
    let rows: Vec<u32> = {
        let mut r: Vec<u32> = (0..rows_total as u32).collect();
        rng.shuffle(&mut r);
        r.truncate(123);
        r
    };
    let (tc, td) = both(&cpu, &dev, DType::BF16, &table);
    let (rc, rd) = both_u32(&cpu, &dev, &rows);
    let oc = cpu.alloc(DType::F32, rows.len() * c).unwrap();
    let od = poisoned(&dev, DType::BF16, rows.len() * c);
    cpu.gather_rows(View::all(&oc), View::all(&tc), View::all(&rc), rows.len(), c).unwrap();
    dev.gather_rows(View::all(&od), View::all(&td), View::all(&rd), rows.len(), c).unwrap();
    assert_eq!(down(&dev, &od), down(&cpu, &oc), "gather_rows is exact");
    let acc0 = randn(&mut rng, rows_total * c, 1.0);
    let (ac, ad) = both(&cpu, &dev, DType::F32, &acc0);
    cpu.scatter_add_rows(View::all(&ac), View::all(&oc), View::all(&rc), rows.len(), c).unwrap();
    dev.scatter_add_rows(View::all(&ad), View::all(&od), View::all(&rd), rows.len(), c).unwrap();
    assert_close(&down(&dev, &ad), &down(&cpu, &ac), 1e-6, "scatter_add_rows");
}

#[test]
fn embedding_forward_backward() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(12);
    for (vocab, c, n) in [(1000usize, 896usize, 333usize), (151_936, 64, 7), (50, 1536, 1)] {
        let table = randn(&mut rng, vocab * c, 0.02);
        // Repeated ids: the backward must add every occurrence.
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab.min(40) as u64) as u32 * (vocab as u32 / 40).max(1)).collect();
        let (tc, td) = both(&cpu, &dev, DType::BF16, &table);
        let (ic, id) = both_u32(&cpu, &dev, &ids);
        let oc = cpu.alloc(DType::F32, n * c).unwrap();
        let od = poisoned(&dev, DType::BF16, n * c);
        cpu.embedding_fwd(View::all(&oc), View::all(&tc), View::all(&ic), n, c).unwrap();
        dev.embedding_fwd(View::all(&od), View::all(&td), View::all(&id), n, c).unwrap();
        assert_eq!(down(&dev, &od), down(&cpu, &oc), "embedding_fwd is exact (vocab {vocab}, c {c})");
        let dout = randn(&mut rng, n * c, 1.0);
        let (gc, gd) = both(&cpu, &dev, DType::BF16, &dout);
        let acc0 = randn(&mut rng, vocab * c, 0.1);
        let (dc, dd) = both(&cpu, &dev, DType::F32, &acc0);
        cpu.embedding_bwd(View::all(&dc), View::all(&gc), View::all(&ic), n, c).unwrap();
        dev.embedding_bwd(View::all(&dd), View::all(&gd), View::all(&id), n, c).unwrap();
        assert_close(&down(&dev, &dd), &down(&cpu, &dc), 1e-6, &format!("embedding_bwd (vocab {vocab}, c {c}, n {n})"));
    }
}

#[test]
fn rmsnorm_and_residual_forward_backward() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(13);
    let eps = 1e-6;
    for (n, c) in [(1usize, 64usize), (37, 896), (130, 1536), (5, 3584), (3, 100)] {
        let x = randn(&mut rng, n * c, 1.0);
        let w = randn(&mut rng, c, 1.0);
        let (xc, xd) = both(&cpu, &dev, DType::BF16, &x);
        let (wc, wd) = both(&cpu, &dev, DType::BF16, &w);
        let (oc, rc) = (cpu.alloc(DType::F32, n * c).unwrap(), cpu.alloc(DType::F32, n).unwrap());
        let (od, rd) = (poisoned(&dev, DType::BF16, n * c), poisoned(&dev, DType::F32, n));
        cpu.rmsnorm_fwd(View::all(&oc), View::all(&rc), View::all(&xc), View::all(&wc), n, c, eps).unwrap();
        dev.rmsnorm_fwd(View::all(&od), View::all(&rd), View::all(&xd), View::all(&wd), n, c, eps).unwrap();
        assert_close(&down(&dev, &od), &down(&cpu, &oc), BF16_TOL, &format!("rmsnorm out {n}x{c}"));
        assert_close(&down(&dev, &rd), &down(&cpu, &rc), 1e-5, &format!("rmsnorm rstd {n}x{c}"));

        // Residual add fused with the norm, resid_out aliasing resid_in (as the model calls it).
        let delta = randn(&mut rng, n * c, 1.0);
        let (dc, dd) = both(&cpu, &dev, DType::BF16, &delta);
        let (o2c, r2c) = (cpu.alloc(DType::F32, n * c).unwrap(), cpu.alloc(DType::F32, n).unwrap());
        let (o2d, r2d) = (poisoned(&dev, DType::BF16, n * c), poisoned(&dev, DType::F32, n));
        cpu.residual_rmsnorm_fwd(
            View::all(&xc),
            View::all(&o2c),
            View::all(&r2c),
            View::all(&xc),
            View::all(&dc),
            View::all(&wc),
            n,
            c,
            eps,
        )
        .unwrap();
        dev.residual_rmsnorm_fwd(
            View::all(&xd),
            View::all(&o2d),
            View::all(&r2d),
            View::all(&xd),
            View::all(&dd),
            View::all(&wd),
            n,
            c,
            eps,
        )
        .unwrap();
        assert_close(&down(&dev, &xd), &down(&cpu, &xc), BF16_TOL, &format!("residual sum {n}x{c}"));
        assert_close(&down(&dev, &o2d), &down(&cpu, &o2c), BF16_TOL, &format!("residual rmsnorm out {n}x{c}"));
        assert_close(&down(&dev, &r2d), &down(&cpu, &r2c), 1e-2, &format!("residual rmsnorm rstd {n}x{c}"));

        // Backward from the first forward's saved rstd; dx and dw accumulate.
        let dout = randn(&mut rng, n * c, 1.0);
        let (gc, gd) = both(&cpu, &dev, DType::BF16, &dout);
        let dx0 = randn(&mut rng, n * c, 0.5);
        let (dxc, dxd) = both(&cpu, &dev, DType::BF16, &dx0);
        let dw0 = randn(&mut rng, c, 0.5);
        let (dwc, dwd) = both(&cpu, &dev, DType::F32, &dw0);
        // The residual forward overwrote x in place: upload it again.
        let (xc, xd) = both(&cpu, &dev, DType::BF16, &x);
        cpu.rmsnorm_bwd(View::all(&dxc), View::all(&dwc), View::all(&gc), View::all(&xc), View::all(&wc), View::all(&rc), n, c).unwrap();
        dev.rmsnorm_bwd(View::all(&dxd), View::all(&dwd), View::all(&gd), View::all(&xd), View::all(&wd), View::all(&rd), n, c).unwrap();
        assert_close(&down(&dev, &dxd), &down(&cpu, &dxc), BF16_TOL, &format!("rmsnorm dx {n}x{c}"));
        assert_close(&down(&dev, &dwd), &down(&cpu, &dwc), 1e-3, &format!("rmsnorm dw {n}x{c}"));
    }
}

#[test]
fn gemm_every_layout_bias_and_f32_accumulation() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(14);
    for (m, n, k) in [(7usize, 5usize, 9usize), (130, 257, 96), (1, 1536, 256), (333, 896, 4864)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = randn(&mut rng, m * k, 1.0);
            let b = randn(&mut rng, k * n, 1.0 / (k as f32).sqrt());
            let bias = randn(&mut rng, n, 1.0);
            let (ac, ad) = both(&cpu, &dev, DType::BF16, &a);
            let (bc, bd) = both(&cpu, &dev, DType::BF16, &b);
            let (biasc, biasd) = both(&cpu, &dev, DType::BF16, &bias);
            // act output with bias, alpha 1, beta 0 (the forward projections).
            let cc = cpu.alloc(DType::F32, m * n).unwrap();
            let cd = poisoned(&dev, DType::BF16, m * n);
            cpu.gemm(View::all(&cc), View::all(&ac), View::all(&bc), Some(View::all(&biasc)), m, n, k, ta, tb, 1.0, 0.0).unwrap();
            dev.gemm(View::all(&cd), View::all(&ad), View::all(&bd), Some(View::all(&biasd)), m, n, k, ta, tb, 1.0, 0.0).unwrap();
            let what = format!("gemm {m}x{n}x{k} ta={ta} tb={tb}");
            assert_close(&down(&dev, &cd), &down(&cpu, &cc), BF16_TOL, &format!("{what} bf16+bias"));
            // F32 output accumulating (the weight gradients): C = 0.5·AB + 1·C.
            let c0 = randn(&mut rng, m * n, 1.0);
            let (fc, fd) = both(&cpu, &dev, DType::F32, &c0);
            cpu.gemm(View::all(&fc), View::all(&ac), View::all(&bc), None, m, n, k, ta, tb, 0.5, 1.0).unwrap();
            dev.gemm(View::all(&fd), View::all(&ad), View::all(&bd), None, m, n, k, ta, tb, 0.5, 1.0).unwrap();
            assert_close(&down(&dev, &fd), &down(&cpu, &fc), 1e-3, &format!("{what} f32 accumulate"));
        }
    }
}

#[test]
fn bias_backward() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(15);
    for (m, n) in [(1usize, 7usize), (333, 896), (4100, 128)] {
        let dout = randn(&mut rng, m * n, 1.0);
        let (gc, gd) = both(&cpu, &dev, DType::BF16, &dout);
        let acc = randn(&mut rng, n, 1.0);
        let (dc, dd) = both(&cpu, &dev, DType::F32, &acc);
        cpu.bias_bwd(View::all(&dc), View::all(&gc), m, n).unwrap();
        dev.bias_bwd(View::all(&dd), View::all(&gd), m, n).unwrap();
        assert_close(&down(&dev, &dd), &down(&cpu, &dc), 1e-4, &format!("bias_bwd {m}x{n}"));
    }
}

/// Qwen2.5-0.5B's attention (14 q heads, 2 kv heads: 7:1, head_dim 64) and Qwen2.5-3B's
/// (16:2 = 8:1, head_dim 128), the tiny preset's (4:2, head_dim 32) and the transformers
/// fixture's (head_dim 16).
const ATTN_SHAPES: [AttnShape; 4] = [
    AttnShape { n_head: 14, n_kv_head: 2, head_dim: 64 },
    AttnShape { n_head: 16, n_kv_head: 2, head_dim: 128 },
    AttnShape { n_head: 4, n_kv_head: 2, head_dim: 32 },
    AttnShape { n_head: 4, n_kv_head: 1, head_dim: 16 },
];

#[test]
fn rope_forward_and_inverse() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(16);
    for s in ATTN_SHAPES {
        let n = 37;
        let w = s.qkv_width();
        let qkv = randn(&mut rng, n * w, 1.0);
        let pos: Vec<u32> = (0..n).map(|_| rng.below(32_768) as u32).collect();
        let (pc, pd) = both_u32(&cpu, &dev, &pos);
        for inverse in [false, true] {
            let (qc, qd) = both(&cpu, &dev, DType::BF16, &qkv);
            cpu.rope(View::all(&qc), View::all(&pc), n, s, 1_000_000.0, inverse).unwrap();
            dev.rope(View::all(&qd), View::all(&pd), n, s, 1_000_000.0, inverse).unwrap();
            assert_close(&down(&dev, &qd), &down(&cpu, &qc), BF16_TOL, &format!("rope d={} inverse={inverse}", s.head_dim));
        }
    }
}

#[test]
fn attention_forward_backward_varlen_gqa() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(17);
    // Sequence lengths that straddle tile boundaries, including a 1-token sequence.
    let lens = [1u32, 37, 130, 64, 200];
    let mut cu = vec![0u32];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let t = *cu.last().unwrap() as usize;
    // Both forward implementations: tensor cores (the default for head_dim 64/128) and FMA.
    for (fma, s) in [false, true].into_iter().flat_map(|f| ATTN_SHAPES.map(|s| (f, s))) {
        dev.use_fma_attention(fma);
        let (w, qw) = (s.qkv_width(), s.q_width());
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let what = format!("attention h={}:{} d={} fma={fma}", s.n_head, s.n_kv_head, s.head_dim);
        let qkv = randn(&mut rng, t * w, 1.0);
        let (qc, qd) = both(&cpu, &dev, DType::BF16, &qkv);
        let (cuc, cud) = both_u32(&cpu, &dev, &cu);
        let seqs_c = Seqs::<CpuBackend> { cu_dev: View::all(&cuc), cu_host: &cu };
        let seqs_d = Seqs::<CudaBackend> { cu_dev: View::all(&cud), cu_host: &cu };
        let (oc, lc) = (cpu.alloc(DType::F32, t * qw).unwrap(), cpu.alloc(DType::F32, t * s.n_head).unwrap());
        let (od, ld) = (poisoned(&dev, DType::BF16, t * qw), poisoned(&dev, DType::F32, t * s.n_head));
        cpu.attention_fwd(View::all(&oc), View::all(&lc), View::all(&qc), seqs_c, s, scale).unwrap();
        dev.attention_fwd(View::all(&od), View::all(&ld), View::all(&qd), seqs_d, s, scale).unwrap();
        assert_close(&down(&dev, &od), &down(&cpu, &oc), BF16_TOL, &format!("{what} out"));
        assert_close(&down(&dev, &ld), &down(&cpu, &lc), 1e-3, &format!("{what} lse"));

        // The same forward from a qkv view that is not 16-byte aligned (one element in): the
        // kernels' element-by-element tile loads instead of their 16-byte ones.
        let shifted: Vec<f32> = std::iter::once(0.0).chain(qkv.iter().copied()).collect();
        let (_, qd1) = both(&cpu, &dev, DType::BF16, &shifted);
        let (od1, ld1) = (poisoned(&dev, DType::BF16, t * qw), poisoned(&dev, DType::F32, t * s.n_head));
        dev.attention_fwd(View::all(&od1), View::all(&ld1), View::all(&qd1).slice(1, t * w), seqs_d, s, scale).unwrap();
        assert_close(&down(&dev, &od1), &down(&cpu, &oc), BF16_TOL, &format!("{what} out, misaligned qkv"));

        // Backward from each side's own forward outputs (the device uses its bf16 `out`).
        let dout = randn(&mut rng, t * qw, 1.0);
        let (gc, gd) = both(&cpu, &dev, DType::BF16, &dout);
        let dc = cpu.alloc(DType::F32, t * w).unwrap();
        let dd = poisoned(&dev, DType::BF16, t * w);
        cpu.attention_bwd(View::all(&dc), View::all(&gc), View::all(&qc), View::all(&oc), View::all(&lc), seqs_c, s, scale).unwrap();
        dev.attention_bwd(View::all(&dd), View::all(&gd), View::all(&qd), View::all(&od), View::all(&ld), seqs_d, s, scale).unwrap();
        let (got, want) = (down(&dev, &dd), down(&cpu, &dc));
        // Compare q, k and v gradients separately: their scales differ.
        for (part, lo, hi) in [("dq", 0, qw), ("dk", qw, qw + s.kv_width()), ("dv", qw + s.kv_width(), w)] {
            let pick = |x: &[f32]| -> Vec<f32> { (0..t).flat_map(|r| x[r * w + lo..r * w + hi].to_vec()).collect() };
            assert_close(&pick(&got), &pick(&want), 2e-2, &format!("{what} {part}"));
        }
    }
}

#[test]
fn kv_cache_store_and_decode_attention() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(18);
    // Both decode implementations (tensor cores per kv group, the default for head_dim 64/128;
    // FMA per query head), and caches one element into their buffers (off = 1: not 16-byte
    // aligned, the element-wise tile loads).
    for (fma, off, s) in [(false, 0usize), (true, 0), (false, 1)].into_iter().flat_map(|(f, o)| ATTN_SHAPES.map(|s| (f, o, s))) {
        dev.use_fma_attention(fma);
        let what = format!("attention_decode h={}:{} d={} fma={fma} off={off}", s.n_head, s.n_kv_head, s.head_dim);
        let (w, kvw) = (s.qkv_width(), s.kv_width());
        let (slots, t_max) = (6usize, 320usize);
        // Five rows decoding at different lengths, in a slot order that is not the row order.
        let lens: [u32; 5] = [1, 17, 64, 130, 300];
        let slot_of: [u32; 5] = [4, 0, 5, 2, 1];
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        let cn = slots * t_max * kvw;
        let (kc, vc) = (cpu.alloc(DType::F32, cn).unwrap(), cpu.alloc(DType::F32, cn).unwrap());
        let (kd, vd) = (dev.alloc(DType::BF16, cn + off).unwrap(), dev.alloc(DType::BF16, cn + off).unwrap());
        let (kdv, vdv) = (View::all(&kd).slice(off, cn), View::all(&vd).slice(off, cn));
        // Fill each row's cache through kv_store, one token row per position.
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        let hist = randn(&mut rng, total * w, 1.0);
        let mut slot_ids = vec![];
        let mut pos_ids = vec![];
        for (r, &l) in lens.iter().enumerate() {
            for p in 0..l {
                slot_ids.push(slot_of[r]);
                pos_ids.push(p);
            }
        }
        let (hc, hd) = both(&cpu, &dev, DType::BF16, &hist);
        let (sc, sd) = both_u32(&cpu, &dev, &slot_ids);
        let (pc, pd) = both_u32(&cpu, &dev, &pos_ids);
        cpu.kv_store(View::all(&kc), View::all(&vc), View::all(&hc), View::all(&sc), View::all(&pc), total, s, t_max).unwrap();
        dev.kv_store(kdv, vdv, View::all(&hd), View::all(&sd), View::all(&pd), total, s, t_max).unwrap();
        // The stored rows are copies: compare just the filled positions.
        let (kcpu, kdev) = (down(&cpu, &kc), down(&dev, &kd));
        for (r, &l) in lens.iter().enumerate() {
            let base = slot_of[r] as usize * t_max * kvw;
            assert_eq!(kdev[off + base..off + base + l as usize * kvw], kcpu[base..base + l as usize * kvw], "kv_store k, row {r}");
        }
        // Decode one query per row: all five rows, then the longest alone (one row: the host
        // splits its keys over several blocks, which the combine step merges).
        let q = randn(&mut rng, lens.len() * w, 1.0);
        let (qc, qd) = both(&cpu, &dev, DType::BF16, &q);
        let (slc, sld) = both_u32(&cpu, &dev, &slot_of);
        let (lc, ld) = both_u32(&cpu, &dev, &lens);
        for (r0, b) in [(0usize, lens.len()), (4, 1)] {
            let oc = cpu.alloc(DType::F32, b * s.q_width()).unwrap();
            let od = poisoned(&dev, DType::BF16, b * s.q_width());
            let (qcv, qdv) = (View::all(&qc).slice(r0 * w, b * w), View::all(&qd).slice(r0 * w, b * w));
            let (slcv, sldv) = (View::all(&slc).slice(r0, b), View::all(&sld).slice(r0, b));
            let (lcv, ldv) = (View::all(&lc).slice(r0, b), View::all(&ld).slice(r0, b));
            cpu.attention_decode(View::all(&oc), qcv, View::all(&kc), View::all(&vc), slcv, lcv, b, 300, s, t_max, scale).unwrap();
            dev.attention_decode(View::all(&od), qdv, kdv, vdv, sldv, ldv, b, 300, s, t_max, scale).unwrap();
            assert_close(&down(&dev, &od), &down(&cpu, &oc), BF16_TOL, &format!("{what} rows {r0}..{}", r0 + b));
        }
    }
    dev.use_fma_attention(false);
}

#[test]
fn swiglu_forward_backward() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(19);
    for (n, inter) in [(1usize, 7usize), (37, 4864), (130, 8960)] {
        let gu = randn(&mut rng, n * 2 * inter, 2.0);
        let (gc, gd) = both(&cpu, &dev, DType::BF16, &gu);
        let oc = cpu.alloc(DType::F32, n * inter).unwrap();
        let od = poisoned(&dev, DType::BF16, n * inter);
        cpu.swiglu_fwd(View::all(&oc), View::all(&gc), n, inter).unwrap();
        dev.swiglu_fwd(View::all(&od), View::all(&gd), n, inter).unwrap();
        assert_close(&down(&dev, &od), &down(&cpu, &oc), BF16_TOL, &format!("swiglu_fwd {n}x{inter}"));
        let dout = randn(&mut rng, n * inter, 1.0);
        let (dc, dd) = both(&cpu, &dev, DType::BF16, &dout);
        let gc2 = cpu.alloc(DType::F32, n * 2 * inter).unwrap();
        let gd2 = poisoned(&dev, DType::BF16, n * 2 * inter);
        cpu.swiglu_bwd(View::all(&gc2), View::all(&dc), View::all(&gc), n, inter).unwrap();
        dev.swiglu_bwd(View::all(&gd2), View::all(&dd), View::all(&gd), n, inter).unwrap();
        assert_close(&down(&dev, &gd2), &down(&cpu, &gc2), BF16_TOL, &format!("swiglu_bwd {n}x{inter}"));
    }
}

#[test]
fn logprob_gather_forward_backward_with_entropy() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(20);
    for (n, v, inv_temp) in [(3usize, 1000usize, 1.0f32), (17, 151_936, 1.0), (5, 151_936, 1.0 / 0.7), (1, 33, 1.0)] {
        let logits = randn(&mut rng, n * v, 3.0);
        let targets: Vec<u32> = (0..n).map(|_| rng.below(v as u64) as u32).collect();
        let (xc, xd) = both(&cpu, &dev, DType::BF16, &logits);
        let (tc, td) = both_u32(&cpu, &dev, &targets);
        let what = format!("logprob n={n} v={v} inv_temp={inv_temp}");
        for with_entropy in [false, true] {
            let (lpc, lsc, ec) = (cpu.alloc(DType::F32, n).unwrap(), cpu.alloc(DType::F32, n).unwrap(), cpu.alloc(DType::F32, n).unwrap());
            let (lpd, lsd, ed) = (poisoned(&dev, DType::F32, n), poisoned(&dev, DType::F32, n), poisoned(&dev, DType::F32, n));
            let ent_c = with_entropy.then(|| View::all(&ec));
            let ent_d = with_entropy.then(|| View::all(&ed));
            cpu.logprob_fwd(View::all(&lpc), View::all(&lsc), ent_c, View::all(&xc), View::all(&tc), n, v, inv_temp).unwrap();
            dev.logprob_fwd(View::all(&lpd), View::all(&lsd), ent_d, View::all(&xd), View::all(&td), n, v, inv_temp).unwrap();
            assert_close(&down(&dev, &lpd), &down(&cpu, &lpc), 1e-4, &format!("{what} logp"));
            assert_close(&down(&dev, &lsd), &down(&cpu, &lsc), 1e-5, &format!("{what} lse"));
            if with_entropy {
                assert_close(&down(&dev, &ed), &down(&cpu, &ec), 1e-4, &format!("{what} entropy"));
            }
            // Backward into a separate buffer, then in place over the logits (the model's use).
            let dlogp = randn(&mut rng, n, 1.0);
            let dent = randn(&mut rng, n, 1.0);
            let (glc, gld) = both(&cpu, &dev, DType::F32, &dlogp);
            let (gec, ged) = both(&cpu, &dev, DType::F32, &dent);
            let dec = with_entropy.then(|| View::all(&gec));
            let ded = with_entropy.then(|| View::all(&ged));
            let dxc = cpu.alloc(DType::F32, n * v).unwrap();
            let dxd = poisoned(&dev, DType::BF16, n * v);
            cpu.logprob_bwd(View::all(&dxc), View::all(&xc), View::all(&tc), View::all(&lsc), ent_c, View::all(&glc), dec, n, v, inv_temp)
                .unwrap();
            dev.logprob_bwd(View::all(&dxd), View::all(&xd), View::all(&td), View::all(&lsd), ent_d, View::all(&gld), ded, n, v, inv_temp)
                .unwrap();
            let want = down(&cpu, &dxc);
            assert_close(&down(&dev, &dxd), &want, BF16_TOL, &format!("{what} entropy={with_entropy} dlogits"));
            let (_, inplace) = both(&cpu, &dev, DType::BF16, &logits);
            dev.logprob_bwd(
                View::all(&inplace),
                View::all(&inplace),
                View::all(&td),
                View::all(&lsd),
                ent_d,
                View::all(&gld),
                ded,
                n,
                v,
                inv_temp,
            )
            .unwrap();
            assert_close(&down(&dev, &inplace), &want, BF16_TOL, &format!("{what} entropy={with_entropy} dlogits in place"));
        }
    }
}

/// One draw for every row (one seed each, all at `counter`) on both backends, the device's
/// output poisoned first: (CPU tokens, device tokens).
#[allow(clippy::too_many_arguments)]
fn sample_both(
    cpu: &CpuBackend,
    dev: &CudaBackend,
    xc: &<CpuBackend as Backend>::Buf,
    xd: &<CudaBackend as Backend>::Buf,
    v: usize,
    p: &SamplingParams,
    seeds: &[u64],
    counter: u64,
) -> (Vec<u32>, Vec<u32>) {
    let b = seeds.len();
    let counters = vec![counter; b];
    let oc = cpu.alloc(DType::U32, b).unwrap();
    let od = dev.alloc(DType::U32, b).unwrap();
    dev.upload_u32(View::all(&od), &vec![u32::MAX; b]).unwrap();
    cpu.sample(View::all(&oc), View::all(xc), b, v, p, seeds, &counters).unwrap();
    dev.sample(View::all(&od), View::all(xd), b, v, p, seeds, &counters).unwrap();
    (down_u32(cpu, &oc), down_u32(dev, &od))
}

#[test]
fn sampling_matches_the_oracle() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(21);
    let (b, v) = (64usize, 151_936usize);
    let logits = randn(&mut rng, b * v, 2.5);
    let (xc, xd) = both(&cpu, &dev, DType::BF16, &logits);
    let seeds: Vec<u64> = (0..b as u64).map(|i| 1000 + i).collect();
    let params = [
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 },
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 },
        SamplingParams { temperature: 0.7, top_k: 50, top_p: 1.0 },
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.9 },
        SamplingParams { temperature: 0.6, top_k: 20, top_p: 0.95 },
    ];
    for p in params {
        let (mut agree, mut draws) = (0usize, 0usize);
        for counter in 0..4u64 {
            let (tc, td) = sample_both(&cpu, &dev, &xc, &xd, v, &p, &seeds, counter);
            assert!(td.iter().all(|&t| (t as usize) < v), "{p:?}: token out of range (unwritten?)");
            agree += tc.iter().zip(&td).filter(|(a, b)| a == b).count();
            draws += b;
        }
        if p.temperature == 0.0 {
            assert_eq!(agree, draws, "greedy must agree exactly");
        } else {
            // Same uniform draw, same kept set: only a draw that falls within float rounding of
            // a cumulative-mass boundary may differ.
            assert!(agree * 100 >= draws * 98, "{p:?}: only {agree}/{draws} draws agree with the oracle");
        }
    }
}

/// Rows that stress the thresholds: many tied logits, all logits equal, one dominant token,
/// a row that is -inf but for three tied tokens; top-p 0 (keep the ties of the largest p),
/// top-k 1 and v - 1. Ties have no rounding boundary to fall on: the tokens must be equal.
#[test]
fn sampling_edge_rows_match_the_oracle() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(23);
    let v = 4099usize;
    let mut logits = Vec::new();
    logits.extend(randn(&mut rng, v, 2.0).iter().map(|x| x.round().clamp(-3.0, 3.0)));
    logits.extend(std::iter::repeat_n(0.0f32, v));
    let mut dominant = randn(&mut rng, v, 1.0);
    dominant[1234] = 30.0;
    logits.extend(dominant);
    let mut few = vec![f32::NEG_INFINITY; v];
    for j in [5, 2000, 4098] {
        few[j] = 1.0;
    }
    logits.extend(few);
    let b = logits.len() / v;
    let (xc, xd) = both(&cpu, &dev, DType::BF16, &logits);
    let seeds: Vec<u64> = (0..b as u64).map(|i| 77 + i).collect();
    for p in [
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.0 },
        SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0 },
        SamplingParams { temperature: 1.0, top_k: v - 1, top_p: 1.0 },
        SamplingParams { temperature: 0.9, top_k: 7, top_p: 0.3 },
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.5 },
        SamplingParams { temperature: 2.0, top_k: 100, top_p: 0.99 },
    ] {
        for counter in 0..3u64 {
            let (tc, td) = sample_both(&cpu, &dev, &xc, &xd, v, &p, &seeds, counter);
            assert_eq!(td, tc, "{p:?} counter {counter}");
        }
    }
}

#[test]
fn apo_and_grpo_losses() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(22);
    let lens = [1u32, 48, 300, 7];
    let mut cu = vec![0u32];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    let t = *cu.last().unwrap() as usize;
    let s = lens.len();
    let logp: Vec<f32> = (0..t).map(|_| -(rng.next_f64() as f32) * 3.0).collect();
    let ref_logp: Vec<f32> = logp.iter().map(|x| x + 0.1 * rng.normal() as f32).collect();
    let target = randn(&mut rng, s, 1.0);
    let (lc, ld) = both(&cpu, &dev, DType::F32, &logp);
    let (rc, rd) = both(&cpu, &dev, DType::F32, &ref_logp);
    let (tc, td) = both(&cpu, &dev, DType::F32, &target);
    let (cuc, cud) = both_u32(&cpu, &dev, &cu);
    let seqs_c = Seqs::<CpuBackend> { cu_dev: View::all(&cuc), cu_host: &cu };
    let seqs_d = Seqs::<CudaBackend> { cu_dev: View::all(&cud), cu_host: &cu };
    let (losc, gc) = (cpu.alloc(DType::F32, s).unwrap(), cpu.alloc(DType::F32, t).unwrap());
    let (losd, gd) = (poisoned(&dev, DType::F32, s), poisoned(&dev, DType::F32, t));
    cpu.apo_loss(View::all(&losc), View::all(&gc), View::all(&lc), View::all(&rc), View::all(&tc), seqs_c, 0.05, 0.25).unwrap();
    dev.apo_loss(View::all(&losd), View::all(&gd), View::all(&ld), View::all(&rd), View::all(&td), seqs_d, 0.05, 0.25).unwrap();
    assert_close(&down(&dev, &losd), &down(&cpu, &losc), 1e-5, "apo_loss loss");
    assert_close(&down(&dev, &gd), &down(&cpu, &gc), 1e-5, "apo_loss dlogp");

    let old: Vec<f32> = logp.iter().map(|x| x + 0.3 * rng.normal() as f32).collect();
    let adv = randn(&mut rng, t, 1.0);
    let weight: Vec<f32> = (0..t).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 / t as f32 }).collect();
    let (oc, od) = both(&cpu, &dev, DType::F32, &old);
    let (ac, ad) = both(&cpu, &dev, DType::F32, &adv);
    let (wc, wd) = both(&cpu, &dev, DType::F32, &weight);
    for est in [tz_engine::backend::KlEstimator::K3, tz_engine::backend::KlEstimator::K1] {
        let (losc, gc) = (cpu.alloc(DType::F32, t).unwrap(), cpu.alloc(DType::F32, t).unwrap());
        let (losd, gd) = (poisoned(&dev, DType::F32, t), poisoned(&dev, DType::F32, t));
        cpu.grpo_loss(
            View::all(&losc),
            View::all(&gc),
            View::all(&lc),
            View::all(&oc),
            View::all(&rc),
            View::all(&ac),
            View::all(&wc),
            t,
            0.2,
            0.001,
            est,
        )
        .unwrap();
        dev.grpo_loss(
            View::all(&losd),
            View::all(&gd),
            View::all(&ld),
            View::all(&od),
            View::all(&rd),
            View::all(&ad),
            View::all(&wd),
            t,
            0.2,
            0.001,
            est,
        )
        .unwrap();
        assert_close(&down(&dev, &losd), &down(&cpu, &losc), 1e-5, &format!("grpo_loss loss {est:?}"));
        assert_close(&down(&dev, &gd), &down(&cpu, &gc), 1e-5, &format!("grpo_loss dlogp {est:?}"));
    }
}

#[test]
fn adamw_master_weights_match_the_f32_oracle() {
    let (cpu, dev) = pair!();
    let mut rng = Rng::new(23);
    // off > 0: every view starts `off` elements into its buffer (not 16-byte aligned), so the
    // kernel's element-wise path runs instead of its float4 one.
    for (n, off) in [(1usize, 0usize), (1000, 0), (1_000_003, 0), (1001, 1)] {
        let pad = |x: Vec<f32>| -> Vec<f32> { std::iter::repeat_n(0.0, off).chain(x).collect() };
        let w = pad(randn(&mut rng, n, 0.02));
        let m0 = pad(randn(&mut rng, n, 1e-3));
        let v0 = pad(randn(&mut rng, n, 1e-3).iter().map(|x| x * x).collect());
        // CPU: f32 params updated in place. CUDA: f32 master, bf16 params receive the cast.
        let (pc, md) = both(&cpu, &dev, DType::F32, &w);
        let pd = poisoned(&dev, DType::BF16, n + off);
        let (mc, mmd) = both(&cpu, &dev, DType::F32, &m0);
        let (vc, vd) = both(&cpu, &dev, DType::F32, &v0);
        for step in 1..=3u32 {
            let g = pad(randn(&mut rng, n, 1.0));
            let (gc, gd) = both(&cpu, &dev, DType::F32, &g);
            let p = AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step, grad_scale: 0.5 };
            let c = |b| View::all(b).slice(off, n);
            let d = |b| View::all(b).slice(off, n);
            cpu.adamw(c(&pc), None, c(&gc), c(&mc), c(&vc), &p).unwrap();
            dev.adamw(d(&pd), Some(d(&md)), d(&gd), d(&mmd), d(&vd), &p).unwrap();
        }
        let tail = |x: Vec<f32>| x[off..].to_vec();
        let want = tail(down(&cpu, &pc));
        assert_close(&tail(down(&dev, &md)), &want, 1e-5, &format!("adamw master n={n} off={off}"));
        assert_close(&tail(down(&dev, &mmd)), &tail(down(&cpu, &mc)), 1e-5, &format!("adamw m n={n} off={off}"));
        assert_close(&tail(down(&dev, &vd)), &tail(down(&cpu, &vc)), 1e-5, &format!("adamw v n={n} off={off}"));
        let cast: Vec<f32> = tail(down(&dev, &md)).iter().map(|&x| bfr(x)).collect();
        assert_eq!(tail(down(&dev, &pd)), cast, "adamw: bf16 params are the rounded master weights (n={n} off={off})");
    }
}
