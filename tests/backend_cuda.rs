//! CUDA backend construction and driver-probe behaviour (the per-op parity suite is
//! tests/parity_cuda.rs). Tests needing a GPU skip, with a printed reason, without one.
#![cfg(feature = "cuda")]

use tz_engine::backend::cuda::{driver_present, CudaBackend, NO_DRIVER};

/// Without a driver, opening the backend is an error with a clear message, never a panic.
#[test]
fn new_without_driver_errs_cleanly() {
    let r = std::panic::catch_unwind(|| CudaBackend::new(0).map(|_| ()));
    let r = r.expect("CudaBackend::new must not panic");
    if driver_present() {
        eprintln!("skipped: a CUDA driver is present here (new(0) returned {:?})", r.as_ref().err().map(|e| e.to_string()));
        return;
    }
    let err = r.expect_err("no driver: new(0) must fail");
    assert_eq!(err.to_string(), NO_DRIVER);
}

/// An out-of-range ordinal is an error too (on machines with a driver).
#[test]
fn bad_ordinal_errs() {
    let r = std::panic::catch_unwind(|| CudaBackend::new(4096).map(|_| ()));
    let r = r.expect("CudaBackend::new must not panic");
    assert!(r.is_err());
}

/// The NVRTC fallback (used when the crate was built without nvcc) compiles every embedded
/// kernel source. Needs only libnvrtc, no GPU; skips when it is absent unless
/// TZ_REQUIRE_NVRTC=1. With TZ_NVRTC_PTX_DIR set, the PTX is written there as
/// `<file>.<arch>.ptx` (CI assembles it with ptxas: what the driver's JIT would be given).
#[test]
fn nvrtc_fallback_sources_compile() {
    // SAFETY: dlopen probe only.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        let why = "libnvrtc not found (e.g. LD_LIBRARY_PATH=.cache/nvrtc/nvidia/cu13/lib after tools/install-nvcc.sh --nvrtc)";
        assert!(std::env::var("TZ_REQUIRE_NVRTC").as_deref() != Ok("1"), "TZ_REQUIRE_NVRTC=1: {why}");
        eprintln!("skipped: {why}");
        return;
    }
    let dump = std::env::var_os("TZ_NVRTC_PTX_DIR").map(std::path::PathBuf::from);
    for arch in ["compute_80", "compute_90"] {
        let done = tz_engine::backend::cuda::nvrtc_check_all(arch).unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        assert!(!done.is_empty());
        for (file, ptx) in &done {
            assert!(ptx.contains(".entry"), "{arch} {file}: no kernel entry in the PTX");
            if let Some(dir) = &dump {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(dir.join(format!("{file}.{arch}.ptx")), ptx).unwrap();
            }
        }
    }
}
