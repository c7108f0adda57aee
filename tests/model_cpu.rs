//! Whole-model checks on the CPU oracle with small random Qwen2 models: gradients of a
//! function of per-token log-probs (and entropies) against central finite differences,
//! KV-cache decoding against full recomputation, and batch-independence of sampling.
use tz_engine::backend::cpu::CpuBackend;
use tz_engine::backend::{Backend, SamplingParams, View};
use tz_engine::model::{GradDtype, Grads, Keep, LogprobWorkspace, PackedBatch, ParamLayout, Qwen2, Qwen2Config};
use tz_engine::rng::Rng;
use tz_engine::rollout::{Finish, GenConfig, Generator};

mod common;

fn tiny_cfg(tied: bool) -> Qwen2Config {
    // tiny-2l's architecture at a size where finite differences are quick.
    let base = tz_engine::model::presets::preset("tiny-2l").unwrap().cfg;
    Qwen2Config {
        vocab_size: 23,
        hidden_size: 16,
        intermediate_size: 24,
        head_dim: 4,
        max_position_embeddings: 64,
        tie_word_embeddings: tied,
        ..base
    }
}

/// Random parameters large enough that log-probs are far from uniform.
fn random_params(cfg: &Qwen2Config, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed);
    let mut p = vec![0f32; layout.total];
    for e in &layout.entries {
        let is_norm = e.name.ends_with("norm.weight");
        for x in &mut p[e.offset..e.offset + e.numel()] {
            let z = rng.normal() as f32;
            *x = if is_norm {
                1.0 + 0.2 * z
            } else if e.name.ends_with("bias") {
                0.1 * z
            } else {
                0.4 * z
            };
        }
    }
    p
}

fn batch() -> PackedBatch {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        vec![(vec![1, 5, 7], vec![3, 9, 2, 11]), (vec![4], vec![8]), (vec![2, 2, 6, 19, 20], vec![0, 21, 13])];
    PackedBatch::from_pairs(&pairs).unwrap()
}

/// L = Σ_j w_j·logp_j + Σ_j u_j·entropy_j for fixed random weights.
fn loss(be: &CpuBackend, cfg: &Qwen2Config, params: &[f32], b: &PackedBatch, w: &[f32], u: &[f32]) -> f64 {
    let model = Qwen2::from_host(be, cfg.clone(), params).unwrap();
    let mut ws = LogprobWorkspace::new(be, cfg, b.n_rows(), b.n_seqs(), b.n_targets(), Keep::Nothing).unwrap();
    ws.load(be, cfg, b).unwrap();
    model.forward_logprobs(be, &ws, true).unwrap();
    let mut lp = vec![0f32; b.n_targets()];
    let mut ent = vec![0f32; b.n_targets()];
    be.download_f32(ws.logp(), &mut lp).unwrap();
    be.download_f32(ws.entropy(), &mut ent).unwrap();
    lp.iter().zip(w).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>()
        + ent.iter().zip(u).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>()
}

fn check_gradients(tied: bool) {
    let be = CpuBackend::new();
    let cfg = tiny_cfg(tied);
    let params = random_params(&cfg, 11);
    let b = batch();
    let mut rng = Rng::new(5);
    let w: Vec<f32> = (0..b.n_targets()).map(|_| rng.normal() as f32).collect();
    let u: Vec<f32> = (0..b.n_targets()).map(|_| 0.5 * rng.normal() as f32).collect();

    let model = Qwen2::from_host(&be, cfg.clone(), &params).unwrap();
    let mut ws = LogprobWorkspace::new(&be, &cfg, b.n_rows(), b.n_seqs(), b.n_targets(), Keep::AllLayers).unwrap();
    ws.load(&be, &cfg, &b).unwrap();
    model.forward_logprobs(&be, &ws, true).unwrap();
    be.upload_f32(ws.dlogp(), &w).unwrap();
    be.upload_f32(ws.dentropy(), &u).unwrap();
    let grads = Grads::new(&be, &model.layout, GradDtype::F32).unwrap();
    model.backward_logprobs(&be, &ws, &grads, true).unwrap();
    let mut g = vec![0f32; model.layout.total];
    g.copy_from_slice(&grads.to_host(&be).unwrap());

    // Check a few coordinates of every tensor.
    let eps = 1e-2f32;
    let mut worst = 0.0f64;
    for e in &model.layout.entries {
        for k in 0..4 {
            let i = e.offset + (k * 7919 + 13) % e.numel();
            let mut p = params.clone();
            p[i] += eps;
            let up = loss(&be, &cfg, &p, &b, &w, &u);
            p[i] -= 2.0 * eps;
            let down = loss(&be, &cfg, &p, &b, &w, &u);
            let fd = (up - down) / (2.0 * eps as f64);
            let an = g[i] as f64;
            let err = (fd - an).abs() / (fd.abs().max(an.abs()).max(0.05));
            assert!(err < 3e-2, "{} [{}]: finite difference {fd:.6} vs backward {an:.6}", e.name, i - e.offset);
            worst = worst.max(err);
        }
    }
    eprintln!("tied={tied}: worst relative gradient error {worst:.2e}");
}

