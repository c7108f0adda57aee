//! The argument checks of the `Backend` contract, shared by every backend: for each op, the
//! dtype and minimum length of each view for the shape the op is given, the validity of the
//! shape itself (attention geometry, packed-sequence offsets, empty vocabularies) and the
//! element counts, computed without overflow.
//!
//! Each backend calls the op's check first, before touching memory. A view too small for its
//! shape is then an error on every backend — on CUDA it would otherwise be an out-of-bounds
//! access on the device — and, the rules being written once, the backends cannot come to
//! disagree about what an op accepts (the CPU oracle rejects what CUDA would reject).
//!
//! Not here: limits of one implementation (the CUDA kernels' head dims, 32-bit ranges, grid
//! sizes, shared memory), and anything that depends on the *contents* of index views (token
//! ids below the vocabulary, KV-cache slots and positions, gathered rows): the CPU checks those
//! where it reads them; on CUDA they are the caller's to guarantee (see each op's doc).

use anyhow::{anyhow, Result};

use super::{AttnShape, Backend, DType, SamplingParams, Seqs, View};

/// The dtypes a view may have.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// `Backend::act_dtype()`.
    Act,
    F32,
    U32,
    /// F32 or BF16.
    Float,
    /// The act dtype or F32 (outputs that may accumulate in F32).
    ActOrF32,
    Any,
}

/// One op's checks: its name (for messages) and the backend's act dtype.
struct Op {
    backend: &'static str,
    name: &'static str,
    act: DType,
}

impl Op {
    fn new<B: Backend + ?Sized>(be: &B, name: &'static str) -> Self {
        Op { backend: be.name(), name, act: be.act_dtype() }
    }

    fn err(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{} {}: {msg}", self.backend, self.name)
    }

