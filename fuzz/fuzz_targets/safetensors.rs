//! Fuzzes model loading: any bytes as a model directory's model.safetensors — raw, or a valid
//! tiny model's file with bytes overwritten where the input says — must load or give an
//! error, never panic or read out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "mutate.rs"]
mod mutate;
use std::path::PathBuf;
use std::sync::OnceLock;
use tz_engine::model::weights::{load_params, save_model, SaveDtype};
use tz_engine::model::{ParamLayout, Qwen2Config};

struct Fixture {
    cfg: Qwen2Config,
    layout: ParamLayout,
    valid: Vec<u8>,
    dir: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let base = tz_engine::model::presets::preset("tiny-2l").unwrap().cfg;
        let cfg = Qwen2Config { vocab_size: 16, hidden_size: 8, intermediate_size: 12, head_dim: 2, ..base };
        let layout = ParamLayout::new(&cfg);
        let dir = std::env::temp_dir().join(format!("tz-fuzz-safetensors-{}", std::process::id()));
        let params: Vec<f32> = (0..layout.total).map(|i| (i as f32 * 0.37).sin()).collect();
        save_model(&dir, &cfg, &layout, &params, SaveDtype::BF16, None).unwrap();
        let valid = std::fs::read(dir.join("model.safetensors")).unwrap();
        assert_eq!(load_params(&dir, &cfg, &layout).unwrap().len(), layout.total);
        Fixture { cfg, layout, valid, dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some(bytes) = mutate::file_from_input(&f.valid, data) else { return };
    std::fs::write(f.dir.join("model.safetensors"), &bytes).unwrap();
    if let Ok(p) = load_params(&f.dir, &f.cfg, &f.layout) {
        assert_eq!(p.len(), f.layout.total);
    }
});
