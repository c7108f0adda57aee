//! The task layer: TinyZero-exact rewards (golden cases mirroring their Python), the solver,
//! generators, templates, parquet/JSONL loading, and property tests that the reward parser
//! never panics and stays fast on hostile input.
use proptest::prelude::*;
use std::time::Instant;
use tz_engine::task::{self, Problem, Reason, RewardKind, Template};

fn cd(nums: &[i64], target: i64, response: &str) -> (f32, Reason) {
    let s = task::score(&Problem::Countdown { nums: nums.to_vec(), target }, response, RewardKind::Tinyzero);
    (s.score, s.reason)
}

#[test]
fn countdown_golden_cases() {
    let n = [44, 19, 35];
    assert_eq!(cd(&n, 98, "<answer> 44 + 19 + 35 </answer>"), (1.0, Reason::Correct));
    assert_eq!(cd(&n, 98, "so </think>\n<answer>(44 + 19) + 35</answer>"), (1.0, Reason::Correct));
    // Only the last line counts.
    assert_eq!(cd(&n, 98, "<answer>44 + 19 + 35</answer>\nthat's it"), (0.0, Reason::NoAnswer));
    // The last answer on the last line counts.
    assert_eq!(cd(&n, 98, "<answer>44 + 19 + 35</answer> <answer>44 - 19 + 35</answer>"), (0.1, Reason::WrongValue));
    assert_eq!(cd(&n, 98, "<answer>44 - 19 + 35</answer> <answer>44 + 19 + 35</answer>"), (1.0, Reason::Correct));
    assert_eq!(cd(&n, 98, "no tags"), (0.0, Reason::NoAnswer));
    assert_eq!(cd(&n, 98, "<answer>44 + 19 + 35"), (0.0, Reason::NoAnswer));
    assert_eq!(cd(&n, 98, "<ANSWER>44 + 19 + 35</ANSWER>"), (0.0, Reason::NoAnswer));
    // Numbers: a multiset of digit runs.
    assert_eq!(cd(&n, 98, "<answer>44 + 19 + 35 + 0</answer>"), (0.1, Reason::WrongNumbers));
    assert_eq!(cd(&n, 98, "<answer>44 + 44 + 10</answer>"), (0.1, Reason::WrongNumbers));
    assert_eq!(cd(&[2, 2, 3], 7, "<answer>2 + 2 + 3</answer>"), (1.0, Reason::Correct));
    assert_eq!(cd(&n, 98, "<answer>044 + 19 + 35</answer>").1, Reason::EvalError); // Python: leading zero
                                                                                   // A decimal point splits digit runs, so TinyZero accepts 1.5 as "1" and "5".
    assert_eq!(cd(&[1, 5, 2], 3, "<answer>1.5 * 2</answer>"), (1.0, Reason::Correct));
    assert_eq!(cd(&[1, 5, 3], 3, "<answer>1.5 * 2</answer>"), (0.1, Reason::WrongNumbers));
    // Characters and evaluation.
    assert_eq!(cd(&n, 98, "<answer>44 + 19 + 35 = 98</answer>"), (0.1, Reason::WrongNumbers));
    assert_eq!(cd(&[4, 19, 35], 98, "<answer>4 + 19 + 35 x</answer>"), (0.1, Reason::InvalidChars));
    assert_eq!(cd(&[2, 3, 1], 8, "<answer>2**3*1</answer>"), (0.1, Reason::EvalError)); // our one difference
    assert_eq!(cd(&[7, 2, 1], 3, "<answer>7//2*1</answer>"), (0.1, Reason::EvalError));
    assert_eq!(cd(&[1, 0, 5], 5, "<answer>1/0+5</answer>"), (0.1, Reason::EvalError));
    assert_eq!(cd(&[6, 4, 2], 3, "<answer>(6 / 4) * 2</answer>"), (1.0, Reason::Correct));
    assert_eq!(cd(&[1, 3, 3], 1, "<answer>(1 / 3) * 3</answer>"), (1.0, Reason::Correct));
    assert_eq!(cd(&n, 98, "<answer></answer>"), (0.1, Reason::WrongNumbers));
    let b = task::score(&Problem::Countdown { nums: n.to_vec(), target: 98 }, "<answer>44</answer>", RewardKind::Binary);
    assert_eq!(b.score, 0.0);
}