#[test]
fn gradients_match_finite_differences_tied() {
    check_gradients(true);
}

#[test]
fn gradients_match_finite_differences_untied() {
    check_gradients(false);
}

/// Gradients (and log-probs, entropies) of one batch with every layer's activations kept.
fn grads_with(be: &CpuBackend, cfg: &Qwen2Config, params: &[f32], b: &PackedBatch, keep: Keep) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let model = Qwen2::from_host(be, cfg.clone(), params).unwrap();
    let mut ws = LogprobWorkspace::new(be, cfg, b.n_rows(), b.n_seqs(), b.n_targets(), keep).unwrap();
    ws.load(be, cfg, b).unwrap();
    model.forward_logprobs(be, &ws, true).unwrap();
    let mut rng = Rng::new(17);
    let w: Vec<f32> = (0..b.n_targets()).map(|_| rng.normal() as f32).collect();
    be.upload_f32(ws.dlogp(), &w).unwrap();
    be.upload_f32(ws.dentropy(), &w).unwrap();
    let grads = Grads::new(be, &model.layout, GradDtype::F32).unwrap();
    model.backward_logprobs(be, &ws, &grads, true).unwrap();
    let read = |v: View<CpuBackend>| {
        let mut h = vec![0f32; v.len()];
        be.download_f32(v, &mut h).unwrap();
        h
    };
    (grads.to_host(be).unwrap(), read(ws.logp()), read(ws.entropy()))
}

/// Activation checkpointing (each layer's input kept, its forward recomputed in the backward)
/// runs the same ops in the same order: bit-identical gradients, on the tiny preset's shape
/// and on a tied/untied small model.
#[test]
fn recompute_gives_bit_identical_gradients() {
    let be = CpuBackend::new();
    let tiny = tz_engine::model::presets::preset("tiny").unwrap().cfg;
    for (cfg, seed) in [(tiny_cfg(true), 21), (tiny_cfg(false), 22), (tiny, 23)] {
        let params = random_params(&cfg, seed);
        let b = batch();
        let kept = grads_with(&be, &cfg, &params, &b, Keep::AllLayers);
        let recomputed = grads_with(&be, &cfg, &params, &b, Keep::LayerInputs);
        assert!(kept.0.iter().any(|&g| g != 0.0));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&kept.0), bits(&recomputed.0), "gradients differ with recompute ({} layers)", cfg.num_hidden_layers);
        assert_eq!(bits(&kept.1), bits(&recomputed.1));
        assert_eq!(bits(&kept.2), bits(&recomputed.2));
    }
}

