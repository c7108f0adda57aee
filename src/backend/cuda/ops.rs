//! `Backend` for `CudaBackend`: argument checks (dtypes, view sizes) and launch shapes. The
//! kernels themselves, with their layouts and design notes, are in `kernels/*.cu`.

use anyhow::{anyhow, bail, Result};
use half::bf16;

use super::buffer::{vptr, CudaBuf};
use super::gemm::BiasDone;
use super::{CudaBackend, Scratch};
use crate::backend::{AdamWParams, AttnShape, Backend, DType, MemInfo, SamplingParams, Seqs, View};

type V<'a> = View<'a, CudaBackend>;

/// A kernel argument as the raw 8-byte slot `CudaBackend::launch` passes.
trait Arg {
    fn slot(self) -> u64;
}
impl Arg for u64 {
    fn slot(self) -> u64 {
        self
    }
}
impl Arg for u32 {
    fn slot(self) -> u64 {
        self as u64
    }
}
impl Arg for i32 {
    fn slot(self) -> u64 {
        self as u32 as u64
    }
}
impl Arg for f32 {
    fn slot(self) -> u64 {
        self.to_bits() as u64
    }
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(Arg::slot($a)),*] };
}

fn need(v: &V, dt: DType, len: usize, what: &str) -> Result<()> {
    if v.dtype() != dt {
        bail!("cuda {what}: expected a {dt:?} view, got {:?}", v.dtype());
    }
    if v.len() < len {
        bail!("cuda {what}: view has {} elements, needs {len}", v.len());
    }
    Ok(())
}

fn int(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| anyhow!("cuda {what}: {x} exceeds the kernel's 32-bit range"))
}

fn grid_dim(x: usize, what: &str) -> Result<u32> {
    if x == 0 || x > i32::MAX as usize {
        bail!("cuda {what}: grid dimension {x} out of range");
    }
    Ok(x as u32)
}

fn grid_yz(x: usize, what: &str) -> Result<u32> {
    if x == 0 || x > 65535 {
        bail!("cuda {what}: grid dimension {x} out of range (1..=65535)");
    }
    Ok(x as u32)
}

const FLAT_THREADS: u32 = 256;

impl CudaBackend {
    /// Blocks for a grid-stride loop over n elements.
    fn flat_blocks(&self, n: usize) -> u32 {
        let want = n.div_ceil(FLAT_THREADS as usize);
        want.clamp(1, self.sm_count as usize * 16) as u32
    }

    fn flat(&self, file: &'static str, name: &'static str, n: usize, a: &[u64]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let f = self.func(file, name)?;
        self.launch(&f, (self.flat_blocks(n), 1, 1), (FLAT_THREADS, 1, 1), 0, a)
    }

    fn check_attn(&self, shape: &AttnShape, what: &str) -> Result<()> {
        if !matches!(shape.head_dim, 16 | 32 | 64 | 128) {
            bail!("cuda {what}: head_dim {} is not supported (16, 32, 64 or 128)", shape.head_dim);
        }
        if shape.n_kv_head == 0 || !shape.n_head.is_multiple_of(shape.n_kv_head) {
            bail!("cuda {what}: n_head {} is not a multiple of n_kv_head {}", shape.n_head, shape.n_kv_head);
        }
        Ok(())
    }

    fn add_bias(&self, c: &V, bias: &V, m: usize, n: usize) -> Result<()> {
        let name = if c.dtype() == DType::F32 { "add_bias_rows_f32" } else { "add_bias_rows_bf16" };
        self.flat("elementwise", name, m * n, args![vptr(c), vptr(bias), m as u64, n as u64])
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn act_dtype(&self) -> DType {
        DType::BF16
    }
    fn needs_master_weights(&self) -> bool {
        true
    }
    fn mem_info(&self) -> MemInfo {
        self.mem_info_raw().ok()
    }

    // ---- memory ------------------------------------------------------------------------------
    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        self.bind()?;
        CudaBuf::zeros(&self.stream, dtype, len)
    }

    fn upload_f32(&self, dst: V, src: &[f32]) -> Result<()> {
        if src.len() != dst.len() {
            bail!("cuda upload_f32: {} host values for a view of {}", src.len(), dst.len());
        }
        match dst.dtype() {
            DType::F32 => self.htod(vptr(&dst), src),
            DType::BF16 => {
                let h: Vec<u16> = src.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                self.htod(vptr(&dst), &h)
            }
            DType::U32 => bail!("cuda upload_f32: destination is U32"),
        }
    }

    fn upload_u32(&self, dst: V, src: &[u32]) -> Result<()> {
        need(&dst, DType::U32, 0, "upload_u32")?;
        if src.len() != dst.len() {
            bail!("cuda upload_u32: {} host values for a view of {}", src.len(), dst.len());
        }
        self.htod(vptr(&dst), src)
    }

