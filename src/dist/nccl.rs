//! NCCL, loaded at run time like the CUDA driver: `TZ_NCCL_LIB`, else `libnccl.so.2` (the
//! name NCCL's packages and PyTorch's `nvidia-nccl-cu13` wheel ship), else `libnccl.so`. Only
//! the functions below are bound, each looked up before anything is called, so a missing or
//! too old library is a one-line error, never a panic (cudarc's NCCL loader panics on both).
//!
//! [`NcclComm`] is the CUDA backend's communicator: device collectives enqueued on the
//! backend's stream, in place, then waited for with a deadline (polling the stream and NCCL's
//! asynchronous error state; on timeout or error the communicator is aborted, so no rank
//! waits forever); host collectives go over the TCP star of the rendezvous (`super::tcp`),
//! which also handed out NCCL's unique id.
use anyhow::{anyhow, bail, Result};
use std::ffi::{c_char, c_int, c_void};

/// The oldest NCCL accepted: 2.12 (bf16 reductions, `ncclCommGetAsyncError`, in-place
/// reduce-scatter and all-gather; every CUDA 12/13 build is newer).
pub const MIN_VERSION: i32 = 21200;

/// `ncclUniqueId`.
pub const UNIQUE_ID_BYTES: usize = 128;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId(pub [u8; UNIQUE_ID_BYTES]);

type Res = c_int;
const SUCCESS: Res = 0;
const IN_PROGRESS: Res = 7;
/// `ncclDataType_t`.
pub const FLOAT32: c_int = 7;
pub const BFLOAT16: c_int = 9;
/// `ncclRedOp_t`.
const SUM: c_int = 0;

type Stream = *mut c_void;
type CommHandle = *mut c_void;

/// The library and the functions tz-engine calls.
pub struct Nccl {
    _lib: libloading::Library,
    pub path: String,
    pub version: i32,
    get_error_string: unsafe extern "C" fn(Res) -> *const c_char,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> Res,
    comm_init_rank: unsafe extern "C" fn(*mut CommHandle, c_int, UniqueId, c_int) -> Res,
    comm_destroy: unsafe extern "C" fn(CommHandle) -> Res,
    comm_abort: unsafe extern "C" fn(CommHandle) -> Res,
    comm_get_async_error: unsafe extern "C" fn(CommHandle, *mut Res) -> Res,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, CommHandle, Stream) -> Res,
    reduce_scatter: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, CommHandle, Stream) -> Res,
    all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, CommHandle, Stream) -> Res,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, CommHandle, Stream) -> Res,
    reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, c_int, CommHandle, Stream) -> Res,
    group_start: unsafe extern "C" fn() -> Res,
    group_end: unsafe extern "C" fn() -> Res,
}

/// "2.27.3" from NCCL's version code (2.9 and later: major·10000 + minor·100 + patch).
pub fn version_string(code: i32) -> String {
    if code >= 10000 {
        format!("{}.{}.{}", code / 10000, code / 100 % 100, code % 100)
    } else {
        format!("{}.{}.{}", code / 1000, code / 100 % 10, code % 100)
    }
}

impl Nccl {
    /// Loads NCCL from `TZ_NCCL_LIB` or the usual names.
    pub fn load() -> Result<Nccl> {
        let explicit = std::env::var("TZ_NCCL_LIB").ok().filter(|s| !s.is_empty());
        let candidates: Vec<String> = match &explicit {
            Some(p) => vec![p.clone()],
            None => vec!["libnccl.so.2".into(), "libnccl.so".into()],
        };
        let mut tried = Vec::new();
        for path in &candidates {
            // SAFETY: loading a shared library runs its initializers; NCCL's are benign.
            match unsafe { libloading::Library::new(path) } {
                Ok(lib) => return Self::bind(lib, path),
                Err(e) => tried.push(format!("{path}: {e}")),
            }
        }
        match explicit {
            Some(p) => bail!("TZ_NCCL_LIB={p}: cannot load it ({})", tried.join("; ")),
            None => bail!(
                "NCCL not found (tried libnccl.so.2 and libnccl.so on the library path): multi-GPU training needs it; install NCCL (or `pip install nvidia-nccl-cu13`) and set TZ_NCCL_LIB to its libnccl.so.2"
            ),
        }
    }

