//! Fuzzes dataset loading: any bytes as a .parquet file — raw, or a valid file in TinyZero's
//! layout with bytes overwritten where the input says — must give problems or an error naming
//! the file, never a panic (the parquet crate panics on some damaged pages; our reader turns
//! those into errors).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "mutate.rs"]
mod mutate;
use std::path::PathBuf;
use std::sync::OnceLock;

struct Fixture {
    valid: Vec<u8>,
    path: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tz-fuzz-{}.parquet", std::process::id()));
        let rows: Vec<(i64, Vec<i64>)> = (0..20).map(|i| (i + 10, (0..3 + i % 2).map(|k| i + k + 1).collect())).collect();
        tz_engine::task::write_countdown_parquet(&path, &rows).unwrap();
        let valid = std::fs::read(&path).unwrap();
        assert_eq!(tz_engine::task::load_problems(&path, None).unwrap().len(), 20);
        Fixture { valid, path }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some(bytes) = mutate::file_from_input(&f.valid, data) else { return };
    std::fs::write(&f.path, &bytes).unwrap();
    let _ = tz_engine::task::load_problems(&f.path, None);
});