    fn download_f32(&self, src: V, dst: &mut [f32]) -> Result<()> {
        if dst.len() != src.len() {
            bail!("cuda download_f32: host slice of {} for a view of {}", dst.len(), src.len());
        }
        match src.dtype() {
            DType::F32 => self.dtoh(dst, vptr(&src)),
            DType::BF16 => {
                let mut h = vec![0u16; dst.len()];
                self.dtoh(&mut h, vptr(&src))?;
                for (d, s) in dst.iter_mut().zip(h) {
                    *d = bf16::from_bits(s).to_f32();
                }
                Ok(())
            }
            DType::U32 => bail!("cuda download_f32: source is U32"),
        }
    }

    fn download_u32(&self, src: V, dst: &mut [u32]) -> Result<()> {
        need(&src, DType::U32, 0, "download_u32")?;
        if dst.len() != src.len() {
            bail!("cuda download_u32: host slice of {} for a view of {}", dst.len(), src.len());
        }
        self.dtoh(dst, vptr(&src))
    }

    fn synchronize(&self) -> Result<()> {
        self.sync()
    }

    // ---- elementwise -------------------------------------------------------------------------
    fn fill(&self, dst: V, value: f32) -> Result<()> {
        let n = dst.len();
        match dst.dtype() {
            DType::F32 => self.flat("elementwise", "fill_f32", n, args![vptr(&dst), n as u64, value]),
            DType::BF16 => self.flat("elementwise", "fill_bf16", n, args![vptr(&dst), n as u64, value]),
            DType::U32 => self.flat("elementwise", "fill_u32", n, args![vptr(&dst), n as u64, value as u32]),
        }
    }

    fn copy(&self, dst: V, src: V) -> Result<()> {
        if dst.len() != src.len() {
            bail!("cuda copy: lengths differ ({} vs {})", dst.len(), src.len());
        }
        let n = dst.len();
        match (dst.dtype(), src.dtype()) {
            (a, b) if a == b => self.dtod(vptr(&dst), vptr(&src), n * a.size_bytes()),
            (DType::F32, DType::BF16) => self.flat("elementwise", "convert_f32_bf16", n, args![vptr(&dst), vptr(&src), n as u64]),
            (DType::BF16, DType::F32) => self.flat("elementwise", "convert_bf16_f32", n, args![vptr(&dst), vptr(&src), n as u64]),
            (a, b) => bail!("cuda copy: {b:?} → {a:?} is not supported"),
        }
    }

    fn add_assign(&self, dst: V, src: V) -> Result<()> {
        if dst.len() != src.len() {
            bail!("cuda add_assign: lengths differ ({} vs {})", dst.len(), src.len());
        }
        let n = dst.len();
        let name = match (dst.dtype(), src.dtype()) {
            (DType::F32, DType::F32) => "add_assign_f32_f32",
            (DType::BF16, DType::BF16) => "add_assign_bf16_bf16",
            (DType::F32, DType::BF16) => "add_assign_f32_bf16",
            (a, b) => bail!("cuda add_assign: {a:?} += {b:?} is not supported"),
        };
        self.flat("elementwise", name, n, args![vptr(&dst), vptr(&src), n as u64])
    }

    fn scale(&self, dst: V, alpha: f32) -> Result<()> {
        let n = dst.len();
        let name = match dst.dtype() {
            DType::F32 => "scale_f32",
            DType::BF16 => "scale_bf16",
            DType::U32 => bail!("cuda scale: U32 is not supported"),
        };
        self.flat("elementwise", name, n, args![vptr(&dst), n as u64, alpha])
    }

    fn sum_squares(&self, x: V) -> Result<f32> {
        let n = x.len();
        if n == 0 {
            return Ok(0.0);
        }
        let name = match x.dtype() {
            DType::F32 => "sum_squares_partial_f32",
            DType::BF16 => "sum_squares_partial_bf16",
            DType::U32 => bail!("cuda sum_squares: U32 is not supported"),
        };
        let blocks = n.div_ceil(FLAT_THREADS as usize).clamp(1, 1024);
        let partial = self.scratch(Scratch::A, blocks * 8)?;
        let f = self.func("elementwise", name)?;
        self.launch(&f, (blocks as u32, 1, 1), (FLAT_THREADS, 1, 1), 0, args![vptr(&x), n as u64, partial])?;
        let mut host = vec![0f64; blocks];
        self.dtoh(&mut host, partial)?;
        Ok(host.iter().sum::<f64>() as f32)
    }

    fn gather_rows(&self, out: V, x: V, rows: V, n_rows: usize, c: usize) -> Result<()> {
        if out.dtype() != x.dtype() {
            bail!("cuda gather_rows: out {:?} and x {:?} differ", out.dtype(), x.dtype());
        }
        need(&out, out.dtype(), n_rows * c, "gather_rows out")?;
        need(&rows, DType::U32, n_rows, "gather_rows rows")?;
        if n_rows == 0 || c == 0 {
            return Ok(());
        }
        let name = if out.dtype().size_bytes() == 2 { "gather_rows_b16" } else { "gather_rows_b32" };
        let f = self.func("elementwise", name)?;
        self.launch(&f, (grid_dim(n_rows, "gather_rows")?, 1, 1), (128, 1, 1), 0, args![vptr(&out), vptr(&x), vptr(&rows), int(c, "gather_rows")?])
    }

