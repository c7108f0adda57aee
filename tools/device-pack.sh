#!/usr/bin/env bash
# Packs what the GPU machine needs into the git-ignored .device/ (that machine has no Rust
# toolchain): the release tz-engine binary, the CUDA test executables and the per-kernel
# criterion bench, stripped, plus a manifest; the executables travel gzipped in
# .device/pack.tar.gz (tools/device-unpack.sh, called by gpu-check.sh and profile.sh, unpacks
# them there): six executables each embedding every cubin are 57 MB raw, 16 MB packed. All kernels are compiled by nvcc here (TZ_REQUIRE_NVCC=1: a missing or failing
# nvcc is an error, never a silent NVRTC fallback).
#
#   tools/device-pack.sh        # then, on the device, with .device carried:
#                               #   bash tools/gpu-check.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
limit=$((64 * 1024 * 1024))

if [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_HOME:-}" ]; then
  NVCC="$(tools/install-nvcc.sh | tail -1)"
  export NVCC
fi
export TZ_REQUIRE_NVCC=1

rm -rf .device
mkdir -p .device/bin
cargo build --release --bin tz-engine
# Every integration test with "cuda" in its name, the backend conformance suite (its cuda::
# cases) and the argument checks (both backends).
tests=()
for f in tests/*cuda*.rs tests/backend_ops.rs tests/backend_checks.rs; do
  [ -e "$f" ] || continue
  tests+=(--test "$(basename "$f" .rs)")
done
cargo test --release --no-run --message-format=json "${tests[@]}" >.device/cargo-test.json
python3 - <<'PY'
import json, shutil, os
seen = {}
for line in open(".device/cargo-test.json"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        name = m["target"]["name"]
        seen[name] = m["executable"]
for name, exe in sorted(seen.items()):
    shutil.copy2(exe, os.path.join(".device/bin", name))
    print("test executable:", name)
PY
rm -f .device/cargo-test.json
# The per-kernel criterion bench (benches/kernels.rs), run there filtered to its CUDA group.
mkdir -p .device/bench
cargo bench --no-run --bench kernels --message-format=json >.device/cargo-bench.json
python3 - <<'PY'
import json, shutil
for line in open(".device/cargo-bench.json"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        shutil.copy2(m["executable"], ".device/bench/" + m["target"]["name"])
        print("bench executable:", m["target"]["name"])
PY
rm -f .device/cargo-bench.json
cp target/release/tz-engine .device/bin/tz-engine
if command -v strip >/dev/null 2>&1; then
  strip .device/bin/* .device/bench/* || true
fi
cp target/release/build/tz-engine-*/out/ptxas-report.txt .device/ 2>/dev/null || true

{
  echo "tz-engine device pack"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
  echo "nvcc: $("${NVCC:-nvcc}" --version 2>/dev/null | tail -1)"
  echo
  (cd .device && find . -type f ! -name MANIFEST.txt | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
  done)
} >.device/MANIFEST.txt

tar czf .device/pack.tar.gz -C .device bin bench
rm -rf .device/bin .device/bench
total=$(du -sb .device | cut -f1)
cat .device/MANIFEST.txt
echo "total: $total bytes"
if [ "$total" -ge "$limit" ]; then
  echo "error: .device is $total bytes, over the 64 MiB the device run can carry" >&2
  exit 1
fi
