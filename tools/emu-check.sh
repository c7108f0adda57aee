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
# decode attention, sampling), evaluation and checkpoints, all through --device cuda, with
# activation checkpointing on and bf16 matrix gradients. Run for 1 and for 3 RL steps with every device allocation
# logged: the counts must be equal (the rule "no device allocation inside a training step or
# decode step"), and the device memory live once the trainer is set up must equal its memory
# plan (the line it prints; `tz-engine plan` computes the same) within 1%.
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
    --set train.recompute=layers --set train.grad_dtype=bf16 2> "$run_dir/s$steps.log"
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
# Peak live bytes of the allocations after the plan is printed (the SFT warm start before it
# frees what it took) against the plan's bytes; sets $planned.
plan_matches_trace() {
  planned=$(grep -o "memory plan: [0-9.]* GiB ([0-9]* bytes)" "$1" | grep -o "([0-9]*" | tr -d '(')
  local traced
  traced=$(awk '/memory plan:/ {on=1} on && /cuda-emu: alloc/ {gsub(/\)/, "", $6); if ($6 + 0 > m) m = $6 + 0} END {print m + 0}' "$1")
  echo "emu-check: planned device memory $planned bytes, traced $traced bytes live after setup ($(basename "$1"))"
  if [ -z "$planned" ] || ! awk -v p="$planned" -v t="$traced" 'BEGIN {d = p - t; if (d < 0) d = -d; exit !(p > 0 && d <= 0.01 * p)}'; then
    echo "emu-check: FAILED: the traced allocations differ from the memory plan by more than 1%" >&2
    exit 1
  fi
}
plan_matches_trace "$run_dir/s3.log"
# `tz-engine plan` with the same settings prints the same total (the base model is built now).
plan_total=$("$bin" plan --json --set device=cuda --set out_dir="$run_dir/s3" --set sft.steps=3 --set sft.examples=200 --set data.generate_train=8 --set data.generate_test=8 \
  --set sft.batch=8 --set train.micro_batch=4 --set train.rollout_batch=8 --set train.recompute=layers --set train.grad_dtype=bf16 |
  grep -o '"total_bytes": [0-9]*' | grep -o '[0-9]*$')
echo "emu-check: tz-engine plan: $plan_total bytes"
[ "$plan_total" = "$planned" ] || { echo "emu-check: FAILED: tz-engine plan and the run disagree" >&2; exit 1; }
# A LoRA run (rank 8 on every projection, the base frozen and also the reference): 3 steps, no
# device allocation after the first step, live memory = its plan.
echo "emu-check: tz-engine train --device cuda with model.lora, 3 steps"
TZ_EMU_TRACE_ALLOC=1 "$bin" train --set device=cuda --set out_dir="$run_dir/lora" \
  --set sft.steps=3 --set sft.examples=200 --set sft.batch=8 \
  --set data.generate_train=8 --set data.generate_test=8 --set algo.n_vstar=2 \
  --set train.steps=3 --set train.batch_prompts=4 --set train.mini_batch=4 --set train.micro_batch=4 \
  --set train.rollout_batch=8 --set train.eval_every=1 --set train.save_every=1 --set train.sample_every=1 \
  --set train.recompute=layers --set model.lora.rank=8 --set model.lora.alpha=16 --set train.lr=1e-2 2> "$run_dir/lora.log"
test -s "$run_dir/lora/tiny-astarpo/final/adapter_model.safetensors"
late=$(awk '/^step 1:/ {on=1} on && /cuda-emu: alloc/ {n++} END {print n + 0}' "$run_dir/lora.log")
if [ "$late" != 0 ]; then
  echo "emu-check: FAILED: the LoRA run allocated device memory $late times after its first step" >&2
  exit 1
fi
plan_matches_trace "$run_dir/lora.log"
lora_plan=$("$bin" plan --json --set device=cuda --set out_dir="$run_dir/lora" --set sft.steps=3 --set sft.examples=200 --set data.generate_train=8 --set data.generate_test=8 \
  --set sft.batch=8 --set train.micro_batch=4 --set train.rollout_batch=8 --set train.recompute=layers \
  --set model.lora.rank=8 --set model.lora.alpha=16 | grep -o '"total_bytes": [0-9]*' | grep -o '[0-9]*$')
