//! Low-rank adapters on the CPU oracle (src/model/lora.rs): zero-initialized B leaves the base
//! model's log-probs bit-unchanged; adapted log-probs equal the merged model's; adapter
//! gradients equal the chain rule through the merged model's weight gradient (an independent,
//! already-tested backward) and central finite differences; recompute (`Keep::LayerInputs`)
//! gives the same gradients as keeping every layer; a workspace without adapter scratch is a
//! clear error. tests/model_cuda.rs runs the same side (`common::lora`) on CUDA against it.
mod common;

use common::lora::{case, lora_side, Case, LoraSide};
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::model::lora::{Place, Target};
use tz_engine::model::{GradDtype, Grads, Keep, LogprobWorkspace, Lora, ParamLayout, Qwen2, WithAdapters};

fn side(c: &Case, adapters: &[f32], keep: Keep) -> LoraSide {
    lora_side(&CpuBackend::new(), &c.cfg, &c.host, &c.layout, adapters, &c.batch, &c.w, keep)
}

fn all() -> Vec<Target> {
    Target::ALL.to_vec()
}

#[test]
fn zero_b_leaves_the_base_unchanged() {
    let c = case(all(), 1);
    let s = side(&c, &c.layout.init_params(9), Keep::AllLayers);
    assert_eq!(s.logp, s.base_logp);
    // ... and the gradient reaches only B (dA = scale·Bᵀ·… = 0).
    for e in &c.layout.entries {
        let g = &s.grads[e.offset..e.offset + e.numel()];
        if e.name.ends_with("lora_A.weight") {
            assert!(g.iter().all(|&x| x == 0.0), "{}", e.name);
        } else {
            assert!(g.iter().any(|&x| x != 0.0), "{}", e.name);
        }
    }
}

/// Log-probs of the base with the adapters merged in (`LoraLayout::merge_into`), and the
/// merged model's full weight gradient of Σ w·logp.
fn merged(c: &Case) -> (Vec<f32>, Vec<f32>, ParamLayout) {
    let be = CpuBackend::new();
    let base = ParamLayout::new(&c.cfg);
    let mut m = c.host.clone();
    c.layout.merge_into(&mut m, &base, &c.adapters).unwrap();
    let model = Qwen2::from_host(&be, c.cfg.clone(), &m).unwrap();
    let b = &c.batch;
    let mut ws = LogprobWorkspace::new(&be, &c.cfg, b.n_rows(), b.n_seqs(), b.n_targets(), Keep::AllLayers).unwrap();
    ws.load(&be, &c.cfg, b).unwrap();
    model.forward_logprobs(&be, &ws, false).unwrap();
    let mut logp = vec![0f32; b.n_targets()];
    tz_engine::backend::Backend::download_f32(&be, ws.logp().slice(0, b.n_targets()), &mut logp).unwrap();
    tz_engine::backend::Backend::upload_f32(&be, ws.dlogp().slice(0, b.n_targets()), &c.w).unwrap();
    let grads = Grads::new(&be, &base, GradDtype::F32).unwrap();
    grads.zero(&be).unwrap();
    model.backward_logprobs(&be, &ws, &grads, false).unwrap();
    (logp, grads.to_host(&be).unwrap(), base)
}

#[test]
fn adapted_log_probs_equal_the_merged_model() {
    for targets in [all(), vec![Target::K, Target::Up], vec![Target::O, Target::Down]] {
        let c = case(targets.clone(), 2);
        let s = side(&c, &c.adapters, Keep::AllLayers);
        let (m, _, _) = merged(&c);
        let moved = s.logp.iter().zip(&s.base_logp).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(moved > 1e-3, "{targets:?}: the adapters barely change the model ({moved})");
        for (i, (a, b)) in s.logp.iter().zip(&m).enumerate() {
            assert!((a - b).abs() < 2e-5, "{targets:?}[{i}]: adapted {a} vs merged {b}");
        }
    }
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0);
    got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / scale
}