/// Log-probs of a packed batch equal those of each sequence run alone.
#[test]
fn packing_does_not_leak_across_sequences() {
    let be = CpuBackend::new();
    let cfg = tiny_cfg(false);
    let model = Qwen2::from_host(&be, cfg.clone(), &random_params(&cfg, 3)).unwrap();
    let b = batch();
    let run = |b: &PackedBatch| {
        let mut ws = LogprobWorkspace::new(&be, &cfg, b.n_rows(), b.n_seqs(), b.n_targets(), Keep::Nothing).unwrap();
        ws.load(&be, &cfg, b).unwrap();
        model.forward_logprobs(&be, &ws, false).unwrap();
        let mut lp = vec![0f32; b.n_targets()];
        be.download_f32(ws.logp(), &mut lp).unwrap();
        lp
    };
    let all = run(&b);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        vec![(vec![1, 5, 7], vec![3, 9, 2, 11]), (vec![4], vec![8]), (vec![2, 2, 6, 19, 20], vec![0, 21, 13])];
    let mut alone = vec![];
    for p in &pairs {
        alone.extend(run(&PackedBatch::from_pairs(std::slice::from_ref(p)).unwrap()));
    }
    for (a, b) in all.iter().zip(&alone) {
        assert!((a - b).abs() < 1e-5, "packed {a} vs alone {b}");
    }
    let spread = all.iter().map(|x| (x - all[0]).abs()).fold(0f32, f32::max);
    assert!(spread > 0.5, "log-probs should be far from uniform");
}

fn gen_cfg(temperature: f32, max_new: usize) -> GenConfig {
    GenConfig {
        max_new_tokens: max_new,
        sampling: SamplingParams { temperature, top_k: 0, top_p: 1.0 },
        stop_token_ids: vec![],
        stop_strings: vec![],
        turn_tokens: 0,
    }
}

/// Greedy decoding with the KV cache picks, at every step, the token a full recomputation
/// scores highest.
#[test]
fn kv_cache_greedy_matches_full_recompute() {
    let be = CpuBackend::new();
    let cfg = tiny_cfg(true);
    let model = Qwen2::from_host(&be, cfg.clone(), &random_params(&cfg, 8)).unwrap();
    let prompts = vec![vec![1u32, 2, 3], vec![7u32], vec![4u32, 9, 9, 1, 0, 22]];
    let gen = Generator::new(&be, &cfg, 2, 6, 20).unwrap();
    let outs = gen.generate(&be, &model, &prompts, &[1, 2, 3], &gen_cfg(0.0, 10), &|_| String::new()).unwrap();
    for (p, o) in prompts.iter().zip(&outs) {
        assert_eq!(o.tokens.len(), 10);
        for t in 0..o.tokens.len() {
            // Score every candidate token at this step; the generated one must be the best.
            let mut best = (f32::NEG_INFINITY, 0u32);
            let mut chosen = f32::NAN;
            for cand in 0..cfg.vocab_size as u32 {
                let mut resp = o.tokens[..t].to_vec();
                resp.push(cand);
                let b = PackedBatch::from_pairs(&[(p.clone(), resp)]).unwrap();
                let mut ws = LogprobWorkspace::new(&be, &cfg, b.n_rows(), 1, b.n_targets(), Keep::Nothing).unwrap();
                ws.load(&be, &cfg, &b).unwrap();
                model.forward_logprobs(&be, &ws, false).unwrap();
                let mut lp = vec![0f32; b.n_targets()];
                be.download_f32(ws.logp(), &mut lp).unwrap();
                let last = lp[t];
                if last > best.0 {
                    best = (last, cand);
                }
                if cand == o.tokens[t] {
                    chosen = last;
                }
            }
            assert!(chosen >= best.0 - 1e-5, "step {t}: generated {} (logp {chosen}) but {} scores {}", o.tokens[t], best.1, best.0);
        }
    }
}

/// A sequence's sampled tokens do not depend on what else is in the batch.
#[test]
fn sampling_is_batch_independent() {
    let be = CpuBackend::new();
    let cfg = tiny_cfg(false);
    let model = Qwen2::from_host(&be, cfg.clone(), &random_params(&cfg, 9)).unwrap();
    let prompts = vec![vec![1u32, 2, 3], vec![7u32, 8], vec![4u32, 9, 9, 1]];
    let seeds = [101, 202, 303];
    let gen3 = Generator::new(&be, &cfg, 3, 4, 24).unwrap();
    let together = gen3.generate(&be, &model, &prompts, &seeds, &gen_cfg(1.0, 16), &|_| String::new()).unwrap();
    let gen1 = Generator::new(&be, &cfg, 1, 4, 24).unwrap();
    for i in 0..3 {
        let alone = gen1.generate(&be, &model, &prompts[i..i + 1], &seeds[i..i + 1], &gen_cfg(1.0, 16), &|_| String::new()).unwrap();
        assert_eq!(alone[0].tokens, together[i].tokens, "sequence {i}");
    }
    assert_ne!(together[0].tokens, together[1].tokens);
}

