#!/usr/bin/env python3
"""PyTorch + transformers twin of `tz-engine bench phases`: the same three phases on the same
model directory and shapes, loading timed apart. On the CPU in f32 by default; `--device cuda
--dtype bf16` runs them on a GPU (timed with the device synchronized), next to
`tz-engine bench phases --device cuda`.

- score: a forward pass and the response half's log-probs (log_softmax + gather), tok/s over
  whole sequences;
- generate: `model.generate` with the KV cache, sampling at T = 1 (top-k and top-p off) for
  exactly --new-tokens tokens (no EOS), new tok/s;
- train: forward, mean response-token cross-entropy, backward, AdamW step (torch's default
  implementation for CPU tensors), s/step.

Token ids are seeded random draws from the vocabulary. Writes JSON lines with --json, in the
rows `tz-engine bench phases --json` writes, with engine "pytorch".
"""
import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--phases", default="score,generate,train")
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t = time.perf_counter()
    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    dev = torch.device(a.device)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    load_s = time.perf_counter() - t
    vocab = model.config.vocab_size
    n_params = sum(p.numel() for p in model.parameters())
    rows = [dict(engine="pytorch", phase="load", shape=f"{n_params} parameters", seconds=load_s, rate=load_s, unit="s")]

    def timed(fn):
        fn()
        sync()
        t = time.perf_counter()
        for _ in range(a.reps):
            fn()
        sync()
        return (time.perf_counter() - t) / a.reps

    g = torch.Generator().manual_seed(0x7E57)
    seqs = torch.randint(0, vocab, (a.batch, a.seq), generator=g).to(dev)
    half = a.seq // 2
    start = a.seq - half
    shape = f"{a.batch} x {a.seq} tokens"

    def response_logprobs():
        logits = model(seqs).logits[:, start - 1 : -1, :]
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, seqs[:, start:, None]).squeeze(-1)

    for phase in [p.strip() for p in a.phases.split(",") if p.strip()]:
        if phase == "score":
            model.eval()
            with torch.inference_mode():
                s = timed(response_logprobs)
            rows.append(dict(engine="pytorch", phase=phase, shape=shape, seconds=s, rate=a.batch * a.seq / s, unit="tok/s"))
        elif phase == "generate":
            model.eval()
            prompts = torch.randint(0, vocab, (a.gen_batch, a.prompt_tokens), generator=g).to(dev)
            mask = torch.ones_like(prompts)

            def gen():
                out = model.generate(
                    input_ids=prompts,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=a.new_tokens,
                    min_new_tokens=a.new_tokens,
                    eos_token_id=None,
                    pad_token_id=0,
                    use_cache=True,
                )
                assert out.shape[1] == a.prompt_tokens + a.new_tokens

            with torch.inference_mode():
                s = timed(gen)
            rows.append(
                dict(
                    engine="pytorch",
                    phase=phase,
                    shape=f"{a.gen_batch} x ({a.prompt_tokens} + {a.new_tokens} new) tokens",
                    seconds=s,
                    rate=a.gen_batch * a.new_tokens / s,
                    unit="new tok/s",
                )
            )
        elif phase == "train":
            model.train()
            # The fused CUDA implementation on a GPU (torch's fastest), the default one on the CPU.
            opt = torch.optim.AdamW(model.parameters(), lr=1e-8, fused=dev.type == "cuda")

            def step():
                opt.zero_grad(set_to_none=True)
                loss = -response_logprobs().mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

            s = timed(step)
            rows.append(dict(engine="pytorch", phase=phase, shape=shape, seconds=s, rate=s, unit="s/step"))
        else:
            raise SystemExit(f"--phases: unknown phase {phase!r} (phases: score, generate, train)")

    for r in rows:
        print(f"{r['phase']:<9} {r['shape']:<32} {r['seconds']:>10.4f} s  {r['rate']:>12.2f} {r['unit']}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(dict(r, torch=torch.__version__, transformers=transformers.__version__, device=a.device, dtype=a.dtype)) + "\n")


if __name__ == "__main__":
    main()