    fn scatter_add_rows(&self, dx: V, dout: V, rows: V, n_rows: usize, c: usize) -> Result<()> {
        need(&dout, dout.dtype(), n_rows * c, "scatter_add_rows dout")?;
        need(&rows, DType::U32, n_rows, "scatter_add_rows rows")?;
        let name = match (dx.dtype(), dout.dtype()) {
            (DType::F32, DType::F32) => "scatter_add_rows_f32_f32",
            (DType::BF16, DType::BF16) => "scatter_add_rows_bf16_bf16",
            (DType::F32, DType::BF16) => "scatter_add_rows_f32_bf16",
            (a, b) => bail!("cuda scatter_add_rows: {a:?} += {b:?} is not supported"),
        };
        if n_rows == 0 || c == 0 {
            return Ok(());
        }
        let f = self.func("elementwise", name)?;
        self.launch(&f, (grid_dim(n_rows, "scatter_add_rows")?, 1, 1), (128, 1, 1), 0, args![vptr(&dx), vptr(&dout), vptr(&rows), int(c, "scatter_add_rows")?])
    }

    // ---- embedding ---------------------------------------------------------------------------
    fn embedding_fwd(&self, out: V, table: V, ids: V, n: usize, c: usize) -> Result<()> {
        need(&out, DType::BF16, n * c, "embedding_fwd out")?;
        need(&table, DType::BF16, c, "embedding_fwd table")?;
        need(&ids, DType::U32, n, "embedding_fwd ids")?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let f = self.func("embedding", "embedding_fwd_bf16")?;
        self.launch(&f, (grid_dim(n, "embedding_fwd")?, 1, 1), (128, 1, 1), 0, args![vptr(&out), vptr(&table), vptr(&ids), int(c, "embedding_fwd")?])
    }

    fn embedding_bwd(&self, dtable: V, dout: V, ids: V, n: usize, c: usize) -> Result<()> {
        need(&dtable, DType::F32, c, "embedding_bwd dtable")?;
        need(&dout, DType::BF16, n * c, "embedding_bwd dout")?;
        need(&ids, DType::U32, n, "embedding_bwd ids")?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let f = self.func("embedding", "embedding_bwd_bf16")?;
        self.launch(&f, (grid_dim(n, "embedding_bwd")?, 1, 1), (128, 1, 1), 0, args![vptr(&dtable), vptr(&dout), vptr(&ids), int(c, "embedding_bwd")?])
    }

    // ---- RMSNorm -----------------------------------------------------------------------------
    fn rmsnorm_fwd(&self, out: V, rstd: V, x: V, w: V, n: usize, c: usize, eps: f32) -> Result<()> {
        need(&out, DType::BF16, n * c, "rmsnorm_fwd out")?;
        need(&rstd, DType::F32, n, "rmsnorm_fwd rstd")?;
        need(&x, DType::BF16, n * c, "rmsnorm_fwd x")?;
        need(&w, DType::BF16, c, "rmsnorm_fwd w")?;
        if n == 0 {
            return Ok(());
        }
        let f = self.func("rmsnorm", "rmsnorm_fwd_bf16")?;
        self.launch(&f, (grid_dim(n, "rmsnorm_fwd")?, 1, 1), (256, 1, 1), 0, args![vptr(&out), vptr(&rstd), vptr(&x), vptr(&w), int(c, "rmsnorm_fwd")?, eps])
    }

    fn residual_rmsnorm_fwd(&self, resid_out: V, out: V, rstd: V, resid_in: V, delta: V, w: V, n: usize, c: usize, eps: f32) -> Result<()> {
        need(&resid_out, DType::BF16, n * c, "residual_rmsnorm_fwd resid_out")?;
        need(&out, DType::BF16, n * c, "residual_rmsnorm_fwd out")?;
        need(&rstd, DType::F32, n, "residual_rmsnorm_fwd rstd")?;
        need(&resid_in, DType::BF16, n * c, "residual_rmsnorm_fwd resid_in")?;
        need(&delta, DType::BF16, n * c, "residual_rmsnorm_fwd delta")?;
        need(&w, DType::BF16, c, "residual_rmsnorm_fwd w")?;
        if n == 0 {
            return Ok(());
        }
        let f = self.func("rmsnorm", "residual_rmsnorm_fwd_bf16")?;
        self.launch(
            &f,
            (grid_dim(n, "residual_rmsnorm_fwd")?, 1, 1),
            (256, 1, 1),
            0,
            args![vptr(&resid_out), vptr(&out), vptr(&rstd), vptr(&resid_in), vptr(&delta), vptr(&w), int(c, "residual_rmsnorm_fwd")?, eps],
        )
    }

