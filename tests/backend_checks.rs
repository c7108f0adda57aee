//! The Backend contract's argument checks (src/backend/check.rs) on every backend: each op
//! succeeds with views of exactly the sizes its shape needs, and fails — with an error naming
//! the op, never a panic or an out-of-bounds access — when any one of those views is an
//! element short or of a wrong dtype, or when the shape itself is invalid. Also `View`'s own
//! bounds. The CUDA half needs a GPU or the emulated one (tools/emu-check.sh) and skips
//! without.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::Result;
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::{AdamWParams, AttnShape, Backend, Buffer, DType, SamplingParams, Seqs, View};

#[derive(Clone, Copy, PartialEq)]
enum Dt {
    Act,
    F32,
    U32,
}

/// One view argument of an op: its dtype, its length (exactly what the case's shape needs
/// when `sized`; otherwise the shape sets no minimum), and the contents of U32 views.
#[derive(Clone)]
struct Arg {
    dt: Dt,
    len: usize,
    sized: bool,
    init: Vec<u32>,
}

fn act(len: usize) -> Arg {
    Arg { dt: Dt::Act, len, sized: true, init: vec![] }
}
fn f32s(len: usize) -> Arg {
    Arg { dt: Dt::F32, len, sized: true, init: vec![] }
}
fn u32s(vals: &[u32]) -> Arg {
    Arg { dt: Dt::U32, len: vals.len(), sized: true, init: vals.to_vec() }
}
impl Arg {
    /// The shape sets no minimum for this view (its needed size depends on data, or it
    /// defines the op's length): no "one element short" case.
    fn free(mut self) -> Self {
        self.sized = false;
        self
    }
}

type Run<B> = Box<dyn for<'a> Fn(&B, &[View<'a, B>]) -> Result<()>>;

struct Case<B: Backend> {
    /// The op's name, as its errors start with it.
    op: &'static str,
    args: Vec<Arg>,
    run: Run<B>,
}

fn case<B: Backend>(op: &'static str, args: Vec<Arg>, run: impl for<'a> Fn(&B, &[View<'a, B>]) -> Result<()> + 'static) -> Case<B> {
    Case { op, args, run: Box::new(run) }
}

// The shapes: 3 rows of width 4; GQA with 2 query heads on 1 kv head of dim 16 (every backend
// supports it); two packed sequences [0, 2), [2, 3); a cache of 2 slots × 4 positions.
const N: usize = 3;
const C: usize = 4;
const VOCAB: usize = 5;
const SHAPE: AttnShape = AttnShape { n_head: 2, n_kv_head: 1, head_dim: 16 };
const CU: [u32; 3] = [0, 2, 3];
const T_MAX: usize = 4;
const SLOTS: usize = 2;

fn seqs<'a, B: Backend>(cu: View<'a, B>) -> Seqs<'a, B> {
    Seqs { cu_dev: cu, cu_host: &CU }
}

