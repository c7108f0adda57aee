#!/usr/bin/env bash
# The NVRTC fallback without a GPU: a build without nvcc embeds the kernel sources and the
# backend compiles them with NVRTC at first use. This installs libnvrtc 13.0 from PyPI (into
# .cache/nvrtc), compiles every embedded source with it for compute_80 and compute_90
# (tests/backend_cuda.rs, required to run: TZ_REQUIRE_NVRTC=1), and assembles each PTX with
# ptxas for sm_80 / sm_90: the code a driver would JIT is valid. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="$(bash tools/install-nvcc.sh --nvrtc | tail -n1)"
ptxas="$(dirname "$nvcc")/ptxas"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
LD_LIBRARY_PATH="$PWD/.cache/nvrtc/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  TZ_REQUIRE_NVRTC=1 TZ_NVRTC_PTX_DIR="$dir" \
  cargo test --release --test backend_cuda nvrtc_fallback_sources_compile
n=0
for f in "$dir"/*.ptx; do
  case "$f" in *compute_90*) arch=sm_90 ;; *) arch=sm_80 ;; esac
  "$ptxas" -arch="$arch" -o /dev/null "$f"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "nvrtc-check: no PTX was written" >&2; exit 1; }
echo "nvrtc-check: $n NVRTC-compiled PTX files assemble with ptxas"