#[test]
fn multiply_golden_cases() {
    let m = |r: &str| {
        let s = task::score(&Problem::Multiply { a: 123, b: 456 }, r, RewardKind::Tinyzero);
        (s.score, s.reason)
    };
    assert_eq!(m("<think>x</think> <answer>56088</answer>"), (1.0, Reason::Correct));
    assert_eq!(m("<answer> 56088 </answer>\nmore text"), (1.0, Reason::Correct));
    assert_eq!(m("<answer>56087</answer>"), (0.1, Reason::WrongValue));
    assert_eq!(m("<answer>+56088</answer>"), (1.0, Reason::Correct));
    assert_eq!(m("<answer>-56088</answer>"), (0.1, Reason::WrongValue));
    assert_eq!(m("<answer>56,088</answer>"), (0.0, Reason::NotAnInteger));
    assert_eq!(m("nothing"), (0.0, Reason::NoAnswer));
    assert_eq!(m("<answer>99999999999999999999999999999999999999</answer>"), (0.1, Reason::WrongValue));
}

#[test]
fn templates_match_tinyzero() {
    let p = Problem::Countdown { nums: vec![44, 19, 35], target: 98 };
    let base = task::render_prompt(&p, Template::Base);
    assert!(base.starts_with("A conversation between User and Assistant."));
    assert!(base.contains("User: Using the numbers [44, 19, 35], create an equation that equals 98."));
    assert!(base.ends_with("Assistant: Let me solve this step by step.\n<think>"));
    assert_eq!(base.lines().count(), 4);
    let inst = task::render_prompt(&p, Template::QwenInstruct);
    assert!(inst.starts_with("<|im_start|>system\n") && inst.ends_with("<|im_start|>assistant\nLet me solve this step by step.\n<think>"));
    let m = task::render_prompt(&Problem::Multiply { a: 123, b: 456 }, Template::Base);
    assert_eq!(m, "User: Give me the answer of the following equation: 123 * 456 = Assistant: Ok let me think about it.\n<think>");
    for t in [Template::Base, Template::QwenInstruct, Template::Compact] {
        let r = task::sft_response(&p, t).unwrap();
        assert!(task::score(&p, &r, RewardKind::Tinyzero).solved(), "{t:?}: {r}");
    }
    assert!("nope".parse::<Template>().is_err());
}

#[test]
fn generators_are_seeded_solvable_and_distinct() {
    let spec = task::ProblemSpec::default();
    let a = task::generate_countdown(200, 7, &spec).unwrap();
    assert_eq!(a, task::generate_countdown(200, 7, &spec).unwrap());
    assert_ne!(a, task::generate_countdown(200, 8, &spec).unwrap());
    // Ranges are honoured.
    let small = task::ProblemSpec { counts: vec![4], max_number: 9, max_target: 30, ..Default::default() };
    for p in task::generate_countdown(100, 3, &small).unwrap() {
        let task::Problem::Countdown { nums, target } = p else { panic!("not countdown") };
        assert_eq!(nums.len(), 4);
        assert!(nums.iter().all(|n| (1..=9).contains(n)) && (1..=30).contains(&target));
    }
    for p in &a {
        let Problem::Countdown { nums, target } = p else { panic!() };
        assert!(nums.len() == 3 || nums.len() == 4);
        assert!(nums.iter().all(|n| (1..=99).contains(n)) && (1..=99).contains(target));
        let eq = task::solve_countdown(nums, *target).expect("generated problems are solvable");
        assert!(task::score(p, &format!("<answer>{eq}</answer>"), RewardKind::Tinyzero).solved());
    }
    let m = task::generate_multiply(500, 1);
    let set: std::collections::HashSet<_> = m.iter().collect();
    assert_eq!(set.len(), 500);
    assert!(task::solve_countdown(&[1, 1, 1], 99).is_none());
}

