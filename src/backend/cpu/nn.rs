//! Embedding, RMSNorm, GEMM, RoPE and SwiGLU on the CPU.
use super::sgemm::{sgemm, Operand};
use super::{f, fm, same, u, CpuBackend, ROWS_PER_TASK};
use crate::backend::{AttnShape, View};
use anyhow::{bail, Result};
use rayon::prelude::*;

type V<'a> = View<'a, CpuBackend>;

pub fn embedding_fwd(out: V, table: V, ids: V, n: usize, c: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let ids = u(ids, n, "embedding_fwd ids")?;
    let t = f(table, table.len(), "embedding_fwd table")?;
    let vocab = t.len() / c.max(1);
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        bail!("embedding_fwd: token id {bad} beyond the vocabulary ({vocab})");
    }
    fm(out, n * c, "embedding_fwd out")?.par_chunks_mut(c).zip(ids.par_iter()).for_each(|(o, &id)| {
        o.copy_from_slice(&t[id as usize * c..(id as usize + 1) * c]);
    });
    Ok(())
}

pub fn embedding_bwd(dtable: V, dout: V, ids: V, n: usize, c: usize) -> Result<()> {
    let ids = u(ids, n, "embedding_bwd ids")?;
    let d = f(dout, n * c, "embedding_bwd dout")?;
    let t = fm(dtable, dtable.len(), "embedding_bwd dtable")?;
    let vocab = t.len() / c.max(1);
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        bail!("embedding_bwd: token id {bad} beyond the vocabulary ({vocab})");
    }
    // Sequential: several rows may hit the same token, and a fixed order keeps it deterministic.
    for (i, &id) in ids.iter().enumerate() {
        let row = &mut t[id as usize * c..(id as usize + 1) * c];
        for (a, b) in row.iter_mut().zip(&d[i * c..(i + 1) * c]) {
            *a += b;
        }
    }
    Ok(())
}

/// Elements per parallel task in element-wise passes.
const ELEMS_PER_TASK: usize = 1 << 14;

fn add_into(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

/// Lanes of the f64 sums below: j ≡ l (mod 8) in lane l, then the lanes added in order. A single
/// running f64 sum is one chain of dependent adds the compiler may not reorder, so it runs at
/// one add per latency; eight independent lanes vectorize. The order is fixed, so the result
/// is too.
const LANES: usize = 8;

/// Σ a_j · b_j in f64.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (l, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += *x as f64 * *y as f64;
    }
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    acc.iter().sum()
}

/// Σ (g_j · w_j) · x_j in f64, the product g·w taken in f32.
fn dot_f64_weighted(g: &[f32], w: &[f32], x: &[f32]) -> f64 {
    let n = g.len().min(w.len()).min(x.len());
    let (g, w, x) = (&g[..n], &w[..n], &x[..n]);
    let mut acc = [0f64; LANES];
    let (cg, cw, cx) = (g.chunks_exact(LANES), w.chunks_exact(LANES), x.chunks_exact(LANES));
    for (l, ((gv, wv), xv)) in cg.remainder().iter().zip(cw.remainder()).zip(cx.remainder()).enumerate() {
        acc[l] += (gv * wv) as f64 * *xv as f64;
    }
    for ((gc, wc), xc) in cg.zip(cw).zip(cx) {
        for l in 0..LANES {
            acc[l] += (gc[l] * wc[l]) as f64 * xc[l] as f64;
        }
    }
    acc.iter().sum()
}

