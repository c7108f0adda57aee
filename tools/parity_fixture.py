#!/usr/bin/env python3
"""Parity fixture against Hugging Face transformers (tests/parity_transformers.rs reads it).

Builds small random Qwen2ForCausalLM models — grouped-query attention, q/k/v biases, tied and
untied embeddings, f32 and bf16 weights, weights scaled so log-probs are far from uniform — and
writes per case tests/fixtures/parity/<case>/:
  config.json, model.safetensors   exactly as save_pretrained writes them
  expected.json                    response log-probs of 3 sequences, 2 greedy continuations,
                                   the log-prob sum ("loss"), versions
  grads.safetensors                d(sum of the log-probs)/d(parameter), f32, HF names
Expected values are computed in float32 from the saved weights reloaded (so for bf16 cases they
are the exact f32 function of the bf16-rounded weights). Greedy continuations are computed
step by step with full recomputation (no EOS: all 16 tokens), and the script checks every
step's top-1/top-2 logit margin so the comparison is not decided by rounding.

    python3 tools/parity_fixture.py --out tests/fixtures/parity
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

SEED = 1234
SCORE = [([5, 17, 3, 88, 41], [9, 60, 2, 33]), ([1, 2, 3, 4, 5, 6, 7, 8, 9], [70, 71, 72, 73, 74, 75, 10, 11, 12, 13, 14, 15]), ([93, 0, 47, 12, 30, 61], [8, 8, 19, 50, 77])]
GREEDY = [[4, 22, 90, 13, 7], [61, 61, 3, 18, 44, 2, 29, 37]]
NEW_TOKENS = 16


def build(tied: bool) -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        use_sliding_window=False, bos_token_id=None, eos_token_id=None,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(SEED + int(tied))
    model = Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.4 * torch.randn_like(p))
    return model


def logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
    return lp[pos, torch.tensor(response)]


def greedy(model, prompt):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            top = torch.topk(logits, 2).values
            assert float(top[0] - top[1]) > 1e-3, "greedy step decided by a razor-thin margin; pick another seed"
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):]


def make_case(out_dir: str, tied: bool, dtype: torch.dtype):
    name = f"{'tied' if tied else 'untied'}-{'f32' if dtype == torch.float32 else 'bf16'}"
    d = os.path.join(out_dir, name)
    shutil.rmtree(d, ignore_errors=True)
    model = build(tied).to(dtype)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    # The reference: the saved weights reloaded in float32.
    ref = Qwen2ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    score, total = [], None
    for prompt, response in SCORE:
        lp = logprobs(ref, prompt, response)
        total = lp.sum() if total is None else total + lp.sum()
        score.append({"prompt_ids": prompt, "response_ids": response, "logprobs": [float(x) for x in lp]})
    ref.zero_grad()
    total.backward()
    grads = {n: p.grad.detach().float().contiguous().clone() for n, p in ref.named_parameters()}
    save_file(grads, os.path.join(d, "grads.safetensors"))
    flat = torch.tensor([x for s in score for x in s["logprobs"]])
    expected = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "seed": SEED,
        "score": score,
        "greedy": [{"prompt_ids": p, "max_new_tokens": NEW_TOKENS, "tokens": greedy(ref, p)} for p in GREEDY],
        "loss": float(total),
        "logprob_std": float(flat.std()),
    }
    assert expected["logprob_std"] > 1.0, "log-probs too close to uniform"
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    # Sanity: the directory loads back and reproduces one log-prob.
    again = Qwen2ForCausalLM.from_pretrained(d, dtype=torch.float32)
    with torch.no_grad():
        x = logprobs(again, *SCORE[0])[0]
    assert abs(float(x) - score[0]["logprobs"][0]) < 1e-5
    print(f"{name}: logprob std {expected['logprob_std']:.2f}, loss {expected['loss']:.3f}, greedy {expected['greedy'][0]['tokens'][:6]}...")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/parity")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(2)
    for tied in (True, False):
        for dtype in (torch.float32, torch.bfloat16):
            make_case(a.out, tied, dtype)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.out) for f in fs)
    print(f"fixture size: {size / 1e6:.2f} MB")
    assert size < 2e6


if __name__ == "__main__":
    main()
