//! Embedding, RMSNorm, GEMM (cuBLASLt, `gemm.rs`) and its bias, RoPE and SwiGLU on CUDA
//! (kernels/embedding.cu, rmsnorm.cu, elementwise.cu for the bias kernels, rope.cu,
//! swiglu.cu). The views were checked against the op's shape by the caller
//! (`backend::check`); what is left here are the kernels' own limits and the launch shapes.

use anyhow::{bail, Result};

use super::buffer::vptr;
use super::elementwise;
use super::gemm::BiasDone;
use super::launch::{args, grid_dim, grid_yz, int};
use super::CudaBackend;
use crate::backend::{AttnShape, DType, View};

type V<'a> = View<'a, CudaBackend>;

// ---- embedding -----------------------------------------------------------------------------

pub(super) fn embedding_fwd(be: &CudaBackend, out: V, table: V, ids: V, n: usize, c: usize) -> Result<()> {
    if n == 0 || c == 0 {
        return Ok(());
    }
    let f = be.func("embedding", "embedding_fwd_bf16")?;
    be.launch(
        &f,
        (grid_dim(n, "embedding_fwd")?, 1, 1),
        (128, 1, 1),
        0,
        args![vptr(&out), vptr(&table), vptr(&ids), int(c, "embedding_fwd")?],
    )
}

pub(super) fn embedding_bwd(be: &CudaBackend, dtable: V, dout: V, ids: V, n: usize, c: usize) -> Result<()> {
    if n == 0 || c == 0 {
        return Ok(());
    }
    let f = be.func("embedding", "embedding_bwd_bf16")?;
    be.launch(
        &f,
        (grid_dim(n, "embedding_bwd")?, 1, 1),
        (128, 1, 1),
        0,
        args![vptr(&dtable), vptr(&dout), vptr(&ids), int(c, "embedding_bwd")?],
    )
}

// ---- RMSNorm -------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub(super) fn rmsnorm_fwd(be: &CudaBackend, out: V, rstd: V, x: V, w: V, n: usize, c: usize, eps: f32) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    if c <= RMS_WARP_MAX_C {
        let f = be.func("rmsnorm", "rmsnorm_fwd_warp_bf16")?;
        return be.launch(
            &f,
            (grid_dim(n.div_ceil(RMS_ROWS_PER_BLOCK), "rmsnorm_fwd")?, 1, 1),
            (32 * RMS_ROWS_PER_BLOCK as u32, 1, 1),
            0,
            args![vptr(&out), vptr(&rstd), vptr(&x), vptr(&w), int(n, "rmsnorm_fwd")?, int(c, "rmsnorm_fwd")?, eps],
        );
    }
    let f = be.func("rmsnorm", "rmsnorm_fwd_bf16")?;
    be.launch(
        &f,
        (grid_dim(n, "rmsnorm_fwd")?, 1, 1),
        (256, 1, 1),
        0,
        args![vptr(&out), vptr(&rstd), vptr(&x), vptr(&w), int(c, "rmsnorm_fwd")?, eps],
    )
}

/// Rows up to this width take the warp-per-row forwards (kernels/rmsnorm.cu: 8 chunks of 8
/// bf16 per lane held in registers); wider ones a block per row.
const RMS_WARP_MAX_C: usize = 2048;
const RMS_ROWS_PER_BLOCK: usize = 8;

