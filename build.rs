//! Build script. Stamps the git commit into the binary (`TZ_GIT_COMMIT`: `tz-engine --version`,
//! bench output), and compiles the CUDA kernels in `kernels/*.cu` ahead of time when `nvcc` is
//! available, and always embeds their sources so the backend can fall back to NVRTC at run
//! time. See docs/cuda.md.
//!
//! Per kernel file it produces, in `$OUT_DIR/kernels/`:
//! - `<name>.sm_80.cubin`, `<name>.sm_90a.cubin`: machine code (Ampere+, Hopper with the
//!   arch-specific features);
//! - `<name>.compute_80.ptx`: PTX the driver can JIT on any newer GPU;
//! - `<name>.nvrtc.cu`: the source with `#include "…"` of local headers inlined, for NVRTC.
//!
//! and `$OUT_DIR/tz_kernels.rs`, which `src/backend/cuda/kernels.rs` includes.
//!
//! Environment:
//! - `NVCC`: path of nvcc (else `CUDA_HOME`/`CUDA_PATH` `bin/nvcc`, `PATH`, then the PyPI layout
//!   `.cache/nvcc/nvidia/cu13/bin/nvcc` installed by `tools/install-nvcc.sh`);
//! - `TZ_REQUIRE_NVCC=1`: a missing or failing nvcc is a build error (CI, device packs);
//! - `TZ_PTXAS_REPORT=1`: print the path of `$OUT_DIR/ptxas-report.txt` as a cargo warning
//!   (the report itself is always written when nvcc ran).
//!
//! Nothing happens when the `cuda` feature is off.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// (variant tag, output extension, nvcc arguments selecting the target).
const VARIANTS: &[(&str, &str, &[&str])] = &[
    ("sm_90a", "cubin", &["-cubin", "-gencode=arch=compute_90a,code=sm_90a"]),
    ("sm_80", "cubin", &["-cubin", "-gencode=arch=compute_80,code=sm_80"]),
    ("compute_80", "ptx", &["-ptx", "-gencode=arch=compute_80,code=compute_80"]),
];

/// Flags for every nvcc invocation.
const COMMON_FLAGS: &[&str] = &["-std=c++17", "-O3", "-lineinfo"];

fn main() {
    stamp_git_commit();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "TZ_REQUIRE_NVCC", "TZ_PTXAS_REPORT", "TZ_NVCC_JOBS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(e) = run() {
        panic!("tz-engine build.rs: {e}");
    }
}

/// `TZ_GIT_COMMIT` = the short commit hash, so every benchmark or run record can name it.
fn stamp_git_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TZ_GIT_COMMIT={commit}");
    // Watch the real git dir (in a worktree `.git` is a file; a missing path would make cargo
    // rerun this script on every build).
    let git = |arg: &str| {
        Command::new("git")
            .args(["rev-parse", arg])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let Some(dir) = git("--absolute-git-dir") {
        let head = dir.join("HEAD");
        if head.exists() {
            println!("cargo:rerun-if-changed={}", head.display());
        }
    }
    if let Some(dir) = git("--git-common-dir") {
        let heads = dir.join("refs/heads");
        let heads = if heads.is_absolute() { heads } else { env::current_dir().unwrap_or_default().join(heads) };
        if heads.exists() {
            println!("cargo:rerun-if-changed={}", heads.display());
        }
    }
}

