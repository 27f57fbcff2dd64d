"""Other ways to compute the step's two attentions at SmolLM2-135M's size, side by side (medians).

    .venv/bin/python benchmarks/attention_kernels.py --repeats 10

What this CPU's kernels allow, measured for the attentions nrt runs (docs/PERFORMANCE.md, "What
else was measured"):

- `update`: one micro-batch's completion-pass attention (16 rows, 9 query / 3 key-value heads,
  head dim 64, 144 queries over a 32-token prompt plus themselves, padding + causal mask),
  forward and backward, every one of --layers layers with its own tensors. `flash_masked` is what
  nrt runs (`float32_sdpa_attention`: float32 flash kernel, additive mask, grouped heads);
  `flash_causal` drops the mask for the kernel's causal path, with one zero query per prompt
  token in front so that its top-left causal mask becomes the bottom-right one the completions
  need (exact only without left padding); `flash_folded` folds each kv head's 3 query heads into
  one 432-query head (the kernel's larger query blocks); `math_float32` / `math_bfloat16` are
  explicit matmuls and softmax (they keep the [rows, heads, queries, keys] probabilities for the
  backward: memory quadratic in the length); `flash_bfloat16` is the flash kernel in bfloat16.
- `decode`: one decoding token's attention over each row's trace keys/values (64 rows, 3
  key-value heads of 3 query heads, --trace cached tokens), every layer with its own cache so it
  is read from memory, not from the CPU's caches. `float32` is nrt's (`grouped_attention`:
  q @ K^T, then p @ V over the float32 cache); `float32_keys_left` computes K @ q^T instead;
  `bfloat16` keeps the cache in bfloat16 (rounds the rotated keys). With the cache's bytes per
  token, and the rate of one pass over 200 MB (`sum`) as this machine's memory bandwidth.

Prints one JSON line per part: milliseconds per variant and each variant's largest difference
from nrt's output (0.0: equal bit for bit).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from timing import alternating_medians_ms


def update_part(args, g) -> dict:
    rows, heads, kv_heads, dim, queries, prompt = 16, 9, 3, 64, args.queries, args.prompt
    rep, keys = heads // kv_heads, prompt + queries
    allowed = torch.ones(queries, keys, dtype=torch.bool).tril(prompt)
    mask = torch.zeros(rows, 1, queries, keys).masked_fill_(~allowed, float("-inf"))
    layers = [(torch.randn(rows, heads, queries, dim, generator=g), torch.randn(rows, kv_heads, keys, dim, generator=g),
               torch.randn(rows, kv_heads, keys, dim, generator=g)) for _ in range(args.layers)]
    zeros = torch.zeros(rows, heads, prompt, dim)
    folded_mask = mask.repeat(1, 1, rep, 1)  # made once, as a forward would make it once for all layers

    def flash_masked(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    def flash_causal(q, k, v):
        padded = torch.cat([zeros.to(q.dtype), q], dim=2)
        return F.scaled_dot_product_attention(padded, k, v, is_causal=True, enable_gqa=True)[:, :, prompt:]

    def flash_folded(q, k, v):
        folded = q.reshape(rows, kv_heads, rep * queries, dim)  # query head h = kv head h // rep
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=folded_mask)
        return out.view(rows, heads, queries, dim)

    def math(q, k, v):
        scores = torch.matmul(q.reshape(rows, kv_heads, rep * queries, dim), k.transpose(-1, -2)) * dim**-0.5
        scores = scores.view(rows, kv_heads, rep, queries, keys).float() + mask[:, :, None]
        probs = scores.softmax(-1).to(q.dtype).view(rows, kv_heads, rep * queries, keys)
        return torch.matmul(probs, v).view(rows, heads, queries, dim)

    variants = {"flash_masked": (flash_masked, torch.float32), "flash_causal": (flash_causal, torch.float32),
                "flash_folded": (flash_folded, torch.float32), "math_float32": (math, torch.float32),
                "math_bfloat16": (math, torch.bfloat16), "flash_bfloat16": (flash_masked, torch.bfloat16)}

    def micro_batch(attention, dtype):
        def run():
            inputs = [[t.detach().to(dtype).requires_grad_() for t in layer] for layer in layers]  # fresh leaves
            outs = [attention(*layer) for layer in inputs]
            torch.autograd.backward([o.float().square().sum() for o in outs])
            return outs
        return run

    ms = alternating_medians_ms({name: micro_batch(*v) for name, v in variants.items()}, args.repeats)
    with torch.no_grad():
        reference = flash_masked(*layers[0])
        diff = {name: (attention(*(t.to(dtype) for t in layers[0])).float() - reference).abs().max().item()
                for name, (attention, dtype) in variants.items()}
    return {"part": "update", "ms_per_micro_batch": ms, "max_abs_diff": diff, "layers": args.layers,
            "queries": queries, "prompt": prompt}


def decode_part(args, g, trace: int) -> dict:
    rows, kv_heads, rep, dim, capacity = 64, 3, 3, 64, max(args.trace)
    caches = {dtype: [] for dtype in (torch.float32, torch.bfloat16)}
    for _ in range(args.layers):
        k, v = (torch.randn(rows, kv_heads, capacity, dim, generator=g) for _ in range(2))
        for dtype in caches:
            caches[dtype].append((k.to(dtype), v.to(dtype)))
    q = torch.randn(rows, kv_heads, rep, dim, generator=g)
    p = torch.randn(rows, kv_heads, rep, trace, generator=g).softmax(-1)

    def attend(dtype, keys_left=False):
        qd, pd = q.to(dtype), p.to(dtype)

        def run():
            outs = []
            for k, v in caches[dtype]:
                k, v = k[:, :, :trace], v[:, :, :trace]
                scores = torch.matmul(k, qd.transpose(-1, -2)).transpose(-1, -2) if keys_left else \
                    torch.matmul(qd, k.transpose(-1, -2))
                outs.append((scores, torch.matmul(pd, v)))
            return outs
        return run

    variants = {"float32": attend(torch.float32), "float32_keys_left": attend(torch.float32, keys_left=True),
                "bfloat16": attend(torch.bfloat16)}
    ms = alternating_medians_ms(variants, args.repeats * 4)
    reference = variants["float32"]()[0][0]
    diff = {name: (run()[0][0].float() - reference).abs().max().item() for name, run in variants.items()}
    big = torch.randn(50_000_000, generator=g)
    sum_ms = alternating_medians_ms({"sum": big.sum}, args.repeats * 4)["sum"]
    cache_mb = {name: 2 * rows * kv_heads * trace * dim * (2 if name == "bfloat16" else 4) * args.layers / 1e6
                for name in variants}
    return {"part": "decode", "trace": trace, "ms_per_token": ms, "max_abs_diff_scores": diff,
            "cache_mb_per_token": cache_mb, "cache_gb_per_s": {n: cache_mb[n] / ms[n] for n in variants},
            "sum_200mb_gb_per_s": 200 / sum_ms, "layers": args.layers}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--queries", type=int, default=144, help="update: completion queries per row")
    p.add_argument("--prompt", type=int, default=32, help="update: prompt tokens per row")
    p.add_argument("--trace", type=int, nargs="+", default=[64, 128], help="decode: cached trace tokens")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.layers < 1 or args.repeats < 1 or min(args.trace) < 1 or args.queries < 1 or args.prompt < 0:
        raise SystemExit("attention_kernels: --layers, --repeats, --trace and --queries must be >= 1, --prompt >= 0")
    g = torch.Generator().manual_seed(0)
    print(json.dumps(update_part(args, g) | {"threads": torch.get_num_threads(), "repeats": args.repeats}),
          flush=True)
    for trace in args.trace:
        print(json.dumps(decode_part(args, g, trace) | {"threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