fn cases<B: Backend>() -> Vec<Case<B>> {
    let (w, qw, kw, h) = (SHAPE.qkv_width(), SHAPE.q_width(), SHAPE.kv_width(), SHAPE.n_head);
    let cache = SLOTS * T_MAX * kw;
    let adam = AdamWParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 1, grad_scale: 1.0 };
    let sp = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 };
    vec![
        case::<B>("upload_f32", vec![f32s(10)], |be, v| be.upload_f32(v[0], &[0.5; 10])),
        case::<B>("upload_u32", vec![u32s(&[0; 10])], |be, v| be.upload_u32(v[0], &[1; 10])),
        case::<B>("download_f32", vec![act(10)], |be, v| be.download_f32(v[0], &mut [0.0; 10])),
        case::<B>("download_u32", vec![u32s(&[0; 10])], |be, v| be.download_u32(v[0], &mut [0; 10])),
        case::<B>("copy", vec![f32s(10), act(10)], |be, v| be.copy(v[0], v[1])),
        case::<B>("add_assign", vec![f32s(10), act(10)], |be, v| be.add_assign(v[0], v[1])),
        case::<B>("scale", vec![act(10).free()], |be, v| be.scale(v[0], 2.0)),
        case::<B>("sum_squares", vec![f32s(10).free()], |be, v| be.sum_squares(v[0]).map(|_| ())),
        case::<B>("gather_rows", vec![act(2 * C), act(VOCAB * C).free(), u32s(&[4, 0])], |be, v| be.gather_rows(v[0], v[1], v[2], 2, C)),
        case::<B>("scatter_add_rows", vec![f32s(VOCAB * C).free(), act(2 * C), u32s(&[4, 0])], |be, v| {
            be.scatter_add_rows(v[0], v[1], v[2], 2, C)
        }),
        case::<B>("copy_block", vec![act((N - 1) * C + 2), act((N - 1) * 2 + 2)], |be, v| be.copy_block(v[0], C, v[1], 2, N, 2, true)),
        case::<B>("embedding_fwd", vec![act(N * C), act(VOCAB * C).free(), u32s(&[0, 1, 4])], |be, v| {
            be.embedding_fwd(v[0], v[1], v[2], N, C)
        }),
        case::<B>("embedding_bwd", vec![f32s(VOCAB * C).free(), act(N * C), u32s(&[0, 1, 4])], |be, v| {
            be.embedding_bwd(v[0], v[1], v[2], N, C)
        }),
        case::<B>("rmsnorm_fwd", vec![act(N * C), f32s(N), act(N * C), act(C)], |be, v| be.rmsnorm_fwd(v[0], v[1], v[2], v[3], N, C, 1e-6)),
        case::<B>("residual_rmsnorm_fwd", vec![act(N * C), act(N * C), f32s(N), act(N * C), act(N * C), act(C)], |be, v| {
            be.residual_rmsnorm_fwd(v[0], v[1], v[2], v[3], v[4], v[5], N, C, 1e-6)
        }),
        case::<B>("rmsnorm_bwd", vec![act(N * C), f32s(C), act(N * C), act(N * C), act(C), f32s(N)], |be, v| {
            be.rmsnorm_bwd(v[0], v[1], v[2], v[3], v[4], v[5], N, C)
        }),
        case::<B>("gemm", vec![act(N * C), act(N * 5), act(5 * C), act(C)], |be, v| {
            be.gemm(v[0], v[1], v[2], Some(v[3]), N, C, 5, false, false, 1.0, 0.0)
        }),
        case::<B>("gemm", vec![f32s(N * C), act(5 * N), act(C * 5)], |be, v| {
            be.gemm(v[0], v[1], v[2], None, N, C, 5, true, true, 1.0, 1.0)
        }),
        case::<B>("bias_bwd", vec![f32s(C), act(N * C)], |be, v| be.bias_bwd(v[0], v[1], N, C)),
        case::<B>("rope", vec![act(N * w), u32s(&[0, 1, 2])], |be, v| be.rope(v[0], v[1], N, SHAPE, 1e4, false)),
        case::<B>("attention_fwd", vec![act(N * qw), f32s(N * h), act(N * w), u32s(&CU)], |be, v| {
            be.attention_fwd(v[0], v[1], v[2], seqs(v[3]), SHAPE, 0.25)
        }),
        case::<B>("attention_bwd", vec![act(N * w), act(N * qw), act(N * w), act(N * qw), f32s(N * h), u32s(&CU)], |be, v| {
            be.attention_bwd(v[0], v[1], v[2], v[3], v[4], seqs(v[5]), SHAPE, 0.25)
        }),
        case::<B>("kv_store", vec![act(cache), act(cache), act(N * w), u32s(&[0, 1, 0]), u32s(&[0, 1, 2])], |be, v| {
            be.kv_store(v[0], v[1], v[2], v[3], v[4], N, SHAPE, T_MAX)
        }),
        case::<B>("attention_decode", vec![act(2 * qw), act(2 * w), act(cache), act(cache), u32s(&[0, 1]), u32s(&[1, 2])], |be, v| {
            be.attention_decode(v[0], v[1], v[2], v[3], v[4], v[5], 2, 2, SHAPE, T_MAX, 0.25)
        }),
        case::<B>("swiglu_fwd", vec![act(N * C), act(2 * N * C)], |be, v| be.swiglu_fwd(v[0], v[1], N, C)),
        case::<B>("swiglu_bwd", vec![act(2 * N * C), act(N * C), act(2 * N * C)], |be, v| be.swiglu_bwd(v[0], v[1], v[2], N, C)),
        case::<B>("logprob_fwd", vec![f32s(N), f32s(N), f32s(N), act(N * VOCAB), u32s(&[0, 1, 4])], |be, v| {
            be.logprob_fwd(v[0], v[1], Some(v[2]), v[3], v[4], N, VOCAB, 1.0)
        }),
        case::<B>("logprob_bwd", vec![act(N * VOCAB), act(N * VOCAB), u32s(&[0, 1, 4]), f32s(N), f32s(N), f32s(N), f32s(N)], |be, v| {
            be.logprob_bwd(v[0], v[1], v[2], v[3], Some(v[4]), v[5], Some(v[6]), N, VOCAB, 1.0)
        }),
        case::<B>("sample", vec![u32s(&[0, 0]), act(2 * VOCAB)], move |be, v| be.sample(v[0], v[1], 2, VOCAB, &sp, &[1, 2], &[0, 0])),
        case::<B>("apo_loss", vec![f32s(2), f32s(N), f32s(N), f32s(N), f32s(2), u32s(&CU)], |be, v| {
            be.apo_loss(v[0], v[1], v[2], v[3], v[4], seqs(v[5]), 0.5, 1.0)
        }),
        case::<B>("grpo_loss", vec![f32s(N), f32s(N), f32s(N), f32s(N), f32s(N), f32s(N), f32s(N)], |be, v| {
            be.grpo_loss(v[0], v[1], v[2], v[3], v[4], v[5], v[6], N, 0.2, 0.01, tz_engine::backend::KlEstimator::K3)
        }),
        case::<B>("adamw", vec![f32s(10).free(), f32s(10), f32s(10), f32s(10)], move |be, v| be.adamw(v[0], None, v[1], v[2], v[3], &adam)),
        case::<B>("adamw", vec![act(10).free(), f32s(10), f32s(10), f32s(10), f32s(10)], move |be, v| {
            be.adamw(v[0], Some(v[1]), v[2], v[3], v[4], &adam)
        }),
    ]
}

