//! The CUDA backend: bf16 activations and weights, fp32 accumulation everywhere, fp32
//! parameter gradients and optimizer state (AdamW keeps an fp32 master copy).
//!
//! - `buffer`: device buffers and view pointers;
//! - `kernels`: the kernels embedded by build.rs, loaded lazily per file (cubin → PTX →
//!   NVRTC);
//! - `gemm`: cuBLASLt matmuls;
//! - `launch`: kernel arguments, 32-bit and grid range checks, grid-stride launches;
//! - the ops by family, as in `backend::cpu` and `kernels/`: `elementwise`, `nn` (embedding,
//!   RMSNorm, GEMM, RoPE, SwiGLU), `attention`, `logprob` (and sampling), `optim` (losses and
//!   AdamW): kernel choice and launch shapes. The kernels themselves, with their layouts and
//!   design notes, are in `kernels/*.cu`.
//!
//! The `Backend` implementation below checks every op's arguments against its shape with the
//! checks the CPU backend uses too (`backend::check`) before anything is launched, so a view
//! too small for its shape is an error here, not an out-of-bounds access on the device.
//!
//! Everything runs on one stream, in order. Nothing here panics when CUDA is missing:
//! `CudaBackend::new` probes the driver library with dlopen before cudarc touches it (cudarc's
//! dynamic loader panics on a missing library) and returns an error instead.
//! See docs/cuda.md.

mod attention;
mod buffer;
mod elementwise;
mod gemm;
mod kernels;
mod launch;
mod logprob;
mod nn;
mod optim;

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{sys as dsys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use super::{check, AdamWParams, AttnShape, Backend, DType, MemInfo, SamplingParams, Seqs, View};
use buffer::vptr;
pub use buffer::CudaBuf;
pub use kernels::nvrtc_check_all;

/// The scratch areas an op may need at the same time (each grown on demand, never shrunk).
#[derive(Clone, Copy)]
pub(crate) enum Scratch {
    /// Partial results (see `backend::workspace`).
    Partials = 0,
    /// F32 accumulators and staged per-row inputs.
    Accumulators = 1,
}

/// A scratch allocation with its device pointer and size in bytes.
type ScratchArea = (CudaSlice<u8>, u64, usize);

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    cc: (i32, i32),
    sm_count: u32,
    name: String,
    loader: kernels::Loader,
    gemm: gemm::Gemm,
    scratch: Mutex<[Option<ScratchArea>; 2]>,
    /// Attention forward on the FMA kernels instead of tensor cores (`TZ_ATTN_FMA=1`, or
    /// `use_fma_attention`): the fallback, and the second implementation tests compare.
    fma_attention: AtomicBool,
}

/// The error for a machine without the driver library.
pub const NO_DRIVER: &str = "no CUDA driver found (libcuda.so.1): --device cuda needs an NVIDIA GPU and driver";

/// Whether the CUDA driver library can be loaded (a dlopen probe; never panics).
pub fn driver_present() -> bool {
    // SAFETY: only dlopen()s the library; no symbol is called.
    std::panic::catch_unwind(|| unsafe { dsys::is_culib_present() }).unwrap_or(false)
}

fn drv(what: &str) -> impl Fn(cudarc::driver::DriverError) -> anyhow::Error + '_ {
    move |e| anyhow!("cuda: {what}: {e:?}")
}

