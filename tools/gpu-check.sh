#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, with .device/ (tools/device-pack.sh)
# carried along. Needs no Rust toolchain. Writes its report to $OUT (or .device/out):
#   gpu-check.txt   summary and every step's output
#   bench-kernels.jsonl, bench-torch.jsonl, compare.md (ours / PyTorch per op, targets met?)
# Steps, most informative first (the budget may cut the tail): the CUDA test executables
# (TZ_REQUIRE_GPU=1, so "no GPU" fails instead of skipping); `tz-engine bench kernels
# --device cuda`; `tools/bench_torch.py` and `tools/compare_bench.py`; compute-sanitizer
# memcheck and racecheck on the kernel tests; the criterion kernel bench's CUDA group.
# Then, as groups: `bench phases --device cuda` (score, decode at batch 256, train step) on
# random Qwen2.5-0.5B/1.5B-shaped models next to the same phases in PyTorch/transformers bf16
# on the same GPU, with peak device memory sampled; and the main job (`train`, tiny preset)
# with --set device=cuda (TZ_CHECK_TRAIN_STEPS=N: N RL steps only).
# TZ_CHECK_GROUPS picks groups (default: tests bench torch phases train sanitizer criterion),
# so a second device call can run what the first one's budget left out.
# The whole run is budgeted (TZ_CHECK_BUDGET seconds, default 660: a device session gets
# ~15 minutes including the machine's start): a step that would begin after the budget is
# spent is skipped and counted as failed, so the report always comes back.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-$root/.device/out}"
mkdir -p "$out"
report="$out/gpu-check.txt"
: >"$report"
bin="$root/.device/bin"
pass=0
fail=0

log() { echo "$*" | tee -a "$report"; }
budget="${TZ_CHECK_BUDGET:-660}"
groups=" ${TZ_CHECK_GROUPS:-tests bench torch phases train sanitizer criterion} "
want() { [[ "$groups" == *" $1 "* ]]; }
step() {
  # step NAME TIMEOUT CMD... (the timeout is cut to what is left of the budget)
  local name="$1" t="$2"
  shift 2
  log ""
  log "=== $name: $*"
  local left=$((budget - SECONDS))
  if [ "$left" -lt 20 ]; then
    fail=$((fail + 1))
    log "--- $name: SKIPPED (budget of ${budget} s spent)"
    return
  fi
  [ "$t" -gt "$left" ] && t=$left
  local start=$SECONDS
  timeout "$t" "$@" >"$out/step.log" 2>&1
  local rc=$?
  tail -c 20000 "$out/step.log" >>"$report"
  rm -f "$out/step.log"
  if [ $rc -eq 0 ]; then
    pass=$((pass + 1))
    log "--- $name: ok ($((SECONDS - start)) s)"
  else
    fail=$((fail + 1))
    log "--- $name: FAILED rc=$rc ($((SECONDS - start)) s)"
  fi
}

bash tools/device-unpack.sh || log "could not unpack .device/pack.tar.gz"
if [ ! -d "$bin" ]; then
  log "no .device/bin: run tools/device-pack.sh on the build machine and carry .device"
  echo "0 passed, 1 failed"
  exit 1
fi

# cuBLASLt / NVRTC: the toolkit's, or the ones PyTorch's wheels carry.
extra="$(python3 - 2>/dev/null <<'PY'
import glob, os, site
paths = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    paths += glob.glob(os.path.join(sp, "nvidia", "*", "lib"))
print(":".join(p for p in paths if os.path.isdir(p)))
PY
)"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && extra="$extra:$d"
done
export LD_LIBRARY_PATH="${extra#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

log "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
[ -f .device/MANIFEST.txt ] && head -4 .device/MANIFEST.txt | tee -a "$report"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | tee -a "$report"
export TZ_REQUIRE_GPU=1 RUST_BACKTRACE=1