fn dtype<B: Backend>(be: &B, dt: Dt) -> DType {
    match dt {
        Dt::Act => be.act_dtype(),
        Dt::F32 => DType::F32,
        Dt::U32 => DType::U32,
    }
}

fn make<B: Backend>(be: &B, dt: DType, a: &Arg) -> B::Buf {
    let buf = be.alloc(dt, a.len).unwrap();
    if dt == DType::U32 && !a.init.is_empty() {
        be.upload_u32(View::all(&buf), &a.init).unwrap();
    }
    buf
}

/// Runs the op; a panic fails the test (an argument error must be an `Err`).
fn call<B: Backend>(be: &B, c: &Case<B>, views: &[View<B>], what: &str) -> Result<()> {
    catch_unwind(AssertUnwindSafe(|| (c.run)(be, views)))
        .unwrap_or_else(|_| panic!("{} {}: {what}: panicked instead of returning an error", be.name(), c.op))
}

fn expect_err<B: Backend>(be: &B, c: &Case<B>, views: &[View<B>], what: &str) {
    match call(be, c, views, what) {
        Ok(()) => panic!("{} {}: {what}: accepted", be.name(), c.op),
        Err(e) => {
            let msg = format!("{e:#}");
            let prefix = format!("{} {}:", be.name(), c.op);
            assert!(msg.starts_with(&prefix), "{prefix} {what}: the error should come from the op's checks: {msg}");
        }
    }
}

