//! Hugging Face model directories: config variants, save → load round trips (tied/untied,
//! f32/bf16, sharded), and every kind of bad input giving a clear error, never a panic.
use std::path::Path;
use tz_engine::model::weights::{load_params, save_model, SaveDtype};
use tz_engine::model::{ParamLayout, Qwen2Config};

fn cfg(tied: bool) -> Qwen2Config {
    let mut c = tz_engine::model::presets::preset("tiny-2l").unwrap().cfg;
    c.vocab_size = 50;
    c.tie_word_embeddings = tied;
    c
}

fn params(c: &Qwen2Config) -> Vec<f32> {
    tz_engine::model::presets::init_params(c, 4).iter().enumerate().map(|(i, x)| x + (i % 7) as f32 * 0.01).collect()
}

fn err(dir: &Path, c: &Qwen2Config) -> String {
    format!("{:#}", load_params(dir, c, &ParamLayout::new(c)).unwrap_err())
}

#[test]
fn round_trips() {
    for tied in [true, false] {
        for dt in [SaveDtype::F32, SaveDtype::BF16] {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("m");
            let c = cfg(tied);
            let layout = ParamLayout::new(&c);
            let p = params(&c);
            save_model(&dir, &c, &layout, &p, dt, Some("{}")).unwrap();
            let back = tz_engine::model::load::load_config(&dir).unwrap();
            assert_eq!(back.tie_word_embeddings, tied);
            assert_eq!(back.hidden_size, c.hidden_size);
            let q = load_params(&dir, &back, &layout).unwrap();
            for (a, b) in p.iter().zip(&q) {
                let want = if dt == SaveDtype::BF16 { half::bf16::from_f32(*a).to_f32() } else { *a };
                assert_eq!(*b, want);
            }
            // Saving over an existing directory replaces it atomically.
            save_model(&dir, &c, &layout, &p, dt, None).unwrap();
            assert!(!dir.join("tokenizer.json").exists());
        }
    }
}

#[test]
fn sharded_index_loads() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(false);
    let layout = ParamLayout::new(&c);
    let p = params(&c);
    let one = d.path().join("one");
    save_model(&one, &c, &layout, &p, SaveDtype::F32, None).unwrap();
    // Split the single file's tensors into two shards.
    let bytes = std::fs::read(one.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    let sharded = d.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    std::fs::copy(one.join("config.json"), sharded.join("config.json")).unwrap();
    let mut map = serde_json::Map::new();
    for (k, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        std::fs::write(sharded.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    std::fs::write(sharded.join("model.safetensors.index.json"), serde_json::json!({"metadata": {}, "weight_map": map}).to_string())
        .unwrap();
    assert_eq!(load_params(&sharded, &c, &layout).unwrap(), p);
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    assert!(err(&sharded, &c).contains("missing"));
}

#[test]
fn bad_weights_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(false);
    let layout = ParamLayout::new(&c);
    let dir = d.path().join("m");
    save_model(&dir, &c, &layout, &params(&c), SaveDtype::F32, None).unwrap();
    let file = dir.join("model.safetensors");
    let good = std::fs::read(&file).unwrap();
    // Truncated anywhere: an error naming the file.
    for cut in [0, 4, 8, 20, good.len() / 2, good.len() - 1] {
        std::fs::write(&file, &good[..cut]).unwrap();
        assert!(err(&dir, &c).contains("model.safetensors"), "cut at {cut}");
    }
    std::fs::write(&file, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert!(err(&dir, &c).contains("model.safetensors"));
    std::fs::write(&file, &good).unwrap();
    // A config whose shapes disagree with the file, or that expects a missing tensor.
    let mut wider = c.clone();
    wider.intermediate_size += 1;
    assert!(err(&dir, &wider).contains("shape"));
    let mut deeper = c.clone();
    deeper.num_hidden_layers += 1;
    assert!(err(&dir, &deeper).contains("missing tensor 'model.layers.2."));
    let mut tied = c.clone();
    tied.tie_word_embeddings = true;
    assert!(load_params(&dir, &tied, &ParamLayout::new(&tied)).is_ok(), "an lm_head in a tied checkpoint is ignored");
    std::fs::remove_file(&file).unwrap();
    assert!(err(&dir, &c).contains("no model.safetensors"));
}

#[test]
fn configs_of_both_transformers_generations() {
    let base = r#""architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,"max_position_embeddings":32768,"rms_norm_eps":1e-06,"tie_word_embeddings":true"#;
    let v4 = Qwen2Config::from_json_str(&format!(
        r#"{{{base},"rope_theta":1000000.0,"torch_dtype":"bfloat16","sliding_window":null,"eos_token_id":151643}}"#
    ))
    .unwrap();
    let v5 = Qwen2Config::from_json_str(&format!(r#"{{{base},"rope_parameters":{{"rope_theta":1000000.0,"rope_type":"default"}},"dtype":"bfloat16","head_dim":64,"eos_token_id":[151643,151645]}}"#)).unwrap();
    assert_eq!((v4.rope_theta, v4.head_dim, v4.dtype.as_deref()), (1e6, 64, Some("bfloat16")));
    assert_eq!((v5.rope_theta, v5.head_dim, v5.eos_token_ids.clone()), (1e6, 64, vec![151643, 151645]));
    for (name, hidden, inter, layers, heads) in [("1.5b", 1536, 8960, 28, 12), ("3b", 2048, 11008, 36, 16)] {
        let p = tz_engine::model::presets::preset(&format!("qwen2.5-{name}")).unwrap().cfg;
        assert_eq!(
            (p.hidden_size, p.intermediate_size, p.num_hidden_layers, p.num_attention_heads, p.num_key_value_heads),
            (hidden, inter, layers, heads, 2)
        );
    }
    for bad in [
        "not json",
        "[]",
        r#"{"model_type":"llama","hidden_size":8}"#,
        &format!(r#"{{{}}}"#, base.replace(r#""hidden_size":896,"#, "")),
        &format!(r#"{{{}}}"#, base.replace(r#""num_key_value_heads":2"#, r#""num_key_value_heads":3"#)),
        &format!(r#"{{{}}}"#, base.replace(r#""vocab_size":151936"#, r#""vocab_size":"many""#)),
        &format!(r#"{{{},"rope_scaling":{{"rope_type":"yarn","factor":4}}}}"#, base),
    ] {
        let e = Qwen2Config::from_json_str(bad).unwrap_err();
        assert!(!format!("{e:#}").is_empty());
    }
}
