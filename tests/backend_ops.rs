//! The backend conformance suite: every op case written once, generic over `Backend`, and
//! checked against plain host references written here (f64 arithmetic), independent of the
//! CPU backend. `backend_test!` stamps each case per backend: `cpu::<case>` always runs,
//! `cuda::<case>` (with the `cuda` feature) skips with a printed reason without a GPU
//! (`TZ_REQUIRE_GPU=1` makes that a failure). tests/parity_cuda.rs compares CUDA with the CPU
//! oracle on larger random shapes; this file pins both to the documented semantics of
//! `src/backend/mod.rs`.
//!
//! - Inputs stored in the activation dtype are rounded to it on the host first (`rnd`: bf16 on
//!   BF16 backends, identity on F32 ones), so the reference sees exactly what the backend sees.
//! - Written outputs are poisoned first (NaN, `u32::MAX` for token ids) so an element an op
//!   forgets to write fails; a non-finite result never passes (`close`).
//! - Tolerances come from `be.act_dtype()` (`tol`): fp32-tight (~1e-5 relative) on F32
//!   backends, the bf16 rounding of inputs and outputs (~1e-2 relative) on BF16 ones;
//!   exact ops (copies, gathers, KV stores, sampling) are compared for equality.
#[macro_use]
mod common;

use half::bf16;
use tz_engine::backend::{AdamWParams, AttnShape, Backend, DType, SamplingParams, Seqs, View};
use tz_engine::rng::{uniform, Rng};

backend_test!(
    upload_download_round_trip,
    elementwise_ops,
    gather_scatter_rows,
    copy_block_strided,
    embedding_fwd_bwd,
    rmsnorm_fwd_bwd,
    residual_rmsnorm_fwd,
    gemm_all_transposes,
    bias_bwd,
    rope_fwd_inverse,
    attention_fwd_bwd,
    kv_store_and_decode,
    swiglu_fwd_bwd,
    logprob_fwd_bwd,
    sampling_semantics,
    sampling_matches_host_reference,
    apo_loss_values_and_gradient,
    grpo_loss_values_and_gradient,
    adamw_matches_scalar_reference,
);

// ---- helpers ---------------------------------------------------------------------------------

fn is_bf16<B: Backend>(be: &B) -> bool {
    be.act_dtype() == DType::BF16
}

/// What an act-dtype buffer holds after uploading `x`: bf16-rounded (RNE) on BF16 backends.
fn rnd<B: Backend>(be: &B, x: f32) -> f32 {
    if is_bf16(be) {
        bf16::from_f32(x).to_f32()
    } else {
        x
    }
}

/// Normal draws times `scale`, representable in the act dtype.
fn randn<B: Backend>(be: &B, rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rnd(be, rng.normal() as f32 * scale)).collect()
}

/// Normal draws for F32-only inputs (log-probs, gradients, optimizer state).
fn randn_f32(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

/// Per-element bound `atol + rtol·|want|`.
#[derive(Clone, Copy, Debug)]
struct Tol {
    atol: f32,
    rtol: f32,
}

/// The tolerance for this backend: `f32` = (atol, rtol) where activations are F32, `bf16`
/// where they are stored in bf16.
fn tol<B: Backend>(be: &B, f32: (f32, f32), bf16: (f32, f32)) -> Tol {
    let (atol, rtol) = if is_bf16(be) { bf16 } else { f32 };
    Tol { atol, rtol }
}

#[track_caller]
fn close(got: &[f32], want: &[f32], t: Tol, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = want.iter().position(|w| !w.is_finite()) {
        panic!("{what}: the host reference is non-finite at {i}: the test is wrong");
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g} (unwritten or overflowed)");
        let (err, bound) = ((g - w).abs(), t.atol + t.rtol * w.abs());
        assert!(err <= bound, "{what}[{i}]: got {g}, want {w} (|diff| {err:.3e} > {bound:.3e})");
    }
}

fn f64s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

use common::bufs::{down, down_u32, poisoned, up, up_u32};

// ---- memory and elementwise ------------------------------------------------------------------

/// Uploads and downloads are exact for F32 and U32 and round like `half` (RNE) into the act
/// dtype; device-side F32 ↔ act copies round the same way; writes into a slice leave the rest.
fn upload_download_round_trip<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0137 + 1e-3).collect();
    let want: Vec<f32> = x.iter().map(|&v| rnd(be, v)).collect();
    assert_eq!(down(be, &up(be, act, &x)), want, "act upload rounds like half");
    let f = up(be, DType::F32, &x);
    assert_eq!(down(be, &f), x, "f32 round trip");
    let c = poisoned(be, act, x.len());
    be.copy(View::all(&c), View::all(&f)).unwrap();
    assert_eq!(down(be, &c), want, "f32 → act copy rounds like the host");
    let back = poisoned(be, DType::F32, x.len());
    be.copy(View::all(&back), View::all(&c)).unwrap();
    assert_eq!(down(be, &back), want, "act → f32 copy is exact");
    // A window: upload into and copy between slices; the rest is untouched.
    let w = poisoned(be, DType::F32, 100);
    be.upload_f32(View::all(&w).slice(10, 20), &x[..20]).unwrap();
    be.copy(View::all(&w).slice(50, 20), View::all(&f).slice(100, 20)).unwrap();
    let got = down(be, &w);
    assert_eq!(got[10..30], x[..20]);
    assert_eq!(got[50..70], x[100..120]);
    assert!(got[..10].iter().chain(&got[30..50]).chain(&got[70..]).all(|v| v.is_nan()), "writes outside the window");
    let mut part = vec![0f32; 5];
    be.download_f32(View::all(&f).slice(7, 5), &mut part).unwrap();
    assert_eq!(part, x[7..12]);
    let ids = [0u32, 1, 7, 151_935, u32::MAX - 1, u32::MAX];
    assert_eq!(down_u32(be, &up_u32(be, &ids)), ids, "u32 round trip");
}