#[test]
fn weight_decay_only_on_matrices() {
    for tied in [true, false] {
        common::check_weight_decay_only_on_matrices(&CpuBackend::new(), &tiny_cfg(tied));
    }
}

/// Multi-turn generation keeps the KV cache across turns: after each reply the environment's
/// tokens go through the layers as extra decode rows (more of them than the generator has
/// slots, so they take several passes), and every next reply is the one a fresh generation
/// from the whole history (re-prefilled) would give. The environment spans mark exactly the
/// appended tokens, which are not targets of the packed batch.
#[test]
fn multi_turn_generation_matches_reprefilling_the_history() {
    let be = CpuBackend::new();
    let cfg = tiny_cfg(true);
    let model = Qwen2::from_host(&be, cfg.clone(), &random_params(&cfg, 8)).unwrap();
    let prompts = vec![vec![1u32, 2, 3], vec![7u32], vec![4u32, 9, 9, 1, 0, 22]];
    // Two slots, observations of 3 tokens: the appended rows overflow one pass.
    let gen = Generator::new(&be, &cfg, 2, 6, 40).unwrap();
    let gc = GenConfig { turn_tokens: 4, ..gen_cfg(0.0, 30) };
    let obs = |i: usize, turn: usize| vec![(10 + i + turn) as u32, 5, (20 + turn) as u32];
    let mut turns = vec![0usize; prompts.len()];
    let mut replies: Vec<Vec<Vec<u32>>> = vec![vec![]; prompts.len()];
    let mut next = |i: usize, reply: &[u32], f: Finish| -> anyhow::Result<Option<Vec<u32>>> {
        assert_eq!(f, Finish::Length, "no stop rules: each reply ends at the turn limit");
        assert_eq!(reply.len(), 4);
        replies[i].push(reply.to_vec());
        turns[i] += 1;
        Ok((turns[i] < 3).then(|| obs(i, turns[i])))
    };
    let outs = gen.generate_turns(&be, &model, None, &prompts, &[1, 2, 3], &gc, &|_| String::new(), &mut next).unwrap();
    let single = Generator::new(&be, &cfg, 1, 30, 40).unwrap();
    for (i, (p, o)) in prompts.iter().zip(&outs).enumerate() {
        assert_eq!(replies[i].len(), 3, "sequence {i} ends after its third reply");
        assert_eq!(o.tokens.len(), 3 * 4 + 2 * 3);
        assert_eq!(o.env_spans, vec![[4, 7], [11, 14]]);
        // Each reply again, from the history re-prefilled.
        let mut history = p.clone();
        for (turn, reply) in replies[i].iter().enumerate() {
            let fresh = single.generate(&be, &model, &[history.clone()], &[1 + i as u64], &gen_cfg(0.0, 4), &|_| String::new()).unwrap();
            assert_eq!(&fresh[0].tokens, reply, "sequence {i}, turn {turn}");
            history.extend_from_slice(reply);
            if turn < 2 {
                history.extend(obs(i, turn + 1));
            }
        }
        assert_eq!(&history[p.len()..], o.tokens.as_slice());
        let b = PackedBatch::from_pairs(&[(p.as_slice(), o.tokens.as_slice(), o.env_spans.as_slice())]).unwrap();
        assert_eq!(b.n_targets(), 12, "only the replies are targets");
        assert_eq!(tz_engine::model::agent_tokens(o.tokens.len(), &o.env_spans), 12);
        let want: Vec<u32> = replies[i].concat();
        assert_eq!(b.target_tok, want);
    }
}