    /// The product of `dims` (an element count), or an error if it overflows.
    fn size(&self, dims: &[usize]) -> Result<usize> {
        dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| self.err(format!("the shape {dims:?} overflows")))
    }

    fn dtype_ok(&self, dt: DType, want: Want) -> bool {
        match want {
            Want::Act => dt == self.act,
            Want::F32 => dt == DType::F32,
            Want::U32 => dt == DType::U32,
            Want::Float => dt != DType::U32,
            Want::ActOrF32 => dt == self.act || dt == DType::F32,
            Want::Any => true,
        }
    }

    fn want_name(&self, want: Want) -> String {
        match want {
            Want::Act => format!("{:?} (act)", self.act),
            Want::F32 => "F32".into(),
            Want::U32 => "U32".into(),
            Want::Float => "F32 or BF16".into(),
            Want::ActOrF32 if self.act == DType::F32 => "F32".into(),
            Want::ActOrF32 => format!("{:?} or F32", self.act),
            Want::Any => "any".into(),
        }
    }

    /// `v` (the argument `arg`) has a dtype in `want`.
    fn dtype<B: Backend + ?Sized>(&self, v: &View<B>, arg: &str, want: Want) -> Result<()> {
        if !self.dtype_ok(v.dtype(), want) {
            return Err(self.err(format!("{arg} is {:?}, expected {}", v.dtype(), self.want_name(want))));
        }
        Ok(())
    }

    /// `v` has a dtype in `want` and at least `len` elements.
    fn view<B: Backend + ?Sized>(&self, v: &View<B>, arg: &str, want: Want, len: usize) -> Result<()> {
        self.dtype(v, arg, want)?;
        if v.len() < len {
            return Err(self.err(format!("{arg} has {} elements, needs {len}", v.len())));
        }
        Ok(())
    }

    /// `v` has a dtype in `want` and exactly `len` elements (the length of a host slice).
    fn exact<B: Backend + ?Sized>(&self, v: &View<B>, arg: &str, want: Want, len: usize) -> Result<()> {
        self.dtype(v, arg, want)?;
        if v.len() != len {
            return Err(self.err(format!("{arg} has {} elements, expected exactly {len} (the host slice's)", v.len())));
        }
        Ok(())
    }

    /// Both dtypes fit `dst += src`: the same float dtype, or an F32 `dst` with an act `src`.
    fn accumulate<B: Backend + ?Sized>(&self, dst: &View<B>, src: &View<B>) -> Result<()> {
        let (d, s) = (dst.dtype(), src.dtype());
        if !((d == s && d != DType::U32) || (d == DType::F32 && s == self.act)) {
            return Err(self.err(format!("{d:?} += {s:?} is not supported")));
        }
        Ok(())
    }

    /// A valid grouped-query geometry: `n_head` a positive multiple of `n_kv_head`, an even
    /// positive `head_dim` (RoPE rotates pairs).
    fn attn(&self, s: &AttnShape) -> Result<()> {
        if s.n_kv_head == 0 || s.n_head == 0 || !s.n_head.is_multiple_of(s.n_kv_head) {
            return Err(self.err(format!("n_head {} is not a positive multiple of n_kv_head {}", s.n_head, s.n_kv_head)));
        }
        if s.head_dim == 0 || !s.head_dim.is_multiple_of(2) {
            return Err(self.err(format!("head_dim {} is not a positive even number", s.head_dim)));
        }
        // The qkv width (`AttnShape::qkv_width`), which every attention op multiplies by, fits.
        let heads = s.n_kv_head.checked_mul(2).and_then(|kv| kv.checked_add(s.n_head));
        heads.and_then(|h| h.checked_mul(s.head_dim)).map(|_| ()).ok_or_else(|| self.err(format!("the qkv width of {s:?} overflows")))
    }

    /// Rows of `width` elements (`what`): some rows of width 0 have no meaning.
    fn width(&self, rows: usize, width: usize, what: &str) -> Result<()> {
        if rows > 0 && width == 0 {
            return Err(self.err(format!("{rows} rows of an empty {what}")));
        }
        Ok(())
    }

    /// Non-decreasing host offsets, and a device copy (U32) holding at least as many.
    fn seqs<B: Backend + ?Sized>(&self, s: &Seqs<B>) -> Result<()> {
        if s.cu_host.windows(2).any(|w| w[1] < w[0]) {
            return Err(self.err("sequence offsets must not decrease"));
        }
        self.view(&s.cu_dev, "cu", Want::U32, s.cu_host.len())
    }

    /// KV caches `[slots, t_max, n_kv_head, head_dim]` (act), both the same size.
    fn kv_cache<B: Backend + ?Sized>(&self, k: &View<B>, v: &View<B>, shape: &AttnShape, t_max: usize) -> Result<()> {
        let per_slot = self.size(&[t_max, shape.kv_width()])?;
        self.view(k, "kcache", Want::Act, per_slot)?;
        self.view(v, "vcache", Want::Act, per_slot)?;
        if !k.len().is_multiple_of(per_slot.max(1)) || v.len() != k.len() {
            return Err(self.err(format!(
                "caches of {} / {} elements are not [slots, {t_max}, {}, {}]",
                k.len(),
                v.len(),
                shape.n_kv_head,
                shape.head_dim
            )));
        }
        Ok(())
    }
}

type V<'a, B> = View<'a, B>;

// ---- memory --------------------------------------------------------------------------------

/// `upload_f32`/`upload_u32`/`download_f32`/`download_u32`: the view and the host slice have
/// the same length; F32/BF16 views for f32 data, U32 for u32.
pub(crate) fn transfer<B: Backend + ?Sized>(be: &B, name: &'static str, v: V<B>, u32_data: bool, host_len: usize) -> Result<()> {
    Op::new(be, name).exact(&v, "the view", if u32_data { Want::U32 } else { Want::Float }, host_len)
}

// ---- elementwise ---------------------------------------------------------------------------

pub(crate) fn fill<B: Backend + ?Sized>(be: &B, dst: V<B>) -> Result<()> {
    Op::new(be, "fill").dtype(&dst, "dst", Want::Any)
}

pub(crate) fn copy<B: Backend + ?Sized>(be: &B, dst: V<B>, src: V<B>) -> Result<()> {
    let op = Op::new(be, "copy");
    if dst.len() != src.len() {
        return Err(op.err(format!("lengths {} and {} differ", dst.len(), src.len())));
    }
    let (d, s) = (dst.dtype(), src.dtype());
    if d != s && (d == DType::U32 || s == DType::U32) {
        return Err(op.err(format!("{s:?} → {d:?} is not supported")));
    }
    Ok(())
}

