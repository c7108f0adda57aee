#!/usr/bin/env bash
# The algorithm study on the tiny CPU preset: A*PO (offline and online V*), GRPO, PPO and
# REINFORCE from the same base model per seed, each at ~128 sampled sequences per step for
# 300 steps, then a table (held-out greedy solve rate, sampled pass@1 at temperature 1,
# pass@4, RL wall time, seconds per step, peak RSS, and the held-out solve rate each method
# had reached by the fastest method's wall time).
#
#   bash tools/study-tiny.sh OUT_DIR SEED [SEED...] [-- EXTRA --set ARGS for every run]
#   python3 tools/study_table.py OUT_DIR     # the table again from the runs
#
# Runs go to OUT_DIR/<method>-s<seed>; each seed's base model is built once (the first run)
# and reused by the others.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "$1")
shift
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  seeds+=("$1")
  shift
done
[ "${1:-}" = "--" ] && shift
extra=("$@")
cargo build --release --bin tz-engine >&2
bin=target/release/tz-engine
mkdir -p "$out"
declare -A methods=(
  [astarpo-offline]=""
  [astarpo-online]="--set algo.vstar=online --set algo.online_samples=4 --set train.batch_prompts=32"
  [grpo]="--set algo.name=grpo --set algo.group_size=8 --set train.batch_prompts=16"
  [reinforce]="--set algo.name=reinforce --set algo.samples_per_prompt=4 --set train.batch_prompts=32"
  [ppo]="--set algo.name=ppo --set algo.critic_lr=1e-3"
)
for seed in "${seeds[@]}"; do
  for m in astarpo-offline astarpo-online grpo reinforce ppo; do
    name="$m-s$seed"
    if [ -s "$out/$name/summary.json" ]; then
      echo "study: $name done already" >&2
      continue
    fi
    echo "study: $name" >&2
    # shellcheck disable=SC2086
    "$bin" train --set out_dir="$out" --set name="$name" --set seed=$seed ${methods[$m]} \
      "${extra[@]}" 2> "$out/$name.log" || { tail -5 "$out/$name.log" >&2; exit 1; }
  done
done
python3 tools/study_table.py "$out"
