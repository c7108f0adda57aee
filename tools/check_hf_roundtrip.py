#!/usr/bin/env python3
"""Checks that transformers loads a model directory written by tz-engine and computes the same
per-token log-probs as `tz-engine score`.

    python3 tools/check_hf_roundtrip.py --bin target/release/tz-engine
"""
import argparse
import json
import subprocess
import tempfile

import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/tz-engine")
    ap.add_argument("--preset", default="tiny")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    subprocess.run([a.bin, "init", "--preset", a.preset, "--out", f"{d}/m", "--seed", "7"], check=True)
    items = [{"prompt": "numbers 44 19 35 target 98\n", "response": "<answer>(44+19)+35</answer>"},
             {"prompt": "123 * 456 =\n", "response": "<answer>56088</answer>"}]
    inp = "\n".join(json.dumps(x) for x in items) + "\n"
    out = subprocess.run([a.bin, "score", "--model", f"{d}/m", "--input", "-"], input=inp, capture_output=True, text=True, check=True)
    ours = [json.loads(l) for l in out.stdout.splitlines()]
    model = Qwen2ForCausalLM.from_pretrained(f"{d}/m", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(f"{d}/m")
    worst = 0.0
    for it, o in zip(items, ours):
        p = tok(it["prompt"], add_special_tokens=False)["input_ids"]
        r = tok(it["response"], add_special_tokens=False)["input_ids"]
        assert p == o["prompt_tokens"] and r == o["response_tokens"], "tokenization differs"
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].float(), -1)
        theirs = [float(lp[len(p) - 1 + i, t]) for i, t in enumerate(r)]
        worst = max(worst, max(abs(x - y) for x, y in zip(theirs, o["logprobs"])))
    print(f"transformers loads tz-engine's {a.preset} model; worst log-prob difference {worst:.2e}")
    assert worst < 1e-4


if __name__ == "__main__":
    main()
