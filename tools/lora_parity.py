#!/usr/bin/env python3
"""LoRA parity with Hugging Face peft, both directions (torch, transformers, peft from PyPI;
tools/requirements-parity.txt).

Fixture (peft -> tz-engine; tests/parity_peft.rs reads it):

    python3 tools/lora_parity.py fixture --out tests/fixtures/lora

  For each base in tests/fixtures/parity/{tied,untied}-f32, a peft LoRA (rank 4, alpha 8, all
  seven projections q/k/v/o/gate/up/down) with A as peft initializes it and B drawn at random
  (peft starts B at zero, which would make the check vacuous), saved with save_pretrained
  into <out>/<case>/adapter/ (adapter_config.json, adapter_model.safetensors). expected.json
  holds the adapted model's response log-probs of the parity fixture's sequences, the merged
  model's (merge_and_unload), and grads.safetensors the gradient of the log-prob sum w.r.t.
  every adapter tensor (peft's saved names), all float32.

Check (tz-engine -> peft): an adapter tz-engine wrote, loaded into its base with
PeftModel.from_pretrained, must reproduce `tz-engine score --adapter` log-probs within 1e-4, and
the model `tz-engine merge` wrote must reproduce them too:

    python3 tools/lora_parity.py check --base BASE --adapter ADAPTER --scores scores.jsonl \
        [--merged MERGED]
"""
import argparse
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

SEED = 4321
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return lp[pos, torch.tensor(response)]


def load_base(d):
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def fixture(args):
    import peft
    from peft import LoraConfig, get_peft_model

    for case in ("tied-f32", "untied-f32"):
        base_dir = os.path.join(args.parity, case)
        with open(os.path.join(base_dir, "expected.json")) as f:
            seqs = [(s["prompt_ids"], s["response_ids"]) for s in json.load(f)["score"]]
        out = os.path.join(args.out, case)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        torch.manual_seed(SEED)
        cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(load_base(base_dir), cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(0.3 * torch.randn_like(p))
        model.eval()
        total, score = None, []
        for prompt, response in seqs:
            lp = logprobs(model, prompt, response)
            total = lp.sum() if total is None else total + lp.sum()
            score.append([float(x) for x in lp])
        model.zero_grad()
        total.backward()
        grads = {n.replace(".default", ""): p.grad.detach().float().contiguous().clone() for n, p in model.named_parameters() if "lora_" in n}
        model.save_pretrained(os.path.join(out, "adapter"))
        save_file(grads, os.path.join(out, "grads.safetensors"))
        with torch.no_grad():
            base_lp = [[float(x) for x in logprobs(load_base(base_dir), p, r)] for p, r in seqs]
            merged = model.merge_and_unload()
            merged_lp = [[float(x) for x in logprobs(merged, p, r)] for p, r in seqs]
        moved = max(abs(a - b) for s, t in zip(score, base_lp) for a, b in zip(s, t))
        assert moved > 0.1, f"the adapter barely changes the model ({moved})"
        expected = {
            "base": f"tests/fixtures/parity/{case}",
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "peft_version": peft.__version__,
            "seed": SEED,
            "sequences": [{"prompt_ids": p, "response_ids": r} for p, r in seqs],
            "logprobs": score,
            "merged_logprobs": merged_lp,
            "base_logprobs": base_lp,
            "loss": float(total),
        }
        with open(os.path.join(out, "expected.json"), "w") as f:
            json.dump(expected, f, indent=1)
        print(f"{case}: largest change from the base {moved:.3f} nats, loss {float(total):.3f}")
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(args.out) for f in fs)
    print(f"fixture size: {size / 1e6:.2f} MB")
    assert size < 1e6


def check(args):
    from peft import PeftModel

    rows = [json.loads(line) for line in open(args.scores) if line.strip()]
    model = PeftModel.from_pretrained(load_base(args.base), args.adapter)
    model.eval()
    sides = [("peft", model)]
    if args.merged:
        sides.append(("merged", load_base(args.merged)))
    worst_all = 0.0
    with torch.no_grad():
        for name, m in sides:
            worst = 0.0
            for r in rows:
                lp = logprobs(m, r["prompt_tokens"], r["response_tokens"])
                worst = max(worst, float((lp - torch.tensor(r["logprobs"])).abs().max()))
            print(f"{name}: {len(rows)} sequences, max |tz-engine - {name}| = {worst:.2e}")
            worst_all = max(worst_all, worst)
    if worst_all > 1e-4:
        print("FAIL: above 1e-4")
        sys.exit(1)
    print("OK: within 1e-4")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("--out", default="tests/fixtures/lora")
    f.add_argument("--parity", default="tests/fixtures/parity")
    c = sub.add_parser("check")
    c.add_argument("--base", required=True)
    c.add_argument("--adapter", required=True)
    c.add_argument("--scores", required=True)
    c.add_argument("--merged")
    a = ap.parse_args()
    torch.set_num_threads(2)
    fixture(a) if a.cmd == "fixture" else check(a)


if __name__ == "__main__":
    main()