    fn rmsnorm_bwd(&self, dx: V, dw: V, dout: V, x: V, w: V, rstd: V, n: usize, c: usize) -> Result<()> {
        need(&dx, DType::BF16, n * c, "rmsnorm_bwd dx")?;
        need(&dw, DType::F32, c, "rmsnorm_bwd dw")?;
        need(&dout, DType::BF16, n * c, "rmsnorm_bwd dout")?;
        need(&x, DType::BF16, n * c, "rmsnorm_bwd x")?;
        need(&w, DType::BF16, c, "rmsnorm_bwd w")?;
        need(&rstd, DType::F32, n, "rmsnorm_bwd rstd")?;
        if n == 0 || c == 0 {
            return Ok(());
        }
        let smem = c * 4;
        if smem > 48 * 1024 {
            bail!("cuda rmsnorm_bwd: c = {c} needs {smem} bytes of shared memory (max 48 KB)");
        }
        let blocks = n.min(2 * self.sm_count as usize);
        let f = self.func("rmsnorm", "rmsnorm_bwd_bf16")?;
        self.launch(
            &f,
            (blocks as u32, 1, 1),
            (256, 1, 1),
            smem as u32,
            args![vptr(&dx), vptr(&dw), vptr(&dout), vptr(&x), vptr(&w), vptr(&rstd), int(n, "rmsnorm_bwd")?, int(c, "rmsnorm_bwd")?],
        )
    }

    // ---- GEMM --------------------------------------------------------------------------------
    fn gemm(&self, c: V, a: V, b: V, bias: Option<V>, m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) -> Result<()> {
        need(&a, DType::BF16, m * k, "gemm A")?;
        need(&b, DType::BF16, k * n, "gemm B")?;
        let c_f32 = match c.dtype() {
            DType::F32 => true,
            DType::BF16 => false,
            DType::U32 => bail!("cuda gemm: C is U32"),
        };
        need(&c, c.dtype(), m * n, "gemm C")?;
        if let Some(bv) = &bias {
            need(bv, DType::BF16, n, "gemm bias")?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // op(A)·op(B) is all zeros: C = beta·C (+ bias).
            let cv = c.slice(0, m * n);
            if beta == 0.0 {
                self.fill(cv, 0.0)?;
            } else if beta != 1.0 {
                self.scale(cv, beta)?;
            }
            if let Some(bv) = &bias {
                self.add_bias(&cv, bv, m, n)?;
            }
            return Ok(());
        }
        self.bind()?;
        let done = self.gemm.matmul(vptr(&c), c_f32, vptr(&a), vptr(&b), bias.as_ref().map(vptr), m, n, k, trans_a, trans_b, alpha, beta)?;
        if let (BiasDone::NeedsKernel, Some(bv)) = (done, &bias) {
            self.add_bias(&c, bv, m, n)?;
        }
        Ok(())
    }

    fn bias_bwd(&self, dbias: V, dout: V, m: usize, n: usize) -> Result<()> {
        need(&dbias, DType::F32, n, "bias_bwd dbias")?;
        let name = match dout.dtype() {
            DType::BF16 => "bias_bwd_bf16",
            DType::F32 => "bias_bwd_f32",
            DType::U32 => bail!("cuda bias_bwd: dout is U32"),
        };
        need(&dout, dout.dtype(), m * n, "bias_bwd dout")?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let col_blocks = n.div_ceil(32);
        let target_chunks = (4 * self.sm_count as usize).div_ceil(col_blocks).max(1);
        let rows_per_chunk = m.div_ceil(target_chunks).max(64);
        let chunks = m.div_ceil(rows_per_chunk);
        let f = self.func("elementwise", name)?;
        self.launch(
            &f,
            (grid_dim(col_blocks, "bias_bwd")?, grid_yz(chunks, "bias_bwd")?, 1),
            (32, 8, 1),
            0,
            args![vptr(&dbias), vptr(&dout), int(m, "bias_bwd")?, int(n, "bias_bwd")?, int(rows_per_chunk, "bias_bwd")?],
        )
    }

