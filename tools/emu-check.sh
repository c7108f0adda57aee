#!/usr/bin/env bash
# Runs the CUDA test suites on the emulated GPU (tools/cuda-emu: the driver API and every
# kernel compiled as host C++, a reference cuBLASLt), so the CUDA backend's host code and
# the kernels' logic are checked against the CPU oracle on a machine without a GPU.
# TZ_REQUIRE_GPU=1: a suite that cannot open the (emulated) device fails instead of skipping.
# Release build: the emulator runs every CUDA thread as a fiber, so the oracle side must not
# be the slow part. Usage: bash tools/emu-check.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(bash tools/cuda-emu/build.sh)
"$dir/selftest"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TZ_REQUIRE_GPU=1
cargo test --release --test cuda_smoke --test parity_cuda --test model_cuda "$@"