/// `add_assign` (F32 += act, act += act), `scale`, `sum_squares` (NaN/Inf propagate) and
/// `fill` of a window.
fn elementwise_ops<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(1);
    let n = 5000;
    let (x, y) = (randn(be, &mut rng, n, 1.0), randn(be, &mut rng, n, 1.0));
    let (fx, by) = (up(be, DType::F32, &x), up(be, act, &y));
    be.add_assign(View::all(&fx), View::all(&by)).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, c)| a + c).collect();
    close(&down(be, &fx), &want, tol(be, (1e-6, 1e-6), (1e-6, 1e-6)), "add_assign f32 += act");
    be.scale(View::all(&fx), 0.5).unwrap();
    let want: Vec<f32> = want.iter().map(|v| v * 0.5).collect();
    close(&down(be, &fx), &want, tol(be, (1e-6, 1e-6), (1e-6, 1e-6)), "scale f32");
    let ss = be.sum_squares(View::all(&fx)).unwrap() as f64;
    let ref_ss: f64 = want.iter().map(|&v| v as f64 * v as f64).sum();
    let rt = if is_bf16(be) { 1e-4 } else { 1e-6 };
    assert!((ss - ref_ss).abs() <= rt * ref_ss, "sum_squares f32 {ss} vs {ref_ss}");
    let ss = be.sum_squares(View::all(&by)).unwrap() as f64;
    let ref_ss: f64 = y.iter().map(|&v| v as f64 * v as f64).sum();
    assert!((ss - ref_ss).abs() <= rt * ref_ss, "sum_squares act {ss} vs {ref_ss}");
    // act += act and act *= alpha: one act rounding of the f32 result.
    let bx = up(be, act, &x);
    be.add_assign(View::all(&bx), View::all(&by)).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, c)| rnd(be, a + c)).collect();
    close(&down(be, &bx), &want, tol(be, (1e-6, 1e-6), (1e-6, 4e-3)), "add_assign act += act");
    be.scale(View::all(&bx), -0.75).unwrap();
    let want: Vec<f32> = want.iter().map(|&v| rnd(be, v * -0.75)).collect();
    close(&down(be, &bx), &want, tol(be, (1e-6, 1e-6), (1e-6, 4e-3)), "scale act");
    // NaN and Inf reach the gradient norm (the trainer skips such steps).
    let mut bad = x.clone();
    bad[1234] = f32::NAN;
    assert!(be.sum_squares(View::all(&up(be, DType::F32, &bad))).unwrap().is_nan(), "sum_squares must propagate NaN");
    bad[1234] = f32::INFINITY;
    assert_eq!(be.sum_squares(View::all(&up(be, act, &bad))).unwrap(), f32::INFINITY, "sum_squares must propagate Inf");
    // fill writes exactly its window.
    be.fill(View::all(&by).slice(10, 20), 3.0).unwrap();
    let got = down(be, &by);
    assert!(got[10..30].iter().all(|&v| v == 3.0) && got[..10] == y[..10] && got[30..] == y[30..], "fill window");
    be.fill(View::all(&fx), -2.5).unwrap();
    assert!(down(be, &fx).iter().all(|&v| v == -2.5), "fill f32");
}

/// `gather_rows` copies rows exactly (act and F32); `scatter_add_rows` adds them back (F32 +=
/// act rows).
fn gather_scatter_rows<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(3);
    for c in [7usize, 64] {
        let rows = [3u32, 0, 5];
        let table = randn(be, &mut rng, 6 * c, 1.0);
        let r = up_u32(be, &rows);
        let want: Vec<f32> = rows.iter().flat_map(|&r| table[r as usize * c..(r as usize + 1) * c].to_vec()).collect();
        for dt in [act, DType::F32] {
            let t = up(be, dt, &table);
            let out = poisoned(be, dt, rows.len() * c);
            be.gather_rows(View::all(&out), View::all(&t), View::all(&r), rows.len(), c).unwrap();
            assert_eq!(down(be, &out), want, "gather_rows {dt:?} c={c}");
        }
        let src = up(be, act, &want);
        let acc = up(be, DType::F32, &vec![1.0; 6 * c]);
        be.scatter_add_rows(View::all(&acc), View::all(&src), View::all(&r), rows.len(), c).unwrap();
        let mut want = vec![1.0f32; 6 * c];
        for &r in &rows {
            for j in 0..c {
                want[r as usize * c + j] += table[r as usize * c + j];
            }
        }
        close(&down(be, &acc), &want, tol(be, (1e-6, 0.0), (1e-6, 0.0)), &format!("scatter_add_rows c={c}"));
    }
}

/// `copy_block` copies a column range of one row-major matrix into another exactly, or adds
/// it (act and F32), and leaves every element outside the block alone.
fn copy_block_strided<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(5);
    let (rows, src_ld, dst_ld, cols, src_col, dst_col) = (3usize, 10usize, 7usize, 4usize, 5usize, 2usize);
    let src = randn(be, &mut rng, rows * src_ld, 1.0);
    let dst0 = randn(be, &mut rng, rows * dst_ld, 1.0);
    for dt in [act, DType::F32] {
        for accumulate in [false, true] {
            let (s, d) = (up(be, dt, &src), up(be, dt, &dst0));
            let span = |ld: usize| (rows - 1) * ld + cols;
            let dv = View::all(&d).slice(dst_col, span(dst_ld));
            be.copy_block(dv, dst_ld, View::all(&s).slice(src_col, span(src_ld)), src_ld, rows, cols, accumulate).unwrap();
            let mut want = dst0.clone();
            for i in 0..rows {
                for j in 0..cols {
                    let (w, x) = (&mut want[i * dst_ld + dst_col + j], src[i * src_ld + src_col + j]);
                    *w = if accumulate { *w + x } else { x };
                }
            }
            let what = format!("copy_block {dt:?} accumulate={accumulate}");
            if accumulate && dt != DType::F32 {
                close(&down(be, &d), &want, tol(be, (0.0, 0.0), (0.0, 8e-3)), &what);
            } else {
                assert_eq!(down(be, &d), want, "{what}");
            }
        }
    }
}

// ---- embedding, norms, GEMM ------------------------------------------------------------------

/// Embedding forward is an exact row gather; backward accumulates (+=) repeated ids into F32.
fn embedding_fwd_bwd<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(4);
    let (vocab, c, n) = (50, 24, 33);
    let table = randn(be, &mut rng, vocab * c, 1.0);
    let ids: Vec<u32> = (0..n).map(|i| ((i * 7) % vocab) as u32 % 9).collect(); // repeats
    let (t, id) = (up(be, act, &table), up_u32(be, &ids));
    let out = poisoned(be, act, n * c);
    be.embedding_fwd(View::all(&out), View::all(&t), View::all(&id), n, c).unwrap();
    let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * c..(i as usize + 1) * c].to_vec()).collect();
    assert_eq!(down(be, &out), want, "embedding_fwd");
    let dout = randn(be, &mut rng, n * c, 1.0);
    let d = up(be, act, &dout);
    let dt = up(be, DType::F32, &vec![0.25; vocab * c]);
    be.embedding_bwd(View::all(&dt), View::all(&d), View::all(&id), n, c).unwrap();
    let mut want = vec![0.25f64; vocab * c];
    for (i, &id) in ids.iter().enumerate() {
        for j in 0..c {
            want[id as usize * c + j] += dout[i * c + j] as f64;
        }
    }
    close(&down(be, &dt), &f64s(&want), tol(be, (1e-6, 1e-6), (1e-5, 1e-5)), "embedding_bwd");
}

