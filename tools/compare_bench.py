#!/usr/bin/env python3
"""Joins `tz-engine bench kernels --json` with `tools/bench_torch.py --json` (same GPU, same
call of tools/gpu-check.sh) on (op, shape): our time / PyTorch's per op, and the project's GPU
targets checked against the measured numbers:
  - memory-bound ops (rmsnorm_fwd, adamw_*, logprob_fwd, sample_top_p) >= 80% of the measured
    copy bandwidth (our `pct_of_peak`);
  - logprob_fwd >= 2x faster than PyTorch's log_softmax + gather;
  - attention_fwd at 1k tokens causal >= 229 TFLOP/s (head_dim 64), >= 260 (128);
    attention_bwd >= 150.
Usage: compare_bench.py OURS.jsonl TORCH.jsonl [--md OUT.md]. A missing file or row is
reported as missing, never an error: the report must come back whatever ran.
"""
import argparse
import json
import sys

MEMORY_BOUND = ("rmsnorm_fwd", "adamw_f32", "adamw_master", "logprob_fwd", "sample_top_p")


def load(path):
    rows = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                    rows[(r["op"], r["shape"])] = r
                except (ValueError, KeyError):
                    continue
    except OSError as e:
        print(f"compare_bench: {path}: {e}", file=sys.stderr)
    return rows


def targets(ours, torch):
    """(what, measured, target, ok) for every target whose rows exist."""
    out = []
    for (op, shape), r in sorted(ours.items()):
        if op in MEMORY_BOUND and r.get("gbps") is not None:
            out.append((f"{op} {shape}: % of copy bandwidth", r["pct_of_peak"], 80.0, r["pct_of_peak"] >= 80.0))
        if op == "logprob_fwd" and (op, shape) in torch:
            speedup = torch[(op, shape)]["ms"] / r["ms"]
            out.append((f"{op} {shape}: speed-up over PyTorch", speedup, 2.0, speedup >= 2.0))
        if op in ("attention_fwd", "attention_bwd") and r.get("tflops") is not None:
            if op == "attention_bwd":
                want = 150.0
            elif " d64 " in f" {shape} ":
                want = 229.0
            elif " d128 " in f" {shape} ":
                want = 260.0
            else:
                continue
            out.append((f"{op} {shape}: TFLOP/s", r["tflops"], want, r["tflops"] >= want))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("torch")
    ap.add_argument("--md")
    a = ap.parse_args()
    ours, torch = load(a.ours), load(a.torch)
    lines = ["| op | shape | ours ms | PyTorch ms | ours / PyTorch |", "|---|---|---:|---:|---:|"]
    for key in sorted(set(ours) | set(torch)):
        o, t = ours.get(key), torch.get(key)
        om = f"{o['ms']:.3f}" if o else "missing"
        tm = f"{t['ms']:.3f}" if t else "missing"
        ratio = f"{o['ms'] / t['ms']:.2f}" if o and t and t["ms"] > 0 else "-"
        lines.append(f"| {key[0]} | {key[1]} | {om} | {tm} | {ratio} |")
    lines += ["", "| target | measured | target | met |", "|---|---:|---:|---|"]
    checks = targets(ours, torch)
    for what, got, want, ok in checks:
        lines.append(f"| {what} | {got:.2f} | {want:.2f} | {'yes' if ok else 'NO'} |")
    if not checks:
        lines.append("| (no rows to check) | | | |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
