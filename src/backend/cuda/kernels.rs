//! The embedded kernels (see build.rs) and their lazy, per-file loading.
//!
//! Each `kernels/<file>.cu` is loaded as one CUDA module the first time one of its kernels
//! is launched, from the best image that loads on this device:
//! 1. the sm_90a cubin on compute capability 9.0 (H100/H200),
//! 2. the sm_80 cubin on 8.x,
//! 3. the compute_80 PTX (JIT-compiled by the driver: any newer GPU),
//! 4. the embedded source compiled by NVRTC for this exact architecture (the only path when
//!    the crate was built without nvcc).
//!
//! A step that fails (e.g. a driver too old for the PTX) falls through to the next one; the
//! error names every attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;

/// One kernel file as embedded by build.rs.
pub struct KernelFile {
    pub name: &'static str,
    /// Source with local includes inlined (for NVRTC).
    pub source: &'static str,
    pub sm90a: Option<&'static [u8]>,
    pub sm80: Option<&'static [u8]>,
    pub ptx: Option<&'static str>,
}

include!(concat!(env!("OUT_DIR"), "/tz_kernels.rs"));

pub(crate) struct Loader {
    ctx: Arc<CudaContext>,
    cc: (i32, i32),
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl Loader {
    pub(crate) fn new(ctx: Arc<CudaContext>, cc: (i32, i32)) -> Self {
        Loader { ctx, cc, modules: Mutex::new(HashMap::new()), funcs: Mutex::new(HashMap::new()) }
    }

    /// The kernel `name` of `kernels/<file>.cu`.
    pub(crate) fn func(&self, file: &'static str, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.funcs.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        let module = self.module(file)?;
        let f = module.load_function(name).map_err(|e| anyhow!("cuda: kernel {name} not found in {file}.cu: {e:?}"))?;
        self.funcs.lock().unwrap().insert(name, f.clone());
        Ok(f)
    }

    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap();
        if let Some(m) = modules.get(file) {
            return Ok(m.clone());
        }
        let kf = KERNEL_FILES.iter().find(|k| k.name == file).ok_or_else(|| anyhow!("cuda: no embedded kernel file {file}.cu"))?;
        let m = self.load(kf)?;
        modules.insert(file, m.clone());
        Ok(m)
    }

    fn load(&self, kf: &KernelFile) -> Result<Arc<CudaModule>> {
        let mut errors = Vec::new();
        let (major, minor) = self.cc;
        if (major, minor) == (9, 0) {
            if let Some(bin) = kf.sm90a {
                match self.ctx.load_module(Ptx::from_binary(bin.to_vec())) {
                    Ok(m) => return Ok(m),
                    Err(e) => errors.push(format!("sm_90a cubin: {e:?}")),
                }
            }
        }
        if major == 8 {
            if let Some(bin) = kf.sm80 {
                match self.ctx.load_module(Ptx::from_binary(bin.to_vec())) {
                    Ok(m) => return Ok(m),
                    Err(e) => errors.push(format!("sm_80 cubin: {e:?}")),
                }
            }
        }
        if major >= 8 {
            if let Some(ptx) = kf.ptx {
                match self.ctx.load_module(Ptx::from_src(ptx)) {
                    Ok(m) => return Ok(m),
                    Err(e) => errors.push(format!("compute_80 PTX: {e:?}")),
                }
            }
        }
        match self.nvrtc(kf) {
            Ok(m) => return Ok(m),
            Err(e) => errors.push(format!("NVRTC: {e}")),
        }
        Err(anyhow!("cuda: could not load kernels/{}.cu on a compute capability {major}.{minor} device ({})", kf.name, errors.join("; ")))
    }

    fn nvrtc(&self, kf: &KernelFile) -> Result<Arc<CudaModule>> {
        // SAFETY: a dlopen probe; no symbol is called.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(anyhow!("the NVRTC library (libnvrtc.so) was not found"));
        }
        let (major, minor) = self.cc;
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{major}{minor}"), "--std=c++17".into()],
            name: Some(format!("{}.cu", kf.name)),
            ..Default::default()
        };
        let ptx = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(kf.source, opts))
            .map_err(|_| anyhow!("NVRTC panicked (library present but unusable?)"))?
            .map_err(|e| anyhow!("{e:?}"))?;
        self.ctx.load_module(ptx).map_err(|e| anyhow!("loading the NVRTC PTX: {e:?}"))
    }
}

/// Compiles every embedded kernel source with NVRTC for `arch` (e.g. "compute_90"), without
/// needing a GPU: checks the run-time fallback path. Returns `(file, PTX)`. Errors if libnvrtc
/// is absent.
pub fn nvrtc_check_all(arch: &str) -> Result<Vec<(&'static str, String)>> {
    // SAFETY: dlopen probe only.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(anyhow!("the NVRTC library (libnvrtc.so) was not found"));
    }
    let mut out = Vec::new();
    for kf in KERNEL_FILES {
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
            name: Some(format!("{}.cu", kf.name)),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(kf.source, opts).map_err(|e| anyhow!("NVRTC {}.cu: {e:?}", kf.name))?;
        out.push((kf.name, ptx.to_src()));
    }
    Ok(out)
}
