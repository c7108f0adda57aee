#!/usr/bin/env bash
# Runs the CUDA test suites on the emulated GPU (tools/cuda-emu: the driver API and every
# kernel compiled as host C++, a reference cuBLASLt), so the CUDA backend's host code and
# the kernels' logic are checked against the CPU oracle on a machine without a GPU.
#   1. the emulator's self-test;
#   2. backend_ops (its cuda:: cases: every op against host references), parity_cuda, model_cuda,
#      backend_checks (undersized views are errors);
#   3. backend_ops and parity_cuda again with each block's threads run in reverse order
#      between barriers (TZ_EMU_ORDER=reverse): a missing __syncthreads/__syncwarp that the
#      forward order happened to satisfy gives a different result there.
# TZ_EMU_ASAN=1: the emulator built with AddressSanitizer and preloaded into the tests — the
# emulated counterpart of compute-sanitizer memcheck (device buffers are exact-size heap
# blocks, __shared__ arrays are globals: both get redzones). About 5x slower.
# TZ_REQUIRE_GPU=1: a suite that cannot open the (emulated) device fails instead of skipping.
# Release build: the oracle side must not be the slow part. Extra args go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${TZ_EMU_ASAN:-0}" = 1 ]; then
  dir=$(bash tools/cuda-emu/build.sh target/cuda-emu-asan)
  asan="$(${CXX:-c++} -print-file-name=libasan.so)"
  # Fiber stacks are switched by hand: no use-after-return tracking; leaks are not the point.
  export ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0
  # cargo runs each test executable through this runner.
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$asan"
else
  dir=$(bash tools/cuda-emu/build.sh)
fi
"$dir/selftest"
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TZ_REQUIRE_GPU=1
cargo test --release --test backend_ops --test parity_cuda --test model_cuda --test backend_checks "$@"
echo "emu-check: again, threads in reverse order between barriers"
TZ_EMU_ORDER=reverse cargo test --release --test backend_ops --test parity_cuda "$@"

# The trainer end to end on the emulated GPU: SFT, V*, A*PO steps with rollouts (KV cache,
# decode attention, sampling), evaluation and checkpoints, all through --device cuda. Run for
# 1 and for 3 RL steps with every device allocation logged: the counts must be equal (the
# rule "no device allocation inside a training step or decode step").
echo "emu-check: tz-engine train --device cuda end to end, 1 and 3 steps"
cargo build --release --bin tz-engine
bin="${CARGO_TARGET_DIR:-target}/release/tz-engine"
run_dir=$(mktemp -d)
trap 'rm -rf "$run_dir"' EXIT
for steps in 1 3; do
  TZ_EMU_TRACE_ALLOC=1 "$bin" train --set device=cuda --set out_dir="$run_dir/s$steps" \
    --set sft.steps=3 --set sft.examples=200 --set sft.batch=8 \
    --set data.generate_train=8 --set data.generate_test=8 --set algo.n_vstar=2 \
    --set train.steps=$steps --set train.batch_prompts=4 --set train.mini_batch=4 --set train.micro_batch=4 \
    --set train.rollout_batch=8 --set train.eval_every=1 --set train.save_every=1 --set train.sample_every=1 \
    2> "$run_dir/s$steps.log"
  test -s "$run_dir/s$steps/tiny-astarpo/summary.json"
  test -d "$run_dir/s$steps/tiny-astarpo/checkpoints/step-00000$steps"
done
a1=$(grep -c "cuda-emu: alloc" "$run_dir/s1.log")
a3=$(grep -c "cuda-emu: alloc" "$run_dir/s3.log")
echo "emu-check: device allocations: $a1 for 1 training step, $a3 for 3"
if [ "$a1" != "$a3" ]; then
  echo "emu-check: FAILED: training steps after the first allocate device memory" >&2
  exit 1
fi
echo "emu-check: ok"