    fn bind(lib: libloading::Library, path: &str) -> Result<Nccl> {
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is NCCL's, with the C signature of the field it fills
                // (nccl.h); the library outlives the pointer (`_lib`).
                *unsafe { lib.get($name.as_bytes()) }
                    .map_err(|_| anyhow!("{path} has no {}: NCCL {} or newer is needed", $name, version_string(MIN_VERSION)))?
            };
        }
        let get_version: unsafe extern "C" fn(*mut c_int) -> Res = sym!("ncclGetVersion");
        let mut version = 0;
        // SAFETY: writes one int.
        let r = unsafe { get_version(&mut version) };
        if r != SUCCESS {
            bail!("{path}: ncclGetVersion failed ({r})");
        }
        if version < MIN_VERSION {
            bail!("{path} is NCCL {}: {} or newer is needed", version_string(version), version_string(MIN_VERSION));
        }
        Ok(Nccl {
            get_error_string: sym!("ncclGetErrorString"),
            get_unique_id: sym!("ncclGetUniqueId"),
            comm_init_rank: sym!("ncclCommInitRank"),
            comm_destroy: sym!("ncclCommDestroy"),
            comm_abort: sym!("ncclCommAbort"),
            comm_get_async_error: sym!("ncclCommGetAsyncError"),
            all_reduce: sym!("ncclAllReduce"),
            reduce_scatter: sym!("ncclReduceScatter"),
            all_gather: sym!("ncclAllGather"),
            broadcast: sym!("ncclBroadcast"),
            reduce: sym!("ncclReduce"),
            group_start: sym!("ncclGroupStart"),
            group_end: sym!("ncclGroupEnd"),
            path: path.to_string(),
            version,
            _lib: lib,
        })
    }

    fn check(&self, what: &str, r: Res) -> Result<()> {
        if r == SUCCESS || r == IN_PROGRESS {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for any result code.
        let text = unsafe { std::ffi::CStr::from_ptr((self.get_error_string)(r)) }.to_string_lossy().to_string();
        bail!("nccl: {what}: {text} ({r})")
    }

    /// A fresh unique id (rank 0 makes it; the rendezvous hands it out).
    pub fn unique_id(&self) -> Result<Vec<u8>> {
        let mut id = UniqueId([0; UNIQUE_ID_BYTES]);
        // SAFETY: writes the 128-byte id.
        self.check("ncclGetUniqueId", unsafe { (self.get_unique_id)(&mut id) })?;
        Ok(id.0.to_vec())
    }
}

#[cfg(feature = "cuda")]
pub use device::NcclComm;

#[cfg(feature = "cuda")]
mod device {
    use super::*;
    use crate::backend::cuda::CudaBackend;
    use crate::backend::{DType, View};
    use crate::dist::tcp::TcpComm;
    use crate::dist::{Comm, HostComm};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// One rank's NCCL communicator (device collectives) and TCP star (host collectives).
    pub struct NcclComm {
        nccl: Nccl,
        comm: CommHandle,
        host: TcpComm,
        timeout: Duration,
        calls: AtomicU64,
    }

    // SAFETY: an NCCL communicator may be used from any thread as long as calls are not
    // concurrent; a rank's collectives are issued one at a time by its training loop.
    unsafe impl Send for NcclComm {}
    unsafe impl Sync for NcclComm {}

