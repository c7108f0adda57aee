//! Shared test helpers.
#![allow(dead_code, unused_macros)]

pub mod bufs;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod lora;

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

use tz_engine::backend::Backend;
use tz_engine::model::{Qwen2, Qwen2Config};
use tz_engine::train::optim::{AdamWConfig, Optimizer};

/// One AdamW step with zero gradients and weight decay: matrices shrink by (1 − lr·wd), norms
/// and biases (the layout's no-decay entries) stay exactly as they were.
pub fn check_weight_decay_only_on_matrices<B: Backend>(be: &B, cfg: &Qwen2Config) {
    let layout = tz_engine::model::ParamLayout::new(cfg);
    // Norms 1, biases 0 from the preset init; give biases a value so decay would show.
    let mut host = tz_engine::model::presets::init_params(cfg, 3);
    for e in layout.entries.iter().filter(|e| e.name.ends_with(".bias")) {
        host[e.offset..e.offset + e.numel()].iter_mut().enumerate().for_each(|(i, x)| *x = 0.25 + 0.01 * (i % 5) as f32);
    }
    let model = Qwen2::from_host(be, cfg.clone(), &host).unwrap();
    let (lr, wd) = (0.5f32, 0.2f32);
    let mut opt = Optimizer::new(be, &model, AdamWConfig { weight_decay: wd, ..AdamWConfig::default() }).unwrap();
    opt.init_master(be, &host).unwrap();
    opt.zero_grad(be).unwrap();
    assert!(!opt.step(be, &model, lr).unwrap().skipped);
    let after = opt.params_to_host(be, &model).unwrap();
    let mut seen = (0, 0);
    for e in &layout.entries {
        for i in e.offset..e.offset + e.numel() {
            let want = if e.decay { host[i] * (1.0 - lr * wd) } else { host[i] };
            assert!(
                (after[i] - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{} [{}]: {} after the step, want {want} (decay {})",
                e.name,
                i - e.offset,
                after[i],
                e.decay
            );
        }
        if e.decay {
            seen.0 += 1
        } else {
            seen.1 += 1
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0, "the layout must have both kinds of entries");
}