[ "$lora_plan" = "$planned" ] || { echo "emu-check: FAILED: tz-engine plan ($lora_plan) and the LoRA run ($planned) disagree" >&2; exit 1; }
# PPO: the critic (a second model with a value head, its optimizer state, its values and
# value-loss backward through the GEMM/bias kernels at width 1) on the emulated GPU, two
# steps and a resume, with the allocations its plan lists.
TZ_EMU_TRACE_ALLOC=1 "$bin" train --set device=cuda --set out_dir="$run_dir/s3" --set name=ppo --set algo.name=ppo \
  --set sft.steps=3 --set sft.examples=200 --set sft.batch=8 --set data.generate_train=8 --set data.generate_test=8 \
  --set train.steps=2 --set train.batch_prompts=4 --set train.mini_batch=4 --set train.micro_batch=2 \
  --set train.rollout_batch=8 --set train.eval_every=1 --set train.save_every=1 --set train.recompute=layers \
  --set train.grad_dtype=bf16 2> "$run_dir/ppo.log" || { cat "$run_dir/ppo.log" >&2; echo "emu-check: FAILED: PPO" >&2; exit 1; }
test -s "$run_dir/s3/ppo/checkpoints/step-000002/critic.safetensors"
grep -q '"critic/vf_loss"' "$run_dir/s3/ppo/metrics.jsonl"
plan_matches_trace "$run_dir/ppo.log"
"$bin" train --resume "$run_dir/s3/ppo" --set train.steps=3 2> "$run_dir/ppo-resume.log" ||
  { cat "$run_dir/ppo-resume.log" >&2; echo "emu-check: FAILED: PPO resume" >&2; exit 1; }
test -s "$run_dir/s3/ppo/checkpoints/step-000003/critic.safetensors"
# PPO with a shared critic: the value head on the policy (bf16 on the device, f32 master), the
# value loss's backward into the policy's gradients; two steps and a resume, allocations = plan.
TZ_EMU_TRACE_ALLOC=1 "$bin" train --set device=cuda --set out_dir="$run_dir/s3" --set name=ppo-shared --set algo.name=ppo \
  --set algo.critic=shared --set sft.steps=3 --set sft.examples=200 --set sft.batch=8 --set data.generate_train=8 \
  --set data.generate_test=8 --set train.steps=2 --set train.batch_prompts=4 --set train.mini_batch=4 --set train.micro_batch=2 \
  --set train.rollout_batch=8 --set train.eval_every=1 --set train.save_every=1 --set train.recompute=layers \
  --set train.grad_dtype=bf16 2> "$run_dir/ppo-shared.log" ||
  { cat "$run_dir/ppo-shared.log" >&2; echo "emu-check: FAILED: PPO with a shared critic" >&2; exit 1; }
grep -q '"critic/vf_explained_var"' "$run_dir/s3/ppo-shared/metrics.jsonl"
plan_matches_trace "$run_dir/ppo-shared.log"
"$bin" train --resume "$run_dir/s3/ppo-shared" --set train.steps=3 2> "$run_dir/ppo-shared-resume.log" ||
  { cat "$run_dir/ppo-shared-resume.log" >&2; echo "emu-check: FAILED: PPO with a shared critic, resume" >&2; exit 1; }
test -s "$run_dir/s3/ppo-shared/checkpoints/step-000003/critic.safetensors"
test -s "$run_dir/s3/ppo-shared/final/model.safetensors"
# A plan larger than the device's free memory stops the run before any weight is loaded,
# with one line naming the total, the free memory and what to lower.
if TZ_EMU_MEM_BYTES=50000000 "$bin" train --set device=cuda --set out_dir="$run_dir/small" --set sft.steps=0 \
    --set data.generate_train=8 --set data.generate_test=8 --set train.micro_batch=4 --set train.rollout_batch=8 \
    2> "$run_dir/small.log"; then
  echo "emu-check: FAILED: a run larger than the device started" >&2
  exit 1
fi
grep -q "^error: the run needs .* free: set train\." "$run_dir/small.log" || { cat "$run_dir/small.log" >&2; echo "emu-check: FAILED: no refusal line" >&2; exit 1; }