/// Every op with exact views, then with each view an element short and of a wrong dtype.
fn undersized_and_mistyped_views_are_errors<B: Backend>(be: &B) {
    for c in cases::<B>() {
        let bufs: Vec<B::Buf> = c.args.iter().map(|a| make(be, dtype(be, a.dt), a)).collect();
        let exact: Vec<View<B>> = bufs.iter().map(View::all).collect();
        call(be, &c, &exact, "exact views").unwrap_or_else(|e| panic!("{} {}: exact views fail: {e:#}", be.name(), c.op));
        for (i, a) in c.args.iter().enumerate() {
            if a.sized && a.len > 0 {
                let mut v = exact.clone();
                v[i] = exact[i].prefix(a.len - 1);
                expect_err(be, &c, &v, &format!("argument {i} one element short"));
            }
            // U32 where a float is expected, F32 where U32 is: wrong on every backend.
            let wrong = if a.dt == Dt::U32 { DType::F32 } else { DType::U32 };
            let other = make(be, wrong, a);
            let mut v = exact.clone();
            v[i] = View::all(&other);
            expect_err(be, &c, &v, &format!("argument {i} of dtype {wrong:?}"));
        }
    }
    // Nothing out of bounds was launched: the device is still healthy.
    be.synchronize().unwrap();
}

/// Shapes that are invalid whatever the views: element counts that overflow, decreasing
/// sequence offsets, bad attention geometry, rows of width zero, a missing dentropy.
fn invalid_shapes_are_errors<B: Backend>(be: &B) {
    let a = be.alloc(be.act_dtype(), 64).unwrap();
    let f = be.alloc(DType::F32, 64).unwrap();
    let u = be.alloc(DType::U32, 64).unwrap();
    let (a, f, u) = (View::all(&a), View::all(&f), View::all(&u));
    let err = |r: Result<()>, op: &str, what: &str| {
        let e = r.expect_err(what);
        assert!(format!("{e:#}").starts_with(&format!("{} {op}:", be.name())), "{what}: {e:#}");
    };
    let huge = usize::MAX / 2 + 1;
    err(be.gemm(a, a, a, None, huge, 2, 2, false, false, 1.0, 0.0), "gemm", "m·k overflows");
    err(be.gemm(a, a, a, None, 1, huge, 2, false, false, 1.0, 0.0), "gemm", "k·n overflows");
    err(be.swiglu_fwd(a, a, huge, 2), "swiglu_fwd", "2·n·inter overflows");
    err(be.embedding_fwd(a, a, u, huge, 4), "embedding_fwd", "n·c overflows");
    let big = AttnShape { n_head: usize::MAX / 4, n_kv_head: 1, head_dim: 16 };
    err(be.rope(a, u, 1, big, 1e4, false), "rope", "the qkv width overflows");
    let down = [0u32, 3, 2];
    err(be.attention_fwd(a, f, a, Seqs { cu_dev: u, cu_host: &down }, SHAPE, 0.25), "attention_fwd", "decreasing offsets");
    err(be.apo_loss(f, f, f, f, f, Seqs { cu_dev: u, cu_host: &down }, 0.5, 1.0), "apo_loss", "decreasing offsets");
    for bad in [
        AttnShape { n_head: 3, n_kv_head: 2, head_dim: 16 },
        AttnShape { n_head: 2, n_kv_head: 0, head_dim: 16 },
        AttnShape { n_head: 2, n_kv_head: 1, head_dim: 7 },
    ] {
        err(be.rope(a, u, 1, bad, 1e4, false), "rope", &format!("{bad:?}"));
        err(be.kv_store(a, a, a, u, u, 0, bad, 1), "kv_store", &format!("{bad:?}"));
    }
    err(be.rmsnorm_fwd(a, f, a, a, 2, 0, 1e-6), "rmsnorm_fwd", "rows of width 0");
    err(be.logprob_fwd(f, f, None, a, u, 1, 0, 1.0), "logprob_fwd", "empty vocabulary");
    let sp = SamplingParams { temperature: f32::NAN, top_k: 0, top_p: 1.0 };
    err(be.sample(u, a, 1, 4, &sp, &[1], &[0]), "sample", "NaN temperature");
    err(be.logprob_bwd(a, a, u, f, Some(f), f, None, 1, 4, 1.0), "logprob_bwd", "entropy without dentropy");
    // A cache that is not [slots, t_max, n_kv_head, head_dim].
    err(be.kv_store(a, a.prefix(48), a, u, u, 0, SHAPE, 2), "kv_store", "caches of different sizes");
    err(be.attention_decode(a, a, a.prefix(48), a.prefix(48), u, u, 0, 2, SHAPE, 2, 0.25), "attention_decode", "a cache of 1.5 slots");
    err(be.attention_decode(a, a, a.prefix(32), a.prefix(32), u, u, 0, 3, SHAPE, 2, 0.25), "attention_decode", "max_len > t_max");
    be.synchronize().unwrap();
}

