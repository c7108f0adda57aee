//! Causal grouped-query attention on CUDA: packed variable-length prefill (forward and
//! backward) and single-query decode over a KV cache, on tensor cores for head_dim 64/128
//! (kernels/attention_mma.cu) and on the FMA kernels otherwise or when asked
//! (kernels/attention.cu, which also holds kv_store, the backward's dot/convert passes and
//! the decode combine). The views were checked against the op's shape by the caller
//! (`backend::check`); what is left here are the kernels' head dims and the launch shapes.

use anyhow::{bail, Result};

use super::buffer::vptr;
use super::launch::{args, grid_dim, grid_yz, int};
use super::{CudaBackend, Scratch};
use crate::backend::{AttnShape, Seqs, View};

type V<'a> = View<'a, CudaBackend>;

/// The head dims the kernels are instantiated for.
fn check_head_dim(shape: &AttnShape, what: &str) -> Result<()> {
    if !matches!(shape.head_dim, 16 | 32 | 64 | 128) {
        bail!("cuda {what}: head_dim {} is not supported (16, 32, 64 or 128)", shape.head_dim);
    }
    Ok(())
}

pub(super) fn fwd(be: &CudaBackend, out: V, lse: V, qkv: V, seqs: Seqs<CudaBackend>, shape: AttnShape, scale: f32) -> Result<()> {
    check_head_dim(&shape, "attention_fwd")?;
    let (h, d) = (shape.n_head, shape.head_dim);
    let (s, max_len) = (seqs.count(), seqs.max_len());
    if s == 0 || max_len == 0 {
        return Ok(());
    }
    // Tensor cores for head_dim 64/128 (attention_mma.cu), the FMA kernels otherwise or when
    // asked (`use_fma_attention`). Both take 64 queries per block.
    let (file, name, threads) = match (d, be.fma_attention()) {
        (64, false) => ("attention_mma", "attn_fwd_mma_d64", 128),
        (128, false) => ("attention_mma", "attn_fwd_mma_d128", 128),
        (16, _) => ("attention", "attn_fwd_d16", 256),
        (32, _) => ("attention", "attn_fwd_d32", 256),
        (64, _) => ("attention", "attn_fwd_d64", 256),
        _ => ("attention", "attn_fwd_d128", 256),
    };
    let f = be.func(file, name)?;
    be.launch(
        &f,
        (grid_dim(max_len.div_ceil(64), "attention_fwd")?, grid_yz(h, "attention_fwd heads")?, grid_yz(s, "attention_fwd sequences")?),
        (threads, 1, 1),
        0,
        args![
            vptr(&out),
            vptr(&lse),
            vptr(&qkv),
            vptr(&seqs.cu_dev),
            int(h, "attention_fwd")?,
            int(shape.n_kv_head, "attention_fwd")?,
            scale
        ],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn bwd(
    be: &CudaBackend,
    dqkv: V,
    dout: V,
    qkv: V,
    out: V,
    lse: V,
    seqs: Seqs<CudaBackend>,
    shape: AttnShape,
    scale: f32,
) -> Result<()> {
    check_head_dim(&shape, "attention_bwd")?;
    let t = seqs.tokens();
    let (h, kvh, d) = (shape.n_head, shape.n_kv_head, shape.head_dim);
    let w = shape.qkv_width();
    let (s, max_len) = (seqs.count(), seqs.max_len());
    if s == 0 || max_len == 0 || t == 0 {
        return Ok(());
    }
    let dvec = be.scratch(Scratch::Partials, t * h * 4)?;
    let dq = be.scratch(Scratch::Accumulators, t * h * d * 4)?;
    be.memset_zero(dq, t * h * d * 4)?;
    let rows = t * h;
    let f = be.func("attention", "attn_bwd_dot")?;
    be.launch(
        &f,
        (grid_dim(rows.div_ceil(8), "attention_bwd")?, 1, 1),
        (256, 1, 1),
        0,
        args![dvec, vptr(&dout), vptr(&out), rows as u64, d as i32],
    )?;
    // (file, kernel, keys per block, threads): tensor cores for head_dim 64/128 unless the
    // FMA kernels are asked for (as in attention_fwd).
    let (file, name, keys, threads) = match (d, be.fma_attention()) {
        (64, false) => ("attention_mma", "attn_bwd_mma_d64", 64, 128),
        (128, false) => ("attention_mma", "attn_bwd_mma_d128", 64, 128),
        (16, _) => ("attention", "attn_bwd_d16", 32, 256),
        (32, _) => ("attention", "attn_bwd_d32", 32, 256),
        (64, _) => ("attention", "attn_bwd_d64", 32, 256),
        _ => ("attention", "attn_bwd_d128", 32, 256),
    };
    let f = be.func(file, name)?;
    be.launch(
        &f,
        (grid_dim(max_len.div_ceil(keys), "attention_bwd")?, grid_yz(kvh, "attention_bwd heads")?, grid_yz(s, "attention_bwd sequences")?),
        (threads, 1, 1),
        0,
        args![
            vptr(&dqkv),
            dq,
            vptr(&dout),
            vptr(&qkv),
            vptr(&lse),
            dvec,
            vptr(&seqs.cu_dev),
            int(h, "attention_bwd")?,
            int(kvh, "attention_bwd")?,
            scale
        ],
    )?;
    be.flat(
        "attention",
        "attn_dq_convert",
        t * h * d,
        args![vptr(&dqkv), dq, t as u64, int(h * d, "attention_bwd")?, int(w, "attention_bwd")?],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn kv_store(
    be: &CudaBackend,
    kcache: V,
    vcache: V,
    qkv: V,
    slot: V,
    pos: V,
    n: usize,
    shape: AttnShape,
    t_max: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let f = be.func("attention", "kv_store_bf16")?;
    be.launch(
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

#[allow(clippy::too_many_arguments)]
pub(super) fn decode(
    be: &CudaBackend,
    out: V,
    qkv: V,
    kcache: V,
    vcache: V,
    slot: V,
    len: V,
    b: usize,
    max_len: usize,
    shape: AttnShape,
    t_max: usize,
    scale: f32,
) -> Result<()> {
    check_head_dim(&shape, "attention_decode")?;
    let (h, d) = (shape.n_head, shape.head_dim);
    if b == 0 {
        return Ok(());
    }
    // Tensor cores for head_dim 64/128 with at most 16 query heads per kv head (one block
    // per kv group: attention_mma.cu), the FMA kernels (one block per query head) otherwise.
    let kvh = shape.n_kv_head;
    let (file, name, heads_per_block) = match (d, be.fma_attention() || h / kvh > 16) {
        (64, false) => ("attention_mma", "attn_decode_mma_d64", h / kvh),
        (128, false) => ("attention_mma", "attn_decode_mma_d128", h / kvh),
        (16, _) => ("attention", "attn_decode_partial_d16", 1),
        (32, _) => ("attention", "attn_decode_partial_d32", 1),
        (64, _) => ("attention", "attn_decode_partial_d64", 1),
        _ => ("attention", "attn_decode_partial_d128", 1),
    };
    // Enough blocks for several waves (about 8 per SM; ~3 fit at once), chunks of at least 64
    // keys. Why several: at rollout batch 256 with 2 kv heads, one block per (row, group) is
    // 512 blocks, 1.3 waves of 3 per SM on an H200, and the last wave leaves most SMs idle.
    let base_blocks = b * (h / heads_per_block);
    let want = (8 * be.sm_count as usize).div_ceil(base_blocks).max(1);
    let n_split = want.min(max_len.div_ceil(64)).clamp(1, crate::backend::workspace::MAX_DECODE_SPLITS);
    let chunk = max_len.div_ceil(n_split).max(1);
    let part = be.scratch(Scratch::Partials, b * h * n_split * (d + 2) * 4)?;
    let f = be.func(file, name)?;
    be.launch(
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
    let f = be.func("attention", "attn_decode_combine")?;
    be.launch(
        &f,
        (h as u32, grid_yz(b, "attention_decode rows")?, 1),
        (d as u32, 1, 1),
        0,
        args![vptr(&out), part, h as i32, d as i32, n_split as i32],
    )
}
