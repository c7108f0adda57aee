#!/usr/bin/env bash
# Nsight Compute on chosen kernels of `tz-engine bench kernels` (run on the GPU machine).
#   tools/profile.sh [KERNEL_REGEX] [OUT_DIR]
# --clock-control none: measure at the clocks the GPU really runs, as METHOD.md asks.
set -euo pipefail
regex=${1:-.}
out=${2:-${OUT:-.}}
bin=${TZ_BIN:-./.device/tz-engine}
command -v ncu >/dev/null || { echo "profile.sh: ncu not found" >&2; exit 1; }
ncu --clock-control none --set full --kernel-name "regex:$regex" --launch-count 20 \
    -o "$out/tz-profile" -f "$bin" bench kernels --device cuda --reps 2
ncu --import "$out/tz-profile.ncu-rep" --page details --csv > "$out/tz-profile.csv"
echo "profile.sh: wrote $out/tz-profile.ncu-rep and $out/tz-profile.csv"