/// RMSNorm of `x` (or of `resid_out = x + delta` when a residual is given).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_fwd(out: V, rstd: V, resid_out: Option<V>, x: V, delta: Option<V>, w: V, n: usize, c: usize, eps: f32) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let src: &[f32] = match (resid_out, delta) {
        (Some(ro), Some(d)) => {
            let dl = f(d, n * c, "rmsnorm delta")?;
            let r = fm(ro, n * c, "rmsnorm resid_out")?;
            // In chunks, not per element: rayon's per-item overhead would dominate an add.
            if same(&ro, &x) {
                r.par_chunks_mut(ELEMS_PER_TASK).zip(dl.par_chunks(ELEMS_PER_TASK)).for_each(|(a, b)| add_into(a, b));
            } else {
                let xin = f(x, n * c, "rmsnorm resid_in")?;
                r.par_chunks_mut(ELEMS_PER_TASK).zip(xin.par_chunks(ELEMS_PER_TASK).zip(dl.par_chunks(ELEMS_PER_TASK))).for_each(
                    |(a, (xv, dv))| {
                        a.iter_mut().zip(xv).zip(dv).for_each(|((a, x), d)| *a = x + d);
                    },
                );
            }
            r
        }
        _ => f(x, n * c, "rmsnorm x")?,
    };
    let w = f(w, c, "rmsnorm w")?;
    let rs = fm(rstd, n, "rmsnorm rstd")?;
    fm(out, n * c, "rmsnorm out")?.par_chunks_mut(c).zip(rs.par_iter_mut()).zip(src.par_chunks(c)).for_each(|((o, r), xr)| {
        let ms = dot_f64(xr, xr) / c as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        *r = inv;
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = xv * inv * wv;
        }
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd(dx: V, dw: V, dout: V, x: V, w: V, rstd: V, n: usize, c: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (d, xs, ws, rs) =
        (f(dout, n * c, "rmsnorm_bwd dout")?, f(x, n * c, "rmsnorm_bwd x")?, f(w, c, "rmsnorm_bwd w")?, f(rstd, n, "rmsnorm_bwd rstd")?);
    fm(dx, n * c, "rmsnorm_bwd dx")?.par_chunks_mut(c).enumerate().for_each(|(i, dxr)| {
        let (dr, xr, r) = (&d[i * c..(i + 1) * c], &xs[i * c..(i + 1) * c], rs[i]);
        let dot = dot_f64_weighted(dr, ws, xr);
        let k = (dot * (r as f64).powi(3) / c as f64) as f32;
        for j in 0..c {
            dxr[j] += r * ws[j] * dr[j] - k * xr[j];
        }
    });
    let partial: Vec<Vec<f32>> = (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; c];
            for i in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n) {
                for j in 0..c {
                    acc[j] += d[i * c + j] * xs[i * c + j] * rs[i];
                }
            }
            acc
        })
        .collect();
    let dws = fm(dw, c, "rmsnorm_bwd dw")?;
    for p in &partial {
        for (a, b) in dws.iter_mut().zip(p) {
            *a += b;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn gemm(
    c: V,
    a: V,
    b: V,
    bias: Option<V>,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    let (av, bv) = (f(a, m * k, "gemm a")?, f(b, k * n, "gemm b")?);
    let cv = fm(c, m * n, "gemm c")?;
    let bias = bias.map(|bv| f(bv, n, "gemm bias")).transpose()?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Row/column strides of op(A) [m,k] and op(B) [k,n]; a transpose is just swapped strides.
    let (rsa, csa) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    if k == 0 {
        cv.iter_mut().for_each(|x| *x *= beta);
    } else {
        // SAFETY: the slices hold at least m·k, k·n and m·n elements (checked above) and the
        // strides address exactly those elements.
        unsafe {
            let (a, b) = (Operand { ptr: av.as_ptr(), rs: rsa, cs: csa }, Operand { ptr: bv.as_ptr(), rs: rsb, cs: csb });
            sgemm(m, k, n, alpha, a, b, beta, cv.as_mut_ptr(), n as isize, 1);
        }
    }
    if let Some(bias) = bias {
        cv.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(bias).for_each(|(x, b)| *x += b));
    }
    Ok(())
}

pub fn bias_bwd(dbias: V, dout: V, m: usize, n: usize) -> Result<()> {
    let d = f(dout, m * n, "bias_bwd dout")?;
    let partial: Vec<Vec<f32>> = (0..m.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; n];
            for i in t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(m) {
                acc.iter_mut().zip(&d[i * n..(i + 1) * n]).for_each(|(a, b)| *a += b);
            }
            acc
        })
        .collect();
    let db = fm(dbias, n, "bias_bwd dbias")?;
    for p in &partial {
        db.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    Ok(())
}

/// inv_freq_j = 1 / theta^(2j/d), computed in f32 as transformers does.
pub fn inv_freq(theta: f32, d: usize) -> Vec<f32> {
    (0..d / 2).map(|j| 1.0 / theta.powf((2 * j) as f32 / d as f32)).collect()
}

pub fn rope(qkv: V, pos: V, n: usize, shape: AttnShape, theta: f32, inverse: bool) -> Result<()> {
    let width = shape.qkv_width();
    let d = shape.head_dim;
    let half = d / 2;
    let pos = u(pos, n, "rope pos")?;
    let inv = inv_freq(theta, d);
    let heads = shape.n_head + shape.n_kv_head; // q heads then k heads; v is not rotated
    fm(qkv, n * width, "rope qkv")?.par_chunks_mut(width).zip(pos.par_iter()).for_each(|(row, &p)| {
        for j in 0..half {
            let ang = p as f32 * inv[j];
            let (s, c) = ang.sin_cos();
            let s = if inverse { -s } else { s };
            for h in 0..heads {
                let x = &mut row[h * d..(h + 1) * d];
                let (a, b) = (x[j], x[j + half]);
                x[j] = a * c - b * s;
                x[j + half] = b * c + a * s;
            }
        }
    });
    Ok(())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + super::exp::exp(-x))
}

pub fn swiglu_fwd(out: V, gu: V, n: usize, inter: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let g = f(gu, n * 2 * inter, "swiglu gu")?;
    fm(out, n * inter, "swiglu out")?.par_chunks_mut(inter).zip(g.par_chunks(2 * inter)).for_each(|(o, r)| {
        let (gate, up) = r.split_at(inter);
        for j in 0..inter {
            o[j] = gate[j] * sigmoid(gate[j]) * up[j];
        }
    });
    Ok(())
}

pub fn swiglu_bwd(dgu: V, dout: V, gu: V, n: usize, inter: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (d, g) = (f(dout, n * inter, "swiglu_bwd dout")?, f(gu, n * 2 * inter, "swiglu_bwd gu")?);
    fm(dgu, n * 2 * inter, "swiglu_bwd dgu")?.par_chunks_mut(2 * inter).enumerate().for_each(|(i, dr)| {
        let (gate, up) = g[i * 2 * inter..(i + 1) * 2 * inter].split_at(inter);
        let dd = &d[i * inter..(i + 1) * inter];
        let (dg, du) = dr.split_at_mut(inter);
        for j in 0..inter {
            let s = sigmoid(gate[j]);
            du[j] = dd[j] * gate[j] * s;
            dg[j] = dd[j] * up[j] * s * (1.0 + gate[j] * (1.0 - s));
        }
    });
    Ok(())
}
