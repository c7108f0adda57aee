//! A LoRA model's log-probs and adapter gradients, the same code on any backend (tests/lora.rs
//! on the CPU, tests/model_cuda.rs on CUDA against it).
use tz_engine::backend::{Backend, View};
use tz_engine::model::lora::Target;
use tz_engine::model::{
    Grads, Keep, LogprobWorkspace, Lora, LoraConfig, LoraLayout, PackedBatch, ParamLayout, Qwen2, Qwen2Config, Resident, WithAdapters,
};
use tz_engine::rng::Rng;

pub struct LoraSide {
    pub logp: Vec<f32>,
    /// Adapter gradients of Σ w·logp, in the adapter layout's order.
    pub grads: Vec<f32>,
    /// The base's log-probs from the same objects with the adapters disabled.
    pub base_logp: Vec<f32>,
}

fn download<B: Backend>(be: &B, v: View<B>) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    be.download_f32(v, &mut out).unwrap();
    out
}

#[allow(clippy::too_many_arguments)]
pub fn lora_side<B: Backend>(
    be: &B,
    cfg: &Qwen2Config,
    host: &[f32],
    layout: &LoraLayout,
    adapters: &[f32],
    batch: &PackedBatch,
    w: &[f32],
    keep: Keep,
) -> LoraSide {
    let model = Qwen2::from_host(be, cfg.clone(), host).unwrap();
    let lora = Lora::from_host(be, layout.clone(), adapters).unwrap();
    let mut ws = LogprobWorkspace::new_with(be, cfg, batch.n_rows(), batch.n_seqs(), batch.n_targets(), keep, Some(layout)).unwrap();
    ws.load(be, cfg, batch).unwrap();
    let src = WithAdapters::resident(&model, &lora);
    let grads = Grads::for_adapters(be, layout).unwrap();
    grads.zero(be).unwrap();
    model.forward_logprobs_from(be, &ws, false, &src).unwrap();
    let logp = download(be, ws.logp().slice(0, batch.n_targets()));
    be.upload_f32(ws.dlogp().slice(0, batch.n_targets()), w).unwrap();
    model.backward_logprobs_from(be, &ws, &grads, false, &src).unwrap();
    let grads = grads.to_host(be).unwrap();
    model.forward_logprobs_from(be, &ws, false, &Resident(&model)).unwrap();
    let base_logp = download(be, ws.logp().slice(0, batch.n_targets()));
    LoraSide { logp, grads, base_logp }
}

/// A random tiny model (vocab 200, 2 layers), rank-4 adapters on `targets` with B non-zero, a
/// packed batch of 3 sequences and random log-prob weights `w`.
pub struct Case {
    pub cfg: Qwen2Config,
    pub host: Vec<f32>,
    pub layout: LoraLayout,
    pub adapters: Vec<f32>,
    pub batch: PackedBatch,
    pub w: Vec<f32>,
}

pub fn case(targets: Vec<Target>, seed: u64) -> Case {
    let cfg = Qwen2Config { vocab_size: 200, ..tz_engine::model::presets::preset("tiny-2l").unwrap().cfg };
    let base = ParamLayout::new(&cfg);
    let mut rng = Rng::new(seed);
    let mut host: Vec<f32> = (0..base.total).map(|_| 0.08 * rng.normal() as f32).collect();
    for t in base.entries.iter().filter(|t| t.name.ends_with("norm.weight")) {
        host[t.offset..t.offset + t.numel()].iter_mut().for_each(|x| *x += 1.0);
    }
    let layout = LoraLayout::new(&cfg, &LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets, rslora: false }).unwrap();
    // A as peft initializes it, B non-zero so the adapters change the model.
    let mut adapters = layout.init_params(seed + 1);
    for e in layout.entries.iter().filter(|e| e.name.ends_with("lora_B.weight")) {
        adapters[e.offset..e.offset + e.numel()].iter_mut().for_each(|x| *x = 0.05 * rng.normal() as f32);
    }
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = [(5usize, 9usize), (12, 6), (3, 11)]
        .iter()
        .map(|&(p, r)| ((0..p).map(|_| rng.below(200) as u32).collect(), (0..r).map(|_| rng.below(200) as u32).collect()))
        .collect();
    let batch = PackedBatch::from_pairs(&pairs).unwrap();
    let w = (0..batch.n_targets()).map(|_| rng.normal() as f32).collect();
    Case { cfg, host, layout, adapters, batch, w }
}