pub(crate) fn add_assign<B: Backend + ?Sized>(be: &B, dst: V<B>, src: V<B>) -> Result<()> {
    let op = Op::new(be, "add_assign");
    if dst.len() != src.len() {
        return Err(op.err(format!("lengths {} and {} differ", dst.len(), src.len())));
    }
    op.accumulate(&dst, &src)
}

/// `scale` (`arg` dst) and `sum_squares` (x): a float view.
pub(crate) fn float<B: Backend + ?Sized>(be: &B, name: &'static str, arg: &str, v: V<B>) -> Result<()> {
    Op::new(be, name).dtype(&v, arg, Want::Float)
}

pub(crate) fn gather_rows<B: Backend + ?Sized>(be: &B, out: V<B>, x: V<B>, rows: V<B>, n_rows: usize, c: usize) -> Result<()> {
    let op = Op::new(be, "gather_rows");
    if out.dtype() != x.dtype() {
        return Err(op.err(format!("out {:?} and x {:?} differ", out.dtype(), x.dtype())));
    }
    op.view(&out, "out", Want::Any, op.size(&[n_rows, c])?)?;
    op.view(&rows, "rows", Want::U32, n_rows)
}

pub(crate) fn scatter_add_rows<B: Backend + ?Sized>(be: &B, dx: V<B>, dout: V<B>, rows: V<B>, n_rows: usize, c: usize) -> Result<()> {
    let op = Op::new(be, "scatter_add_rows");
    op.accumulate(&dx, &dout)?;
    op.view(&dout, "dout", Want::Any, op.size(&[n_rows, c])?)?;
    op.view(&rows, "rows", Want::U32, n_rows)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_block<B: Backend + ?Sized>(
    be: &B,
    dst: V<B>,
    dst_ld: usize,
    src: V<B>,
    src_ld: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let op = Op::new(be, "copy_block");
    if dst.dtype() != src.dtype() {
        return Err(op.err(format!("dst {:?} and src {:?} differ", dst.dtype(), src.dtype())));
    }
    if cols > dst_ld || cols > src_ld {
        return Err(op.err(format!("{cols} columns do not fit row strides {dst_ld} (dst) and {src_ld} (src)")));
    }
    if rows == 0 || cols == 0 {
        return op.dtype(&dst, "dst", Want::ActOrF32);
    }
    // The last row ends at (rows − 1)·ld + cols: a block may end a matrix's last row early.
    let span = |ld: usize| op.size(&[rows - 1, ld]).and_then(|a| a.checked_add(cols).ok_or_else(|| op.err("the block overflows")));
    op.view(&dst, "dst", Want::ActOrF32, span(dst_ld)?)?;
    op.view(&src, "src", Want::ActOrF32, span(src_ld)?)
}

// ---- embedding -----------------------------------------------------------------------------

pub(crate) fn embedding_fwd<B: Backend + ?Sized>(be: &B, out: V<B>, table: V<B>, ids: V<B>, n: usize, c: usize) -> Result<()> {
    let op = Op::new(be, "embedding_fwd");
    op.width(n, c, "embedding")?;
    op.view(&out, "out", Want::Act, op.size(&[n, c])?)?;
    op.view(&table, "table", Want::Act, c)?;
    op.view(&ids, "ids", Want::U32, n)
}

pub(crate) fn embedding_bwd<B: Backend + ?Sized>(be: &B, dtable: V<B>, dout: V<B>, ids: V<B>, n: usize, c: usize) -> Result<()> {
    let op = Op::new(be, "embedding_bwd");
    op.width(n, c, "embedding")?;
    op.view(&dtable, "dtable", Want::F32, c)?;
    op.view(&dout, "dout", Want::Act, op.size(&[n, c])?)?;
    op.view(&ids, "ids", Want::U32, n)
}

// ---- RMSNorm -------------------------------------------------------------------------------

/// `rmsnorm_fwd`, and `residual_rmsnorm_fwd` with `resid = Some((resid_out, delta))` (`x` is
/// then `resid_in`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_fwd<B: Backend + ?Sized>(
    be: &B,
    out: V<B>,
    rstd: V<B>,
    resid: Option<(V<B>, V<B>)>,
    x: V<B>,
    w: V<B>,
    n: usize,
    c: usize,
) -> Result<()> {
    let op = Op::new(be, if resid.is_some() { "residual_rmsnorm_fwd" } else { "rmsnorm_fwd" });
    op.width(n, c, "row")?;
    let nc = op.size(&[n, c])?;
    if let Some((resid_out, delta)) = resid {
        op.view(&resid_out, "resid_out", Want::Act, nc)?;
        op.view(&delta, "delta", Want::Act, nc)?;
    }
    op.view(&out, "out", Want::Act, nc)?;
    op.view(&rstd, "rstd", Want::F32, n)?;
    op.view(&x, if resid.is_some() { "resid_in" } else { "x" }, Want::Act, nc)?;
    op.view(&w, "w", Want::Act, c)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_bwd<B: Backend + ?Sized>(
    be: &B,
    dx: V<B>,
    dw: V<B>,
    dout: V<B>,
    x: V<B>,
    w: V<B>,
    rstd: V<B>,
    n: usize,
    c: usize,
) -> Result<()> {
    let op = Op::new(be, "rmsnorm_bwd");
    op.width(n, c, "row")?;
    let nc = op.size(&[n, c])?;
    op.view(&dx, "dx", Want::Act, nc)?;
    op.view(&dw, "dw", Want::F32, c)?;
    op.view(&dout, "dout", Want::Act, nc)?;
    op.view(&x, "x", Want::Act, nc)?;
    op.view(&w, "w", Want::Act, c)?;
    op.view(&rstd, "rstd", Want::F32, n)
}

// ---- GEMM ----------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<B: Backend + ?Sized>(be: &B, c: V<B>, a: V<B>, b: V<B>, bias: Option<V<B>>, m: usize, n: usize, k: usize) -> Result<()> {
    let op = Op::new(be, "gemm");
    op.view(&a, "A", Want::Act, op.size(&[m, k])?)?;
    op.view(&b, "B", Want::Act, op.size(&[k, n])?)?;
    op.view(&c, "C", Want::ActOrF32, op.size(&[m, n])?)?;
    if let Some(bias) = bias {
        op.view(&bias, "bias", Want::Act, n)?;
    }
    Ok(())
}

