//! Parity with Hugging Face peft (tests/fixtures/lora, made by `tools/lora_parity.py fixture`):
//! an adapter peft saved loads here (`model::peft::load_adapter`) and the adapted model's
//! response log-probs match peft's within 1e-4, the merged model's (`LoraLayout::merge_into`)
//! match peft's `merge_and_unload` within 1e-4, and the gradient of the log-prob sum w.r.t.
//! every adapter tensor matches torch autograd within 1e-4 relative (max |ours − theirs| /
//! max |theirs|, per tensor). Saving the loaded adapter and loading it again is lossless.
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::Backend;
use tz_engine::model::load::load_config;
use tz_engine::model::{peft, weights, Grads, Keep, LogprobWorkspace, Lora, PackedBatch, ParamLayout, Qwen2, Resident, WithAdapters};

#[derive(Deserialize)]
struct Seq {
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Expected {
    base: String,
    sequences: Vec<Seq>,
    logprobs: Vec<Vec<f32>>,
    merged_logprobs: Vec<Vec<f32>>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn logprobs(
    be: &CpuBackend,
    model: &Qwen2<CpuBackend>,
    lora: Option<&Lora<CpuBackend>>,
    batch: &PackedBatch,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let cfg = &model.cfg;
    let mut ws =
        LogprobWorkspace::new_with(be, cfg, batch.n_rows(), batch.n_seqs(), batch.n_targets(), Keep::AllLayers, lora.map(|l| &l.layout))
            .unwrap();
    ws.load(be, cfg, batch).unwrap();
    let res = Resident(model);
    let with = lora.map(|lora| WithAdapters::resident(model, lora));
    let src: &dyn tz_engine::model::ParamSource<CpuBackend> = match &with {
        Some(w) => w,
        None => &res,
    };
    model.forward_logprobs_from(be, &ws, false, src).unwrap();
    let mut lp = vec![0f32; batch.n_targets()];
    be.download_f32(ws.logp().slice(0, batch.n_targets()), &mut lp).unwrap();
    let grads = lora.map(|l| {
        be.upload_f32(ws.dlogp().slice(0, batch.n_targets()), &vec![1.0; batch.n_targets()]).unwrap();
        let g = Grads::for_adapters(be, &l.layout).unwrap();
        g.zero(be).unwrap();
        model.backward_logprobs_from(be, &ws, &g, false, src).unwrap();
        g.to_host(be).unwrap()
    });
    (lp, grads)
}

fn check(case: &str) {
    let dir = root().join("tests/fixtures/lora").join(case);
    let ex: Expected = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let base_dir = root().join(&ex.base);
    let be = CpuBackend::new();
    let cfg = load_config(&base_dir).unwrap();
    let layout = ParamLayout::new(&cfg);
    let host = weights::load_params(&base_dir, &cfg, &layout).unwrap();
    let model = Qwen2::from_host(&be, cfg.clone(), &host).unwrap();
    let (lora_layout, adapters) = peft::load_adapter(&dir.join("adapter"), &cfg).unwrap();
    assert_eq!(lora_layout.rank(), 4);
    assert_eq!(lora_layout.cfg.targets.len(), 7);
    let lora = Lora::from_host(&be, lora_layout.clone(), &adapters).unwrap();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = ex.sequences.iter().map(|s| (s.prompt_ids.clone(), s.response_ids.clone())).collect();
    let batch = PackedBatch::from_pairs(&pairs).unwrap();

    let (lp, grads) = logprobs(&be, &model, Some(&lora), &batch);
    let want: Vec<f32> = ex.logprobs.concat();
    let worst = lp.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "{case}: adapted log-probs differ from peft's by {worst:.2e}");

    let mut merged = host.clone();
    lora_layout.merge_into(&mut merged, &layout, &adapters).unwrap();
    let mm = Qwen2::from_host(&be, cfg.clone(), &merged).unwrap();
    let (mlp, _) = logprobs(&be, &mm, None, &batch);
    let want: Vec<f32> = ex.merged_logprobs.concat();
    let worst = mlp.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "{case}: merged log-probs differ from peft's merge_and_unload by {worst:.2e}");

    let grads = grads.unwrap();
    let theirs = std::fs::read(dir.join("grads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&theirs).unwrap();
    for e in &lora_layout.entries {
        let t = st.tensor(&e.name).unwrap_or_else(|_| panic!("{case}: no gradient for {}", e.name));
        let t: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let g = &grads[e.offset..e.offset + e.numel()];
        let scale = t.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = g.iter().zip(&t).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "{case} {}: gradient rel error {err:.2e}", e.name);
    }

    // Our save of the same adapter loads back bit-identical.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("again");
    peft::save_adapter(&out, &lora_layout, &adapters, weights::SaveDtype::F32, Some(&ex.base)).unwrap();
    let (l2, a2) = peft::load_adapter(&out, &cfg).unwrap();
    assert_eq!(l2, lora_layout);
    assert_eq!(a2, adapters);
}

#[test]
fn peft_adapter_tied_f32() {
    check("tied-f32");
}

#[test]
fn peft_adapter_untied_f32() {
    check("untied-f32");
}
