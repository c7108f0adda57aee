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
            if !same(&ro, &x) {
                r.copy_from_slice(f(x, n * c, "rmsnorm resid_in")?);
            }
            r.par_iter_mut().zip(dl.par_iter()).for_each(|(a, b)| *a += b);
            r
        }
        _ => f(x, n * c, "rmsnorm x")?,
    };
    let w = f(w, c, "rmsnorm w")?;
    let rs = fm(rstd, n, "rmsnorm rstd")?;
    fm(out, n * c, "rmsnorm out")?.par_chunks_mut(c).zip(rs.par_iter_mut()).zip(src.par_chunks(c)).for_each(|((o, r), xr)| {
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c as f64;
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
        let dot: f64 = dr.iter().zip(xr).zip(ws).map(|((&g, &xv), &wv)| (g * wv) as f64 * xv as f64).sum();
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
