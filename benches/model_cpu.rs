//! Score and generate throughput of a tiny-preset-shaped Qwen2 on the CPU backend.
//! Throughput is reported by criterion as elements (tokens) per second.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::SamplingParams;
use tz_engine::model::{LogprobWorkspace, PackedBatch, ParamLayout, Qwen2, Qwen2Config};
use tz_engine::rng::Rng;
use tz_engine::rollout::{GenConfig, Generator};

fn tiny() -> Qwen2Config {
    // The tiny preset's architecture with a 512-token vocabulary.
    Qwen2Config { vocab_size: 512, ..tz_engine::model::presets::preset("tiny").unwrap().cfg }
}

fn model(be: &CpuBackend) -> Qwen2<CpuBackend> {
    let cfg = tiny();
    let mut rng = Rng::new(1);
    let n = ParamLayout::new(&cfg).total;
    let host: Vec<f32> = (0..n).map(|_| 0.05 * rng.normal() as f32).collect();
    Qwen2::from_host(be, cfg, &host).unwrap()
}

fn bench(c: &mut Criterion) {
    let be = CpuBackend::new();
    let m = model(&be);
    let mut rng = Rng::new(2);
    // 64 sequences of 24 prompt + 40 response tokens: a tiny-preset RL micro-batch.
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        (0..64).map(|_| ((0..24).map(|_| rng.below(512) as u32).collect(), (0..40).map(|_| rng.below(512) as u32).collect())).collect();
    let batch = PackedBatch::from_pairs(&pairs).unwrap();
    let mut ws =
        LogprobWorkspace::new(&be, &m.cfg, batch.n_rows(), batch.n_seqs(), batch.n_targets(), tz_engine::model::Keep::Nothing).unwrap();
    ws.load(&be, &m.cfg, &batch).unwrap();
    let mut g = c.benchmark_group("tiny_cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements(batch.n_rows() as u64));
    g.bench_function("score_64x64_tokens", |b| b.iter(|| m.forward_logprobs(&be, &ws, false).unwrap()));

    let prompts: Vec<Vec<u32>> = pairs.iter().map(|(p, _)| p.clone()).collect();
    let seeds: Vec<u64> = (0..64).collect();
    let gen = Generator::new(&be, &m.cfg, 64, 24, 64).unwrap();
    let gc = GenConfig {
        max_new_tokens: 40,
        sampling: SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 },
        stop_token_ids: vec![],
        stop_strings: vec![],
        turn_tokens: 0,
    };
    g.throughput(Throughput::Elements(64 * 40));
    g.bench_function("generate_64x40_new_tokens", |b| b.iter(|| gen.generate(&be, &m, &prompts, &seeds, &gc, &|_| String::new()).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
