#!/usr/bin/env python3
"""PyTorch equivalents of `tz-engine bench kernels`, on the same GPU in the same call, so a
report can show our time / PyTorch's time per op. Same op names and shapes (Qwen2.5-1.5B by
default). Prints a table and writes JSON lines with --json.

Runs on the device machine (torch + CUDA present); exits 0 with a message where there is no GPU.
"""
import argparse
import json
import sys
import time


def timed(fn, reps, torch):
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--inter", type=int, default=8960)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("bench_torch: torch is not installed; skipping")
        return 0
    if not torch.cuda.is_available():
        print("bench_torch: no CUDA device; skipping")
        return 0
    dev, bf = "cuda", torch.bfloat16
    n, c, inter, vocab = a.tokens, a.hidden, a.inter, a.vocab
    rows = []

    def mem(op, shape, s, nbytes):
        rows.append({"op": op, "shape": shape, "ms": s * 1e3, "gbps": nbytes / s / 1e9, "tflops": None})

    x = torch.randn(n, c, device=dev, dtype=bf)
    w = torch.ones(c, device=dev, dtype=bf)
    rms = lambda: F.rms_norm(x, (c,), w, 1e-6)
    mem("rmsnorm_fwd", f"{n}x{c}", timed(rms, a.reps, torch), 2 * n * c * 2)

    gu = torch.randn(n, 2 * inter, device=dev, dtype=bf)
    sw = lambda: F.silu(gu[:, :inter]) * gu[:, inter:]
    mem("swiglu_fwd", f"{n}x{inter}", timed(sw, a.reps, torch), 3 * n * inter * 2)

    lrows = max(n // 4, 1)
    logits = torch.randn(lrows, vocab, device=dev, dtype=bf)
    tgt = torch.randint(0, vocab, (lrows,), device=dev)
    lg = lambda: torch.log_softmax(logits.float(), -1).gather(-1, tgt[:, None])
    mem("logprob_fwd", f"{lrows}x{vocab}", timed(lg, a.reps, torch), lrows * vocab * 2)

    srows = min(lrows, 256)
    sl = logits[:srows]

    def top_p():
        p = torch.softmax(sl.float(), -1)
        sp, si = torch.sort(p, descending=True)
        keep = sp.cumsum(-1) - sp < 0.9
        sp = sp * keep
        choice = torch.multinomial(sp, 1)
        return si.gather(-1, choice)

    mem("sample_top_p", f"{srows}x{vocab}", timed(top_p, a.reps, torch), srows * vocab * 2)

    np_ = max(n * c * 8, 1 << 20)
    p = torch.zeros(np_, device=dev, dtype=torch.float32, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW([p], lr=1e-6, weight_decay=0.01, fused=True)
    mem("adamw_f32", f"{np_}", timed(opt.step, a.reps, torch), 7 * 4 * np_)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    for hd in (64, 128):
        heads = c // hd
        kvh = min(2, heads)
        seq = min(1024, n)
        nseq = max(n // seq, 1)
        q = torch.randn(nseq, heads, seq, hd, device=dev, dtype=bf)
        k = torch.randn(nseq, kvh, seq, hd, device=dev, dtype=bf).repeat_interleave(heads // kvh, 1)
        v = torch.randn_like(k)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            s = timed(f, a.reps, torch)
        flops = nseq * 2.0 * seq * seq * hd * heads
        rows.append({"op": "attention_fwd", "shape": f"{nseq}x{seq} d{hd} h{heads}", "ms": s * 1e3, "gbps": None, "tflops": flops / s / 1e12})
        # Decode: one query per row against a 1k-token cache, grouped-query natively
        # (enable_gqa, torch >= 2.5) so K/V are not expanded per query head.
        del q, k, v
        rb = 256
        qd = torch.randn(rb, heads, 1, hd, device=dev, dtype=bf)
        kd = torch.randn(rb, kvh, seq, hd, device=dev, dtype=bf)
        vd = torch.randn_like(kd)
        try:
            f = lambda: F.scaled_dot_product_attention(qd, kd, vd, enable_gqa=True)
            s = timed(f, a.reps, torch)
            mem("attention_decode", f"{rb}x{seq} d{hd} h{heads}", s, 2 * rb * seq * kvh * hd * 2)
        except (TypeError, RuntimeError) as e:
            print(f"bench_torch: decode attention skipped ({e})")
        del qd, kd, vd

    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    for r in rows:
        perf = f"{r['gbps']:.1f} GB/s" if r["gbps"] else f"{r['tflops']:.1f} TFLOP/s"
        print(f"{r['op']:<16} {r['shape']:<28} {r['ms']:>9.3f} ms  {perf}")
    if a.json:
        with open(a.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
