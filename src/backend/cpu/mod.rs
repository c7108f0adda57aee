//! The CPU backend: f32 everywhere, multi-threaded with rayon, GEMMs by `matrixmultiply` (and a
//! streaming kernel of our own for decoding's few rows, `gemm_few_rows`), a vectorizable exp.
//! It is the oracle the CUDA backend is tested against, so it favours plain loops and f64
//! accumulation where that is cheap, and fixed work partitions so results are deterministic
//! (a resumed run must end bit-identical to an uninterrupted one).
mod attention;
mod exp;
mod gemm_few_rows;
mod logprob;
mod nn;
mod optim;
mod sgemm;

use super::{check, AdamWParams, AttnShape, Backend, Buffer, DType, SamplingParams, Seqs, View};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::cell::UnsafeCell;
use std::sync::Arc;

/// `dst` = `src` over the thread pool: a model upload is gigabytes, and the first touch of a
/// fresh buffer's pages (the kernel zeroing them) costs more than the copy itself.
fn copy_parallel(dst: &mut [f32], src: &[f32]) {
    const CHUNK: usize = 1 << 16;
    if dst.len() <= CHUNK {
        return dst.copy_from_slice(src);
    }
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}

/// Rows per parallel task in reductions: fixed, so the summation order never depends on
/// the thread count or on work stealing.
pub(crate) const ROWS_PER_TASK: usize = 64;

enum Storage {
    F32(UnsafeCell<Vec<f32>>),
    U32(UnsafeCell<Vec<u32>>),
}

struct Inner {
    dtype: DType,
    storage: Storage,
}

// SAFETY: a `CpuBuf` is shared like a device pointer. The Backend contract makes the caller
// responsible for never writing a region while another op reads or writes it; every op here
// runs to completion before returning, so no two ops ever touch a buffer concurrently.
unsafe impl Sync for Inner {}
unsafe impl Send for Inner {}

#[derive(Clone)]
pub struct CpuBuf(Arc<Inner>);

impl Buffer for CpuBuf {
    fn len(&self) -> usize {
        match &self.0.storage {
            // SAFETY: reading the length does not race with element writes.
            Storage::F32(v) => unsafe { (*v.get()).len() },
            Storage::U32(v) => unsafe { (*v.get()).len() },
        }
    }
    fn dtype(&self) -> DType {
        self.0.dtype
    }
}

#[derive(Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

/// The first `expect` f32 elements of a view, writable (an error if the view is shorter).
/// Each op has checked its views against its shape already (`check`); this is the accessor.
#[allow(clippy::mut_from_ref)]
pub(crate) fn fm<'a>(v: View<'a, CpuBackend>, expect: usize, what: &str) -> Result<&'a mut [f32]> {
    if v.len() < expect {
        bail!("{what}: view of {} elements, need {expect}", v.len());
    }
    match &v.buf().0.storage {
        // SAFETY: in bounds: off + expect <= off + len <= the buffer's length (a View never
        // exceeds its buffer); aliasing is governed by the Backend contract (see Inner).
        Storage::F32(data) => unsafe { Ok(std::slice::from_raw_parts_mut((*data.get()).as_mut_ptr().add(v.off()), expect)) },
        Storage::U32(_) => bail!("{what}: expected an f32/bf16 buffer, got u32"),
    }
}

pub(crate) fn f<'a>(v: View<'a, CpuBackend>, expect: usize, what: &str) -> Result<&'a [f32]> {
    fm(v, expect, what).map(|s| &*s)
}

#[allow(clippy::mut_from_ref)]
pub(crate) fn um<'a>(v: View<'a, CpuBackend>, expect: usize, what: &str) -> Result<&'a mut [u32]> {
    if v.len() < expect {
        bail!("{what}: view of {} elements, need {expect}", v.len());
    }
    match &v.buf().0.storage {
        // SAFETY: as in `fm`.
        Storage::U32(data) => unsafe { Ok(std::slice::from_raw_parts_mut((*data.get()).as_mut_ptr().add(v.off()), expect)) },
        Storage::F32(_) => bail!("{what}: expected a u32 buffer"),
    }
}