/// `rstd` and `out` of `rmsnorm_fwd`; `rmsnorm_bwd` accumulating into dx (act) and dw (F32).
fn rmsnorm_fwd_bwd<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(6);
    let eps = 1e-6f32;
    // CUDA: c ≤ 2048 take the warp-per-row forward (2048: every lane's 8 register chunks
    // full), wider the block-per-row one; c % 8 == 0 the 16-byte paths, else the element ones.
    for (n, c) in RMSNORM_SHAPES {
        let x = randn(be, &mut rng, n * c, 1.0);
        let w = randn(be, &mut rng, c, 1.0);
        let dout = randn(be, &mut rng, n * c, 1.0);
        let (xb, wb, db) = (up(be, act, &x), up(be, act, &w), up(be, act, &dout));
        let (out, rstd) = (poisoned(be, act, n * c), poisoned(be, DType::F32, n));
        be.rmsnorm_fwd(View::all(&out), View::all(&rstd), View::all(&xb), View::all(&wb), n, c, eps).unwrap();
        let (want, rs) = rmsnorm_ref(&x, &w, n, c, eps);
        close(&down(be, &rstd), &f64s(&rs), tol(be, (1e-6, 1e-5), (1e-5, 1e-4)), &format!("rstd c={c}"));
        close(&down(be, &out), &f64s(&want), tol(be, (1e-5, 1e-5), (1e-2, 1e-2)), &format!("rmsnorm out c={c}"));
        // Backward: dx += ..., dw += ... (from the backend's own rstd).
        let dx0 = randn(be, &mut rng, n * c, 0.1);
        let dx = up(be, act, &dx0);
        let dw = up(be, DType::F32, &vec![0.5; c]);
        be.rmsnorm_bwd(View::all(&dx), View::all(&dw), View::all(&db), View::all(&xb), View::all(&wb), View::all(&rstd), n, c).unwrap();
        let mut wdx: Vec<f64> = dx0.iter().map(|&v| v as f64).collect();
        let mut wdw = vec![0.5f64; c];
        for i in 0..n {
            let r = rs[i];
            let (xr, dr) = (&x[i * c..(i + 1) * c], &dout[i * c..(i + 1) * c]);
            let dot: f64 = (0..c).map(|j| dr[j] as f64 * w[j] as f64 * xr[j] as f64).sum();
            for j in 0..c {
                wdx[i * c + j] += r * w[j] as f64 * dr[j] as f64 - r * r * r * xr[j] as f64 * dot / c as f64;
                wdw[j] += dr[j] as f64 * xr[j] as f64 * r;
            }
        }
        close(&down(be, &dx), &f64s(&wdx), tol(be, (1e-5, 1e-5), (2e-2, 2e-2)), &format!("rmsnorm dx c={c}"));
        close(&down(be, &dw), &f64s(&wdw), tol(be, (1e-5, 1e-5), (1e-3, 1e-3)), &format!("rmsnorm dw c={c}"));
    }
}

/// (rows, width) for the RMSNorm cases.
const RMSNORM_SHAPES: [(usize, usize); 5] = [(9, 200), (3, 37), (9, 2048), (5, 2056), (2, 2051)];

/// (out, rstd) of RMSNorm in f64.
fn rmsnorm_ref(x: &[f32], w: &[f32], n: usize, c: usize, eps: f32) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0f64; n * c];
    let mut rs = vec![0f64; n];
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / c as f64;
        rs[i] = 1.0 / (ms + eps as f64).sqrt();
        for j in 0..c {
            out[i * c + j] = row[j] as f64 * rs[i] * w[j] as f64;
        }
    }
    (out, rs)
}

/// `resid_out = resid_in + delta` (one act rounding), then RMSNorm of the stored sum; in
/// place (resid_out aliasing resid_in) and out of place.
fn residual_rmsnorm_fwd<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(5);
    let eps = 1e-6f32;
    for (n, c) in RMSNORM_SHAPES {
        let (ri, d, w) = (randn(be, &mut rng, n * c, 1.0), randn(be, &mut rng, n * c, 1.0), randn(be, &mut rng, c, 1.0));
        let sum: Vec<f32> = ri.iter().zip(&d).map(|(a, b)| rnd(be, a + b)).collect();
        let (want, rs) = rmsnorm_ref(&sum, &w, n, c, eps);
        for in_place in [false, true] {
            let what = format!("residual_rmsnorm_fwd c={c} in_place={in_place}");
            let (rib, db, wb) = (up(be, act, &ri), up(be, act, &d), up(be, act, &w));
            let ro = if in_place { rib.clone() } else { poisoned(be, act, n * c) };
            let (out, rstd) = (poisoned(be, act, n * c), poisoned(be, DType::F32, n));
            be.residual_rmsnorm_fwd(
                View::all(&ro),
                View::all(&out),
                View::all(&rstd),
                View::all(&rib),
                View::all(&db),
                View::all(&wb),
                n,
                c,
                eps,
            )
            .unwrap();
            close(&down(be, &ro), &sum, tol(be, (1e-6, 1e-6), (1e-6, 4e-3)), &format!("{what} resid_out"));
            close(&down(be, &rstd), &f64s(&rs), tol(be, (1e-6, 1e-5), (1e-5, 1e-4)), &format!("{what} rstd"));
            close(&down(be, &out), &f64s(&want), tol(be, (1e-5, 1e-5), (1e-2, 1e-2)), &format!("{what} out"));
        }
    }
}

/// Every transpose combination, two shapes (not tile multiples): act C with bias, alpha and
/// beta (C read); act C with bias and beta = 0 (C poisoned: never read); F32 C accumulating.
fn gemm_all_transposes<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(10);
    // (The CPU backend's streaming path for few rows takes 7×5×9, 8×37×530 and 40×9×600 when
    // B is transposed: tile edges of 4 rows and columns, a k tail past 16-wide vectors.)
    for ((m, n, k), sc) in [((7usize, 5usize, 9usize), 1.0f32), ((37, 45, 70), 0.5), ((8, 37, 530), 0.2), ((40, 9, 600), 0.2)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let what = format!("gemm {m}x{n}x{k} ta={ta} tb={tb}");
            let a = randn(be, &mut rng, m * k, sc);
            let bm = randn(be, &mut rng, k * n, sc);
            let bias = randn(be, &mut rng, n, 1.0);
            let c0 = randn(be, &mut rng, m * n, 1.0);
            let (ab, bb, biasb) = (up(be, act, &a), up(be, act, &bm), up(be, act, &bias));
            let at = |i: usize, p: usize| (if ta { a[p * m + i] } else { a[i * k + p] }) as f64;
            let bt = |p: usize, j: usize| (if tb { bm[j * k + p] } else { bm[p * n + j] }) as f64;
            let mut prod = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    prod[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                }
            }
            // act C = 0.5·AB + 2·C + bias.
            let c = up(be, act, &c0);
            be.gemm(View::all(&c), View::all(&ab), View::all(&bb), Some(View::all(&biasb)), m, n, k, ta, tb, 0.5, 2.0).unwrap();
            let want: Vec<f64> = (0..m * n).map(|e| 0.5 * prod[e] + 2.0 * c0[e] as f64 + bias[e % n] as f64).collect();
            close(&down(be, &c), &f64s(&want), tol(be, (1e-5, 1e-5), (3e-2, 1e-2)), &format!("{what} act C, alpha/beta/bias"));
            // act C = AB + bias, beta = 0: C is not read.
            let c = poisoned(be, act, m * n);
            be.gemm(View::all(&c), View::all(&ab), View::all(&bb), Some(View::all(&biasb)), m, n, k, ta, tb, 1.0, 0.0).unwrap();
            let want: Vec<f64> = (0..m * n).map(|e| prod[e] + bias[e % n] as f64).collect();
            close(&down(be, &c), &f64s(&want), tol(be, (1e-5, 1e-5), (3e-2, 1e-2)), &format!("{what} act C, beta=0"));
            // F32 C += 0.5·AB (parameter-gradient accumulation).
            let cf = up(be, DType::F32, &c0);
            be.gemm(View::all(&cf), View::all(&ab), View::all(&bb), None, m, n, k, ta, tb, 0.5, 1.0).unwrap();
            let want: Vec<f64> = (0..m * n).map(|e| c0[e] as f64 + 0.5 * prod[e]).collect();
            close(&down(be, &cf), &f64s(&want), tol(be, (1e-5, 1e-5), (1e-3, 1e-3)), &format!("{what} f32 C +="));
        }
    }
}