impl CudaBackend {
    /// Opens GPU `ordinal`. Errors (never panics) when there is no driver, no such device, or
    /// a required library (cuBLASLt) is missing.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(anyhow!(NO_DRIVER));
        }
        // cudarc panics (instead of erring) on missing symbols, e.g. a driver older than the
        // bindings: contain that too.
        match std::panic::catch_unwind(|| Self::init(ordinal)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(anyhow!("cuda: initialization failed: {msg}"))
            }
        }
    }

    /// GPUs this process sees (an error, never a panic, without a driver).
    pub fn device_count() -> Result<usize> {
        if !driver_present() {
            return Err(anyhow!(NO_DRIVER));
        }
        std::panic::catch_unwind(|| -> Result<usize> {
            cudarc::driver::result::init().map_err(drv("cuInit"))?;
            Ok(CudaContext::device_count().map_err(drv("counting devices"))?.max(0) as usize)
        })
        .unwrap_or_else(|_| Err(anyhow!("cuda: initialization failed")))
    }

    fn init(ordinal: usize) -> Result<Self> {
        cudarc::driver::result::init().map_err(drv("cuInit"))?;
        let count = CudaContext::device_count().map_err(drv("counting devices"))?;
        if ordinal >= count.max(0) as usize {
            return Err(anyhow!("cuda: no GPU with ordinal {ordinal} ({count} found)"));
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("creating the context"))?;
        // One stream, in-order: cudarc's cross-stream event tracking is unnecessary overhead.
        // SAFETY: called before any allocation on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
        let cc = ctx.compute_capability().map_err(drv("compute capability"))?;
        if cc.0 < 8 {
            return Err(anyhow!("cuda: compute capability {}.{} is below 8.0 (bf16 kernels need Ampere or newer)", cc.0, cc.1));
        }
        let sm_count =
            ctx.attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(drv("multiprocessor count"))? as u32;
        let name = ctx.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into());
        let gemm = gemm::Gemm::new(stream.clone(), cc.0 >= 9)?;
        let loader = kernels::Loader::new(ctx.clone(), cc);
        let fma_attention = AtomicBool::new(matches!(std::env::var("TZ_ATTN_FMA").as_deref(), Ok("1")));
        Ok(CudaBackend { ctx, stream, cc, sm_count, name, loader, gemm, scratch: Mutex::new([None, None]), fma_attention })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> String {
        self.name.clone()
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    pub fn multiprocessors(&self) -> u32 {
        self.sm_count
    }

    /// Chooses the attention forward implementation for head_dim 64/128: the FMA kernels
    /// (`true`) or tensor cores (`false`, the default). Smaller head dims always use FMA.
    pub fn use_fma_attention(&self, on: bool) {
        self.fma_attention.store(on, Ordering::Relaxed);
    }

    pub(crate) fn fma_attention(&self) -> bool {
        self.fma_attention.load(Ordering::Relaxed)
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv("binding the context"))
    }

    /// For a communicator that enqueues on this backend's stream (NCCL): the stream handle
    /// (a `CUstream`), with the context bound to the calling thread.
    pub fn stream_handle(&self) -> Result<*mut c_void> {
        self.bind()?;
        Ok(self.stream.cu_stream() as *mut c_void)
    }

    /// Whether everything enqueued on the stream has finished (`cuStreamQuery`); an error if
    /// something on it failed.
    pub fn stream_done(&self) -> Result<bool> {
        // SAFETY: a query of our own live stream.
        match unsafe { dsys::cuStreamQuery(self.stream.cu_stream()) } {
            dsys::CUresult::CUDA_SUCCESS => Ok(true),
            dsys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => bail!("cuda: the stream failed: {e:?}"),
        }
    }

    /// The device address of a view's first element.
    pub fn device_ptr(&self, v: View<'_, CudaBackend>) -> u64 {
        vptr(&v)
    }

    pub(crate) fn func(&self, file: &'static str, name: &'static str) -> Result<CudaFunction> {
        self.loader.func(file, name)
    }

    /// Launches `f` with kernel arguments given as raw 8-byte slots (pointers and u64 as is,
    /// i32/u32/f32 in the low 4 bytes — the little-endian layout the kernel reads).
    pub(crate) fn launch(&self, f: &CudaFunction, grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32, args: &[u64]) -> Result<()> {
        self.bind()?;
        let mut slots: Vec<u64> = args.to_vec();
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
        // SAFETY: the argument list matches the kernel signature (each launcher is written
        // against its kernel), the slots outlive the call (cuLaunchKernel copies them).
        unsafe { cudarc::driver::result::launch_kernel(f.cu_function(), grid, block, smem, self.stream.cu_stream(), &mut params) }
            .map_err(|e| anyhow!("cuda: kernel launch failed: {e:?}"))
    }

    /// A device scratch area of at least `bytes` bytes (stream-ordered reuse: valid for work
    /// enqueued after this call).
    pub(crate) fn scratch(&self, which: Scratch, bytes: usize) -> Result<u64> {
        // Unplanned growth (callers other than a planned run) rounds up, to grow rarely.
        self.grow_scratch(which, bytes, bytes.max(1 << 16).next_power_of_two())
    }

    /// Allocates scratch area `which` at exactly `bytes` unless it already holds that much.
    fn reserve(&self, which: Scratch, bytes: usize) -> Result<()> {
        self.grow_scratch(which, bytes, bytes).map(|_| ())
    }

    /// Area `which`'s pointer, reallocated at `size` bytes first if it holds fewer than
    /// `needed` (the old area is freed before the new one is taken).
    fn grow_scratch(&self, which: Scratch, needed: usize, size: usize) -> Result<u64> {
        let mut s = self.scratch.lock().unwrap();
        let slot = &mut s[which as usize];
        if let Some((_, ptr, have)) = slot {
            if *have >= needed {
                return Ok(*ptr);
            }
        }
        *slot = None;
        let mem = self.stream.alloc_zeros::<u8>(size).map_err(drv("allocating scratch"))?;
        let ptr = {
            let (p, _s) = mem.device_ptr(&self.stream);
            p
        };
        *slot = Some((mem, ptr, size));
        Ok(ptr)
    }

    pub(crate) fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: ptr..ptr+bytes is a live allocation (checked by the caller).
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }.map_err(drv("memset"))
    }

    pub(crate) fn htod<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: dst has room for src (checked by the caller). Pageable host memory: the
        // driver stages the bytes before this call returns, so `src` may be dropped after.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(drv("copy to device"))
    }

    pub(crate) fn dtoh<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: src holds dst.len() elements (checked by the caller); we synchronize before
        // returning, so the host buffer is complete and no longer written.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(drv("copy to host"))?;
        self.sync()
    }

    pub(crate) fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 || dst == src {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges are live (checked by the caller).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }.map_err(drv("device copy"))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv("synchronize (an earlier kernel may have failed)"))
    }

    pub(crate) fn mem_info_raw(&self) -> Result<(usize, usize)> {
        self.bind()?;
        cudarc::driver::result::mem_get_info().map_err(drv("cuMemGetInfo"))
    }
}