#[test]
fn hostile_inputs_are_fast() {
    let n = [44, 19, 35];
    let t = Instant::now();
    let deep = format!("<answer>{}44 + 19 + 35{}</answer>", "(".repeat(100_000), ")".repeat(100_000));
    assert_eq!(cd(&n, 98, &deep).0, 0.1);
    let long = format!("<answer>{}</answer>", "1 + ".repeat(300_000));
    assert_eq!(cd(&n, 98, &long).0, 0.1);
    let many_tags = "<answer>".repeat(200_000);
    assert_eq!(cd(&n, 98, &many_tags).0, 0.0);
    let many = "<answer>1</answer>".repeat(100_000);
    assert_eq!(cd(&n, 98, &many).0, 0.1);
    let unary = format!("<answer>{}44 + 19 + 35</answer>", "-".repeat(1_000_000));
    assert_eq!(cd(&n, 98, &unary).0, 0.1);
    // Loose bound: these are linear-time scans of a few megabytes.
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn solver_solutions_score_one(nums in prop::collection::vec(1i64..100, 3..=4), target in 1i64..100) {
        let p = Problem::Countdown { nums: nums.clone(), target };
        if let Some(eq) = task::solve_countdown(&nums, target) {
            let resp = format!("<think>ok</think>\n<answer> {eq} </answer>");
            prop_assert!(task::score(&p, &resp, RewardKind::Tinyzero).solved(), "{eq}");
        }
    }

    #[test]
    fn wrong_multiset_scores_format(nums in prop::collection::vec(1i64..100, 3..=4), extra in 1i64..100) {
        let mut used = nums.clone();
        used.push(extra);
        let eq: Vec<String> = used.iter().map(|n| n.to_string()).collect();
        let p = Problem::Countdown { nums, target: 1 };
        let s = task::score(&p, &format!("<answer>{}</answer>", eq.join(" + ")), RewardKind::Tinyzero);
        prop_assert_eq!(s.score, 0.1);
        prop_assert_eq!(s.reason, Reason::WrongNumbers);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC{0,200}", inner in "[0-9+\\-*/(). ]{0,60}") {
        let p = Problem::Countdown { nums: vec![1, 2, 3], target: 6 };
        let a = task::score(&p, &s, RewardKind::Tinyzero);
        prop_assert!([0.0, 0.1, 1.0].contains(&a.score));
        let b = task::score(&p, &format!("<answer>{inner}</answer>"), RewardKind::Tinyzero);
        prop_assert!([0.0, 0.1, 1.0].contains(&b.score));
        let _ = task::score(&Problem::Multiply { a: 100, b: 200 }, &s, RewardKind::Binary);
        let _ = tz_engine::task::expr::eval(&inner);
    }
}

#[test]
fn parquet_and_jsonl_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("countdown.parquet");
    let rows: Vec<(i64, Vec<i64>)> = (0..50).map(|i| (i + 10, (0..3 + i % 2).map(|k| i + k + 1).collect())).collect();
    task::write_countdown_parquet(&path, &rows).unwrap();

    let all = task::load_problems(&path, None).unwrap();
    assert_eq!(all.len(), 50);
    assert_eq!(all[3], Problem::Countdown { nums: rows[3].1.clone(), target: 13 });
    let part = task::load_problems(&path, Some(40..45)).unwrap();
    assert_eq!(part, all[40..45].to_vec());
    assert!(format!("{:#}", task::load_problems(&path, Some(40..60)).unwrap_err()).contains("50 rows"));

    let jl = dir.path().join("p.jsonl");
    std::fs::write(&jl, "{\"nums\":[1,2,3],\"target\":6}\n\n{\"a\":123,\"b\":456}\n").unwrap();
    assert_eq!(task::load_problems(&jl, None).unwrap().len(), 2);
    std::fs::write(&jl, "{\"nums\":[1,2,3],\"target\":6}\n{\"nums\":\"x\"}\n").unwrap();
    let e = format!("{:#}", task::load_problems(&jl, None).unwrap_err());
    assert!(e.contains("p.jsonl:2"), "{e}");
    // Corrupt bytes anywhere give an error (or, where the damage is harmless, the rows), never
    // a panic: the parquet crate panics on some damaged pages.
    let good = std::fs::read(&path).unwrap();
    let mut rng = tz_engine::rng::Rng::new(5);
    let bad = dir.path().join("corrupt.parquet");
    for _ in 0..200 {
        let mut bytes = good.clone();
        for _ in 0..4 {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.below(256) as u8;
        }
        std::fs::write(&bad, &bytes).unwrap();
        let r = std::panic::catch_unwind(|| task::load_problems(&bad, None));
        assert!(r.is_ok(), "a corrupt parquet file panicked the reader");
    }
    std::fs::write(dir.path().join("bad.parquet"), b"PAR1 not really").unwrap();
    assert!(task::load_problems(&dir.path().join("bad.parquet"), None).is_err());
}

