//! Device memory the CUDA backend allocates for itself, as a function of the largest shapes a
//! run uses: the cuBLASLt workspace and two kernel scratch areas. Not behind the `cuda`
//! feature: `tz-engine plan` computes a CUDA run's plan on any machine.
//!
//! The scratch areas are stream-ordered and shared by the ops that need one (only one op runs
//! at a time on the backend's stream):
//! - partials: per-(row, head) dot products of the attention backward, split-K partial results
//!   of decode attention, per-block partial sums of `sum_squares`;
//! - accumulators: the attention backward's f32 dq, sampling's per-row seeds and counters.

/// The largest shapes a run hands to the ops that use backend-owned scratch memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScratchNeeds {
    /// Token rows of the largest attention backward (one training micro-batch).
    pub attn_rows: usize,
    pub n_head: usize,
    pub head_dim: usize,
    /// Rows of the largest decode attention and sampling call (the generator's slots).
    pub decode_rows: usize,
    /// Longest key range of a decode attention call (prompt + response).
    pub decode_len: usize,
}

/// Most split-K chunks decode attention uses (kernels/attention*.cu; at least 64 keys each).
pub const MAX_DECODE_SPLITS: usize = 64;
/// `sum_squares` reduces to at most this many per-block partials (8 bytes each).
pub const MAX_REDUCE_BLOCKS: usize = 1024;

pub fn cublaslt_workspace_bytes(hopper: bool) -> usize {
    // Hopper's larger tiles and split-K heuristics ask for more workspace.
    if hopper {
        32 << 20
    } else {
        8 << 20
    }
}

/// Bytes of the scratch area of partial results.
pub fn partials_bytes(n: &ScratchNeeds) -> usize {
    let splits = n.decode_len.div_ceil(64).clamp(1, MAX_DECODE_SPLITS);
    (n.attn_rows * n.n_head * 4).max(n.decode_rows * n.n_head * splits * (n.head_dim + 2) * 4).max(MAX_REDUCE_BLOCKS * 8)
}

/// Bytes of the scratch area of f32 accumulators.
pub fn accumulators_bytes(n: &ScratchNeeds) -> usize {
    (n.attn_rows * n.n_head * n.head_dim * 4).max(16 * n.decode_rows).max(16)
}

/// The CUDA backend's own allocations for a run of these shapes, as (what, bytes).
pub fn cuda_workspace(n: &ScratchNeeds, hopper: bool) -> Vec<(&'static str, usize)> {
    vec![
        ("cuBLASLt workspace", cublaslt_workspace_bytes(hopper)),
        ("kernel scratch: partials", partials_bytes(n)),
        ("kernel scratch: accumulators", accumulators_bytes(n)),
    ]
}
