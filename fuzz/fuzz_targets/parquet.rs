//! Fuzzes dataset loading: any bytes as a .parquet file — raw, or a valid file in TinyZero's
//! layout with bytes overwritten where the input says — must give problems or an error naming
//! the file, never a panic (the parquet crate panics on some damaged pages; our reader turns
//! those into errors).
#![no_main]
use libfuzzer_sys::fuzz_target;
use parquet::data_type::Int64Type;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

struct Fixture {
    valid: Vec<u8>,
    path: PathBuf,
}

/// TinyZero's layout (pyarrow's): optional int64 target, nullable LIST<int64> nums.
fn valid_file(path: &std::path::Path) -> Vec<u8> {
    let schema = parquet::schema::parser::parse_message_type(
        "message schema { optional int64 target; optional group nums (LIST) { repeated group list { optional int64 element; } } }",
    )
    .unwrap();
    let rows: Vec<(i64, Vec<i64>)> = (0..20).map(|i| (i + 10, (0..3 + i % 2).map(|k| i + k + 1).collect())).collect();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(WriterProperties::builder().build())).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let targets: Vec<i64> = rows.iter().map(|r| r.0).collect();
    col.typed::<Int64Type>().write_batch(&targets, Some(&vec![1; rows.len()]), None).unwrap();
    col.close().unwrap();
    let mut col = rg.next_column().unwrap().unwrap();
    let (mut vals, mut defs, mut reps) = (vec![], vec![], vec![]);
    for (_, nums) in &rows {
        for (k, &x) in nums.iter().enumerate() {
            vals.push(x);
            defs.push(3);
            reps.push(if k == 0 { 0 } else { 1 });
        }
    }
    col.typed::<Int64Type>().write_batch(&vals, Some(&defs), Some(&reps)).unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    w.close().unwrap();
    std::fs::read(path).unwrap()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tz-fuzz-{}.parquet", std::process::id()));
        let valid = valid_file(&path);
        assert_eq!(tz_engine::task::load_problems(&path, None).unwrap().len(), 20);
        Fixture { valid, path }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let bytes = match data.split_first() {
        Some((0, rest)) => rest.to_vec(),
        Some((mode, rest)) => {
            let mut b = f.valid.clone();
            for e in rest.chunks_exact(3) {
                let at = u16::from_le_bytes([e[0], e[1]]) as usize % b.len();
                b[at] = e[2];
            }
            if mode % 4 == 1 {
                b.truncate(b.len() * (*mode as usize) / 256);
            }
            b
        }
        None => return,
    };
    std::fs::write(&f.path, &bytes).unwrap();
    let _ = tz_engine::task::load_problems(&f.path, None);
});
