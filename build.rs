//! Build script. Today: stamps the git commit into the binary (`tz-engine --version`), so every
//! benchmark or run record can name the commit it came from. The CUDA backend will add kernel
//! compilation here (nvcc → cubin/PTX for sm_80 and sm_90a, or NVRTC sources at run time).
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TZ_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
