//! The one abstraction both backends implement: explicit device buffers and the ops the
//! Qwen2 forward/backward, generation and the optimizer need (llm.c style: the model is an
//! explicit sequence of these calls, see `model::qwen2`).
//!
//! Conventions (shared by every implementation; every op is checked against them, on each backend, by `tests/backend_ops.rs`):
//! - Row-major everywhere. Shapes are given in elements; a `View` is a window of a buffer.
//! - Three dtypes: `F32`, `BF16`, `U32`. "act" below means `Backend::act_dtype()` — F32 on the
//!   CPU oracle, BF16 on CUDA. Gradients of *parameters*, log-probs, losses, norms' saved
//!   statistics and optimizer state are always F32; gradients of activations are act.
//! - Outputs are written (`=`) unless the doc says they accumulate (`+=`).
//! - Ops are asynchronous on devices that are (CUDA stream order); `download_*`,
//!   `sum_squares` and `synchronize` are the only points that wait.
//! - Aliasing between an output and an input is allowed only where the doc says so.
//! - Views alias through `&self` (like device pointers): the caller, not the borrow checker,
//!   guarantees that concurrently written regions do not overlap.

use anyhow::Result;

pub mod bench_ops;
pub(crate) mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod workspace;
pub use workspace::ScratchNeeds;
mod device;
mod view;
pub use device::Device;
pub use view::View;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    U32,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 => 2,
        }
    }
}