fn flag(name: &str) -> bool {
    matches!(env::var(name).as_deref(), Ok("1") | Ok("true") | Ok("yes"))
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let kdir = manifest.join("kernels");
    let kout = out_dir.join("kernels");
    fs::create_dir_all(&kout).map_err(|e| format!("creating {}: {e}", kout.display()))?;
    let require = flag("TZ_REQUIRE_NVCC");

    let mut names: Vec<String> = fs::read_dir(&kdir)
        .map_err(|e| format!("reading {}: {e}", kdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .map(|n| n.trim_end_matches(".cu").to_string())
        .collect();
    names.sort();

    // Sources for NVRTC: local includes inlined (NVRTC has no file system access to kernels/).
    for name in &names {
        let src = inline_includes(&kdir, &format!("{name}.cu"), 0)?;
        fs::write(kout.join(format!("{name}.nvrtc.cu")), src).map_err(|e| e.to_string())?;
    }

    let nvcc = find_nvcc(&manifest);
    let mut compiled = false;
    match &nvcc {
        None => {
            if require {
                return Err("TZ_REQUIRE_NVCC=1 but no nvcc was found (set NVCC or CUDA_HOME, or run tools/install-nvcc.sh)".into());
            }
        }
        Some(nvcc) => {
            if nvcc.starts_with(&manifest) {
                println!("cargo:rerun-if-changed={}", nvcc.display());
            }
            let nvcc_version = Command::new(nvcc)
                .arg("--version")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string())
                .unwrap_or_default();
            // Skip nvcc when nothing it depends on changed since the last run (this script also
            // reruns for unrelated reasons, e.g. a new git commit).
            let stamp = compile_stamp(nvcc, &kdir, &names, &nvcc_version)?;
            let stamp_path = kout.join("nvcc.stamp");
            let report_path = out_dir.join("ptxas-report.txt");
            let cached = fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) && report_path.exists();
            let result = if cached {
                Ok(String::new())
            } else {
                let _ = fs::remove_file(&stamp_path);
                compile_all(nvcc, &kdir, &kout, &names)
            };
            match result {
                Ok(_) if cached => {
                    if flag("TZ_PTXAS_REPORT") {
                        println!("cargo:warning=ptxas report: {}", report_path.display());
                    }
                    compiled = true;
                }
                Ok(report) => {
                    let path = out_dir.join("ptxas-report.txt");
                    let text = format!("nvcc: {}\n{}\n\n{}", nvcc.display(), nvcc_version, report);
                    fs::write(&path, text).map_err(|e| e.to_string())?;
                    fs::write(&stamp_path, &stamp).map_err(|e| e.to_string())?;
                    if flag("TZ_PTXAS_REPORT") {
                        println!("cargo:warning=ptxas report: {}", path.display());
                    }
                    compiled = true;
                }
                Err(e) => {
                    if require {
                        return Err(format!("TZ_REQUIRE_NVCC=1 and nvcc failed:\n{e}"));
                    }
                    // Not fatal: the backend compiles the embedded sources with NVRTC at run time.
                    println!(
                        "cargo:warning=nvcc failed; CUDA kernels will be compiled by NVRTC at run time ({})",
                        e.lines().next().unwrap_or("")
                    );
                }
            }
        }
    }

    // The generated table.
    let mut gen = String::new();
    writeln!(gen, "// @generated by build.rs").unwrap();
    writeln!(gen, "pub static KERNEL_FILES: &[KernelFile] = &[").unwrap();
    for name in &names {
        let art = |tag: &str, ext: &str| kout.join(format!("{name}.{tag}.{ext}"));
        let bytes = |tag: &str, ext: &str| {
            if compiled {
                format!("Some(include_bytes!({:?}))", art(tag, ext).display().to_string())
            } else {
                "None".to_string()
            }
        };
        let ptx =
            if compiled { format!("Some(include_str!({:?}))", art("compute_80", "ptx").display().to_string()) } else { "None".to_string() };
        writeln!(
            gen,
            "    KernelFile {{ name: {name:?}, source: include_str!({:?}), sm90a: {}, sm80: {}, ptx: {} }},",
            kout.join(format!("{name}.nvrtc.cu")).display().to_string(),
            bytes("sm_90a", "cubin"),
            bytes("sm_80", "cubin"),
            ptx
        )
        .unwrap();
    }
    writeln!(gen, "];").unwrap();
    fs::write(out_dir.join("tz_kernels.rs"), gen).map_err(|e| e.to_string())?;
    Ok(())
}

/// What the nvcc outputs depend on: nvcc's path and version, the flags, every kernel file.
fn compile_stamp(nvcc: &Path, kdir: &Path, names: &[String], version: &str) -> Result<String, String> {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    let mut h = DefaultHasher::new();
    nvcc.hash(&mut h);
    version.hash(&mut h);
    format!("{VARIANTS:?}{COMMON_FLAGS:?}").hash(&mut h);
    names.hash(&mut h);
    let mut files: Vec<_> = fs::read_dir(kdir).map_err(|e| e.to_string())?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    for f in files {
        f.hash(&mut h);
        fs::read(&f).map_err(|e| e.to_string())?.hash(&mut h);
    }
    Ok(format!("{:016x}", h.finish()))
}

