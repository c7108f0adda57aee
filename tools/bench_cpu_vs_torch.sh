#!/usr/bin/env bash
# tz-engine's CPU backend against PyTorch + transformers, side by side in one invocation: the
# three phases of `tz-engine bench phases` (score, generate, train step) for the tiny preset's
# shape and for the Qwen2.5-0.5B shape (random weights, f32), each run by tz-engine and then by
# `tools/bench_cpu_torch.py` on the same model directory, with the same thread count, loading
# timed apart. Writes a markdown table of the ratios (tz-engine / PyTorch, > 1 = tz-engine
# faster) and the raw JSON lines.
#
#   bash tools/bench_cpu_vs_torch.sh [OUT_DIR]     # default bench/results/cpu-vs-torch-DATE
#
# Needs python3 with torch and transformers (tools/requirements-parity.txt; PYTHON=... picks
# the interpreter). THREADS (default: every core) pins both engines; QUICK=1 runs only the tiny
# shape. The 0.5B shape takes ~10 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/cpu-vs-torch-$(date +%Y-%m-%d)}
py=${PYTHON:-python3}
threads=${THREADS:-$(nproc)}
mkdir -p "$out"
"$py" -c 'import torch, transformers' 2>/dev/null || {
  echo "bench_cpu_vs_torch: $py lacks torch or transformers (pip install -r tools/requirements-parity.txt)" >&2
  exit 1
}
cargo build --release --quiet
tz=target/release/tz-engine
models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
# One thread pool of `threads` in each engine (rayon and matrixmultiply's for tz-engine).
export RAYON_NUM_THREADS=$threads MATMUL_NUM_THREADS=$threads OMP_NUM_THREADS=$threads

run_case() { # name preset score/train-batch seq gen-batch prompt new reps
  local name=$1 preset=$2 batch=$3 seq=$4 gbatch=$5 prompt=$6 new=$7 reps=$8
  local dir=$models/$name
  "$tz" init --preset "$preset" --out "$dir" --seed 1 --dtype f32 >/dev/null
  local args=(--model "$dir" --batch "$batch" --seq "$seq" --gen-batch "$gbatch" --prompt-tokens "$prompt" --new-tokens "$new" --reps "$reps")
  echo "== $name: tz-engine" >&2
  "$tz" bench phases "${args[@]}" --json "$out/$name-tz.jsonl" >&2
  echo "== $name: pytorch" >&2
  "$py" tools/bench_cpu_torch.py "${args[@]}" --threads "$threads" --json "$out/$name-torch.jsonl" >&2
}

run_case tiny tiny 64 128 64 64 64 3
if [ "${QUICK:-0}" != 1 ]; then
  run_case qwen2.5-0.5b qwen2.5-0.5b 4 128 8 64 16 1
fi

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src kernels Cargo.toml || echo "+changes")
"$py" - "$out" "$commit" "$threads" <<'EOF'
import json, os, platform, sys
out, commit, threads = sys.argv[1], sys.argv[2], sys.argv[3]
def rows(path):
    return {r["phase"]: r for r in map(json.loads, open(path))} if os.path.exists(path) else {}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
lines = [f"# tz-engine CPU backend vs PyTorch", "",
         f"Machine: {cpu}, {os.cpu_count()} cores, {threads} threads in each engine. tz-engine commit {commit}.", ""]
for name in ["tiny", "qwen2.5-0.5b"]:
    tz, pt = rows(f"{out}/{name}-tz.jsonl"), rows(f"{out}/{name}-torch.jsonl")
    if not tz:
        continue
    v = next(iter(pt.values()), {})
    lines += [f"## {name} (random weights, f32; torch {v.get('torch')}, transformers {v.get('transformers')})", "",
              "| phase | shape | tz-engine | PyTorch | ratio |", "|---|---|---|---|---|"]
    for ph in ["score", "generate", "train", "load"]:
        if ph not in tz or ph not in pt:
            continue
        a, b = tz[ph], pt[ph]
        # Rates: higher is better for tok/s, lower for seconds.
        ratio = a["rate"] / b["rate"] if a["unit"].endswith("tok/s") else b["rate"] / a["rate"]
        fmt = (lambda r: f"{r['rate']:.1f} {r['unit']}") if a["unit"].endswith("tok/s") else (lambda r: f"{r['rate']:.3f} {r['unit']}")
        lines.append(f"| {ph} | {a['shape']} | {fmt(a)} | {fmt(b)} | **{ratio:.2f}x** |")
    lines.append("")
lines.append("Ratio: tz-engine / PyTorch throughput (> 1: tz-engine faster). Load: seconds to weights in memory.")
open(f"{out}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
