"""Memory that one attention call keeps for its backward on the CPU: masked against causal-only.

    .venv/bin/python benchmarks/sdpa_mask_memory.py --lengths 256 512 1024

The training forward passes transformers' 4-D boolean mask (padding + causal) to
`torch.nn.functional.scaled_dot_product_attention`. If the CPU kernel chosen for a masked
call keeps the [rows, heads, L, L] attention weights for the backward, a step's memory grows
quadratically with trace length; with `is_causal=True` and no mask, torch's CPU flash kernel
keeps O(L) per row. Each (length, variant) runs in a fresh process: peak resident set
(ru_maxrss) after forward and backward of one call, minus before it, with SmolLM2-135M's
attention shape (8 rows, 9 heads, head dim 64; `masked_gqa`: its 3 key/value heads, as
`enable_gqa`), float32. Prints one JSON line per point and
the quadratic-term estimate: MB per L^2 between the two longest lengths. (ru_maxrss is a high-water
mark, so the mask is built before the baseline is read, and only the call's own growth counts.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(length: int, variant: str, rows: int = 8, heads: int = 9, dim: int = 64) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    kv_heads = 3 if variant == "masked_gqa" else heads  # SmolLM2: 9 query heads share 3 key/value heads
    q = torch.randn(rows, heads, length, dim, requires_grad=True)
    k, v = (torch.randn(rows, kv_heads, length, dim, requires_grad=True) for _ in range(2))
    mask = None
    if variant.startswith("masked"):  # left padding of 0..7 tokens per row, and causal
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        keep = torch.arange(length)[None, :] >= torch.arange(rows)[:, None]
        mask = (causal[None] & keep[:, None, :])[:, None]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=variant == "causal",
                                         enable_gqa=kv_heads != heads)
    out.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"length": length, "variant": variant, "added_mb": (peak - before) / 1024,
            "weights_mb": rows * heads * length * length * 4 / 2**20}


VARIANTS = ("masked", "masked_gqa", "causal")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--one", nargs=2, metavar=("LENGTH", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1])))
        return
    points = []
    for variant in VARIANTS:
        for length in args.lengths:
            done = subprocess.run([sys.executable, __file__, "--one", str(length), variant], capture_output=True,
                                  text=True, check=True)
            points.append(json.loads(done.stdout.splitlines()[-1]))
            print(json.dumps(points[-1]), flush=True)
    a, b = sorted(args.lengths)[-2:]
    for variant in VARIANTS:
        mb = {pt["length"]: pt["added_mb"] for pt in points if pt["variant"] == variant}
        print(json.dumps({"variant": variant, "mb_per_length_squared": (mb[b] - mb[a]) / (b * b - a * a)}))


if __name__ == "__main__":
    main()
