//! Fill, copy/convert, add, scale, sum of squares, and row gather/scatter on CUDA
//! (kernels/elementwise.cu). The views were checked against the op's shape by the caller
//! (`backend::check`); what is left here is choosing the kernel for the dtypes and the launch.

use anyhow::{bail, Result};

use super::buffer::vptr;
use super::launch::{args, grid_dim, int, FLAT_THREADS};
use super::{CudaBackend, Scratch};
use crate::backend::{DType, View};

type V<'a> = View<'a, CudaBackend>;

pub(super) fn fill(be: &CudaBackend, dst: V, value: f32) -> Result<()> {
    let n = dst.len();
    match dst.dtype() {
        DType::F32 => be.flat("elementwise", "fill_f32", n, args![vptr(&dst), n as u64, value]),
        DType::BF16 => be.flat("elementwise", "fill_bf16", n, args![vptr(&dst), n as u64, value]),
        DType::U32 => be.flat("elementwise", "fill_u32", n, args![vptr(&dst), n as u64, value as u32]),
    }
}

pub(super) fn copy(be: &CudaBackend, dst: V, src: V) -> Result<()> {
    let n = dst.len();
    match (dst.dtype(), src.dtype()) {
        (a, b) if a == b => be.dtod(vptr(&dst), vptr(&src), n * a.size_bytes()),
        (DType::F32, DType::BF16) => be.flat("elementwise", "convert_f32_bf16", n, args![vptr(&dst), vptr(&src), n as u64]),
        (DType::BF16, DType::F32) => be.flat("elementwise", "convert_bf16_f32", n, args![vptr(&dst), vptr(&src), n as u64]),
        (a, b) => bail!("cuda copy: {b:?} → {a:?} is not supported"),
    }
}

pub(super) fn add_assign(be: &CudaBackend, dst: V, src: V) -> Result<()> {
    let n = dst.len();
    let name = match (dst.dtype(), src.dtype()) {
        (DType::F32, DType::F32) => "add_assign_f32_f32",
        (DType::BF16, DType::BF16) => "add_assign_bf16_bf16",
        (DType::F32, DType::BF16) => "add_assign_f32_bf16",
        (a, b) => bail!("cuda add_assign: {a:?} += {b:?} is not supported"),
    };
    be.flat("elementwise", name, n, args![vptr(&dst), vptr(&src), n as u64])
}

pub(super) fn scale(be: &CudaBackend, dst: V, alpha: f32) -> Result<()> {
    let n = dst.len();
    let name = match dst.dtype() {
        DType::F32 => "scale_f32",
        DType::BF16 => "scale_bf16",
        DType::U32 => bail!("cuda scale: U32 is not supported"),
    };
    be.flat("elementwise", name, n, args![vptr(&dst), n as u64, alpha])
}

pub(super) fn sum_squares(be: &CudaBackend, x: V) -> Result<f32> {
    let n = x.len();
    if n == 0 {
        return Ok(0.0);
    }
    let name = match x.dtype() {
        DType::F32 => "sum_squares_partial_f32",
        DType::BF16 => "sum_squares_partial_bf16",
        DType::U32 => bail!("cuda sum_squares: U32 is not supported"),
    };
    let blocks = n.div_ceil(FLAT_THREADS as usize).clamp(1, crate::backend::workspace::MAX_REDUCE_BLOCKS);
    let partial = be.scratch(Scratch::Partials, blocks * 8)?;
    let f = be.func("elementwise", name)?;
    be.launch(&f, (blocks as u32, 1, 1), (FLAT_THREADS, 1, 1), 0, args![vptr(&x), n as u64, partial])?;
    let mut host = vec![0f64; blocks];
    be.dtoh(&mut host, partial)?;
    Ok(host.iter().sum::<f64>() as f32)
}

pub(super) fn gather_rows(be: &CudaBackend, out: V, x: V, rows: V, n_rows: usize, c: usize) -> Result<()> {
    if n_rows == 0 || c == 0 {
        return Ok(());
    }
    let name = if out.dtype().size_bytes() == 2 { "gather_rows_b16" } else { "gather_rows_b32" };
    let f = be.func("elementwise", name)?;
    be.launch(
        &f,
        (grid_dim(n_rows, "gather_rows")?, 1, 1),
        (128, 1, 1),
        0,
        args![vptr(&out), vptr(&x), vptr(&rows), int(c, "gather_rows")?],
    )
}

/// One block per row (grid.x = rows, split over grid.y past the grid limit is not needed:
/// rows are token rows of one pass), threads over the columns.
#[allow(clippy::too_many_arguments)]
pub(super) fn copy_block(
    be: &CudaBackend,
    dst: V,
    dst_ld: usize,
    src: V,
    src_ld: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let name = match dst.dtype() {
        DType::F32 => "copy_block_f32",
        DType::BF16 => "copy_block_bf16",
        d => bail!("cuda copy_block: {d:?} is not supported"),
    };
    let f = be.func("elementwise", name)?;
    be.launch(
        &f,
        (grid_dim(rows, "copy_block")?, 1, 1),
        (128, 1, 1),
        0,
        args![
            vptr(&dst),
            int(dst_ld, "copy_block")?,
            vptr(&src),
            int(src_ld, "copy_block")?,
            int(cols, "copy_block")?,
            int(accumulate as usize, "copy_block")?
        ],
    )
}

pub(super) fn scatter_add_rows(be: &CudaBackend, dx: V, dout: V, rows: V, n_rows: usize, c: usize) -> Result<()> {
    let name = match (dx.dtype(), dout.dtype()) {
        (DType::F32, DType::F32) => "scatter_add_rows_f32_f32",
        (DType::BF16, DType::BF16) => "scatter_add_rows_bf16_bf16",
        (DType::F32, DType::BF16) => "scatter_add_rows_f32_bf16",
        (a, b) => bail!("cuda scatter_add_rows: {a:?} += {b:?} is not supported"),
    };
    if n_rows == 0 || c == 0 {
        return Ok(());
    }
    let f = be.func("elementwise", name)?;
    be.launch(
        &f,
        (grid_dim(n_rows, "scatter_add_rows")?, 1, 1),
        (128, 1, 1),
        0,
        args![vptr(&dx), vptr(&dout), vptr(&rows), int(c, "scatter_add_rows")?],
    )
}
