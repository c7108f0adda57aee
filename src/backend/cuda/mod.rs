//! The CUDA backend: bf16 activations and weights, fp32 accumulation everywhere, fp32
//! parameter gradients and optimizer state (AdamW keeps an fp32 master copy).
//!
//! - `buffer`: device buffers and view pointers;
//! - `kernels`: the kernels embedded by build.rs, loaded lazily per file (cubin → PTX →
//!   NVRTC);
//! - `gemm`: cuBLASLt matmuls;
//! - `ops`: the `Backend` implementation (argument checks and launch shapes).
//!
//! Everything runs on one stream, in order. Nothing here panics when CUDA is missing:
//! `CudaBackend::new` probes the driver library with dlopen before cudarc touches it (cudarc's
//! dynamic loader panics on a missing library) and returns an error instead.
//! See docs/cuda.md.

mod buffer;
mod gemm;
mod kernels;
mod ops;

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};
use cudarc::driver::{sys as dsys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};

pub use buffer::CudaBuf;
pub use kernels::nvrtc_check_all;

/// The scratch areas an op may need at the same time (each grown on demand, never shrunk).
#[derive(Clone, Copy)]
pub(crate) enum Scratch {
    A = 0,
    B = 1,
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
        let sm_count = ctx
            .attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("multiprocessor count"))? as u32;
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
        let mut s = self.scratch.lock().unwrap();
        let slot = &mut s[which as usize];
        if let Some((_, ptr, size)) = slot {
            if *size >= bytes {
                return Ok(*ptr);
            }
        }
        let size = bytes.max(1 << 16).next_power_of_two();
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
