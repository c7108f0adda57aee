//! Per-token log-probs (log-softmax + gather, optional entropy) and their backward
//! (kernels/logprob.cu), and token sampling (kernels/sampling.cu), on CUDA: one block per
//! row. The views were checked against the op's shape by the caller (`backend::check`); what
//! is left here is choosing the kernel and the launch.

use anyhow::{bail, Result};

use super::buffer::vptr;
use super::launch::{args, grid_dim, int};
use super::{CudaBackend, Scratch};
use crate::backend::{SamplingParams, View};

type V<'a> = View<'a, CudaBackend>;

#[allow(clippy::too_many_arguments)]
pub(super) fn fwd(
    be: &CudaBackend,
    logp: V,
    lse: V,
    entropy: Option<V>,
    logits: V,
    targets: V,
    n: usize,
    v: usize,
    inv_temp: f32,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let (name, ent) = match &entropy {
        Some(e) => ("logprob_fwd_bf16_ent", vptr(e)),
        None => ("logprob_fwd_bf16", 0),
    };
    let f = be.func("logprob", name)?;
    be.launch(
        &f,
        (grid_dim(n, "logprob_fwd")?, 1, 1),
        (512, 1, 1),
        0,
        args![vptr(&logp), vptr(&lse), ent, vptr(&logits), vptr(&targets), int(v, "logprob_fwd")?, inv_temp],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn bwd(
    be: &CudaBackend,
    dlogits: V,
    logits: V,
    targets: V,
    lse: V,
    entropy: Option<V>,
    dlogp: V,
    dentropy: Option<V>,
    n: usize,
    v: usize,
    inv_temp: f32,
) -> Result<()> {
    let (name, ent, dent) = match (&entropy, &dentropy) {
        (Some(e), Some(de)) => ("logprob_bwd_bf16_ent", vptr(e), vptr(de)),
        (None, None) => ("logprob_bwd_bf16", 0, 0),
        _ => bail!("cuda logprob_bwd: entropy and dentropy must be given together"),
    };
    if n == 0 {
        return Ok(());
    }
    let f = be.func("logprob", name)?;
    be.launch(
        &f,
        (grid_dim(n, "logprob_bwd")?, 1, 1),
        (512, 1, 1),
        0,
        args![vptr(&dlogits), vptr(&logits), vptr(&targets), vptr(&lse), ent, vptr(&dlogp), dent, int(v, "logprob_bwd")?, inv_temp],
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn sample(
    be: &CudaBackend,
    out: V,
    logits: V,
    b: usize,
    v: usize,
    params: &SamplingParams,
    seeds: &[u64],
    counters: &[u64],
) -> Result<()> {
    if b == 0 {
        return Ok(());
    }
    if params.temperature <= 0.0 {
        let f = be.func("sampling", "argmax_bf16")?;
        return be.launch(&f, (grid_dim(b, "sample")?, 1, 1), (1024, 1, 1), 0, args![vptr(&out), vptr(&logits), int(v, "sample")?]);
    }
    // Seeds then counters, staged in a scratch area (grown only when b grows).
    let mut staged = Vec::with_capacity(2 * b);
    staged.extend_from_slice(&seeds[..b]);
    staged.extend_from_slice(&counters[..b]);
    let dev = be.scratch(Scratch::Accumulators, 16 * b)?;
    be.htod(dev, &staged)?;
    let top_k = if params.top_k == 0 || params.top_k >= v { 0 } else { params.top_k as i32 };
    let top_p = if params.top_p >= 1.0 || params.top_p.is_nan() { 1.0 } else { params.top_p };
    let f = be.func("sampling", "sample_bf16")?;
    be.launch(
        &f,
        (grid_dim(b, "sample")?, 1, 1),
        (1024, 1, 1),
        0,
        args![vptr(&out), vptr(&logits), int(v, "sample")?, params.temperature, top_k, top_p, dev, dev + 8 * b as u64],
    )
}