# Data parallel on the emulated GPU: `tz-engine launch` starts two processes, each with its
# own emulated device; rank 0 hands out the stand-in libnccl's unique id over the rendezvous
# (tools/cuda-emu/nccl.cpp), and the sharded optimizer's reduce-scatter and all-gather run
# through it. Against one process with the same global batch: the same sampled responses,
# and final weights equal up to the order of sums (f32 gradients) or within bf16 rounding of
# the reduced gradients (bf16 layer gradients: at most a few Adam steps of lr = 1e-4). The
# third variant shards the parameters per unit (dist.shard_params): each pass all-gathers
# every unit through the stand-in NCCL and each backward reduce-scatters every unit's
# gradients; it is held to the one-process f32 run.
echo "emu-check: two processes over the stand-in NCCL against one"
dp=(--set device=cuda --set out_dir="$run_dir/s3" --set sft.steps=3 --set sft.examples=200 --set sft.batch=8
  --set data.generate_train=8 --set data.generate_test=8 --set algo.n_vstar=2 --set train.steps=2
  --set train.batch_prompts=4 --set train.mini_batch=4 --set train.micro_batch=2 --set train.rollout_batch=8
  --set train.eval_every=1 --set train.save_every=1 --set train.sample_every=1 --set train.recompute=layers
  --set train.max_response_tokens=16 --set train.lr=1e-4)
port=$((29600 + RANDOM % 1000))
for g in f32 bf16 sharded; do
  case $g in
    sharded) one=f32; variant=(--set train.grad_dtype=f32 --set dist.shard_params=true) ;;
    *) one=$g; variant=(--set train.grad_dtype=$g)
      "$bin" train "${dp[@]}" "${variant[@]}" --set name=one-$g 2> "$run_dir/one-$g.log" ;;
  esac
  rm -rf "$run_dir/s3/vstar-cache"  # the two ranks estimate V* between them
  # The sharded ranks' allocations are traced: each rank's live bytes against the plan.
  trace=(); [ $g = sharded ] && trace=(env TZ_EMU_TRACE_ALLOC=1)
  "${trace[@]}" "$bin" launch --nproc-per-node 2 --master-port $port -- train "${dp[@]}" "${variant[@]}" --set name=two-$g \
    2> "$run_dir/two-$g.log" || { cat "$run_dir/two-$g.log" >&2; echo "emu-check: FAILED: the two-process run" >&2; exit 1; }
  grep -q "NCCL .*(libnccl.so.2), 2 ranks" "$run_dir/two-$g.log"
  [ $g = sharded ] && plan_matches_trace "$run_dir/two-$g.log"
  cmp -s "$run_dir/s3/one-$one/samples.jsonl" "$run_dir/s3/two-$g/samples.jsonl" ||
    { echo "emu-check: FAILED: two processes sampled other responses than one ($g gradients)" >&2; exit 1; }
  bound=$([ $g = bf16 ] && echo 1e-3 || echo 1e-6)
  python3 - "$run_dir/s3/one-$one/final/model.safetensors" "$run_dir/s3/two-$g/final/model.safetensors" "$bound" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    out = {}
    for k, v in head.items():
        if k != "__metadata__":
            s, e = v["data_offsets"]
            out[k] = struct.unpack("<%df" % ((e - s) // 4), b[8 + n + s:8 + n + e])
    return out
a, b, bound = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
worst = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
print(f"emu-check: final weights of two processes vs one differ by at most {worst:.3g} (bound {bound:g}; {sys.argv[2].split('/')[-3]})")
sys.exit(0 if worst <= bound and a.keys() == b.keys() else 1)
PY
  port=$((port + 1))
done
# A missing libnccl: every rank stops at once with one line naming it.
if TZ_NCCL_LIB=/nonexistent/libnccl.so.2 "$bin" launch --nproc-per-node 2 --master-port $port -- train "${dp[@]}" \
    --set name=nonccl 2> "$run_dir/nonccl.log"; then
  echo "emu-check: FAILED: a run without NCCL started" >&2
  exit 1
fi
grep -q "^error: rank 0: TZ_NCCL_LIB=/nonexistent/libnccl.so.2: cannot load it" "$run_dir/nonccl.log" &&
  grep -q "^error: rank 1: TZ_NCCL_LIB=" "$run_dir/nonccl.log" && ! grep -q panicked "$run_dir/nonccl.log" ||
  { cat "$run_dir/nonccl.log" >&2; echo "emu-check: FAILED: no one-line NCCL error" >&2; exit 1; }
echo "emu-check: ok"
