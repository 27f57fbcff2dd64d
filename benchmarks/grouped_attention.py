"""The update's float32 attention with grouped key/value heads against transformers' repeated heads, side by side.

    .venv/bin/python benchmarks/grouped_attention.py --repeats 10

One micro-batch's completion-pass attention of SmolLM2-135M by default (16 rows, 9 query heads, 3
key/value heads, head dim 64, 144 queries over a 32-token prompt plus themselves, padding + causal
mask), forward and backward, for each of --layers layers (own tensors per layer). `grouped`:
`nrt.engine.cpu_attention.float32_sdpa_attention` (the kernel reads each key/value head for its group);
`repeated`: transformers' `sdpa_attention_forward` on the same float32 inputs (a copy of each key/value
head per query head). Prints one JSON line: median milliseconds per micro-batch, the elements saved
for the backward by one layer, and whether the outputs are equal.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import alternating_medians_ms
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from nrt.engine.cpu_attention import additive_mask, float32_sdpa_attention


class Heads(torch.nn.Module):
    """What the attention functions read from a layer's attention module."""

    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=144)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    keys = args.prompt + args.queries
    allowed = torch.ones(args.queries, keys, dtype=torch.bool).tril(args.prompt)
    mask = additive_mask(allowed.expand(args.rows, 1, args.queries, keys).contiguous())
    module = Heads(args.heads // args.kv_heads)
    layers = [(torch.randn(args.rows, args.heads, args.queries, args.dim, generator=g).requires_grad_(),
               torch.randn(args.rows, args.kv_heads, keys, args.dim, generator=g).requires_grad_(),
               torch.randn(args.rows, args.kv_heads, keys, args.dim, generator=g).requires_grad_())
              for _ in range(args.layers)]
    scale = args.dim**-0.5
    variants = {"grouped": float32_sdpa_attention, "repeated": sdpa_attention_forward}

    def micro_batch(attention):
        outs = [attention(module, q, k, v, mask, scaling=scale)[0] for q, k, v in layers]
        torch.autograd.backward([o.square().sum() for o in outs])
        return outs

    medians = alternating_medians_ms({name: lambda a=attention: micro_batch(a) for name, attention in variants.items()},
                                     args.repeats)
    saved = {}
    for name, attention in variants.items():
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            attention(module, *layers[0], mask, scaling=scale)
        saved[name] = sum(sizes)
    q, k, v = layers[0]
    equal = torch.equal(float32_sdpa_attention(module, q, k, v, mask, scaling=scale)[0],
                        sdpa_attention_forward(module, q, k, v, mask, scaling=scale)[0])
    print(json.dumps({"ms_per_micro_batch": medians, "repeated_over_grouped": medians["repeated"] / medians["grouped"],
                      "saved_elements_per_layer": saved, "outputs_equal": equal, "layers": args.layers,
                      "threads": torch.get_num_threads(), "repeats": args.repeats}))


if __name__ == "__main__":
    main()