/// `dbias[j] += Σ_i dout[i, j]` into F32.
fn bias_bwd<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(92);
    for (m, n) in [(13usize, 40usize), (300, 7)] {
        let dout = randn(be, &mut rng, m * n, 1.0);
        let db = up(be, act, &dout);
        let dbias = up(be, DType::F32, &vec![1.0; n]);
        be.bias_bwd(View::all(&dbias), View::all(&db), m, n).unwrap();
        let want: Vec<f64> = (0..n).map(|j| 1.0 + (0..m).map(|i| dout[i * n + j] as f64).sum::<f64>()).collect();
        close(&down(be, &dbias), &f64s(&want), tol(be, (1e-5, 1e-5), (1e-4, 1e-4)), &format!("bias_bwd {m}x{n}"));
    }
}

// ---- RoPE and attention ----------------------------------------------------------------------

/// Rotate-half RoPE on the q and k heads (v untouched) with transformers' f32 angles
/// (inv_freq = 1/theta^(2j/d) and pos·inv_freq in f32), and its inverse.
fn rope_fwd_inverse<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(40);
    let s = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 64 };
    let (n, w, d) = (5usize, s.qkv_width(), 64usize);
    let theta = 1e6f32;
    let qkv = randn(be, &mut rng, n * w, 1.0);
    let pos: Vec<u32> = vec![0, 1, 7, 100, 4000];
    let (qb, pb) = (up(be, act, &qkv), up_u32(be, &pos));
    be.rope(View::all(&qb), View::all(&pb), n, s, theta, false).unwrap();
    let mut want: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
    for (i, &p) in pos.iter().enumerate() {
        for head in 0..s.n_head + s.n_kv_head {
            for j in 0..d / 2 {
                let inv = 1.0 / theta.powf((2 * j) as f32 / d as f32);
                let a = (p as f32 * inv) as f64;
                let (sn, cs) = a.sin_cos();
                let base = i * w + head * d;
                let (x1, x2) = (qkv[base + j] as f64, qkv[base + j + d / 2] as f64);
                want[base + j] = x1 * cs - x2 * sn;
                want[base + j + d / 2] = x2 * cs + x1 * sn;
            }
        }
    }
    close(&down(be, &qb), &f64s(&want), tol(be, (1e-5, 1e-5), (2e-2, 1e-2)), "rope fwd");
    be.rope(View::all(&qb), View::all(&pb), n, s, theta, true).unwrap();
    close(&down(be, &qb), &qkv, tol(be, (1e-5, 1e-5), (3e-2, 2e-2)), "rope inverse");
}

fn attn_shape(d: usize) -> AttnShape {
    AttnShape { n_head: 4, n_kv_head: 2, head_dim: d }
}

/// Naive causal GQA attention within each packed sequence, in f64: (out, lse).
fn attn_ref(qkv: &[f32], cu: &[u32], s: AttnShape, scale: f32) -> (Vec<f64>, Vec<f64>) {
    let (h, kvh, d, w) = (s.n_head, s.n_kv_head, s.head_dim, s.qkv_width());
    let t = *cu.last().unwrap() as usize;
    let x = |i: usize| qkv[i] as f64;
    let mut out = vec![0f64; t * h * d];
    let mut lse = vec![0f64; t * h];
    for sq in 0..cu.len() - 1 {
        let (a, z) = (cu[sq] as usize, cu[sq + 1] as usize);
        for i in a..z {
            for hh in 0..h {
                let g = hh / (h / kvh);
                let sc: Vec<f64> = (a..=i)
                    .map(|j| scale as f64 * (0..d).map(|e| x(i * w + hh * d + e) * x(j * w + (h + g) * d + e)).sum::<f64>())
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = sc.iter().map(|v| (v - mx).exp()).sum();
                lse[i * h + hh] = mx + sum.ln();
                for (jj, j) in (a..=i).enumerate() {
                    let p = (sc[jj] - mx).exp() / sum;
                    for e in 0..d {
                        out[i * h * d + hh * d + e] += p * x(j * w + (h + kvh + g) * d + e);
                    }
                }
            }
        }
    }
    (out, lse)
}

