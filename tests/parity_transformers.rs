//! Parity with Hugging Face transformers on small random Qwen2 models (GQA, q/k/v biases,
//! tied and untied embeddings, f32 and bf16 weights) dumped by `tools/parity_fixture.py`:
//! response log-probs within 1e-4, greedy continuations identical, and the gradient of the
//! log-prob sum within 1e-4 relative (max |ours − theirs| / max |theirs|, per tensor).
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::{Backend, SamplingParams};
use tz_engine::model::load::load_config;
use tz_engine::model::{weights, GradDtype, Grads, LogprobWorkspace, PackedBatch, ParamLayout, Qwen2};
use tz_engine::rollout::{GenConfig, Generator};

#[derive(Deserialize)]
struct ScoreItem {
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
    logprobs: Vec<f32>,
}

#[derive(Deserialize)]
struct GreedyItem {
    prompt_ids: Vec<u32>,
    max_new_tokens: usize,
    tokens: Vec<u32>,
}

#[derive(Deserialize)]
struct Expected {
    score: Vec<ScoreItem>,
    greedy: Vec<GreedyItem>,
    loss: f64,
}

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity").join(case)
}

fn check_case(case: &str) {
    let dir = fixture_dir(case);
    let expected: Expected = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let be = CpuBackend::new();
    let cfg = load_config(&dir).unwrap();
    let layout = ParamLayout::new(&cfg);
    let host = weights::load_params(&dir, &cfg, &layout).unwrap();
    let model = Qwen2::from_host(&be, cfg.clone(), &host).unwrap();

    // Log-probs, all sequences packed into one batch.
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = expected.score.iter().map(|s| (s.prompt_ids.clone(), s.response_ids.clone())).collect();
    let batch = PackedBatch::from_pairs(&pairs).unwrap();
    let mut ws =
        LogprobWorkspace::new(&be, &cfg, batch.n_rows(), batch.n_seqs(), batch.n_targets(), tz_engine::model::Keep::AllLayers).unwrap();
    ws.load(&be, &cfg, &batch).unwrap();
    model.forward_logprobs(&be, &ws, false).unwrap();
    let mut lp = vec![0f32; batch.n_targets()];
    be.download_f32(ws.logp(), &mut lp).unwrap();
    let want: Vec<f32> = expected.score.iter().flat_map(|s| s.logprobs.iter().copied()).collect();
    let mut worst = 0f32;
    for (i, (a, b)) in lp.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-4, "{case}: logprob {i}: ours {a} vs transformers {b}");
        worst = worst.max((a - b).abs());
    }
    let total: f64 = lp.iter().map(|&x| x as f64).sum();
    assert!((total - expected.loss).abs() < 1e-3, "{case}: log-prob sum {total} vs {}", expected.loss);

    // Gradient of the log-prob sum.
    be.upload_f32(ws.dlogp(), &vec![1.0; batch.n_targets()]).unwrap();
    let grads = Grads::new(&be, &layout, GradDtype::F32).unwrap();
    model.backward_logprobs(&be, &ws, &grads, false).unwrap();
    let mut g = vec![0f32; layout.total];
    g.copy_from_slice(&grads.to_host(&be).unwrap());
    let bytes = std::fs::read(dir.join("grads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut worst_g = 0f32;
    for e in &layout.entries {
        let t = st.tensor(&e.name).unwrap_or_else(|_| panic!("{case}: no gradient for {}", e.name));
        assert_eq!(t.shape(), e.shape.as_slice(), "{case}: {}", e.name);
        let theirs: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let ours = &g[e.offset..e.offset + e.numel()];
        let scale = theirs.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let err = ours.iter().zip(&theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "{case}: gradient of {} off by {err:.2e} relative", e.name);
        worst_g = worst_g.max(err);
    }
    // Activation checkpointing: the same gradients, bit for bit.
    let mut ws_r =
        LogprobWorkspace::new(&be, &cfg, batch.n_rows(), batch.n_seqs(), batch.n_targets(), tz_engine::model::Keep::LayerInputs).unwrap();
    ws_r.load(&be, &cfg, &batch).unwrap();
    model.forward_logprobs(&be, &ws_r, false).unwrap();
    be.upload_f32(ws_r.dlogp(), &vec![1.0; batch.n_targets()]).unwrap();
    let grads_r = Grads::new(&be, &layout, GradDtype::F32).unwrap();
    model.backward_logprobs(&be, &ws_r, &grads_r, false).unwrap();
    let mut g_r = vec![0f32; layout.total];
    g_r.copy_from_slice(&grads_r.to_host(&be).unwrap());
    let differing = g.iter().zip(&g_r).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differing, 0, "{case}: {differing} gradient values differ with recompute on");

    // Greedy continuations.
    for (k, gi) in expected.greedy.iter().enumerate() {
        let gen = Generator::new(&be, &cfg, 1, gi.prompt_ids.len(), gi.prompt_ids.len() + gi.max_new_tokens).unwrap();
        let gc = GenConfig {
            max_new_tokens: gi.max_new_tokens,
            sampling: SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 },
            stop_token_ids: vec![],
            stop_strings: vec![],
            turn_tokens: 0,
        };
        let out = gen.generate(&be, &model, std::slice::from_ref(&gi.prompt_ids), &[0], &gc, &|_| String::new()).unwrap();
        assert_eq!(out[0].tokens, gi.tokens, "{case}: greedy continuation {k}");
    }
    eprintln!("{case}: worst logprob error {worst:.2e}, worst gradient error {worst_g:.2e}");
}

#[test]
fn parity_tied_f32() {
    check_case("tied-f32");
}

#[test]
fn parity_untied_f32() {
    check_case("untied-f32");
}

#[test]
fn parity_tied_bf16() {
    check_case("tied-bf16");
}

#[test]
fn parity_untied_bf16() {
    check_case("untied-bf16");
}