type V<'a> = View<'a, CudaBackend>;

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
    fn workspace_plan(&self, needs: &crate::backend::ScratchNeeds) -> Vec<(&'static str, usize)> {
        crate::backend::workspace::cuda_workspace(needs, self.cc.0 >= 9)
    }
    fn reserve_scratch(&self, needs: &crate::backend::ScratchNeeds) -> Result<()> {
        self.bind()?;
        self.reserve(Scratch::Partials, crate::backend::workspace::partials_bytes(needs))?;
        self.reserve(Scratch::Accumulators, crate::backend::workspace::accumulators_bytes(needs))
    }

    // ---- memory ------------------------------------------------------------------------------
    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuf> {
        self.bind()?;
        CudaBuf::zeros(&self.stream, dtype, len)
    }

    fn upload_f32(&self, dst: V, src: &[f32]) -> Result<()> {
        check::transfer(self, "upload_f32", dst, false, src.len())?;
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
        check::transfer(self, "upload_u32", dst, true, src.len())?;
        self.htod(vptr(&dst), src)
    }

    fn download_f32(&self, src: V, dst: &mut [f32]) -> Result<()> {
        check::transfer(self, "download_f32", src, false, dst.len())?;
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
        check::transfer(self, "download_u32", src, true, dst.len())?;
        self.dtoh(dst, vptr(&src))
    }

    fn synchronize(&self) -> Result<()> {
        self.sync()
    }

    // ---- the ops: the shared checks, then the family's launch ---------------------------------
    fn fill(&self, dst: V, value: f32) -> Result<()> {
        check::fill(self, dst)?;
        elementwise::fill(self, dst, value)
    }
    fn copy(&self, dst: V, src: V) -> Result<()> {
        check::copy(self, dst, src)?;
        elementwise::copy(self, dst, src)
    }
    fn add_assign(&self, dst: V, src: V) -> Result<()> {
        check::add_assign(self, dst, src)?;
        elementwise::add_assign(self, dst, src)
    }
    fn scale(&self, dst: V, alpha: f32) -> Result<()> {
        check::float(self, "scale", "dst", dst)?;
        elementwise::scale(self, dst, alpha)
    }
    fn sum_squares(&self, x: V) -> Result<f32> {
        check::float(self, "sum_squares", "x", x)?;
        elementwise::sum_squares(self, x)
    }
    fn gather_rows(&self, out: V, x: V, rows: V, n_rows: usize, c: usize) -> Result<()> {
        check::gather_rows(self, out, x, rows, n_rows, c)?;
        elementwise::gather_rows(self, out, x, rows, n_rows, c)
    }
    fn scatter_add_rows(&self, dx: V, dout: V, rows: V, n_rows: usize, c: usize) -> Result<()> {
        check::scatter_add_rows(self, dx, dout, rows, n_rows, c)?;
        elementwise::scatter_add_rows(self, dx, dout, rows, n_rows, c)
    }
    fn copy_block(&self, dst: V, dst_ld: usize, src: V, src_ld: usize, rows: usize, cols: usize, accumulate: bool) -> Result<()> {
        check::copy_block(self, dst, dst_ld, src, src_ld, rows, cols)?;
        elementwise::copy_block(self, dst, dst_ld, src, src_ld, rows, cols, accumulate)
    }
    fn embedding_fwd(&self, out: V, table: V, ids: V, n: usize, c: usize) -> Result<()> {
        check::embedding_fwd(self, out, table, ids, n, c)?;
        nn::embedding_fwd(self, out, table, ids, n, c)
    }
    fn embedding_bwd(&self, dtable: V, dout: V, ids: V, n: usize, c: usize) -> Result<()> {
        check::embedding_bwd(self, dtable, dout, ids, n, c)?;
        nn::embedding_bwd(self, dtable, dout, ids, n, c)
    }
    fn rmsnorm_fwd(&self, out: V, rstd: V, x: V, w: V, n: usize, c: usize, eps: f32) -> Result<()> {
        check::rmsnorm_fwd(self, out, rstd, None, x, w, n, c)?;
        nn::rmsnorm_fwd(self, out, rstd, x, w, n, c, eps)
    }
    fn residual_rmsnorm_fwd(&self, resid_out: V, out: V, rstd: V, resid_in: V, delta: V, w: V, n: usize, c: usize, eps: f32) -> Result<()> {
        check::rmsnorm_fwd(self, out, rstd, Some((resid_out, delta)), resid_in, w, n, c)?;
        nn::residual_rmsnorm_fwd(self, resid_out, out, rstd, resid_in, delta, w, n, c, eps)
    }
    fn rmsnorm_bwd(&self, dx: V, dw: V, dout: V, x: V, w: V, rstd: V, n: usize, c: usize) -> Result<()> {
        check::rmsnorm_bwd(self, dx, dw, dout, x, w, rstd, n, c)?;
        nn::rmsnorm_bwd(self, dx, dw, dout, x, w, rstd, n, c)
    }
    fn gemm(
        &self,
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
        check::gemm(self, c, a, b, bias, m, n, k)?;
        nn::gemm(self, c, a, b, bias, m, n, k, trans_a, trans_b, alpha, beta)
    }
    fn bias_bwd(&self, dbias: V, dout: V, m: usize, n: usize) -> Result<()> {
        check::bias_bwd(self, dbias, dout, m, n)?;
        nn::bias_bwd(self, dbias, dout, m, n)
    }
    fn rope(&self, qkv: V, pos: V, n: usize, shape: AttnShape, theta: f32, inverse: bool) -> Result<()> {
        check::rope(self, qkv, pos, n, &shape)?;
        nn::rope(self, qkv, pos, n, shape, theta, inverse)
    }
    fn attention_fwd(&self, out: V, lse: V, qkv: V, seqs: Seqs<Self>, shape: AttnShape, scale: f32) -> Result<()> {
        check::attention_fwd(self, out, lse, qkv, &seqs, &shape)?;
        attention::fwd(self, out, lse, qkv, seqs, shape, scale)
    }
    fn attention_bwd(&self, dqkv: V, dout: V, qkv: V, out: V, lse: V, seqs: Seqs<Self>, shape: AttnShape, scale: f32) -> Result<()> {
        check::attention_bwd(self, dqkv, dout, qkv, out, lse, &seqs, &shape)?;
        attention::bwd(self, dqkv, dout, qkv, out, lse, seqs, shape, scale)
    }
    fn kv_store(&self, kcache: V, vcache: V, qkv: V, slot: V, pos: V, n: usize, shape: AttnShape, t_max: usize) -> Result<()> {
        check::kv_store(self, kcache, vcache, qkv, slot, pos, n, &shape, t_max)?;
        attention::kv_store(self, kcache, vcache, qkv, slot, pos, n, shape, t_max)
    }
    fn attention_decode(
        &self,
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
        check::attention_decode(self, out, qkv, kcache, vcache, slot, len, b, max_len, &shape, t_max)?;
        attention::decode(self, out, qkv, kcache, vcache, slot, len, b, max_len, shape, t_max, scale)
    }
    fn swiglu_fwd(&self, out: V, gu: V, n: usize, inter: usize) -> Result<()> {
        check::swiglu_fwd(self, out, gu, n, inter)?;
        nn::swiglu_fwd(self, out, gu, n, inter)
    }
    fn swiglu_bwd(&self, dgu: V, dout: V, gu: V, n: usize, inter: usize) -> Result<()> {
        check::swiglu_bwd(self, dgu, dout, gu, n, inter)?;
        nn::swiglu_bwd(self, dgu, dout, gu, n, inter)
    }
    fn logprob_fwd(&self, logp: V, lse: V, entropy: Option<V>, logits: V, targets: V, n: usize, v: usize, inv_temp: f32) -> Result<()> {
        check::logprob_fwd(self, logp, lse, entropy, logits, targets, n, v)?;
        logprob::fwd(self, logp, lse, entropy, logits, targets, n, v, inv_temp)
    }
    fn logprob_bwd(
        &self,
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
        check::logprob_bwd(self, dlogits, logits, targets, lse, entropy, dlogp, dentropy, n, v)?;
        logprob::bwd(self, dlogits, logits, targets, lse, entropy, dlogp, dentropy, n, v, inv_temp)
    }
    fn sample(&self, out: V, logits: V, b: usize, v: usize, params: &SamplingParams, seeds: &[u64], counters: &[u64]) -> Result<()> {
        check::sample(self, out, logits, b, v, params, seeds, counters)?;
        logprob::sample(self, out, logits, b, v, params, seeds, counters)
    }
    fn apo_loss(&self, loss: V, dlogp: V, logp: V, ref_logp: V, target: V, seqs: Seqs<Self>, beta2: f32, grad_scale: f32) -> Result<()> {
        check::apo_loss(self, loss, dlogp, logp, ref_logp, target, &seqs)?;
        optim::apo_loss(self, loss, dlogp, logp, ref_logp, target, seqs, beta2, grad_scale)
    }
    fn grpo_loss(
        &self,
        loss: V,
        dlogp: V,
        logp: V,
        old_logp: V,
        ref_logp: V,
        adv: V,
        weight: V,
        n: usize,
        clip_eps: f32,
        kl_coef: f32,
        kl: super::KlEstimator,
    ) -> Result<()> {
        check::grpo_loss(self, loss, dlogp, logp, old_logp, ref_logp, adv, weight, n)?;
        optim::grpo_loss(self, loss, dlogp, logp, old_logp, ref_logp, adv, weight, n, clip_eps, kl_coef, kl)
    }
    fn adamw(&self, params: V, master: Option<V>, grads: V, m: V, v: V, p: &AdamWParams) -> Result<()> {
        check::adamw(self, params, master, grads, m, v, p.step)?;
        optim::adamw(self, params, master, grads, m, v, p)
    }
}