/// Causal varlen GQA attention forward (out, lse) and backward (dq, dk, dv) against the naive
/// reference and its analytic gradient; head_dim 64 and 128, a 1-token sequence, one of
/// several key tiles.
fn attention_fwd_bwd<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(20);
    for d in [64usize, 128] {
        let s = attn_shape(d);
        let (h, kvh, w) = (s.n_head, s.n_kv_head, s.qkv_width());
        // 200: three 64-key tiles for every warp of the later query tiles (the CUDA forward
        // copies tile i+1's keys while tile i is still being read).
        let cu = [0u32, 70, 103, 104, 304];
        let t = 304;
        let scale = 1.0 / (d as f32).sqrt();
        let qkv = randn(be, &mut rng, t * w, 1.0);
        let (qb, cud) = (up(be, act, &qkv), up_u32(be, &cu));
        let seqs = Seqs::<B> { cu_dev: View::all(&cud), cu_host: &cu };
        let (out, lse) = (poisoned(be, act, t * h * d), poisoned(be, DType::F32, t * h));
        be.attention_fwd(View::all(&out), View::all(&lse), View::all(&qb), seqs, s, scale).unwrap();
        let (wo, wl) = attn_ref(&qkv, &cu, s, scale);
        close(&down(be, &out), &f64s(&wo), tol(be, (1e-5, 1e-4), (2e-2, 2e-2)), &format!("attention out d={d}"));
        close(&down(be, &lse), &f64s(&wl), tol(be, (1e-5, 1e-5), (1e-3, 1e-3)), &format!("attention lse d={d}"));

        // Backward from the backend's own forward outputs, against the analytic gradient.
        let dout = randn(be, &mut rng, t * h * d, 1.0);
        let db = up(be, act, &dout);
        let dqkv = poisoned(be, act, t * w);
        be.attention_bwd(View::all(&dqkv), View::all(&db), View::all(&qb), View::all(&out), View::all(&lse), seqs, s, scale).unwrap();
        let x = |i: usize| qkv[i] as f64;
        let mut want = vec![0f64; t * w];
        for sq in 0..cu.len() - 1 {
            let (a, z) = (cu[sq] as usize, cu[sq + 1] as usize);
            for i in a..z {
                for hh in 0..h {
                    let g = hh / (h / kvh);
                    let q = |e: usize| x(i * w + hh * d + e);
                    let k = |j: usize, e: usize| x(j * w + (h + g) * d + e);
                    let v = |j: usize, e: usize| x(j * w + (h + kvh + g) * d + e);
                    let go = |e: usize| dout[i * h * d + hh * d + e] as f64;
                    let p: Vec<f64> =
                        (a..=i).map(|j| (scale as f64 * (0..d).map(|e| q(e) * k(j, e)).sum::<f64>() - wl[i * h + hh]).exp()).collect();
                    let dp: Vec<f64> = (a..=i).map(|j| (0..d).map(|e| go(e) * v(j, e)).sum::<f64>()).collect();
                    let dd: f64 = p.iter().zip(&dp).map(|(x, y)| x * y).sum();
                    for (jj, j) in (a..=i).enumerate() {
                        let ds = p[jj] * (dp[jj] - dd);
                        for e in 0..d {
                            want[i * w + hh * d + e] += scale as f64 * ds * k(j, e);
                            want[j * w + (h + g) * d + e] += scale as f64 * ds * q(e);
                            want[j * w + (h + kvh + g) * d + e] += p[jj] * go(e);
                        }
                    }
                }
            }
        }
        close(&down(be, &dqkv), &f64s(&want), tol(be, (2e-5, 1e-4), (3e-2, 3e-2)), &format!("attention dqkv d={d}"));
    }
}

/// `kv_store` writes exactly the k and v heads of each row at `[slot, pos]` (the rest of the
/// poisoned caches stays NaN); `attention_decode` of a sequence's last query over its cached
/// keys equals the causal forward's last output row: one row from a view into qkv, then two
/// rows with different slots and lengths.
fn kv_store_and_decode<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(21);
    for d in [64usize, 128] {
        let s = attn_shape(d);
        let (hd, w, kvw) = (s.q_width(), s.qkv_width(), s.kv_width());
        let cu = [0u32, 70, 103];
        let t = 103;
        let scale = 1.0 / (d as f32).sqrt();
        let qkv = randn(be, &mut rng, t * w, 1.0);
        let (wo, _) = attn_ref(&qkv, &cu, s, scale);
        let qb = up(be, act, &qkv);
        // Sequence 0 into slot 1, sequence 1 into slot 0.
        let (slots, t_max) = (2usize, 80usize);
        let (kc, vc) = (poisoned(be, act, slots * t_max * kvw), poisoned(be, act, slots * t_max * kvw));
        let slot_of = |i: usize| if i < 70 { 1u32 } else { 0 };
        let pos_of = |i: usize| if i < 70 { i as u32 } else { (i - 70) as u32 };
        let (slot, pos) = (up_u32(be, &(0..t).map(slot_of).collect::<Vec<_>>()), up_u32(be, &(0..t).map(pos_of).collect::<Vec<_>>()));
        be.kv_store(View::all(&kc), View::all(&vc), View::all(&qb), View::all(&slot), View::all(&pos), t, s, t_max).unwrap();
        let (kg, vg) = (down(be, &kc), down(be, &vc));
        let mut stored = vec![false; slots * t_max];
        for i in 0..t {
            let at = (slot_of(i) as usize * t_max + pos_of(i) as usize) * kvw;
            stored[at / kvw] = true;
            assert_eq!(kg[at..at + kvw], qkv[i * w + hd..i * w + hd + kvw], "kv_store k, row {i} d={d}");
            assert_eq!(vg[at..at + kvw], qkv[i * w + hd + kvw..(i + 1) * w], "kv_store v, row {i} d={d}");
        }
        for r in (0..slots * t_max).filter(|&r| !stored[r]) {
            assert!(
                kg[r * kvw..(r + 1) * kvw].iter().chain(&vg[r * kvw..(r + 1) * kvw]).all(|v| v.is_nan()),
                "kv_store wrote cache row {r} d={d}"
            );
        }
        let tl = tol(be, (1e-5, 1e-4), (2e-2, 2e-2));
        // One row: the query of sequence 0's last token, a view into qkv.
        let (one_slot, len) = (up_u32(be, &[1]), up_u32(be, &[70]));
        let dec = poisoned(be, act, hd);
        let qrow = View::all(&qb).slice(69 * w, w);
        be.attention_decode(
            View::all(&dec),
            qrow,
            View::all(&kc),
            View::all(&vc),
            View::all(&one_slot),
            View::all(&len),
            1,
            70,
            s,
            t_max,
            scale,
        )
        .unwrap();
        close(&down(be, &dec), &f64s(&wo[69 * hd..70 * hd]), tl, &format!("attention_decode 1 row d={d}"));
        // Two rows: the last queries of sequences 1 (slot 0, 33 keys) and 0 (slot 1, 70 keys).
        let q2: Vec<f32> = [102usize, 69].iter().flat_map(|&i| qkv[i * w..(i + 1) * w].to_vec()).collect();
        let (q2b, sl2, ln2) = (up(be, act, &q2), up_u32(be, &[0, 1]), up_u32(be, &[33, 70]));
        let dec2 = poisoned(be, act, 2 * hd);
        be.attention_decode(
            View::all(&dec2),
            View::all(&q2b),
            View::all(&kc),
            View::all(&vc),
            View::all(&sl2),
            View::all(&ln2),
            2,
            70,
            s,
            t_max,
            scale,
        )
        .unwrap();
        let want: Vec<f64> = [102usize, 69].iter().flat_map(|&i| wo[i * hd..(i + 1) * hd].to_vec()).collect();
        close(&down(be, &dec2), &f64s(&want), tl, &format!("attention_decode 2 rows d={d}"));
    }
}

// ---- MLP and log-probs -----------------------------------------------------------------------