pub(crate) fn u<'a>(v: View<'a, CpuBackend>, expect: usize, what: &str) -> Result<&'a [u32]> {
    um(v, expect, what).map(|s| &*s)
}

/// Whether two views start at the same element of the same buffer (an allowed in-place op).
pub(crate) fn same(a: &View<CpuBackend>, b: &View<CpuBackend>) -> bool {
    Arc::ptr_eq(&a.buf().0, &b.buf().0) && a.off() == b.off()
}

fn is_u32(v: &View<CpuBackend>) -> bool {
    v.dtype() == DType::U32
}

/// `out[i, :] = x[rows[i], :]` for either element type, rows checked against `x`.
fn gather<T: Copy>(o: &mut [T], xs: &[T], rows: &[u32], c: usize) -> Result<()> {
    for (i, &row) in rows.iter().enumerate() {
        let row = row as usize;
        if (row + 1) * c > xs.len() {
            bail!("gather_rows: row {row} beyond the input");
        }
        o[i * c..(i + 1) * c].copy_from_slice(&xs[row * c..(row + 1) * c]);
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn act_dtype(&self) -> DType {
        DType::F32
    }
    fn needs_master_weights(&self) -> bool {
        false
    }
    /// The CPU backend's "device" memory is the host's: what it has available.
    fn mem_info(&self) -> crate::backend::MemInfo {
        Some((crate::util::limits::host_available_bytes()?, crate::util::limits::host_total_bytes()?))
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CpuBuf> {
        let storage = match dtype {
            DType::U32 => Storage::U32(UnsafeCell::new(vec![0; len])),
            // BF16 requests are stored as f32: the CPU computes in f32 throughout.
            DType::F32 | DType::BF16 => Storage::F32(UnsafeCell::new(vec![0.0; len])),
        };
        Ok(CpuBuf(Arc::new(Inner { dtype, storage })))
    }

    fn upload_f32(&self, dst: View<Self>, src: &[f32]) -> Result<()> {
        check::transfer(self, "upload_f32", dst, false, src.len())?;
        copy_parallel(fm(dst, src.len(), "upload_f32")?, src);
        Ok(())
    }
    fn upload_u32(&self, dst: View<Self>, src: &[u32]) -> Result<()> {
        check::transfer(self, "upload_u32", dst, true, src.len())?;
        um(dst, src.len(), "upload_u32")?.copy_from_slice(src);
        Ok(())
    }
    fn download_f32(&self, src: View<Self>, dst: &mut [f32]) -> Result<()> {
        check::transfer(self, "download_f32", src, false, dst.len())?;
        copy_parallel(dst, f(src, dst.len(), "download_f32")?);
        Ok(())
    }
    fn download_u32(&self, src: View<Self>, dst: &mut [u32]) -> Result<()> {
        check::transfer(self, "download_u32", src, true, dst.len())?;
        dst.copy_from_slice(u(src, dst.len(), "download_u32")?);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn fill(&self, dst: View<Self>, value: f32) -> Result<()> {
        check::fill(self, dst)?;
        if is_u32(&dst) {
            // As on CUDA: the value converted to u32 (saturating, NaN → 0).
            um(dst, dst.len(), "fill")?.par_iter_mut().for_each(|x| *x = value as u32);
        } else {
            fm(dst, dst.len(), "fill")?.par_iter_mut().for_each(|x| *x = value);
        }
        Ok(())
    }
    fn copy(&self, dst: View<Self>, src: View<Self>) -> Result<()> {
        check::copy(self, dst, src)?;
        if same(&dst, &src) {
            return Ok(());
        }
        if is_u32(&dst) {
            um(dst, dst.len(), "copy")?.copy_from_slice(u(src, src.len(), "copy")?);
        } else {
            fm(dst, dst.len(), "copy")?.copy_from_slice(f(src, src.len(), "copy")?);
        }
        Ok(())
    }
    fn add_assign(&self, dst: View<Self>, src: View<Self>) -> Result<()> {
        check::add_assign(self, dst, src)?;
        let s = f(src, dst.len(), "add_assign")?;
        fm(dst, dst.len(), "add_assign")?.par_iter_mut().zip(s.par_iter()).for_each(|(d, s)| *d += s);
        Ok(())
    }
    fn scale(&self, dst: View<Self>, alpha: f32) -> Result<()> {
        check::float(self, "scale", "dst", dst)?;
        fm(dst, dst.len(), "scale")?.par_iter_mut().for_each(|x| *x *= alpha);
        Ok(())
    }
    fn sum_squares(&self, x: View<Self>) -> Result<f32> {
        check::float(self, "sum_squares", "x", x)?;
        let x = f(x, x.len(), "sum_squares")?;
        let partial: Vec<f64> = x.par_chunks(1 << 16).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
        Ok(partial.iter().sum::<f64>() as f32)
    }
    fn gather_rows(&self, out: View<Self>, x: View<Self>, rows: View<Self>, n_rows: usize, c: usize) -> Result<()> {
        check::gather_rows(self, out, x, rows, n_rows, c)?;
        let r = u(rows, n_rows, "gather_rows")?;
        if is_u32(&out) {
            gather(um(out, n_rows * c, "gather_rows")?, u(x, x.len(), "gather_rows")?, r, c)
        } else {
            gather(fm(out, n_rows * c, "gather_rows")?, f(x, x.len(), "gather_rows")?, r, c)
        }
    }
    fn scatter_add_rows(&self, dx: View<Self>, dout: View<Self>, rows: View<Self>, n_rows: usize, c: usize) -> Result<()> {
        check::scatter_add_rows(self, dx, dout, rows, n_rows, c)?;
        let r = u(rows, n_rows, "scatter_add_rows")?;
        let d = f(dout, n_rows * c, "scatter_add_rows")?;
        let x = fm(dx, dx.len(), "scatter_add_rows")?;
        for (i, &row) in r.iter().enumerate() {
            let row = row as usize;
            if (row + 1) * c > x.len() {
                bail!("scatter_add_rows: row {row} beyond the output");
            }
            for (a, b) in x[row * c..(row + 1) * c].iter_mut().zip(&d[i * c..(i + 1) * c]) {
                *a += b;
            }
        }
        Ok(())
    }

    fn copy_block(
        &self,
        dst: View<Self>,
        dst_ld: usize,
        src: View<Self>,
        src_ld: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> Result<()> {
        check::copy_block(self, dst, dst_ld, src, src_ld, rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let span = |ld: usize| (rows - 1) * ld + cols;
        let (d, s) = (fm(dst, span(dst_ld), "copy_block")?, f(src, span(src_ld), "copy_block")?);
        for i in 0..rows {
            let (d, s) = (&mut d[i * dst_ld..i * dst_ld + cols], &s[i * src_ld..i * src_ld + cols]);
            if accumulate {
                d.iter_mut().zip(s).for_each(|(a, b)| *a += b);
            } else {
                d.copy_from_slice(s);
            }
        }
        Ok(())
    }

    fn embedding_fwd(&self, out: View<Self>, table: View<Self>, ids: View<Self>, n: usize, c: usize) -> Result<()> {
        check::embedding_fwd(self, out, table, ids, n, c)?;
        nn::embedding_fwd(out, table, ids, n, c)
    }
    fn embedding_bwd(&self, dtable: View<Self>, dout: View<Self>, ids: View<Self>, n: usize, c: usize) -> Result<()> {
        check::embedding_bwd(self, dtable, dout, ids, n, c)?;
        nn::embedding_bwd(dtable, dout, ids, n, c)
    }
    fn rmsnorm_fwd(&self, out: View<Self>, rstd: View<Self>, x: View<Self>, w: View<Self>, n: usize, c: usize, eps: f32) -> Result<()> {
        check::rmsnorm_fwd(self, out, rstd, None, x, w, n, c)?;
        nn::rmsnorm_fwd(out, rstd, None, x, None, w, n, c, eps)
    }
    fn residual_rmsnorm_fwd(
        &self,
        resid_out: View<Self>,
        out: View<Self>,
        rstd: View<Self>,
        resid_in: View<Self>,
        delta: View<Self>,
        w: View<Self>,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        check::rmsnorm_fwd(self, out, rstd, Some((resid_out, delta)), resid_in, w, n, c)?;
        nn::rmsnorm_fwd(out, rstd, Some(resid_out), resid_in, Some(delta), w, n, c, eps)
    }
    fn rmsnorm_bwd(
        &self,
        dx: View<Self>,
        dw: View<Self>,
        dout: View<Self>,
        x: View<Self>,
        w: View<Self>,
        rstd: View<Self>,
        n: usize,
        c: usize,
    ) -> Result<()> {
        check::rmsnorm_bwd(self, dx, dw, dout, x, w, rstd, n, c)?;
        nn::rmsnorm_bwd(dx, dw, dout, x, w, rstd, n, c)
    }
    fn gemm(
        &self,
        c: View<Self>,
        a: View<Self>,
        b: View<Self>,
        bias: Option<View<Self>>,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        check::gemm(self, c, a, b, bias, m, n, k)?;
        nn::gemm(c, a, b, bias, m, n, k, trans_a, trans_b, alpha, beta)
    }
    fn bias_bwd(&self, dbias: View<Self>, dout: View<Self>, m: usize, n: usize) -> Result<()> {
        check::bias_bwd(self, dbias, dout, m, n)?;
        nn::bias_bwd(dbias, dout, m, n)
    }
    fn rope(&self, qkv: View<Self>, pos: View<Self>, n: usize, shape: AttnShape, theta: f32, inverse: bool) -> Result<()> {
        check::rope(self, qkv, pos, n, &shape)?;
        nn::rope(qkv, pos, n, shape, theta, inverse)
    }
    fn attention_fwd(
        &self,
        out: View<Self>,
        lse: View<Self>,
        qkv: View<Self>,
        seqs: Seqs<Self>,
        shape: AttnShape,
        scale: f32,
    ) -> Result<()> {
        check::attention_fwd(self, out, lse, qkv, &seqs, &shape)?;
        attention::fwd(out, lse, qkv, seqs, shape, scale)
    }
    fn attention_bwd(
        &self,
        dqkv: View<Self>,
        dout: View<Self>,
        qkv: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        seqs: Seqs<Self>,
        shape: AttnShape,
        scale: f32,
    ) -> Result<()> {
        check::attention_bwd(self, dqkv, dout, qkv, out, lse, &seqs, &shape)?;
        attention::bwd(dqkv, dout, qkv, out, lse, seqs, shape, scale)
    }
    fn kv_store(
        &self,
        kcache: View<Self>,
        vcache: View<Self>,
        qkv: View<Self>,
        slot: View<Self>,
        pos: View<Self>,
        n: usize,
        shape: AttnShape,
        t_max: usize,
    ) -> Result<()> {
        check::kv_store(self, kcache, vcache, qkv, slot, pos, n, &shape, t_max)?;
        attention::kv_store(kcache, vcache, qkv, slot, pos, n, shape, t_max)
    }
    fn attention_decode(
        &self,
        out: View<Self>,
        qkv: View<Self>,
        kcache: View<Self>,
        vcache: View<Self>,
        slot: View<Self>,
        len: View<Self>,
        b: usize,
        max_len: usize,
        shape: AttnShape,
        t_max: usize,
        scale: f32,
    ) -> Result<()> {
        check::attention_decode(self, out, qkv, kcache, vcache, slot, len, b, max_len, &shape, t_max)?;
        attention::decode(out, qkv, kcache, vcache, slot, len, b, max_len, shape, t_max, scale)
    }
    fn swiglu_fwd(&self, out: View<Self>, gu: View<Self>, n: usize, inter: usize) -> Result<()> {
        check::swiglu_fwd(self, out, gu, n, inter)?;
        nn::swiglu_fwd(out, gu, n, inter)
    }
    fn swiglu_bwd(&self, dgu: View<Self>, dout: View<Self>, gu: View<Self>, n: usize, inter: usize) -> Result<()> {
        check::swiglu_bwd(self, dgu, dout, gu, n, inter)?;
        nn::swiglu_bwd(dgu, dout, gu, n, inter)
    }
    fn logprob_fwd(
        &self,
        logp: View<Self>,
        lse: View<Self>,
        entropy: Option<View<Self>>,
        logits: View<Self>,
        targets: View<Self>,
        n: usize,
        v: usize,
        inv_temp: f32,
    ) -> Result<()> {
        check::logprob_fwd(self, logp, lse, entropy, logits, targets, n, v)?;
        logprob::fwd(logp, lse, entropy, logits, targets, n, v, inv_temp)
    }
    fn logprob_bwd(
        &self,
        dlogits: View<Self>,
        logits: View<Self>,
        targets: View<Self>,
        lse: View<Self>,
        entropy: Option<View<Self>>,
        dlogp: View<Self>,
        dentropy: Option<View<Self>>,
        n: usize,
        v: usize,
        inv_temp: f32,
    ) -> Result<()> {
        check::logprob_bwd(self, dlogits, logits, targets, lse, entropy, dlogp, dentropy, n, v)?;
        logprob::bwd(dlogits, logits, targets, lse, entropy, dlogp, dentropy, n, v, inv_temp)
    }
    fn sample(
        &self,
        out: View<Self>,
        logits: View<Self>,
        b: usize,
        v: usize,
        params: &SamplingParams,
        seeds: &[u64],
        counters: &[u64],
    ) -> Result<()> {
        check::sample(self, out, logits, b, v, params, seeds, counters)?;
        logprob::sample(out, logits, b, v, params, seeds, counters)
    }
    fn apo_loss(
        &self,
        loss: View<Self>,
        dlogp: View<Self>,
        logp: View<Self>,
        ref_logp: View<Self>,
        target: View<Self>,
        seqs: Seqs<Self>,
        beta2: f32,
        grad_scale: f32,
    ) -> Result<()> {
        check::apo_loss(self, loss, dlogp, logp, ref_logp, target, &seqs)?;
        optim::apo_loss(loss, dlogp, logp, ref_logp, target, seqs, beta2, grad_scale)
    }
    fn grpo_loss(
        &self,
        loss: View<Self>,
        dlogp: View<Self>,
        logp: View<Self>,
        old_logp: View<Self>,
        ref_logp: View<Self>,
        adv: View<Self>,
        weight: View<Self>,
        n: usize,
        clip_eps: f32,
        kl_coef: f32,
        kl: super::KlEstimator,
    ) -> Result<()> {
        check::grpo_loss(self, loss, dlogp, logp, old_logp, ref_logp, adv, weight, n)?;
        optim::grpo_loss(loss, dlogp, logp, old_logp, ref_logp, adv, weight, n, clip_eps, kl_coef, kl)
    }
    fn adamw(
        &self,
        params: View<Self>,
        master: Option<View<Self>>,
        grads: View<Self>,
        m: View<Self>,
        v: View<Self>,
        p: &AdamWParams,
    ) -> Result<()> {
        check::adamw(self, params, master, grads, m, v, p.step)?;
        optim::adamw(params, master, grads, m, v, p)
    }
}