    impl NcclComm {
        /// Joins the NCCL communicator whose id rank 0 handed out at the rendezvous (on the
        /// backend's GPU, which must be current).
        pub fn init(nccl: Nccl, be: &CudaBackend, host: TcpComm, id: &[u8], timeout: Duration) -> Result<Self> {
            anyhow::ensure!(id.len() == UNIQUE_ID_BYTES, "the rendezvous handed out a {}-byte NCCL id", id.len());
            let mut uid = UniqueId([0; UNIQUE_ID_BYTES]);
            uid.0.copy_from_slice(id);
            be.stream_handle()?;
            let mut comm: CommHandle = std::ptr::null_mut();
            let (rank, world) = (host.rank(), host.world());
            // SAFETY: writes the communicator handle; blocks until every rank has joined.
            nccl.check("ncclCommInitRank", unsafe { (nccl.comm_init_rank)(&mut comm, world as c_int, uid, rank as c_int) })
                .map_err(|e| anyhow!("rank {rank}: {e:#}"))?;
            Ok(NcclComm { nccl, comm, host, timeout, calls: AtomicU64::new(0) })
        }

        pub fn host(&self) -> &TcpComm {
            &self.host
        }

        fn dtype(v: &View<CudaBackend>) -> Result<(c_int, usize)> {
            match v.dtype() {
                DType::F32 => Ok((FLOAT32, 4)),
                DType::BF16 => Ok((BFLOAT16, 2)),
                DType::U32 => bail!("nccl: collectives over u32 buffers are not used"),
            }
        }