/// `out = silu(gate)·up` and its gradient into the fused gate|up layout; inter = 40 (the
/// kernels' groups of 8) and 7 (their element path).
fn swiglu_fwd_bwd<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(90);
    for (n, inter) in [(13usize, 40usize), (3, 7)] {
        let gu = randn(be, &mut rng, n * 2 * inter, 2.0);
        let dout = randn(be, &mut rng, n * inter, 1.0);
        let (gb, db) = (up(be, act, &gu), up(be, act, &dout));
        let out = poisoned(be, act, n * inter);
        be.swiglu_fwd(View::all(&out), View::all(&gb), n, inter).unwrap();
        let dgu = poisoned(be, act, n * 2 * inter);
        be.swiglu_bwd(View::all(&dgu), View::all(&db), View::all(&gb), n, inter).unwrap();
        let (mut wo, mut wd) = (vec![0f64; n * inter], vec![0f64; n * 2 * inter]);
        for i in 0..n {
            for j in 0..inter {
                let (g, u) = (gu[i * 2 * inter + j] as f64, gu[i * 2 * inter + inter + j] as f64);
                let s = 1.0 / (1.0 + (-g).exp());
                wo[i * inter + j] = g * s * u;
                let dy = dout[i * inter + j] as f64;
                wd[i * 2 * inter + j] = dy * u * s * (1.0 + g * (1.0 - s));
                wd[i * 2 * inter + inter + j] = dy * g * s;
            }
        }
        close(&down(be, &out), &f64s(&wo), tol(be, (1e-5, 1e-5), (1e-2, 1e-2)), &format!("swiglu out inter={inter}"));
        close(&down(be, &dgu), &f64s(&wd), tol(be, (1e-5, 1e-5), (1e-2, 1e-2)), &format!("swiglu dgu inter={inter}"));
    }
}

/// Log-prob gather with lse and entropy at temperature 0.7, and its backward written in place
/// over the logits (dlogits aliasing logits); also without the entropy terms.
fn logprob_fwd_bwd<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(50);
    // 20000 and 16392: rows long enough for the CUDA forward's four-loads-per-iteration loop and
    // its tail; 1003: the element path.
    for (v, with_entropy) in [(1000usize, true), (1003, true), (1003, false), (20000, true), (16392, false)] {
        let what = format!("v={v} entropy={with_entropy}");
        let n = 6;
        let inv_t = 1.0 / 0.7f32;
        let logits = randn(be, &mut rng, n * v, 3.0);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97) % v as u32).collect();
        let (lb, tb) = (up(be, act, &logits), up_u32(be, &targets));
        let (logp, lse, ent) = (poisoned(be, DType::F32, n), poisoned(be, DType::F32, n), poisoned(be, DType::F32, n));
        be.logprob_fwd(
            View::all(&logp),
            View::all(&lse),
            with_entropy.then(|| View::all(&ent)),
            View::all(&lb),
            View::all(&tb),
            n,
            v,
            inv_t,
        )
        .unwrap();
        let (mut wl, mut wlse, mut went) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
        for i in 0..n {
            let z: Vec<f64> = logits[i * v..(i + 1) * v].iter().map(|&x| x as f64 * inv_t as f64).collect();
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = mx + z.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
            wlse[i] = l;
            wl[i] = z[targets[i] as usize] - l;
            went[i] = -z.iter().map(|x| (x - l).exp() * (x - l)).sum::<f64>();
        }
        close(&down(be, &lse), &f64s(&wlse), tol(be, (1e-5, 1e-6), (1e-4, 1e-5)), &format!("lse {what}"));
        close(&down(be, &logp), &f64s(&wl), tol(be, (1e-5, 1e-6), (1e-4, 1e-5)), &format!("logp {what}"));
        if with_entropy {
            close(&down(be, &ent), &f64s(&went), tol(be, (1e-5, 1e-5), (1e-4, 1e-4)), &format!("entropy {what}"));
        }
        let dlogp = randn_f32(&mut rng, n, 1.0);
        let dent = randn_f32(&mut rng, n, 1.0);
        let (dl, de) = (up(be, DType::F32, &dlogp), up(be, DType::F32, &dent));
        // In place: dlogits aliases logits.
        let (entv, dentv) = if with_entropy { (Some(View::all(&ent)), Some(View::all(&de))) } else { (None, None) };
        be.logprob_bwd(View::all(&lb), View::all(&lb), View::all(&tb), View::all(&lse), entv, View::all(&dl), dentv, n, v, inv_t).unwrap();
        let mut want = vec![0f64; n * v];
        for i in 0..n {
            for j in 0..v {
                let lpj = logits[i * v + j] as f64 * inv_t as f64 - wlse[i];
                let p = lpj.exp();
                let onehot = if j == targets[i] as usize { 1.0 } else { 0.0 };
                let dh = if with_entropy { dent[i] as f64 * p * (lpj + went[i]) } else { 0.0 };
                want[i * v + j] = inv_t as f64 * (dlogp[i] as f64 * (onehot - p) - dh);
            }
        }
        close(&down(be, &lb), &f64s(&want), tol(be, (1e-6, 1e-4), (2e-3, 1e-2)), &format!("dlogits {what}"));
    }
}

// ---- sampling --------------------------------------------------------------------------------

/// Tokens of `rows` rows that all hold `logits`, row i drawing at (seed, counters[i]).
fn sample_rows<B: Backend>(be: &B, logits: &[f32], p: SamplingParams, seed: u64, counters: &[u64]) -> Vec<u32> {
    let (rows, v) = (counters.len(), logits.len());
    let host: Vec<f32> = (0..rows).flat_map(|_| logits.iter().copied()).collect();
    let lb = up(be, be.act_dtype(), &host);
    let out = poisoned(be, DType::U32, rows);
    be.sample(View::all(&out), View::all(&lb), rows, v, &p, &vec![seed; rows], counters).unwrap();
    down_u32(be, &out)
}

/// Whether `be` is the emulated GPU (tools/cuda-emu), whose 1024-thread blocks run as fibers
/// on one core: one sampled row costs it milliseconds.
fn emulated<B: Backend>(be: &B) -> bool {
    #[cfg(feature = "cuda")]
    if let Some(c) = (be as &dyn std::any::Any).downcast_ref::<tz_engine::backend::cuda::CudaBackend>() {
        return c.device_name().contains("emulator");
    }
    let _ = be;
    false
}

