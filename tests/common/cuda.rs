//! The CUDA backend for integration tests, or a printed reason to skip.

use tz_engine::backend::cuda::CudaBackend;

/// `Some(backend)` on a machine with an NVIDIA GPU and driver; otherwise prints why the
/// test is skipped (to stderr: visible with `--nocapture`) and returns `None`.
/// `TZ_REQUIRE_GPU=1` turns "no GPU" into a test failure (device runs must not skip silently).
pub fn cuda_or_skip() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            if matches!(std::env::var("TZ_REQUIRE_GPU").as_deref(), Ok("1")) {
                panic!("TZ_REQUIRE_GPU=1 but the CUDA backend is unavailable: {e:#}");
            }
            eprintln!("skipped: CUDA backend unavailable: {e:#}");
            None
        }
    }
}