        /// Enqueues `launch` (NCCL calls on the stream), then waits for it within the deadline.
        fn run(&self, be: &CudaBackend, op: &'static str, launch: impl FnOnce(Stream) -> Result<()>) -> Result<()> {
            let seq = self.calls.fetch_add(1, Ordering::SeqCst);
            let rank = self.host.rank();
            let stream = be.stream_handle()?;
            launch(stream).map_err(|e| anyhow!("rank {rank}: {op} #{seq}: {e:#}"))?;
            let deadline = Instant::now() + self.timeout;
            loop {
                if be.stream_done().map_err(|e| anyhow!("rank {rank}: {op} #{seq}: {e:#}"))? {
                    return Ok(());
                }
                let mut state = SUCCESS;
                // SAFETY: reads the communicator's error state.
                let r = unsafe { (self.nccl.comm_get_async_error)(self.comm, &mut state) };
                if r != SUCCESS || (state != SUCCESS && state != IN_PROGRESS) {
                    // SAFETY: stops this rank's outstanding NCCL work (the run is failing).
                    unsafe { (self.nccl.comm_abort)(self.comm) };
                    let e = self.nccl.check("asynchronous error", if r != SUCCESS { r } else { state }).unwrap_err();
                    bail!("rank {rank}: {op} #{seq}: {e:#} (another rank may have failed)");
                }
                if Instant::now() >= deadline {
                    // SAFETY: as above; a hung peer must not hang this rank.
                    unsafe { (self.nccl.comm_abort)(self.comm) };
                    bail!("rank {rank}: {op} #{seq} timed out after {} s", self.timeout.as_secs());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }

        /// `call(r, pointer, len)` for each rank's non-empty range of a buffer of `n` elements
        /// (at device address `base`, `size`-byte elements) in chunks of `chunk`, as one group.
        fn per_owner(
            &self,
            chunk: usize,
            n: usize,
            base: u64,
            size: usize,
            mut call: impl FnMut(usize, *mut c_void, usize) -> Result<()>,
        ) -> Result<()> {
            let g = &self.nccl;
            // SAFETY: group calls take no arguments; every rank issues the same calls inside.
            g.check("ncclGroupStart", unsafe { (g.group_start)() })?;
            for r in 0..self.world() {
                let a = (r * chunk).min(n);
                let len = ((r + 1) * chunk).min(n) - a;
                if len > 0 {
                    call(r, (base + (a * size) as u64) as *mut c_void, len)?;
                }
            }
            // SAFETY: as above.
            g.check("ncclGroupEnd", unsafe { (g.group_end)() })
        }
    }

    impl Drop for NcclComm {
        fn drop(&mut self) {
            // SAFETY: the handle is ours and no collective is in flight once the loop is done.
            unsafe { (self.nccl.comm_destroy)(self.comm) };
        }
    }

    impl HostComm for NcclComm {
        fn rank(&self) -> usize {
            self.host.rank()
        }
        fn world(&self) -> usize {
            self.host.world()
        }
        fn exchange(&self, op: &'static str, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
            self.host.exchange(op, mine)
        }
    }

    impl Comm<CudaBackend> for NcclComm {
        fn reduce_scatter(&self, be: &CudaBackend, buf: View<CudaBackend>, chunk: usize) -> Result<()> {
            let (dt, size) = Self::dtype(&buf)?;
            let (world, rank, n, base) = (self.world(), self.rank(), buf.len(), be.device_ptr(buf));
            let n_ = &self.nccl;
            self.run(be, "reduce_scatter", |s| {
                if n == world * chunk {
                    // In place: this rank's chunk of the buffer receives the sum.
                    let recv = (base + (rank * chunk * size) as u64) as *mut c_void;
                    // SAFETY: device pointers inside `buf`; NCCL reads n and writes chunk elements.
                    n_.check("ncclReduceScatter", unsafe { (n_.reduce_scatter)(base as *const c_void, recv, chunk, dt, SUM, self.comm, s) })
                } else {
                    // Uneven chunks: one in-place reduce to each chunk's owner, in a group.
                    self.per_owner(chunk, n, base, size, |r, p, len| {
                        // SAFETY: a range inside `buf`, reduced in place at rank r.
                        n_.check("ncclReduce", unsafe { (n_.reduce)(p, p, len, dt, SUM, r as c_int, self.comm, s) })
                    })
                }
            })
        }
        fn all_gather(&self, be: &CudaBackend, buf: View<CudaBackend>, chunk: usize) -> Result<()> {
            let (dt, size) = Self::dtype(&buf)?;
            let (world, rank, n, base) = (self.world(), self.rank(), buf.len(), be.device_ptr(buf));
            let n_ = &self.nccl;
            self.run(be, "all_gather", |s| {
                if n == world * chunk {
                    let send = (base + (rank * chunk * size) as u64) as *const c_void;
                    // SAFETY: in place: this rank's chunk is the send buffer, the whole buffer receives.
                    n_.check("ncclAllGather", unsafe { (n_.all_gather)(send, base as *mut c_void, chunk, dt, self.comm, s) })
                } else {
                    // Uneven chunks: each owner broadcasts its range, in a group.
                    self.per_owner(chunk, n, base, size, |r, p, len| {
                        // SAFETY: a range inside `buf`, broadcast in place from rank r.
                        n_.check("ncclBroadcast", unsafe { (n_.broadcast)(p, p, len, dt, r as c_int, self.comm, s) })
                    })
                }
            })
        }
        fn all_reduce(&self, be: &CudaBackend, buf: View<CudaBackend>) -> Result<()> {
            let (dt, _) = Self::dtype(&buf)?;
            let (n, p) = (buf.len(), be.device_ptr(buf) as *mut c_void);
            let n_ = &self.nccl;
            // SAFETY: in place over `buf`.
            self.run(be, "all_reduce", |s| n_.check("ncclAllReduce", unsafe { (n_.all_reduce)(p, p, n, dt, SUM, self.comm, s) }))
        }
        fn broadcast(&self, be: &CudaBackend, buf: View<CudaBackend>, root: usize) -> Result<()> {
            let (dt, _) = Self::dtype(&buf)?;
            let (n, p) = (buf.len(), be.device_ptr(buf) as *mut c_void);
            let n_ = &self.nccl;
            // SAFETY: in place over `buf`.
            self.run(be, "broadcast", |s| n_.check("ncclBroadcast", unsafe { (n_.broadcast)(p, p, n, dt, root as c_int, self.comm, s) }))
        }
    }
}