#[allow(clippy::too_many_arguments)]
pub(super) fn residual_rmsnorm_fwd(
    be: &CudaBackend,
    resid_out: V,
    out: V,
    rstd: V,
    resid_in: V,
    delta: V,
    w: V,
    n: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    if c <= RMS_WARP_MAX_C {
        let f = be.func("rmsnorm", "residual_rmsnorm_fwd_warp_bf16")?;
        return be.launch(
            &f,
            (grid_dim(n.div_ceil(RMS_ROWS_PER_BLOCK), "residual_rmsnorm_fwd")?, 1, 1),
            (32 * RMS_ROWS_PER_BLOCK as u32, 1, 1),
            0,
            args![
                vptr(&resid_out),
                vptr(&out),
                vptr(&rstd),
                vptr(&resid_in),
                vptr(&delta),
                vptr(&w),
                int(n, "residual_rmsnorm_fwd")?,
                int(c, "residual_rmsnorm_fwd")?,
                eps
            ],
        );
    }
    let f = be.func("rmsnorm", "residual_rmsnorm_fwd_bf16")?;
    be.launch(
        &f,
        (grid_dim(n, "residual_rmsnorm_fwd")?, 1, 1),
        (256, 1, 1),
        0,
        args![vptr(&resid_out), vptr(&out), vptr(&rstd), vptr(&resid_in), vptr(&delta), vptr(&w), int(c, "residual_rmsnorm_fwd")?, eps],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rmsnorm_bwd(be: &CudaBackend, dx: V, dw: V, dout: V, x: V, w: V, rstd: V, n: usize, c: usize) -> Result<()> {
    if n == 0 || c == 0 {
        return Ok(());
    }
    let smem = c * 4;
    if smem > 48 * 1024 {
        bail!("cuda rmsnorm_bwd: c = {c} needs {smem} bytes of shared memory (max 48 KB)");
    }
    let blocks = n.min(2 * be.sm_count as usize);
    let f = be.func("rmsnorm", "rmsnorm_bwd_bf16")?;
    be.launch(
        &f,
        (blocks as u32, 1, 1),
        (256, 1, 1),
        smem as u32,
        args![vptr(&dx), vptr(&dw), vptr(&dout), vptr(&x), vptr(&w), vptr(&rstd), int(n, "rmsnorm_bwd")?, int(c, "rmsnorm_bwd")?],
    )
}

// ---- GEMM ----------------------------------------------------------------------------------

/// `c[i, j] += bias[j]`: the GEMM bias where cuBLASLt has no epilogue for the layout.
fn add_bias(be: &CudaBackend, c: &V, bias: &V, m: usize, n: usize) -> Result<()> {
    let name = if c.dtype() == DType::F32 { "add_bias_rows_f32" } else { "add_bias_rows_bf16" };
    be.flat("elementwise", name, m * n, args![vptr(c), vptr(bias), m as u64, n as u64])
}

#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    be: &CudaBackend,
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
    let c_f32 = match c.dtype() {
        DType::F32 => true,
        DType::BF16 => false,
        DType::U32 => bail!("cuda gemm: C is U32"),
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        // op(A)·op(B) is all zeros: C = beta·C (+ bias).
        let cv = c.prefix(m * n);
        if beta == 0.0 {
            elementwise::fill(be, cv, 0.0)?;
        } else if beta != 1.0 {
            elementwise::scale(be, cv, beta)?;
        }
        if let Some(bv) = &bias {
            add_bias(be, &cv, bv, m, n)?;
        }
        return Ok(());
    }
    be.bind()?;
    let done = be.gemm.matmul(vptr(&c), c_f32, vptr(&a), vptr(&b), bias.as_ref().map(vptr), m, n, k, trans_a, trans_b, alpha, beta)?;
    if let (BiasDone::NeedsKernel, Some(bv)) = (done, &bias) {
        add_bias(be, &c, bv, m, n)?;
    }
    Ok(())
}

pub(super) fn bias_bwd(be: &CudaBackend, dbias: V, dout: V, m: usize, n: usize) -> Result<()> {
    let name = match dout.dtype() {
        DType::BF16 => "bias_bwd_bf16",
        DType::F32 => "bias_bwd_f32",
        DType::U32 => bail!("cuda bias_bwd: dout is U32"),
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let col_blocks = n.div_ceil(32);
    let target_chunks = (4 * be.sm_count as usize).div_ceil(col_blocks).max(1);
    let rows_per_chunk = m.div_ceil(target_chunks).max(64);
    let chunks = m.div_ceil(rows_per_chunk);
    let f = be.func("elementwise", name)?;
    be.launch(
        &f,
        (grid_dim(col_blocks, "bias_bwd")?, grid_yz(chunks, "bias_bwd")?, 1),
        (32, 8, 1),
        0,
        args![vptr(&dbias), vptr(&dout), int(m, "bias_bwd")?, int(n, "bias_bwd")?, int(rows_per_chunk, "bias_bwd")?],
    )
}

// ---- RoPE ----------------------------------------------------------------------------------

pub(super) fn rope(be: &CudaBackend, qkv: V, pos: V, n: usize, shape: AttnShape, theta: f32, inverse: bool) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let f = be.func("rope", "rope_bf16")?;
    be.launch(
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
            int(shape.qkv_width(), "rope")?,
            theta,
            inverse as i32
        ],
    )
}

// ---- SwiGLU --------------------------------------------------------------------------------

pub(super) fn swiglu_fwd(be: &CudaBackend, out: V, gu: V, n: usize, inter: usize) -> Result<()> {
    be.flat("swiglu", "swiglu_fwd_bf16", n * inter, args![vptr(&out), vptr(&gu), n as u64, inter as u64])
}

pub(super) fn swiglu_bwd(be: &CudaBackend, dgu: V, dout: V, gu: V, n: usize, inter: usize) -> Result<()> {
    be.flat("swiglu", "swiglu_bwd_bf16", n * inter, args![vptr(&dgu), vptr(&dout), vptr(&gu), n as u64, inter as u64])
}