    // ---- RoPE --------------------------------------------------------------------------------
    fn rope(&self, qkv: V, pos: V, n: usize, shape: AttnShape, theta: f32, inverse: bool) -> Result<()> {
        let w = shape.qkv_width();
        need(&qkv, DType::BF16, n * w, "rope qkv")?;
        need(&pos, DType::U32, n, "rope pos")?;
        if !shape.head_dim.is_multiple_of(2) {
            bail!("cuda rope: odd head_dim {}", shape.head_dim);
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.func("rope", "rope_bf16")?;
        self.launch(
            &f,
            (grid_dim(n, "rope")?, 1, 1),
            (128, 1, 1),
            0,
            args![
                vptr(&qkv),
                vptr(&pos),
                int(shape.n_head, "rope")?,
                int(shape.n_kv_head, "rope")?,
                int(shape.head_dim, "rope")?,
                int(w, "rope")?,
                theta,
                inverse as i32
            ],
        )
    }

    // ---- attention ---------------------------------------------------------------------------
    fn attention_fwd(&self, out: V, lse: V, qkv: V, seqs: Seqs<Self>, shape: AttnShape, scale: f32) -> Result<()> {
        self.check_attn(&shape, "attention_fwd")?;
        let t = seqs.tokens();
        let (h, d) = (shape.n_head, shape.head_dim);
        need(&out, DType::BF16, t * h * d, "attention_fwd out")?;
        need(&lse, DType::F32, t * h, "attention_fwd lse")?;
        need(&qkv, DType::BF16, t * shape.qkv_width(), "attention_fwd qkv")?;
        need(&seqs.cu_dev, DType::U32, seqs.cu_host.len(), "attention_fwd cu")?;
        let (s, max_len) = (seqs.count(), seqs.max_len());
        if s == 0 || max_len == 0 {
            return Ok(());
        }
        // Tensor cores for head_dim 64/128 (attention_mma.cu), the FMA kernels otherwise or when
        // asked (`use_fma_attention`). Both take 64 queries per block.
        let (file, name, threads) = match (d, self.fma_attention()) {
            (64, false) => ("attention_mma", "attn_fwd_mma_d64", 128),
            (128, false) => ("attention_mma", "attn_fwd_mma_d128", 128),
            (16, _) => ("attention", "attn_fwd_d16", 256),
            (32, _) => ("attention", "attn_fwd_d32", 256),
            (64, _) => ("attention", "attn_fwd_d64", 256),
            _ => ("attention", "attn_fwd_d128", 256),
        };
        let f = self.func(file, name)?;
        self.launch(
            &f,
            (grid_dim(max_len.div_ceil(64), "attention_fwd")?, grid_yz(h, "attention_fwd heads")?, grid_yz(s, "attention_fwd sequences")?),
            (threads, 1, 1),
            0,
            args![vptr(&out), vptr(&lse), vptr(&qkv), vptr(&seqs.cu_dev), int(h, "attention_fwd")?, int(shape.n_kv_head, "attention_fwd")?, scale],
        )
    }

    fn attention_bwd(&self, dqkv: V, dout: V, qkv: V, out: V, lse: V, seqs: Seqs<Self>, shape: AttnShape, scale: f32) -> Result<()> {
        self.check_attn(&shape, "attention_bwd")?;
        let t = seqs.tokens();
        let (h, kvh, d) = (shape.n_head, shape.n_kv_head, shape.head_dim);
        let w = shape.qkv_width();
        need(&dqkv, DType::BF16, t * w, "attention_bwd dqkv")?;
        need(&dout, DType::BF16, t * h * d, "attention_bwd dout")?;
        need(&qkv, DType::BF16, t * w, "attention_bwd qkv")?;
        need(&out, DType::BF16, t * h * d, "attention_bwd out")?;
        need(&lse, DType::F32, t * h, "attention_bwd lse")?;
        need(&seqs.cu_dev, DType::U32, seqs.cu_host.len(), "attention_bwd cu")?;
        let (s, max_len) = (seqs.count(), seqs.max_len());
        if s == 0 || max_len == 0 || t == 0 {
            return Ok(());
        }
        let dvec = self.scratch(Scratch::A, t * h * 4)?;
        let dq = self.scratch(Scratch::B, t * h * d * 4)?;
        self.memset_zero(dq, t * h * d * 4)?;
        let rows = t * h;
        let f = self.func("attention", "attn_bwd_dot")?;
        self.launch(&f, (grid_dim(rows.div_ceil(8), "attention_bwd")?, 1, 1), (256, 1, 1), 0, args![dvec, vptr(&dout), vptr(&out), rows as u64, d as i32])?;
        // (file, kernel, keys per block, threads): tensor cores for head_dim 64/128 unless the
        // FMA kernels are asked for (as in attention_fwd).
        let (file, name, keys, threads) = match (d, self.fma_attention()) {
            (64, false) => ("attention_mma", "attn_bwd_mma_d64", 64, 128),
            (128, false) => ("attention_mma", "attn_bwd_mma_d128", 64, 128),
            (16, _) => ("attention", "attn_bwd_d16", 32, 256),
            (32, _) => ("attention", "attn_bwd_d32", 32, 256),
            (64, _) => ("attention", "attn_bwd_d64", 32, 256),
            _ => ("attention", "attn_bwd_d128", 32, 256),
        };
        let f = self.func(file, name)?;
        self.launch(
            &f,
            (grid_dim(max_len.div_ceil(keys), "attention_bwd")?, grid_yz(kvh, "attention_bwd heads")?, grid_yz(s, "attention_bwd sequences")?),
            (threads, 1, 1),
            0,
            args![vptr(&dqkv), dq, vptr(&dout), vptr(&qkv), vptr(&lse), dvec, vptr(&seqs.cu_dev), int(h, "attention_bwd")?, int(kvh, "attention_bwd")?, scale],
        )?;
        self.flat("attention", "attn_dq_convert", t * h * d, args![vptr(&dqkv), dq, t as u64, int(h * d, "attention_bwd")?, int(w, "attention_bwd")?])
    }

    fn kv_store(&self, kcache: V, vcache: V, qkv: V, slot: V, pos: V, n: usize, shape: AttnShape, t_max: usize) -> Result<()> {
        let kd = shape.kv_width();
        need(&kcache, DType::BF16, t_max * kd, "kv_store kcache")?;
        need(&vcache, DType::BF16, t_max * kd, "kv_store vcache")?;
        if !kcache.len().is_multiple_of((t_max * kd).max(1)) || vcache.len() != kcache.len() {
            bail!("cuda kv_store: caches of {} / {} elements are not [slots, {t_max}, {}, {}]", kcache.len(), vcache.len(), shape.n_kv_head, shape.head_dim);
        }
        need(&qkv, DType::BF16, n * shape.qkv_width(), "kv_store qkv")?;
        need(&slot, DType::U32, n, "kv_store slot")?;
        need(&pos, DType::U32, n, "kv_store pos")?;
        if n == 0 {
            return Ok(());
        }
        let f = self.func("attention", "kv_store_bf16")?;
        self.launch(
            &f,
            (grid_dim(n, "kv_store")?, 1, 1),
            (128, 1, 1),
            0,
            args![
                vptr(&kcache),
                vptr(&vcache),
                vptr(&qkv),
                vptr(&slot),
                vptr(&pos),
                int(shape.n_head, "kv_store")?,
                int(shape.n_kv_head, "kv_store")?,
                int(shape.head_dim, "kv_store")?,
                int(t_max, "kv_store")?
            ],
        )
    }

    fn attention_decode(&self, out: V, qkv: V, kcache: V, vcache: V, slot: V, len: V, b: usize, max_len: usize, shape: AttnShape, t_max: usize, scale: f32) -> Result<()> {
        self.check_attn(&shape, "attention_decode")?;
        let (h, d) = (shape.n_head, shape.head_dim);
        need(&out, DType::BF16, b * h * d, "attention_decode out")?;
        need(&qkv, DType::BF16, b * shape.qkv_width(), "attention_decode qkv")?;
        need(&kcache, DType::BF16, t_max * shape.kv_width(), "attention_decode kcache")?;
        need(&vcache, DType::BF16, t_max * shape.kv_width(), "attention_decode vcache")?;
        need(&slot, DType::U32, b, "attention_decode slot")?;
        need(&len, DType::U32, b, "attention_decode len")?;
        if max_len > t_max {
            bail!("cuda attention_decode: max_len {max_len} > t_max {t_max}");
        }
        if b == 0 {
            return Ok(());
        }
        // Tensor cores for head_dim 64/128 with at most 16 query heads per kv head (one block
        // per kv group: attention_mma.cu), the FMA kernels (one block per query head) otherwise.
        let kvh = shape.n_kv_head;
        let (file, name, heads_per_block) = match (d, self.fma_attention() || h / kvh > 16) {
            (64, false) => ("attention_mma", "attn_decode_mma_d64", h / kvh),
            (128, false) => ("attention_mma", "attn_decode_mma_d128", h / kvh),
            (16, _) => ("attention", "attn_decode_partial_d16", 1),
            (32, _) => ("attention", "attn_decode_partial_d32", 1),
            (64, _) => ("attention", "attn_decode_partial_d64", 1),
            _ => ("attention", "attn_decode_partial_d128", 1),
        };
        // Enough blocks to fill the GPU, chunks of at least 64 keys.
        let base_blocks = b * (h / heads_per_block);
        let want = (2 * self.sm_count as usize).div_ceil(base_blocks).max(1);
        let n_split = want.min(max_len.div_ceil(64)).clamp(1, 64);
        let chunk = max_len.div_ceil(n_split).max(1);
        let part = self.scratch(Scratch::A, b * h * n_split * (d + 2) * 4)?;
        let f = self.func(file, name)?;
        self.launch(
            &f,
            (n_split as u32, grid_yz(h / heads_per_block, "attention_decode heads")?, grid_yz(b, "attention_decode rows")?),
            (128, 1, 1),
            0,
            args![
                part,
                vptr(&qkv),
                vptr(&kcache),
                vptr(&vcache),
                vptr(&slot),
                vptr(&len),
                int(h, "attention_decode")?,
                int(kvh, "attention_decode")?,
                int(t_max, "attention_decode")?,
                n_split as i32,
                int(chunk, "attention_decode")?,
                scale
            ],
        )?;
        let f = self.func("attention", "attn_decode_combine")?;
        self.launch(&f, (h as u32, grid_yz(b, "attention_decode rows")?, 1), (d as u32, 1, 1), 0, args![vptr(&out), part, h as i32, d as i32, n_split as i32])
    }

    // ---- MLP ---------------------------------------------------------------------------------
    fn swiglu_fwd(&self, out: V, gu: V, n: usize, inter: usize) -> Result<()> {
        need(&out, DType::BF16, n * inter, "swiglu_fwd out")?;
        need(&gu, DType::BF16, 2 * n * inter, "swiglu_fwd gu")?;
        self.flat("swiglu", "swiglu_fwd_bf16", n * inter, args![vptr(&out), vptr(&gu), n as u64, inter as u64])
    }

    fn swiglu_bwd(&self, dgu: V, dout: V, gu: V, n: usize, inter: usize) -> Result<()> {
        need(&dgu, DType::BF16, 2 * n * inter, "swiglu_bwd dgu")?;
        need(&dout, DType::BF16, n * inter, "swiglu_bwd dout")?;
        need(&gu, DType::BF16, 2 * n * inter, "swiglu_bwd gu")?;
        self.flat("swiglu", "swiglu_bwd_bf16", n * inter, args![vptr(&dgu), vptr(&dout), vptr(&gu), n as u64, inter as u64])
    }

    // ---- log-probs ---------------------------------------------------------------------------
    fn logprob_fwd(&self, logp: V, lse: V, entropy: Option<V>, logits: V, targets: V, n: usize, v: usize, inv_temp: f32) -> Result<()> {
        need(&logp, DType::F32, n, "logprob_fwd logp")?;
        need(&lse, DType::F32, n, "logprob_fwd lse")?;
        if let Some(e) = &entropy {
            need(e, DType::F32, n, "logprob_fwd entropy")?;
        }
        need(&logits, DType::BF16, n * v, "logprob_fwd logits")?;
        need(&targets, DType::U32, n, "logprob_fwd targets")?;
        if n == 0 {
            return Ok(());
        }
        let (name, ent) = match &entropy {
            Some(e) => ("logprob_fwd_bf16_ent", vptr(e)),
            None => ("logprob_fwd_bf16", 0),
        };
        let f = self.func("logprob", name)?;
        self.launch(&f, (grid_dim(n, "logprob_fwd")?, 1, 1), (512, 1, 1), 0, args![vptr(&logp), vptr(&lse), ent, vptr(&logits), vptr(&targets), int(v, "logprob_fwd")?, inv_temp])
    }

    fn logprob_bwd(&self, dlogits: V, logits: V, targets: V, lse: V, entropy: Option<V>, dlogp: V, dentropy: Option<V>, n: usize, v: usize, inv_temp: f32) -> Result<()> {
        need(&dlogits, DType::BF16, n * v, "logprob_bwd dlogits")?;
        need(&logits, DType::BF16, n * v, "logprob_bwd logits")?;
        need(&targets, DType::U32, n, "logprob_bwd targets")?;
        need(&lse, DType::F32, n, "logprob_bwd lse")?;
        need(&dlogp, DType::F32, n, "logprob_bwd dlogp")?;
        let (name, ent, dent) = match (&entropy, &dentropy) {
            (Some(e), Some(de)) => {
                need(e, DType::F32, n, "logprob_bwd entropy")?;
                need(de, DType::F32, n, "logprob_bwd dentropy")?;
                ("logprob_bwd_bf16_ent", vptr(e), vptr(de))
            }
            (None, None) => ("logprob_bwd_bf16", 0, 0),
            _ => bail!("cuda logprob_bwd: entropy and dentropy must be given together"),
        };
        if n == 0 {
            return Ok(());
        }
        let f = self.func("logprob", name)?;
        self.launch(
            &f,
            (grid_dim(n, "logprob_bwd")?, 1, 1),
            (512, 1, 1),
            0,
            args![vptr(&dlogits), vptr(&logits), vptr(&targets), vptr(&lse), ent, vptr(&dlogp), dent, int(v, "logprob_bwd")?, inv_temp],
        )
    }

    // ---- sampling ----------------------------------------------------------------------------
    fn sample(&self, out: V, logits: V, b: usize, v: usize, params: &SamplingParams, seeds: &[u64], counters: &[u64]) -> Result<()> {
        need(&out, DType::U32, b, "sample out")?;
        need(&logits, DType::BF16, b * v, "sample logits")?;
        if seeds.len() < b || counters.len() < b {
            bail!("cuda sample: {} seeds / {} counters for {b} rows", seeds.len(), counters.len());
        }
        if !params.temperature.is_finite() {
            bail!("cuda sample: invalid temperature {}", params.temperature);
        }
        if b == 0 {
            return Ok(());
        }
        if v == 0 {
            bail!("cuda sample: empty vocabulary");
        }
        if params.temperature <= 0.0 {
            let f = self.func("sampling", "argmax_bf16")?;
            return self.launch(&f, (grid_dim(b, "sample")?, 1, 1), (1024, 1, 1), 0, args![vptr(&out), vptr(&logits), int(v, "sample")?]);
        }
        // Seeds then counters, staged in a scratch area (grown only when b grows).
        let mut staged = Vec::with_capacity(2 * b);
        staged.extend_from_slice(&seeds[..b]);
        staged.extend_from_slice(&counters[..b]);
        let dev = self.scratch(Scratch::B, 16 * b)?;
        self.htod(dev, &staged)?;
        let top_k = if params.top_k == 0 || params.top_k >= v { 0 } else { params.top_k as i32 };
        let top_p = if params.top_p >= 1.0 || params.top_p.is_nan() { 1.0 } else { params.top_p };
        let f = self.func("sampling", "sample_bf16")?;
        self.launch(
            &f,
            (grid_dim(b, "sample")?, 1, 1),
            (1024, 1, 1),
            0,
            args![vptr(&out), vptr(&logits), int(v, "sample")?, params.temperature, top_k, top_p, dev, dev + 8 * b as u64],
        )
    }

    // ---- losses ------------------------------------------------------------------------------
    fn apo_loss(&self, loss: V, dlogp: V, logp: V, ref_logp: V, target: V, seqs: Seqs<Self>, beta2: f32, grad_scale: f32) -> Result<()> {
        let (s, t) = (seqs.count(), seqs.tokens());
        need(&loss, DType::F32, s, "apo_loss loss")?;
        need(&dlogp, DType::F32, t, "apo_loss dlogp")?;
        need(&logp, DType::F32, t, "apo_loss logp")?;
        need(&ref_logp, DType::F32, t, "apo_loss ref_logp")?;
        need(&target, DType::F32, s, "apo_loss target")?;
        need(&seqs.cu_dev, DType::U32, seqs.cu_host.len(), "apo_loss cu")?;
        if s == 0 {
            return Ok(());
        }
        let f = self.func("loss", "apo_loss")?;
        self.launch(
            &f,
            (grid_dim(s, "apo_loss")?, 1, 1),
            (256, 1, 1),
            0,
            args![vptr(&loss), vptr(&dlogp), vptr(&logp), vptr(&ref_logp), vptr(&target), vptr(&seqs.cu_dev), beta2, grad_scale],
        )
    }

    fn grpo_loss(&self, loss: V, dlogp: V, logp: V, old_logp: V, ref_logp: V, adv: V, weight: V, n: usize, clip_eps: f32, kl_coef: f32) -> Result<()> {
        for (v, what) in [(&loss, "loss"), (&dlogp, "dlogp"), (&logp, "logp"), (&old_logp, "old_logp"), (&ref_logp, "ref_logp"), (&adv, "adv"), (&weight, "weight")] {
            need(v, DType::F32, n, &format!("grpo_loss {what}"))?;
        }
        self.flat(
            "loss",
            "grpo_loss",
            n,
            args![vptr(&loss), vptr(&dlogp), vptr(&logp), vptr(&old_logp), vptr(&ref_logp), vptr(&adv), vptr(&weight), n as u64, clip_eps, kl_coef],
        )
    }

    // ---- optimizer ---------------------------------------------------------------------------
    fn adamw(&self, params: V, master: Option<V>, grads: V, m: V, v: V, p: &AdamWParams) -> Result<()> {
        let n = params.len();
        need(&grads, DType::F32, n, "adamw grads")?;
        need(&m, DType::F32, n, "adamw m")?;
        need(&v, DType::F32, n, "adamw v")?;
        if p.step == 0 {
            bail!("cuda adamw: step is 1-based");
        }
        let (name, mptr) = match (&master, params.dtype()) {
            (Some(mv), DType::BF16) => {
                need(mv, DType::F32, n, "adamw master")?;
                ("adamw_master_bf16", vptr(mv))
            }
            (Some(mv), DType::F32) => {
                need(mv, DType::F32, n, "adamw master")?;
                ("adamw_master_f32", vptr(mv))
            }
            (None, DType::F32) => ("adamw_f32", 0),
            (None, DType::BF16) => bail!("cuda adamw: BF16 params need an F32 master copy"),
            (_, DType::U32) => bail!("cuda adamw: params are U32"),
        };
        let bc1 = (1.0 - (p.beta1 as f64).powi(p.step as i32)) as f32;
        let bc2_sqrt = (1.0 - (p.beta2 as f64).powi(p.step as i32)).sqrt() as f32;
        self.flat(
            "adamw",
            name,
            n,
            args![vptr(&params), mptr, vptr(&grads), vptr(&m), vptr(&v), n as u64, p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, bc1, bc2_sqrt, p.grad_scale],
        )
    }
}
