#!/usr/bin/env bash
# Installs a CUDA 13.0 nvcc (compiler only: no driver, no GPU needed) from PyPI into the
# git-ignored .cache/nvcc of the repository, where build.rs finds it. Idempotent: does nothing
# when that nvcc is already there and runs. Prints the nvcc path on stdout (last line).
#
#   tools/install-nvcc.sh            # install if missing, print the path
#   NVCC=$(tools/install-nvcc.sh | tail -1)
#   tools/install-nvcc.sh --nvrtc    # also libnvrtc into .cache/nvrtc (tests the NVRTC
#                                    # fallback without a GPU: LD_LIBRARY_PATH=.cache/nvrtc/nvidia/cu13/lib)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cache/nvcc"
nvcc="$dest/nvidia/cu13/bin/nvcc"
# Every package pinned to the same CUDA minor release.
pkgs=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
)
if [ -x "$nvcc" ] && "$nvcc" --version >/dev/null 2>&1; then
  echo "nvcc already installed" >&2
else
  py="$(command -v python3 || command -v python)"
  rm -rf "$dest"
  mkdir -p "$dest"
  "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dest" "${pkgs[@]}" >&2
  # Wheels do not always keep the executable bit.
  chmod +x "$dest"/nvidia/cu13/bin/* "$dest"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
fi
if [ "${1:-}" = "--nvrtc" ]; then
  nvrtc_dir="$root/.cache/nvrtc"
  if [ ! -e "$nvrtc_dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    py="$(command -v python3 || command -v python)"
    rm -rf "$nvrtc_dir"
    "$py" -m pip install --quiet --disable-pip-version-check --target "$nvrtc_dir" "nvidia-cuda-nvrtc==13.0.*" >&2
  fi
  echo "libnvrtc: $nvrtc_dir/nvidia/cu13/lib" >&2
fi
# Smoke test: a bf16 kernel for sm_90a (host compiler needed for nvcc's preprocessing).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/t.cu" <<'CU'
#include <cuda_bf16.h>
extern "C" __global__ void k(__nv_bfloat16* x) { x[threadIdx.x] = __float2bfloat16(__bfloat162float(x[threadIdx.x]) * 2.f); }
CU
"$nvcc" -cubin -gencode=arch=compute_90a,code=sm_90a -o "$tmp/t.cubin" "$tmp/t.cu" >&2
"$nvcc" --version | tail -1 >&2
echo "$nvcc"
