//! NVTX ranges reach a profiler: a stand-in injection library (C, built here with the system
//! compiler) attaches through `NVTX_INJECTION64_PATH` the way Nsight tools do, installs its own
//! push/pop, and logs them; a short training run must then show every phase, balanced.
//! Skips, with a printed reason, when no C compiler is available. A real Nsight attach is
//! exercised on the GPU machine (tools/profile.sh).
use std::path::Path;
use std::process::Command;

const FAKE_INJECTION: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
typedef void (*fnptr)(void);
typedef struct { size_t struct_size; int (*get_table)(int, fnptr ***, unsigned *); } callbacks_t;
typedef struct { size_t struct_size; uint32_t version; uint32_t reserved0; void (*set_version)(uint32_t); } version_t;
static FILE *logf;
static int push(const char *name) { fprintf(logf, "push %s\n", name); fflush(logf); return 0; }
static int pop(void) { fprintf(logf, "pop\n"); fflush(logf); return 0; }
int InitializeInjectionNvtx2(const void *(*get_export_table)(uint32_t)) {
  const callbacks_t *cb = get_export_table(1);
  const version_t *v = get_export_table(3);
  if (!cb || cb->struct_size < sizeof(callbacks_t) || !v || v->struct_size < sizeof(version_t) || v->version != 3) return 0;
  if (get_export_table(2) != NULL || get_export_table(99) != NULL) return 0;
  v->set_version(3);
  /* Every module's table: slot 0 and the one after the last id are null, the rest writable. */
  const unsigned sizes[7] = {0, 16, 9, 15, 7, 16, 7};
  fnptr **table;
  unsigned size;
  if (cb->get_table(0, &table, &size) != 0 || cb->get_table(7, &table, &size) != 0) return 0;
  for (int m = 1; m < 7; m++) {
    if (!cb->get_table(m, &table, &size) || size != sizes[m]) return 0;
    if (table[0] != NULL || table[size] != NULL) return 0;
    for (unsigned i = 1; i < size; i++) { if (table[i] == NULL) return 0; *table[i] = NULL; }
  }
  logf = fopen(getenv("TZ_NVTX_TEST_LOG"), "a");
  if (!logf) return 0;
  cb->get_table(1, &table, &size);
  *table[9] = (fnptr)push;  /* nvtxRangePushA */
  *table[11] = (fnptr)pop;  /* nvtxRangePop */
  fprintf(logf, "attached\n");
  fflush(logf);
  return 1;
}
"#;

fn build_injection(dir: &Path) -> Option<std::path::PathBuf> {
    let src = dir.join("inject.c");
    let lib = dir.join("libinject.so");
    std::fs::write(&src, FAKE_INJECTION).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    match Command::new(&cc).args(["-shared", "-fPIC", "-O1", "-o"]).arg(&lib).arg(&src).output() {
        Ok(o) if o.status.success() => Some(lib),
        Ok(o) => {
            eprintln!("skipped: {cc} failed: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("skipped: no C compiler ({cc}): {e}");
            None
        }
    }
}

fn train(out: &Path, name: &str, inject: &Path, log: &Path) -> std::process::Output {
    let sets = [
        format!("out_dir={}", out.display()),
        format!("name={name}"),
        "model.preset=tiny-2l".into(),
        "sft.steps=2".into(),
        "sft.examples=64".into(),
        "data.generate_train=16".into(),
        "data.generate_test=8".into(),
        "train.batch_prompts=8".into(),
        "train.mini_batch=4".into(),
        "train.micro_batch=4".into(),
        "train.rollout_batch=8".into(),
        "train.max_response_tokens=8".into(),
        "algo.n_vstar=2".into(),
        "train.eval_every=2".into(),
        "train.save_every=0".into(),
        "train.eval_pass_k=0".into(),
        "train.steps=2".into(),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tz-engine"));
    cmd.arg("train");
    for s in &sets {
        cmd.args(["--set", s]);
    }
    cmd.env("NVTX_INJECTION64_PATH", inject).env("TZ_NVTX_TEST_LOG", log).output().unwrap()
}

#[test]
fn training_phases_reach_an_nvtx_injection_library() {
    let d = tempfile::tempdir().unwrap();
    let Some(lib) = build_injection(d.path()) else { return };
    let log = d.path().join("nvtx.log");
    let o = train(d.path(), "ranges", &lib, &log);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&log).expect("the injection library was never initialized");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"attached"), "{text}");
    assert_eq!(lines.iter().filter(|l| **l == "attached").count(), 1, "initialized more than once");
    // Balanced and properly nested: a pop never comes without an open range.
    let mut depth = 0i32;
    for l in &lines[1..] {
        if l.starts_with("push ") {
            depth += 1;
        } else {
            assert_eq!(*l, "pop", "unexpected line {l:?}");
            depth -= 1;
            assert!(depth >= 0, "pop without push");
        }
    }
    assert_eq!(depth, 0, "ranges left open");
    for phase in ["sft_forward", "sft_backward", "vstar", "eval", "rollout", "ref_logprobs", "forward", "backward", "optimizer"] {
        assert!(lines.contains(&format!("push {phase}").as_str()), "no {phase} range in:\n{text}");
    }
}

#[test]
fn an_unloadable_injection_library_only_warns() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-injection.so");
    let o = train(d.path(), "no-profiler", &missing, &d.path().join("unused.log"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("NVTX ranges are off"), "{err}");
}