/// FrozenLake episodes through the real rollout path: a random tiny model (its replies are
/// mostly junk) plays random maps; each environment span decodes to the observation the lake
/// gave, the live outcome equals the task's replay of the same text, and only the replies
/// are training targets.
#[test]
fn frozenlake_episodes_through_the_rollout_match_the_replayed_check() {
    use tz_engine::backend::cpu::CpuBackend;
    use tz_engine::backend::SamplingParams;
    use tz_engine::model::presets::{init_params, preset, train_tiny_tokenizer};
    use tz_engine::model::{PackedBatch, Qwen2};
    use tz_engine::rollout::{GenConfig, Generator, PromptSet, RolloutCtx};
    use tz_engine::task::rewards::RewardSpec;
    use tz_engine::task::{LakeSpec, ProblemSpec};
    use tz_engine::tokenizer::Tokenizer;
    let spec = ProblemSpec { lake: LakeSpec { max_turns: 4, slippery: true, ..LakeSpec::default() }, ..ProblemSpec::default() };
    let lake_task = task::by_name("frozenlake").unwrap();
    let env = lake_task.environment().unwrap();
    let problems = lake_task.generate(6, 11, &spec).unwrap();
    // A tokenizer that knows the game's text, and a random model over it.
    let corpus: Vec<String> = problems
        .iter()
        .map(|p| env.demonstration(p, Template::Compact, 0, 0.5).iter().fold(lake_task.prompt(p, Template::Compact), |a, (s, _)| a + s))
        .collect();
    let tok = Tokenizer::from_tokenizers(train_tiny_tokenizer(&corpus, 300).unwrap());
    let be = CpuBackend::new();
    let mut cfg = preset("tiny-2l").unwrap().cfg;
    cfg.vocab_size = tok.vocab_size();
    let model = Qwen2::from_host(&be, cfg.clone(), &init_params(&cfg, 3)).unwrap();
    let set = PromptSet::new(problems, Template::Compact, &tok, 128).unwrap();
    assert_eq!(set.len(), 6);
    let gen = Generator::new(&be, &cfg, 4, set.max_prompt_len(), set.max_prompt_len() + 200).unwrap();
    let settings = GenConfig {
        max_new_tokens: 200,
        sampling: SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 },
        stop_token_ids: vec![],
        stop_strings: vec!["</answer>".into()],
        turn_tokens: 6,
    };
    let reward = RewardSpec::default();
    let ctx = RolloutCtx { be: &be, model: &model, adapters: None, gen: &gen, tok: &tok, settings, reward: &reward };
    let seeds = [1u64, 2, 3, 4, 5, 6];
    let outs = ctx.rollout(&set, &[0, 1, 2, 3, 4, 5], &seeds).unwrap();
    for o in &outs {
        let p = &set.problems[o.idx];
        assert!((1..=4).contains(&o.turns), "{} turns", o.turns);
        assert_eq!(o.env_spans.len() as u32, o.turns - 1, "an observation after every turn but the last");
        for s in &o.env_spans {
            let obs = tok.decode(&o.tokens[s[0] as usize..s[1] as usize], true).unwrap();
            assert!(obs.contains('P') && obs.starts_with('\n'), "{obs:?}");
        }
        // The same episode again, fed the rollout's replies one by one (the text between
        // observations): each observation is the one in the trajectory, and so is the end.
        let mut replay = env.reset(p, Template::Compact, seeds[o.idx], &reward.params);
        let mut at = 0usize;
        for s in o.env_spans.iter().map(|s| Some(*s)).chain([None]) {
            let end = s.map_or(o.tokens.len(), |s| s[0] as usize);
            let obs = replay.step(&tok.decode(&o.tokens[at..end], true).unwrap());
            match s {
                Some(s) => {
                    assert_eq!(obs.map(|t| tok.encode(&t).unwrap()).as_deref(), Some(&o.tokens[s[0] as usize..s[1] as usize]));
                    at = s[1] as usize;
                }
                None => assert!(obs.is_none() || o.finish == tz_engine::rollout::Finish::Length),
            }
        }
        assert_eq!(replay.outcome(), tz_engine::task::Outcome { score: o.score, turns: o.turns, invalid: o.invalid });
        let b = PackedBatch::from_pairs(&[(set.tokens[o.idx].as_slice(), o.tokens.as_slice(), o.env_spans.as_slice())]).unwrap();
        assert_eq!(b.n_targets(), o.agent_tokens());
        assert!(o.agent_tokens() <= 6 * o.turns as usize);
    }
}
