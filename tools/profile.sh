#!/usr/bin/env bash
# Nsight profiling on the GPU machine, with the binary from tools/device-pack.sh.
#
#   tools/profile.sh kernels [KERNEL_REGEX]   Nsight Compute on kernels of `tz-engine bench kernels`
#   tools/profile.sh phase PHASE [--set k=v]  Nsight Compute on the kernels inside one NVTX phase of
#                                             a short tiny-preset training run on the GPU
#                                             (phases: rollout ref_logprobs old_logprobs forward
#                                             backward optimizer vstar eval sft_forward sft_backward)
#   tools/profile.sh timeline [--set k=v]     Nsight Systems timeline of the same run (NVTX phases
#                                             projected onto the GPU)
# Reports go to $OUT (or the current directory). --clock-control none: measure at the clocks
# the GPU really runs, as the device METHOD.md asks. tz-engine marks the phases through NVTX
# (src/nvtx.rs), which the tools attach to via NVTX_INJECTION64_PATH themselves.
set -euo pipefail
mode=${1:-kernels}
shift || true
out=${OUT:-.}
bash "$(dirname "$0")/device-unpack.sh"
bin=${TZ_BIN:-./.device/bin/tz-engine}
[ -x "$bin" ] || { echo "profile.sh: $bin not found (run tools/device-pack.sh and carry .device)" >&2; exit 1; }
# A short GPU run of the tiny preset: enough steps for every phase to appear a few times.
short_run=(train --set device=cuda --set out_dir="$out/profile-runs" --set name=profile
           --set train.steps=3 --set train.eval_every=3 --set sft.steps=20 --set data.generate_test=64)

case "$mode" in
  kernels)
    command -v ncu >/dev/null || { echo "profile.sh: ncu not found" >&2; exit 1; }
    regex=${1:-.}
    ncu --clock-control none --set full --kernel-name "regex:$regex" --launch-count 20 \
        -o "$out/tz-profile" -f "$bin" bench kernels --device cuda --reps 2
    ;;
  phase)
    command -v ncu >/dev/null || { echo "profile.sh: ncu not found" >&2; exit 1; }
    phase=${1:?usage: tools/profile.sh phase PHASE}
    shift
    # "NAME/" selects push/pop ranges of that name in the default domain.
    ncu --clock-control none --set full --nvtx --nvtx-include "$phase/" --launch-count 40 \
        -o "$out/tz-profile" -f "$bin" "${short_run[@]}" "$@"
    ;;
  timeline)
    command -v nsys >/dev/null || { echo "profile.sh: nsys not found" >&2; exit 1; }
    nsys profile --trace cuda,nvtx,osrt --force-overwrite true -o "$out/tz-timeline" "$bin" "${short_run[@]}" "$@"
    nsys stats --report nvtx_sum,cuda_gpu_kern_sum --format csv --output "$out/tz-timeline" "$out/tz-timeline.nsys-rep" || true
    echo "profile.sh: wrote $out/tz-timeline.nsys-rep and its CSV summaries"
    exit 0
    ;;
  *)
    echo "usage: tools/profile.sh kernels [REGEX] | phase PHASE [--set k=v ...] | timeline [--set k=v ...]" >&2
    exit 2
    ;;
esac
ncu --import "$out/tz-profile.ncu-rep" --page details --csv >"$out/tz-profile.csv"
echo "profile.sh: wrote $out/tz-profile.ncu-rep and $out/tz-profile.csv"