/// The documented semantics on a 5-token row (exact in bf16): greedy picks the lowest index
/// of tied maxima; top-k = 1 and a tiny top-p keep both tied tokens; frequencies over 20,000
/// draws follow softmax(logits / T) within 0.015; top-k = 3 keeps exactly the three largest.
/// On the emulated GPU a tenth of the draws, the frequency bound widened by √10 (the same
/// 4.3 σ); the exact per-draw semantics there are `sampling_matches_host_reference`'s.
fn sampling_semantics<B: Backend>(be: &B) {
    let div = if emulated(be) { 10 } else { 1 };
    let logits = [1.0f32, 3.0, 3.0, 0.5, 2.0];
    let greedy = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 };
    assert_eq!(sample_rows(be, &logits, greedy, 0, &[0]), [1], "argmax, lowest index on ties");
    let top1 = SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0 };
    let tiny_p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.01 };
    let c50: Vec<u64> = (0..50).collect();
    for p in [top1, tiny_p] {
        // Ties at the threshold are kept: tokens 1 and 2 only.
        assert!(sample_rows(be, &logits, p, 9, &c50).iter().all(|t| [1, 2].contains(t)), "{p:?}");
    }
    // Empirical frequencies follow softmax(logits / T).
    let t = 0.7f32;
    let p = SamplingParams { temperature: t, top_k: 0, top_p: 1.0 };
    let z: Vec<f64> = logits.iter().map(|&x| ((x / t) as f64).exp()).collect();
    let total: f64 = z.iter().sum();
    let n = 20_000 / div;
    let bound = 0.015 * (div as f64).sqrt();
    let mut counts = [0usize; 5];
    for tok in sample_rows(be, &logits, p, 42, &(0..n as u64).collect::<Vec<_>>()) {
        counts[tok as usize] += 1;
    }
    for j in 0..5 {
        let (want, got) = (z[j] / total, counts[j] as f64 / n as f64);
        assert!((got - want).abs() < bound, "token {j}: {got} vs {want} over {n} draws");
    }
    // top-k = 3 keeps tokens 1, 2 and 4 and renormalizes over them.
    let k3 = SamplingParams { temperature: 1.0, top_k: 3, top_p: 1.0 };
    let mut seen = [0usize; 5];
    for tok in sample_rows(be, &logits, k3, 3, &(0..2000 / div as u64).collect::<Vec<_>>()) {
        seen[tok as usize] += 1;
    }
    assert_eq!(seen[0] + seen[3], 0);
    assert!(seen[4] > 0 && seen[1] > 0 && seen[2] > 0);
}

/// `SamplingParams` semantics on the host: top-p mass relative to what top-k kept; the first
/// kept index whose cumulative mass exceeds u·kept.
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

/// Every draw equals the host reference with the same Philox uniform (row i at
/// (seeds[i], counters[i])): 8 rows of 5003 logits, greedy, plain, top-k, top-p and both.
fn sampling_matches_host_reference<B: Backend>(be: &B) {
    let mut rng = Rng::new(60);
    let (rows, v) = (8usize, 5003usize);
    let logits = randn(be, &mut rng, rows * v, 2.5);
    let lb = up(be, be.act_dtype(), &logits);
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
        let out = poisoned(be, DType::U32, rows);
        be.sample(View::all(&out), View::all(&lb), rows, v, &params, &seeds, &counters).unwrap();
        let got = down_u32(be, &out);
        for i in 0..rows {
            let want = sample_ref(&logits[i * v..(i + 1) * v], &params, uniform(seeds[i], counters[i]));
            assert_eq!(got[i], want, "row {i} params {params:?}");
        }
    }
}

// ---- losses and optimizer --------------------------------------------------------------------

/// A*PO per sequence: loss values against the closed form, dlogp against the closed form
/// `2·beta2·d_s·grad_scale` and against central finite differences of the host loss.
fn apo_loss_values_and_gradient<B: Backend>(be: &B) {
    let mut rng = Rng::new(2);
    // (cu, target per sequence, beta2, grad_scale, log-prob scale)
    let configs = [
        (vec![0u32, 3, 4, 8], vec![0.3f32, -0.2, 0.9], 0.1f32, 0.5f32, 1.0f32),
        (vec![0, 100, 101, 257], vec![0.3, -0.2, 1.0], 0.5, 2.0, 0.3),
    ];
    for (cu, tg, beta2, scale, sd) in configs {
        let what = format!("apo {} tokens", cu.last().unwrap());
        let (ns, t) = (cu.len() - 1, *cu.last().unwrap() as usize);
        let (lp, rl) = (randn_f32(&mut rng, t, sd), randn_f32(&mut rng, t, sd));
        let d_of = |lp: &[f32], s: usize| -> f64 {
            beta2 as f64 * (cu[s] as usize..cu[s + 1] as usize).map(|t| (lp[t] - rl[t]) as f64).sum::<f64>() - tg[s] as f64
        };
        let f = |lp: &[f32]| -> f64 { (0..ns).map(|s| d_of(lp, s).powi(2)).sum() };
        let cub = up_u32(be, &cu);
        let (loss, dl) = (poisoned(be, DType::F32, ns), poisoned(be, DType::F32, t));
        let (lpb, rlb, tgb) = (up(be, DType::F32, &lp), up(be, DType::F32, &rl), up(be, DType::F32, &tg));
        be.apo_loss(
            View::all(&loss),
            View::all(&dl),
            View::all(&lpb),
            View::all(&rlb),
            View::all(&tgb),
            Seqs { cu_dev: View::all(&cub), cu_host: &cu },
            beta2,
            scale,
        )
        .unwrap();
        let l = down(be, &loss);
        let wl: Vec<f64> = (0..ns).map(|s| d_of(&lp, s).powi(2)).collect();
        close(&l, &f64s(&wl), tol(be, (1e-5, 1e-5), (1e-4, 1e-4)), &format!("{what} loss"));
        assert!((l.iter().map(|&x| x as f64).sum::<f64>() - f(&lp)).abs() < 1e-5 * (1.0 + f(&lp)), "{what}: total loss");
        let g = down(be, &dl);
        let mut wd = vec![0f64; t];
        for s in 0..ns {
            for x in &mut wd[cu[s] as usize..cu[s + 1] as usize] {
                *x = 2.0 * beta2 as f64 * d_of(&lp, s) * scale as f64;
            }
        }
        close(&g, &f64s(&wd), tol(be, (1e-5, 1e-5), (1e-4, 1e-4)), &format!("{what} dlogp"));
        for t in 0..t {
            let mut p = lp.clone();
            p[t] += 1e-2;
            let hi = f(&p);
            p[t] -= 2e-2;
            let fd = (hi - f(&p)) / 2e-2 * scale as f64;
            assert!((fd - g[t] as f64).abs() < 1e-4 * (1.0 + fd.abs()), "{what} token {t}: finite difference {fd} vs {}", g[t]);
        }
    }
}