/// dL/dA = s·Bᵀ·G and dL/dB = s·G·Aᵀ, with G the merged weight's gradient rows of the target.
#[test]
fn adapter_gradients_follow_the_chain_rule_through_the_merged_weights() {
    let c = case(all(), 3);
    let s = side(&c, &c.adapters, Keep::AllLayers);
    let (_, gw, base) = merged(&c);
    let (r, sc) = (c.layout.rank(), c.layout.scale());
    for (l, slots) in c.layout.layers.iter().enumerate() {
        let lo = &base.layers[l];
        for t in Target::ALL {
            let Some(o) = slots[t.index()] else { continue };
            let (inp, out) = t.dims(&c.cfg);
            let row0 = match t.place(&c.cfg) {
                Place::Whole => 0,
                Place::Fused { col, .. } => col,
            };
            let w0 = match t {
                Target::Q | Target::K | Target::V => lo.qkv_w,
                Target::Gate | Target::Up => lo.gate_up_w,
                Target::O => lo.o_w,
                Target::Down => lo.down_w,
            } + row0 * inp;
            let g = &gw[w0..w0 + out * inp];
            let (a, b) = (&c.adapters[o.a..o.a + r * inp], &c.adapters[o.b..o.b + out * r]);
            let mut da = vec![0f32; r * inp];
            let mut db = vec![0f32; out * r];
            for i in 0..out {
                for k in 0..r {
                    for j in 0..inp {
                        da[k * inp + j] += sc * b[i * r + k] * g[i * inp + j];
                        db[i * r + k] += sc * g[i * inp + j] * a[k * inp + j];
                    }
                }
            }
            let ea = max_rel(&s.grads[o.a..o.a + r * inp], &da);
            let eb = max_rel(&s.grads[o.b..o.b + out * r], &db);
            assert!(ea < 1e-4 && eb < 1e-4, "layer {l} {t:?}: dA {ea:.2e}, dB {eb:.2e}");
        }
    }
}

#[test]
fn adapter_gradients_match_finite_differences() {
    let c = case(all(), 4);
    let s = side(&c, &c.adapters, Keep::AllLayers);
    let loss = |p: &[f32]| -> f64 { side(&c, p, Keep::AllLayers).logp.iter().zip(&c.w).map(|(l, w)| *l as f64 * *w as f64).sum() };
    let h = 2e-3f32;
    let mut checked = 0;
    for e in c.layout.entries.iter().step_by(3) {
        // The coordinate with the largest gradient in this tensor.
        let g = &s.grads[e.offset..e.offset + e.numel()];
        let k = e.offset + (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
        let (mut plus, mut minus) = (c.adapters.clone(), c.adapters.clone());
        plus[k] += h;
        minus[k] -= h;
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
        let an = s.grads[k] as f64;
        assert!((fd - an).abs() <= 2e-2 * an.abs() + 2e-3, "{} [{k}]: analytic {an:.5}, finite differences {fd:.5}", e.name);
        checked += 1;
    }
    assert!(checked >= 4);
}

#[test]
fn recompute_gives_the_same_adapter_gradients() {
    let c = case(all(), 5);
    let (a, b) = (side(&c, &c.adapters, Keep::AllLayers), side(&c, &c.adapters, Keep::LayerInputs));
    assert_eq!(a.logp, b.logp);
    assert_eq!(a.grads, b.grads);
}

#[test]
fn a_workspace_without_adapter_scratch_is_an_error() {
    let c = case(all(), 6);
    let be = CpuBackend::new();
    let model = Qwen2::from_host(&be, c.cfg.clone(), &c.host).unwrap();
    let lora = Lora::from_host(&be, c.layout.clone(), &c.adapters).unwrap();
    let b = &c.batch;
    let mut ws = LogprobWorkspace::new(&be, &c.cfg, b.n_rows(), b.n_seqs(), b.n_targets(), Keep::Nothing).unwrap();
    ws.load(&be, &c.cfg, b).unwrap();
    let e = model.forward_logprobs_from(&be, &ws, false, &WithAdapters::resident(&model, &lora)).unwrap_err();
    assert!(e.to_string().contains("without adapter scratch"), "{e}");
}