#[test]
fn view_bounds() {
    let be = CpuBackend::new();
    let b = be.alloc(DType::F32, 10).unwrap();
    let v = View::<CpuBackend>::new(&b, 2, 8).unwrap();
    assert_eq!((v.off(), v.len(), v.buf().len()), (2, 8, 10));
    assert!(View::<CpuBackend>::new(&b, 0, 10).is_ok() && View::<CpuBackend>::new(&b, 10, 0).is_ok());
    assert!(View::<CpuBackend>::new(&b, 3, 8).is_err(), "past the end");
    assert!(View::<CpuBackend>::new(&b, 11, 0).is_err(), "starts past the end");
    assert!(View::<CpuBackend>::new(&b, usize::MAX, 2).is_err(), "off + len overflows");
    let s = v.slice(1, 3);
    assert_eq!((s.off(), s.len()), (3, 3));
    assert_eq!(v.prefix(8).len(), 8);
    // A slice out of its view is a memory-plan bug: a panic, never a view past the buffer.
    assert!(catch_unwind(AssertUnwindSafe(|| v.slice(5, 4))).is_err());
    assert!(catch_unwind(AssertUnwindSafe(|| v.slice(usize::MAX, 2))).is_err());
    assert!(catch_unwind(AssertUnwindSafe(|| v.prefix(9))).is_err());
    let all = View::<CpuBackend>::all(&b);
    assert_eq!((all.off(), all.len()), (0, 10));
}

#[test]
fn cpu_undersized_and_mistyped_views_are_errors() {
    undersized_and_mistyped_views_are_errors(&CpuBackend::new());
}

#[test]
fn cpu_invalid_shapes_are_errors() {
    invalid_shapes_are_errors(&CpuBackend::new());
}

/// Index contents the CPU reads are checked there (on CUDA they are the caller's to
/// guarantee): an id, row or slot past its table is an error, not a panic.
#[test]
fn cpu_out_of_range_indices_are_errors() {
    let be = CpuBackend::new();
    let (table, rows) = (be.alloc(DType::F32, 64).unwrap(), be.alloc(DType::F32, 8).unwrap());
    let ids = be.alloc(DType::U32, 2).unwrap();
    be.upload_u32(View::all(&ids), &[1, 16]).unwrap();
    let (t, r, ids) = (View::all(&table), View::all(&rows), View::all(&ids));
    assert!(be.embedding_fwd(r, t, ids, 2, 4).is_err());
    assert!(be.embedding_bwd(t, r, ids, 2, 4).is_err());
    assert!(be.gather_rows(r, t, ids, 2, 4).is_err());
    assert!(be.scatter_add_rows(t, r, ids, 2, 4).is_err());
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    #[test]
    fn cuda_undersized_and_mistyped_views_are_errors() {
        let Some(be) = common::cuda::cuda_or_skip() else { return };
        undersized_and_mistyped_views_are_errors(&be);
    }

    #[test]
    fn cuda_invalid_shapes_are_errors() {
        let Some(be) = common::cuda::cuda_or_skip() else { return };
        invalid_shapes_are_errors(&be);
    }
}
