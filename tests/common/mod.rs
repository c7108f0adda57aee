//! Shared test helpers.
#![allow(dead_code, unused_macros)]

#[cfg(feature = "cuda")]
pub mod cuda;

/// Stamps backend-generic test cases (`fn case<B: Backend>(be: &B)`) once per backend, in the
/// style of candle's `test_device!`: `backend_test!(a, b);` makes the tests `cpu::a`, `cpu::b`
/// (always run) and, with the `cuda` feature, `cuda::a`, `cuda::b`, each on the backend of
/// `common::cuda::cuda_or_skip()` (a printed skip without a GPU; `TZ_REQUIRE_GPU=1` fails).
/// One invocation per test file, listing every case (it defines the `cpu` and `cuda` modules).
/// Needs `#[macro_use] mod common;` in the test file.
macro_rules! backend_test {
    ($($case:ident),+ $(,)?) => {
        mod cpu {
            $(
                #[test]
                fn $case() {
                    super::$case(&tz_engine::backend::cpu::CpuBackend::new());
                }
            )+
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            $(
                #[test]
                fn $case() {
                    if let Some(be) = crate::common::cuda::cuda_or_skip() {
                        super::$case(&be);
                    }
                }
            )+
        }
    };
}
