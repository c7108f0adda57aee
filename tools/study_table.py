#!/usr/bin/env python3
"""The study table from runs written by tools/study-tiny.sh (OUT_DIR/<method>-s<seed>/).

Per method, mean ± sd over seeds of: held-out greedy solve rate, sampled pass@1 (temperature
1, over the pass@k samples), pass@k, the RL loop's wall seconds, seconds per step, peak RSS,
and the held-out solve rate at equal wall time (the last in-run evaluation at or before the
fastest method's wall time on that seed; the V* stage and the final evaluation are not in the
loop's time)."""
import json
import os
import re
import statistics
import sys

out = sys.argv[1]
runs = {}
for d in sorted(os.listdir(out)):
    m = re.fullmatch(r"(.+)-s(\d+)", d)
    if not m or not os.path.exists(os.path.join(out, d, "summary.json")):
        continue
    s = json.load(open(os.path.join(out, d, "summary.json")))
    lines = [json.loads(l) for l in open(os.path.join(out, d, "metrics.jsonl")) if l.strip()]
    steps = [l for l in lines if l.get("kind") != "eval"]
    evals = [(l.get("elapsed_s", 0.0), l["eval_solve_rate"]) for l in lines if "eval_solve_rate" in l]
    fe = s["final_eval"]
    runs[(m.group(1), int(m.group(2)))] = {
        "solve": fe["solve_rate"],
        "pass1": fe.get("sampled_solve_rate"),
        "passk": fe.get("pass_at_k"),
        "k": fe.get("k"),
        "base": s["base_solve_rate"],
        "wall": s["wall_time_s"],
        "step_s": statistics.mean(l["step_time_s"] for l in steps),
        "rss": max(l["peak_mem_bytes"] for l in steps) / 2**20,
        "evals": evals,
    }
seeds = sorted({s for _, s in runs})
methods = [m for m in ["astarpo-offline", "astarpo-online", "grpo", "reinforce", "ppo"] if any(k[0] == m for k in runs)]
for seed in seeds:
    budget = min(r["wall"] for (m, s), r in runs.items() if s == seed)
    for (m, s), r in runs.items():
        if s == seed:
            r["at_budget"] = max((e for e in r["evals"] if e[0] <= budget + 1e-9), key=lambda e: e[0])[1]
            r["budget"] = budget


def fmt(xs, pct=True, digits=1):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    scale = 100 if pct else 1
    mean = statistics.mean(xs) * scale
    if len(xs) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(xs) * scale:.{digits}f}"


k = next((r["k"] for r in runs.values() if r["k"]), "k")
print(f"seeds {seeds}; base solve rate {fmt([runs[(methods[0], s)]['base'] for s in seeds if (methods[0], s) in runs])}%")
print()
print(f"| method | held-out solve % | sampled pass@1 % (T = 1) | pass@{k} % | solve % at equal wall time | RL wall s | s/step | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for m in methods:
    rs = [runs[(m, s)] for s in seeds if (m, s) in runs]
    print(
        f"| {m} | {fmt([r['solve'] for r in rs])} | {fmt([r['pass1'] for r in rs])} | {fmt([r['passk'] for r in rs])} | "
        f"{fmt([r['at_budget'] for r in rs])} | {fmt([r['wall'] for r in rs], False, 0)} | {fmt([r['step_s'] for r in rs], False, 3)} | "
        f"{fmt([r['rss'] for r in rs], False, 0)} |"
    )
print()
print("equal wall time budgets (s, per seed): " + ", ".join(f"s{s}: {runs[(m, s)]['budget']:.0f}" for s in seeds for m in methods[:1] if (m, s) in runs))
