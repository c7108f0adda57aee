//! NVTX ranges (push/pop) for Nsight Systems and Nsight Compute, with no CUDA toolkit needed to
//! build and nothing to pay when no profiler is attached.
//!
//! NVTX v3 is header-only in C: a profiler attaches by naming its injection library in
//! `NVTX_INJECTION64_PATH`. On first use we dlopen that library, call its
//! `InitializeInjectionNvtx2` with our export-table getter, and it asks for the function table
//! of the CORE module: an array of pointers to function-pointer slots (slot 0 and the last are
//! null), into which it writes its own `nvtxRangePushA`/`nvtxRangePop`. The slots start null,
//! so without a profiler a range costs one atomic load and a null check. The layout and
//! identifiers follow the public NVTX v3 headers (nvtxTypes.h, nvtxImpl.h); this file is our
//! own implementation of that protocol.
//!
//! `tz-engine` marks the trainer's phases (rollout, ref_logprobs, forward_backward, optimizer,
//! vstar, eval) so `nsys profile` shows them on the timeline and `ncu --nvtx --nvtx-include`
//! can pick the kernels of one phase (tools/profile.sh).
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

// Callback modules and the number of entries (including the invalid id 0) of each one's table.
const MODULE_CORE: c_int = 1;
const MODULE_SLOTS: [usize; 7] = [0, 16, 9, 15, 7, 16, 7]; // INVALID, CORE, CUDA, OPENCL, CUDART, CORE2, SYNC
const CORE_RANGE_PUSH_A: usize = 9;
const CORE_RANGE_POP: usize = 11;
const ETID_CALLBACKS: u32 = 1;
const ETID_VERSIONINFO: u32 = 3;
const NVTX_VERSION: u32 = 3;

/// Function-pointer slots the injection library writes; one array per module, the largest size.
static SLOTS: [[AtomicUsize; 16]; 7] = [const { [const { AtomicUsize::new(0) }; 16] }; 7];

/// One pointer per slot plus the two nulls, per module, as the protocol hands them out.
struct Tables([[*const AtomicUsize; 17]; 7]);
// SAFETY: the pointers refer to the immutable-address static `SLOTS`; only their targets change.
unsafe impl Sync for Tables {}
unsafe impl Send for Tables {}

static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();

fn tables() -> &'static Tables {
    TABLES.get_or_init(|| {
        let mut t = [[std::ptr::null(); 17]; 7];
        for (m, &n) in MODULE_SLOTS.iter().enumerate() {
            for id in 1..n {
                t[m][id] = &SLOTS[m][id] as *const AtomicUsize;
            }
        }
        Tables(t)
    })
}

#[repr(C)]
struct ExportCallbacks {
    struct_size: usize,
    get_module_function_table: unsafe extern "C" fn(c_int, *mut *const *const AtomicUsize, *mut c_uint) -> c_int,
}

#[repr(C)]
struct ExportVersionInfo {
    struct_size: usize,
    version: u32,
    reserved0: u32,
    set_injection_nvtx_version: extern "C" fn(u32),
}

static CALLBACKS: ExportCallbacks = ExportCallbacks { struct_size: std::mem::size_of::<ExportCallbacks>(), get_module_function_table };
static VERSION_INFO: ExportVersionInfo = ExportVersionInfo {
    struct_size: std::mem::size_of::<ExportVersionInfo>(),
    version: NVTX_VERSION,
    reserved0: 0,
    set_injection_nvtx_version,
};

unsafe extern "C" fn get_module_function_table(module: c_int, out_table: *mut *const *const AtomicUsize, out_size: *mut c_uint) -> c_int {
    let Some(&n) = usize::try_from(module).ok().and_then(|m| MODULE_SLOTS.get(m)) else { return 0 };
    if n == 0 {
        return 0;
    }
    let table = &tables().0[module as usize];
    // SAFETY: the caller passes valid out-pointers or null (the protocol allows either).
    unsafe {
        if !out_size.is_null() {
            *out_size = n as c_uint; // entries after slot 0, the trailing null included
        }
        if !out_table.is_null() {
            *out_table = table.as_ptr();
        }
    }
    1
}

extern "C" fn set_injection_nvtx_version(_version: u32) {}

extern "C" fn get_export_table(id: u32) -> *const c_void {
    match id {
        ETID_CALLBACKS => &CALLBACKS as *const ExportCallbacks as *const c_void,
        ETID_VERSIONINFO => &VERSION_INFO as *const ExportVersionInfo as *const c_void,
        _ => std::ptr::null(),
    }
}

static INIT: Once = Once::new();

/// Attaches the profiler named by `NVTX_INJECTION64_PATH`, once. Any failure leaves NVTX off
/// (a warning on stderr): profiling must never stop a run.
fn init() {
    INIT.call_once(|| {
        let Some(path) = std::env::var_os("NVTX_INJECTION64_PATH") else { return };
        type InitFn = unsafe extern "C" fn(extern "C" fn(u32) -> *const c_void) -> c_int;
        // SAFETY: loading the profiler's library runs its initializers, which is what the user
        // asked for by setting the variable; the symbol has the protocol's signature.
        let ok = unsafe {
            match libloading::Library::new(&path) {
                Ok(lib) => {
                    let ok = match lib.get::<InitFn>(b"InitializeInjectionNvtx2\0") {
                        Ok(f) => f(get_export_table) != 0,
                        Err(_) => false,
                    };
                    // The injection's functions stay installed: the library must never unload.
                    std::mem::forget(lib);
                    ok
                }
                Err(_) => false,
            }
        };
        if !ok {
            eprintln!("warning: NVTX_INJECTION64_PATH={} could not be attached; NVTX ranges are off", path.to_string_lossy());
            for m in &SLOTS {
                for s in m {
                    s.store(0, Ordering::Release);
                }
            }
        }
    });
}

/// A named range on the current thread, popped on drop: `let _r = nvtx::range("rollout");`.
#[must_use = "the range ends when this guard is dropped"]
pub struct Range {
    active: bool,
}

pub fn range(name: &str) -> Range {
    init();
    let push = SLOTS[MODULE_CORE as usize][CORE_RANGE_PUSH_A].load(Ordering::Acquire);
    if push == 0 {
        return Range { active: false };
    }
    let c = CString::new(name.replace('\0', "")).unwrap_or_default();
    // SAFETY: the injection library wrote a function with nvtxRangePushA's signature here.
    let f: extern "C" fn(*const c_char) -> c_int = unsafe { std::mem::transmute(push) };
    f(c.as_ptr());
    Range { active: true }
}

impl Drop for Range {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let pop = SLOTS[MODULE_CORE as usize][CORE_RANGE_POP].load(Ordering::Acquire);
        if pop != 0 {
            // SAFETY: the injection library wrote a function with nvtxRangePop's signature here.
            let f: extern "C" fn() -> c_int = unsafe { std::mem::transmute(pop) };
            f();
        }
    }
}