/// GRPO per token: loss values and dlogp against the closed form (zero slope where the ratio
/// is clipped) and, away from the clip boundaries, against central finite differences; with
/// each KL estimator.
fn grpo_loss_values_and_gradient<B: Backend>(be: &B) {
    use tz_engine::backend::KlEstimator;
    let mut rng = Rng::new(3);
    for (n, weighted, eps, kl, est) in [
        (40usize, false, 0.2f32, 0.05f32, KlEstimator::K3),
        (257, true, 0.2, 0.04, KlEstimator::K3),
        (100, true, 0.2, 0.3, KlEstimator::K1),
    ] {
        let what = format!("grpo n={n} {est:?}");
        let k1 = est == KlEstimator::K1;
        let (lp, old, rl) = if weighted {
            (randn_f32(&mut rng, n, 0.3), randn_f32(&mut rng, n, 0.3), randn_f32(&mut rng, n, 0.3))
        } else {
            let lp: Vec<f32> = randn_f32(&mut rng, n, 0.3).iter().map(|x| x - 1.0).collect();
            let old: Vec<f32> = lp.iter().map(|x| x + 0.3 * rng.normal() as f32).collect();
            let rl: Vec<f32> = lp.iter().map(|x| x + 0.2 * rng.normal() as f32).collect();
            (lp, old, rl)
        };
        let adv = randn_f32(&mut rng, n, 1.0);
        // Uniform 1/n weights, or 0 / 0.5 / 1 (masked tokens included).
        let w: Vec<f32> = (0..n).map(|i| if weighted { (i % 3) as f32 * 0.5 } else { 1.0 / n as f32 }).collect();
        let (e, k) = (eps as f64, kl as f64);
        let f = |t: usize, x: f32| -> f64 {
            let r = ((x - old[t]) as f64).exp();
            let a = adv[t] as f64;
            let pg = (-a * r).max(-a * r.clamp(1.0 - e, 1.0 + e));
            let d = (rl[t] - x) as f64;
            w[t] as f64 * (pg + k * if k1 { -d } else { d.exp() - d - 1.0 })
        };
        let grad = |t: usize| -> f64 {
            let (r, a) = (((lp[t] - old[t]) as f64).exp(), adv[t] as f64);
            let c = r.clamp(1.0 - e, 1.0 + e);
            let dpg = if r * a <= c * a { -a * r } else { 0.0 };
            w[t] as f64 * (dpg + k * if k1 { 1.0 } else { 1.0 - ((rl[t] - lp[t]) as f64).exp() })
        };
        let (lb, dl) = (poisoned(be, DType::F32, n), poisoned(be, DType::F32, n));
        let bufs: Vec<B::Buf> = [&lp, &old, &rl, &adv, &w].iter().map(|x| up(be, DType::F32, x)).collect();
        be.grpo_loss(
            View::all(&lb),
            View::all(&dl),
            View::all(&bufs[0]),
            View::all(&bufs[1]),
            View::all(&bufs[2]),
            View::all(&bufs[3]),
            View::all(&bufs[4]),
            n,
            eps,
            kl,
            est,
        )
        .unwrap();
        let (l, g) = (down(be, &lb), down(be, &dl));
        let wl: Vec<f64> = (0..n).map(|t| f(t, lp[t])).collect();
        let wd: Vec<f64> = (0..n).map(grad).collect();
        close(&l, &f64s(&wl), tol(be, (1e-6, 1e-5), (1e-5, 1e-4)), &format!("{what} loss"));
        close(&g, &f64s(&wd), tol(be, (1e-6, 1e-5), (1e-5, 1e-4)), &format!("{what} dlogp"));
        for t in 0..n {
            let h = 1e-3f32;
            let fd = (f(t, lp[t] + h) - f(t, lp[t] - h)) / (2.0 * h as f64);
            // Away from the clip boundary the one-sided slopes agree.
            let ratio = ((lp[t] - old[t]) as f64).exp();
            if (ratio - (1.0 - e)).abs() > 0.01 && (ratio - (1.0 + e)).abs() > 0.01 {
                assert!((fd - g[t] as f64).abs() < 1e-4, "{what} token {t}: finite difference {fd} vs {}", g[t]);
            }
        }
    }
}

/// Fused AdamW against a scalar f64 implementation: in place on F32 params (no master) and
/// with an F32 master whose act-dtype cast lands in params (poisoned first); moments checked.
fn adamw_matches_scalar_reference<B: Backend>(be: &B) {
    let act = be.act_dtype();
    let mut rng = Rng::new(4);
    let configs = [
        (1000usize, AdamWParams { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, step: 3, grad_scale: 0.5 }),
        (3000, AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 3, grad_scale: 0.5 }),
    ];
    for (n, hp) in configs {
        let (p0, g) = (randn_f32(&mut rng, n, 1.0), randn_f32(&mut rng, n, 1.0));
        let m0: Vec<f32> = randn_f32(&mut rng, n, 0.1);
        let v0: Vec<f32> = randn_f32(&mut rng, n, 0.1).iter().map(|x| x * x).collect();
        let (b1, b2, lr) = (hp.beta1 as f64, hp.beta2 as f64, hp.lr as f64);
        // The scalar reference for gradients `g` (as the kernel reads them).
        let reference = |g: &[f32]| {
            let (mut wp, mut wm, mut wv) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
            for i in 0..n {
                let gi = g[i] as f64 * hp.grad_scale as f64;
                wm[i] = b1 * m0[i] as f64 + (1.0 - b1) * gi;
                wv[i] = b2 * v0[i] as f64 + (1.0 - b2) * gi * gi;
                let mh = wm[i] / (1.0 - b1.powi(hp.step as i32));
                let vh = wv[i] / (1.0 - b2.powi(hp.step as i32));
                wp[i] = p0[i] as f64 * (1.0 - lr * hp.weight_decay as f64) - lr * mh / (vh.sqrt() + hp.eps as f64);
            }
            (wp, wm, wv)
        };
        // Gradients in the act dtype (bf16 on CUDA: `train.grad_dtype = "bf16"`) need the
        // master copy; the kernel reads their rounded values.
        for (with_master, grads_act) in [(false, false), (true, false), (true, true)] {
            let what = format!("adamw n={n} master={with_master} act-dtype grads={grads_act}");
            let gq: Vec<f32> = if grads_act { g.iter().map(|&x| rnd(be, x)).collect() } else { g.clone() };
            let (wp, wm, wv) = reference(&gq);
            let gdt = if grads_act { act } else { DType::F32 };
            let (gb, mb, vb) = (up(be, gdt, &g), up(be, DType::F32, &m0), up(be, DType::F32, &v0));
            let (pb, master) =
                if with_master { (poisoned(be, act, n), Some(up(be, DType::F32, &p0))) } else { (up(be, DType::F32, &p0), None) };
            be.adamw(View::all(&pb), master.as_ref().map(View::all), View::all(&gb), View::all(&mb), View::all(&vb), &hp).unwrap();
            let updated = down(be, master.as_ref().unwrap_or(&pb));
            close(&updated, &f64s(&wp), tol(be, (1e-6, 0.0), (1e-6, 1e-5)), &format!("{what} params"));
            close(&down(be, &mb), &f64s(&wm), tol(be, (1e-7, 0.0), (1e-7, 1e-5)), &format!("{what} m"));
            close(&down(be, &vb), &f64s(&wv), tol(be, (1e-7, 0.0), (1e-7, 1e-5)), &format!("{what} v"));
            if with_master {
                // The act params are exactly the (RNE-rounded) cast of the updated master.
                let want: Vec<f32> = updated.iter().map(|&x| rnd(be, x)).collect();
                assert_eq!(down(be, &pb), want, "{what}: act params are the cast of the master");
            }
        }
    }
}