/// A handle to one backend allocation of `len` elements of one dtype. Cloning shares it.
pub trait Buffer: Clone + Send + Sync {
    fn len(&self) -> usize;
    fn dtype(&self) -> DType;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Grouped-query attention geometry. Packed qkv rows are `[q (n_head*head_dim) | k (n_kv_head*head_dim) | v (n_kv_head*head_dim)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl AttnShape {
    pub fn qkv_width(&self) -> usize {
        (self.n_head + 2 * self.n_kv_head) * self.head_dim
    }
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_width(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// Packed variable-length sequences: sequence `s` owns token rows `[cu[s], cu[s+1])`.
/// The same offsets are given on the device (for kernels) and on the host (for launch shapes).
pub struct Seqs<'a, B: Backend + ?Sized> {
    pub cu_dev: View<'a, B>,
    pub cu_host: &'a [u32],
}

impl<B: Backend + ?Sized> Clone for Seqs<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for Seqs<'_, B> {}

impl<B: Backend + ?Sized> Seqs<'_, B> {
    pub fn count(&self) -> usize {
        self.cu_host.len().saturating_sub(1)
    }
    pub fn tokens(&self) -> usize {
        self.cu_host.last().copied().unwrap_or(0) as usize
    }
    pub fn max_len(&self) -> usize {
        self.cu_host.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }
}

/// Token sampling settings, the same for every row of one `sample` call.
///
/// Semantics (both backends): with `temperature == 0` the token is the argmax (lowest index on
/// ties). Otherwise p = softmax(logits / temperature); top-k keeps the tokens whose p is >= the
/// k-th largest p (`top_k == 0`: off); top-p keeps {j : p_j >= t} for the largest threshold t
/// whose kept mass is >= top_p (`top_p >= 1`: off); then, with u the row's uniform draw, the
/// token is the first kept index j (in index order) whose cumulative kept mass reaches
/// u * (total kept mass).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
}

/// One AdamW step (decoupled weight decay, bias correction with 1-based `step`). Gradients are
/// multiplied by `grad_scale` first (gradient-norm clipping and micro-batch averaging).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u32,
    pub grad_scale: f32,
}

/// Device memory as (free, total) bytes, where the backend can tell.
pub type MemInfo = Option<(usize, usize)>;

/// Per-token estimators of KL(π‖π_ref) from log-probs (Schulman's k1 and k3; veRL's `kl` and
/// `low_var_kl`). k1 = log π − log π_ref is unbiased but can be negative per token; k3 =
/// r − log r − 1 with r = π_ref/π is non-negative with lower variance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KlEstimator {
    #[serde(rename = "kl")]
    K1,
    #[default]
    #[serde(rename = "low_var_kl")]
    K3,
}

pub trait Backend: Send + Sync + 'static {
    type Buf: Buffer;

    /// "cpu" or "cuda".
    fn name(&self) -> &'static str;
    /// Dtype of weights and activations used for compute.
    fn act_dtype(&self) -> DType;
    /// Whether AdamW needs a separate F32 master copy of the act-dtype parameters (CUDA: yes;
    /// CPU: no, params are already F32 and are updated in place).
    fn needs_master_weights(&self) -> bool;
    fn mem_info(&self) -> MemInfo {
        None
    }
    /// Device memory the backend allocates for itself (library workspaces, kernel scratch)
    /// for a run of these shapes, as (what, bytes): lines of the run's memory plan.
    fn workspace_plan(&self, _needs: &ScratchNeeds) -> Vec<(&'static str, usize)> {
        vec![]
    }
    /// Allocates the scratch `workspace_plan` lists, up front, so that no op of the run
    /// allocates.
    fn reserve_scratch(&self, _needs: &ScratchNeeds) -> Result<()> {
        Ok(())
    }

    // ---- memory ----------------------------------------------------------------------------
    /// A zero-filled buffer. Only called while planning memory, never inside a step.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buf>;
    /// Host f32 → `dst` (F32 or BF16; converted with round-to-nearest-even).
    fn upload_f32(&self, dst: View<Self>, src: &[f32]) -> Result<()>;
    fn upload_u32(&self, dst: View<Self>, src: &[u32]) -> Result<()>;
    /// `src` (F32 or BF16) → host f32. Waits for pending work.
    fn download_f32(&self, src: View<Self>, dst: &mut [f32]) -> Result<()>;
    fn download_u32(&self, src: View<Self>, dst: &mut [u32]) -> Result<()>;
    fn synchronize(&self) -> Result<()>;

    // ---- elementwise -----------------------------------------------------------------------
    fn fill(&self, dst: View<Self>, value: f32) -> Result<()>;
    /// `dst = src`, converting between F32 and BF16 when the dtypes differ. Same length.
    fn copy(&self, dst: View<Self>, src: View<Self>) -> Result<()>;
    /// `dst += src` (same dtype or F32 dst with act src).
    fn add_assign(&self, dst: View<Self>, src: View<Self>) -> Result<()>;
    /// `dst *= alpha`.
    fn scale(&self, dst: View<Self>, alpha: f32) -> Result<()>;
    /// Sum of squares of an F32 or act buffer, accumulated in f64/f32 and returned to the host
    /// (used for the global gradient norm; NaN/Inf propagate).
    fn sum_squares(&self, x: View<Self>) -> Result<f32>;
    /// `out[i, :] = x[rows[i], :]` for i < n_rows; rows of width `c`. Each `rows[i]` must be a
    /// row of `x` (the CPU checks it; on devices it is the caller's to guarantee).
    fn gather_rows(&self, out: View<Self>, x: View<Self>, rows: View<Self>, n_rows: usize, c: usize) -> Result<()>;
    /// `dx[rows[i], :] += dout[i, :]` (rows distinct, each a row of `dx`, as in `gather_rows`).
    fn scatter_add_rows(&self, dx: View<Self>, dout: View<Self>, rows: View<Self>, n_rows: usize, c: usize) -> Result<()>;
    /// A `[rows, cols]` block between row-major matrices: `dst[i·dst_ld + j] = src[i·src_ld + j]`
    /// (or `+=` when `accumulate`, in f32 arithmetic, one rounding) for i < rows, j < cols. The
    /// views start at the block's first element, so a column range of a fused projection's
    /// output (q of q|k|v, up of gate|up) is `view.slice(col, ..)` with `ld` its full width.
    /// Both views the same dtype (act or F32); `cols <= ld`.
    #[allow(clippy::too_many_arguments)]
    fn copy_block(
        &self,
        dst: View<Self>,
        dst_ld: usize,
        src: View<Self>,
        src_ld: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) -> Result<()>;

    // ---- embedding -------------------------------------------------------------------------
    /// `out[i, :] = table[ids[i], :]`; out `[n, c]` act, table `[vocab, c]` act, ids U32.
    /// Ids must be < vocab (checked by the caller before upload).
    fn embedding_fwd(&self, out: View<Self>, table: View<Self>, ids: View<Self>, n: usize, c: usize) -> Result<()>;
    /// `dtable[ids[i], :] += dout[i, :]`; dtable F32.
    fn embedding_bwd(&self, dtable: View<Self>, dout: View<Self>, ids: View<Self>, n: usize, c: usize) -> Result<()>;

    // ---- RMSNorm ---------------------------------------------------------------------------
    /// `out = x * rstd * w`, `rstd[i] = 1/sqrt(mean(x[i]^2) + eps)` saved (F32) for backward.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_fwd(&self, out: View<Self>, rstd: View<Self>, x: View<Self>, w: View<Self>, n: usize, c: usize, eps: f32) -> Result<()>;
    /// `resid_out = resid_in + delta; out = rmsnorm(resid_out)`: the residual add fused with
    /// the following norm. `resid_out` may alias `resid_in`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// `dx += d(rmsnorm)/dx · dout` (the `+=` is the residual path's gradient), `dw += ...` (F32).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    // ---- GEMM ------------------------------------------------------------------------------
    /// `C[m,n] = alpha · op(A) · op(B) + beta · C (+ bias[n] broadcast over rows)`.
    /// op(A) is `[m,k]` (A stored `[k,m]` when `trans_a`); op(B) is `[k,n]` (B stored `[n,k]`
    /// when `trans_b`). A and B are act; C is act or F32 (parameter-gradient accumulation);
    /// bias is act. Accumulation is F32.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// `dbias[j] += Σ_i dout[i, j]`; dout `[m, n]` act, dbias F32.
    fn bias_bwd(&self, dbias: View<Self>, dout: View<Self>, m: usize, n: usize) -> Result<()>;

    // ---- RoPE ------------------------------------------------------------------------------
    /// In place on the q and k heads of packed qkv rows `[n, qkv_width]`, rotate-half
    /// convention (Hugging Face Qwen2): for pair (j, j + d/2), angle = pos · theta^(-2j/d).
    /// `inverse` applies the transposed rotation (the backward pass).
    #[allow(clippy::too_many_arguments)]
    fn rope(&self, qkv: View<Self>, pos: View<Self>, n: usize, shape: AttnShape, theta: f32, inverse: bool) -> Result<()>;

    // ---- attention -------------------------------------------------------------------------
    /// Causal grouped-query attention within each packed sequence (no attention across
    /// sequences). `out [tokens, n_head*head_dim]` act; `lse [tokens * n_head]` F32, row
    /// `t * n_head + h` = log-sum-exp of the scaled scores, saved for backward.
    fn attention_fwd(
        &self,
        out: View<Self>,
        lse: View<Self>,
        qkv: View<Self>,
        seqs: Seqs<Self>,
        shape: AttnShape,
        scale: f32,
    ) -> Result<()>;
    /// `dqkv = ∂/∂qkv` (written, act) given `dout`, the forward's `qkv`, `out` and `lse`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// Store the k and v heads of each qkv row `i < n` into the cache at
    /// `[slot[i], pos[i]]`; caches are `[slots, t_max, n_kv_head, head_dim]` act. Slots and
    /// positions must be inside the cache (checked on the CPU; the caller's to guarantee on
    /// devices).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// One query per row i < b (the q heads of qkv row i) attending to cache positions
    /// `[0, len[i])` of slot `slot[i]`. `max_len` bounds every `len[i]` (launch shape).
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    // ---- MLP -------------------------------------------------------------------------------
    /// `out[i, j] = silu(gu[i, j]) * gu[i, inter + j]`: gu `[n, 2*inter]` is the fused gate|up
    /// projection.
    fn swiglu_fwd(&self, out: View<Self>, gu: View<Self>, n: usize, inter: usize) -> Result<()>;
    /// `dgu` written from `dout` and the forward's `gu`.
    fn swiglu_bwd(&self, dgu: View<Self>, dout: View<Self>, gu: View<Self>, n: usize, inter: usize) -> Result<()>;

    // ---- log-probs -------------------------------------------------------------------------
    /// Per row i of logits `[n, v]` (act) with z = logits·inv_temp: `lse[i] = logsumexp(z)`,
    /// `logp[i] = z[target[i]] - lse[i]`, and (if given) `entropy[i] = -Σ p log p`. F32 out;
    /// no `[n, v]` probability tensor is materialized.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// `dlogits[i, j] = inv_temp · (dlogp[i]·(1[j = target] − p_j) − dent[i]·p_j(log p_j + H_i))`
    /// (written, act). `dlogits` may alias `logits`. `entropy`/`dentropy` go together.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;

    // ---- sampling --------------------------------------------------------------------------
    /// One token per row of logits `[b, v]` into `out` (U32). Row i draws its uniform from
    /// Philox4x32-10 keyed by `seeds[i]` at counter `counters[i]` (see `crate::rng`), so a
    /// row's draw does not depend on the other rows. `seeds`/`counters` are host slices of
    /// length b (tiny; backends stage them in preallocated memory).
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        out: View<Self>,
        logits: View<Self>,
        b: usize,
        v: usize,
        params: &SamplingParams,
        seeds: &[u64],
        counters: &[u64],
    ) -> Result<()>;

    // ---- losses ----------------------------------------------------------------------------
    /// A*PO, per sequence s over its tokens t in `[cu[s], cu[s+1])` of the F32 log-prob arrays:
    /// `d_s = beta2·Σ_t (logp[t] − ref_logp[t]) − target[s]`, `loss[s] = d_s²`,
    /// `dlogp[t] = 2·beta2·d_s·grad_scale`.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<()>;
    /// GRPO, per token t (F32): ratio = exp(logp − old_logp);
    /// `pg = −min(ratio·adv, clip(ratio, 1−clip_eps, 1+clip_eps)·adv)`;
    /// KL to the reference by `kl`'s estimator: k3 `exp(ref − logp) − (ref − logp) − 1` or
    /// k1 `logp − ref`;
    /// `loss[t] = weight[t]·(pg + kl_coef·kl)` and `dlogp[t] = weight[t]·∂(pg + kl_coef·kl)/∂logp`.
    #[allow(clippy::too_many_arguments)]
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
        kl: KlEstimator,
    ) -> Result<()>;

    // ---- optimizer -------------------------------------------------------------------------
    /// Fused AdamW over flat buffers: m, v F32, grads F32 or the act dtype. With `master` (F32) the update is applied
    /// to master and `params` (act) receives its cast; without, `params` (F32) is updated in place.
    fn adamw(
        &self,
        params: View<Self>,
        master: Option<View<Self>>,
        grads: View<Self>,
        m: View<Self>,
        v: View<Self>,
        p: &AdamWParams,
    ) -> Result<()>;
}