/// `#include "x"` of files in kernels/ replaced by their (recursively inlined) text, each once.
fn inline_includes(dir: &Path, file: &str, depth: usize) -> Result<String, String> {
    if depth > 8 {
        return Err(format!("include depth exceeded at {file}"));
    }
    let text = fs::read_to_string(dir.join(file)).map_err(|e| format!("reading kernels/{file}: {e}"))?;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#include \"") {
            let inc = rest.split('"').next().unwrap_or("");
            out.push_str(&format!("// ---- begin {inc} (inlined by build.rs)\n"));
            out.push_str(&inline_includes(dir, inc, depth + 1)?);
            out.push_str(&format!("// ---- end {inc}\n"));
        } else if t.starts_with("#pragma once") {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn is_file(p: &Path) -> bool {
    p.is_file()
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if is_file(&p) {
            return Some(p);
        }
        // A bare name: look it up on PATH below.
        if let Some(found) = search_path(p.to_str()?) {
            return Some(found);
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = PathBuf::from(home).join("bin").join("nvcc");
            if is_file(&p) {
                return Some(p);
            }
        }
    }
    if let Some(p) = search_path("nvcc") {
        return Some(p);
    }
    let p = manifest.join(".cache/nvcc/nvidia/cu13/bin/nvcc");
    if is_file(&p) {
        return Some(p);
    }
    None
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|d| d.join(name)).find(|p| is_file(p))
}

struct Job {
    name: String,
    tag: &'static str,
    ext: &'static str,
    args: &'static [&'static str],
}

/// Compiles every (file, variant) pair on a small thread pool; returns the ptxas report.
fn compile_all(nvcc: &Path, kdir: &Path, kout: &Path, names: &[String]) -> Result<String, String> {
    let mut jobs = Vec::new();
    for name in names {
        for &(tag, ext, args) in VARIANTS {
            jobs.push(Job { name: name.clone(), tag, ext, args });
        }
    }
    let n_jobs = jobs.len();
    let queue = Arc::new(Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>()));
    type Outcome = (usize, Result<String, String>);
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let threads = env::var("TZ_NVCC_JOBS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
        .clamp(1, 16);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let queue = queue.clone();
            let results = results.clone();
            s.spawn(move || loop {
                let next = queue.lock().unwrap().pop();
                let Some((idx, job)) = next else { break };
                let r = compile_one(nvcc, kdir, kout, &job);
                results.lock().unwrap().push((idx, r));
            });
        }
    });
    let mut results = Arc::try_unwrap(results).ok().unwrap().into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(results.len(), n_jobs);
    let mut report = String::new();
    let mut errors = String::new();
    for (_, r) in results {
        match r {
            Ok(s) => report.push_str(&s),
            Err(e) => errors.push_str(&e),
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else {
        Err(errors)
    }
}

fn compile_one(nvcc: &Path, kdir: &Path, kout: &Path, job: &Job) -> Result<String, String> {
    let src = kdir.join(format!("{}.cu", job.name));
    let out = kout.join(format!("{}.{}.{}", job.name, job.tag, job.ext));
    let mut cmd = Command::new(nvcc);
    cmd.args(job.args).args(COMMON_FLAGS).arg("-I").arg(kdir).arg("-o").arg(&out).arg(&src);
    if job.ext == "cubin" {
        cmd.args(["-Xptxas", "-v"]);
    }
    let output = cmd.output().map_err(|e| format!("running {}: {e}\n", nvcc.display()))?;
    let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(format!("== nvcc {} for {} failed ({}):\n{log}\n", job.name, job.tag, output.status));
    }
    if job.ext == "cubin" {
        Ok(format!("== {}.cu [{}]\n{}\n", job.name, job.tag, log.trim_end()))
    } else {
        Ok(String::new())
    }
}