pub(crate) fn bias_bwd<B: Backend + ?Sized>(be: &B, dbias: V<B>, dout: V<B>, m: usize, n: usize) -> Result<()> {
    let op = Op::new(be, "bias_bwd");
    op.view(&dbias, "dbias", Want::F32, n)?;
    op.view(&dout, "dout", Want::ActOrF32, op.size(&[m, n])?)
}

// ---- RoPE ----------------------------------------------------------------------------------

pub(crate) fn rope<B: Backend + ?Sized>(be: &B, qkv: V<B>, pos: V<B>, n: usize, shape: &AttnShape) -> Result<()> {
    let op = Op::new(be, "rope");
    op.attn(shape)?;
    op.view(&qkv, "qkv", Want::Act, op.size(&[n, shape.qkv_width()])?)?;
    op.view(&pos, "pos", Want::U32, n)
}

// ---- attention -----------------------------------------------------------------------------

pub(crate) fn attention_fwd<B: Backend + ?Sized>(be: &B, out: V<B>, lse: V<B>, qkv: V<B>, seqs: &Seqs<B>, shape: &AttnShape) -> Result<()> {
    let op = Op::new(be, "attention_fwd");
    op.attn(shape)?;
    op.seqs(seqs)?;
    let t = seqs.tokens();
    op.view(&out, "out", Want::Act, op.size(&[t, shape.q_width()])?)?;
    op.view(&lse, "lse", Want::F32, op.size(&[t, shape.n_head])?)?;
    op.view(&qkv, "qkv", Want::Act, op.size(&[t, shape.qkv_width()])?)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_bwd<B: Backend + ?Sized>(
    be: &B,
    dqkv: V<B>,
    dout: V<B>,
    qkv: V<B>,
    out: V<B>,
    lse: V<B>,
    seqs: &Seqs<B>,
    shape: &AttnShape,
) -> Result<()> {
    let op = Op::new(be, "attention_bwd");
    op.attn(shape)?;
    op.seqs(seqs)?;
    let t = seqs.tokens();
    let (tw, tq) = (op.size(&[t, shape.qkv_width()])?, op.size(&[t, shape.q_width()])?);
    op.view(&dqkv, "dqkv", Want::Act, tw)?;
    op.view(&dout, "dout", Want::Act, tq)?;
    op.view(&qkv, "qkv", Want::Act, tw)?;
    op.view(&out, "out", Want::Act, tq)?;
    op.view(&lse, "lse", Want::F32, op.size(&[t, shape.n_head])?)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn kv_store<B: Backend + ?Sized>(
    be: &B,
    kcache: V<B>,
    vcache: V<B>,
    qkv: V<B>,
    slot: V<B>,
    pos: V<B>,
    n: usize,
    shape: &AttnShape,
    t_max: usize,
) -> Result<()> {
    let op = Op::new(be, "kv_store");
    op.attn(shape)?;
    op.kv_cache(&kcache, &vcache, shape, t_max)?;
    op.view(&qkv, "qkv", Want::Act, op.size(&[n, shape.qkv_width()])?)?;
    op.view(&slot, "slot", Want::U32, n)?;
    op.view(&pos, "pos", Want::U32, n)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_decode<B: Backend + ?Sized>(
    be: &B,
    out: V<B>,
    qkv: V<B>,
    kcache: V<B>,
    vcache: V<B>,
    slot: V<B>,
    len: V<B>,
    b: usize,
    max_len: usize,
    shape: &AttnShape,
    t_max: usize,
) -> Result<()> {
    let op = Op::new(be, "attention_decode");
    op.attn(shape)?;
    op.kv_cache(&kcache, &vcache, shape, t_max)?;
    if max_len > t_max {
        return Err(op.err(format!("max_len {max_len} > t_max {t_max}")));
    }
    op.view(&out, "out", Want::Act, op.size(&[b, shape.q_width()])?)?;
    op.view(&qkv, "qkv", Want::Act, op.size(&[b, shape.qkv_width()])?)?;
    op.view(&slot, "slot", Want::U32, b)?;
    op.view(&len, "len", Want::U32, b)
}

// ---- MLP -----------------------------------------------------------------------------------

pub(crate) fn swiglu_fwd<B: Backend + ?Sized>(be: &B, out: V<B>, gu: V<B>, n: usize, inter: usize) -> Result<()> {
    let op = Op::new(be, "swiglu_fwd");
    op.width(n, inter, "MLP row")?;
    op.view(&out, "out", Want::Act, op.size(&[n, inter])?)?;
    op.view(&gu, "gu", Want::Act, op.size(&[n, inter, 2])?)
}

pub(crate) fn swiglu_bwd<B: Backend + ?Sized>(be: &B, dgu: V<B>, dout: V<B>, gu: V<B>, n: usize, inter: usize) -> Result<()> {
    let op = Op::new(be, "swiglu_bwd");
    op.width(n, inter, "MLP row")?;
    let n2i = op.size(&[n, inter, 2])?;
    op.view(&dgu, "dgu", Want::Act, n2i)?;
    op.view(&dout, "dout", Want::Act, op.size(&[n, inter])?)?;
    op.view(&gu, "gu", Want::Act, n2i)
}

// ---- log-probs -----------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub(crate) fn logprob_fwd<B: Backend + ?Sized>(
    be: &B,
    logp: V<B>,
    lse: V<B>,
    entropy: Option<V<B>>,
    logits: V<B>,
    targets: V<B>,
    n: usize,
    v: usize,
) -> Result<()> {
    let op = Op::new(be, "logprob_fwd");
    op.width(n, v, "vocabulary")?;
    op.view(&logp, "logp", Want::F32, n)?;
    op.view(&lse, "lse", Want::F32, n)?;
    if let Some(e) = entropy {
        op.view(&e, "entropy", Want::F32, n)?;
    }
    op.view(&logits, "logits", Want::Act, op.size(&[n, v])?)?;
    op.view(&targets, "targets", Want::U32, n)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn logprob_bwd<B: Backend + ?Sized>(
    be: &B,
    dlogits: V<B>,
    logits: V<B>,
    targets: V<B>,
    lse: V<B>,
    entropy: Option<V<B>>,
    dlogp: V<B>,
    dentropy: Option<V<B>>,
    n: usize,
    v: usize,
) -> Result<()> {
    let op = Op::new(be, "logprob_bwd");
    op.width(n, v, "vocabulary")?;
    let nv = op.size(&[n, v])?;
    op.view(&dlogits, "dlogits", Want::Act, nv)?;
    op.view(&logits, "logits", Want::Act, nv)?;
    op.view(&targets, "targets", Want::U32, n)?;
    op.view(&lse, "lse", Want::F32, n)?;
    op.view(&dlogp, "dlogp", Want::F32, n)?;
    match (entropy, dentropy) {
        (Some(e), Some(de)) => {
            op.view(&e, "entropy", Want::F32, n)?;
            op.view(&de, "dentropy", Want::F32, n)
        }
        (None, None) => Ok(()),
        _ => Err(op.err("entropy and dentropy must be given together")),
    }
}

// ---- sampling ------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub(crate) fn sample<B: Backend + ?Sized>(
    be: &B,
    out: V<B>,
    logits: V<B>,
    b: usize,
    v: usize,
    params: &SamplingParams,
    seeds: &[u64],
    counters: &[u64],
) -> Result<()> {
    let op = Op::new(be, "sample");
    op.width(b, v, "vocabulary")?;
    if seeds.len() < b || counters.len() < b {
        return Err(op.err(format!("{} seeds / {} counters for {b} rows", seeds.len(), counters.len())));
    }
    if !params.temperature.is_finite() {
        return Err(op.err(format!("invalid temperature {}", params.temperature)));
    }
    op.view(&out, "out", Want::U32, b)?;
    op.view(&logits, "logits", Want::Act, op.size(&[b, v])?)
}

// ---- losses --------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
pub(crate) fn apo_loss<B: Backend + ?Sized>(
    be: &B,
    loss: V<B>,
    dlogp: V<B>,
    logp: V<B>,
    ref_logp: V<B>,
    target: V<B>,
    seqs: &Seqs<B>,
) -> Result<()> {
    let op = Op::new(be, "apo_loss");
    op.seqs(seqs)?;
    let (s, t) = (seqs.count(), seqs.tokens());
    op.view(&loss, "loss", Want::F32, s)?;
    op.view(&dlogp, "dlogp", Want::F32, t)?;
    op.view(&logp, "logp", Want::F32, t)?;
    op.view(&ref_logp, "ref_logp", Want::F32, t)?;
    op.view(&target, "target", Want::F32, s)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn grpo_loss<B: Backend + ?Sized>(
    be: &B,
    loss: V<B>,
    dlogp: V<B>,
    logp: V<B>,
    old_logp: V<B>,
    ref_logp: V<B>,
    adv: V<B>,
    weight: V<B>,
    n: usize,
) -> Result<()> {
    let op = Op::new(be, "grpo_loss");
    for (v, arg) in
        [(loss, "loss"), (dlogp, "dlogp"), (logp, "logp"), (old_logp, "old_logp"), (ref_logp, "ref_logp"), (adv, "adv"), (weight, "weight")]
    {
        op.view(&v, arg, Want::F32, n)?;
    }
    Ok(())
}

// ---- optimizer -----------------------------------------------------------------------------

/// AdamW over `params.len()` elements: m, v (and master) F32, grads F32 or the act dtype; F32
/// params are updated in place, BF16 ones need a master copy.
pub(crate) fn adamw<B: Backend + ?Sized>(
    be: &B,
    params: V<B>,
    master: Option<V<B>>,
    grads: V<B>,
    m: V<B>,
    v: V<B>,
    step: u32,
) -> Result<()> {
    let op = Op::new(be, "adamw");
    let n = params.len();
    if step == 0 {
        return Err(op.err("step counts from 1"));
    }
    op.view(&grads, "grads", Want::ActOrF32, n)?;
    op.view(&m, "m", Want::F32, n)?;
    op.view(&v, "v", Want::F32, n)?;
    match master {
        Some(mw) => {
            op.view(&mw, "master", Want::F32, n)?;
            op.dtype(&params, "params", Want::Float)
        }
        None => op.dtype(&params, "params (without a master copy)", Want::F32),
    }
}