tests=()
for exe in "$bin"/*; do
  case "$(basename "$exe")" in
    tz-engine) ;;
    *) tests+=("$exe") ;;
  esac
done

if want tests; then
  for exe in "${tests[@]}"; do
    step "test $(basename "$exe")" 180 "$exe" --test-threads=1 --nocapture
  done
fi

if ! want bench; then
  :
elif [ -x "$bin/tz-engine" ] && "$bin/tz-engine" bench --help 2>/dev/null | grep -qi kernels; then
  step "tz-engine bench kernels" 180 "$bin/tz-engine" bench kernels --device cuda --json "$out/bench-kernels.jsonl"
else
  log "tz-engine bench kernels: not available in this build (skipped)"
fi

if want torch && [ -f tools/bench_torch.py ]; then
  step "bench_torch.py" 180 python3 tools/bench_torch.py --json "$out/bench-torch.jsonl"
  step "ours vs PyTorch, targets" 30 python3 tools/compare_bench.py "$out/bench-kernels.jsonl" "$out/bench-torch.jsonl" --md "$out/compare.md"
fi

# Peak device memory while a step runs: nvidia-smi sampled every 100 ms in the background.
mem_watch() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$out/mem.log" 2>/dev/null & mem_pid=$!; }
mem_peak() {
  kill "$mem_pid" 2>/dev/null
  wait "$mem_pid" 2>/dev/null
  log "--- peak device memory during $1: $(sort -n "$out/mem.log" | tail -1) MiB (nvidia-smi, whole GPU)"
  rm -f "$out/mem.log"
}

if want phases && [ -x "$bin/tz-engine" ]; then
  models=/tmp/tz-models
  for shape in ${TZ_CHECK_PHASE_SHAPES:-qwen2.5-0.5b qwen2.5-1.5b}; do
    step "init $shape" 300 "$bin/tz-engine" init --preset "$shape" --out "$models/$shape" --seed 1 --dtype bf16
    args=(--model "$models/$shape" --batch 32 --seq 512 --gen-batch 256 --prompt-tokens 128 --new-tokens 128 --reps 3)
    mem_watch
    step "tz-engine bench phases $shape" 180 "$bin/tz-engine" bench phases --device cuda "${args[@]}" --json "$out/phases.tmp"
    mem_peak "tz-engine bench phases $shape"
    cat "$out/phases.tmp" >>"$out/phases.jsonl" 2>/dev/null
    mem_watch
    step "pytorch phases $shape" 180 python3 tools/bench_cpu_torch.py --device cuda --dtype bf16 --threads "$(nproc)" "${args[@]}" --json "$out/phases.tmp"
    mem_peak "pytorch phases $shape"
    cat "$out/phases.tmp" >>"$out/phases.jsonl" 2>/dev/null
    rm -f "$out/phases.tmp"
    rm -rf "${models:?}/$shape"
  done
fi

if want train && [ -x "$bin/tz-engine" ]; then
  # The main job (tiny preset: SFT warm start, then A*PO) on the GPU, as the README runs it on
  # the CPU; TZ_CHECK_TRAIN_STEPS=N: only N RL steps (held-out evaluation every N/2).
  extra=()
  if [ -n "${TZ_CHECK_TRAIN_STEPS:-}" ]; then
    n=$TZ_CHECK_TRAIN_STEPS
    extra=(--set train.steps="$n" --set train.eval_every=$(((n + 1) / 2)) --set train.save_every="$n")
  fi
  mem_watch
  step "train tiny preset --device cuda" 240 "$bin/tz-engine" train --set device=cuda --set out_dir=/tmp/tz-run "${extra[@]}"
  mem_peak "train"
  cp /tmp/tz-run/tiny-astarpo/metrics.jsonl "$out/train-metrics.jsonl" 2>/dev/null
fi

if ! want sanitizer; then
  :
elif command -v compute-sanitizer >/dev/null 2>&1; then
  for exe in "${tests[@]}"; do
    case "$(basename "$exe")" in
      backend_ops*)
        # Its cuda:: cases only (the cpu:: ones launch no kernels).
        step "memcheck $(basename "$exe")" 240 compute-sanitizer --tool memcheck --error-exitcode 1 "$exe" --test-threads=1 cuda::
        step "racecheck $(basename "$exe")" 240 compute-sanitizer --tool racecheck --error-exitcode 1 "$exe" --test-threads=1 cuda::
        ;;
      model_cuda*)
        # The whole model on the GPU (forward, backward, LoRA, AdamW) under memcheck.
        step "memcheck $(basename "$exe")" 240 compute-sanitizer --tool memcheck --error-exitcode 1 "$exe" --test-threads=1
        ;;
    esac
  done
else
  log "compute-sanitizer not found: memcheck/racecheck skipped"
fi

if want criterion && [ -x .device/bench/kernels ]; then
  step "criterion kernels (cuda group)" 240 .device/bench/kernels --bench cuda_ --warm-up-time 1 --measurement-time 2
fi


log ""
log "$pass passed, $fail failed"
[ $fail -eq 0 ]
