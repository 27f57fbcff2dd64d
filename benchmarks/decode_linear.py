"""One decoding token's linear layers, three ways, side by side (medians): what `decode_weights` buys.

    .venv/bin/python benchmarks/decode_linear.py --repeats 20

SmolLM2-135M's shapes by default (30 layers: q/k/v 576 -> 576/192/192, o 576 -> 576, gate/up
576 -> 1536, down 1536 -> 576; output layer 576 -> 49,153), bfloat16 weights, one token for
--rows rows. Every layer has its own weights, so they come from memory as in decoding, not from
cache. Variants: `linear` (F.linear per projection, what autocast runs once the weights are cast),
`merged` (q/k/v and gate/up concatenated), `packed` (merged, and laid out once for oneDNN:
`torch.ops.mkldnn._linear_pointwise`). Prints one JSON line: milliseconds per token per variant and
whether the outputs are equal to `linear`'s bit for bit.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from timing import alternating_medians_ms

from nrt.engine.decode_step import packing_supported


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--kv", type=int, default=192)
    p.add_argument("--mlp", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=49153)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    if not packing_supported():
        raise SystemExit("decode_linear: oneDNN's packed bfloat16 linear is not available on this CPU")
    g = torch.Generator().manual_seed(0)
    h, bf16 = args.hidden, torch.bfloat16

    def weight(out, inp):
        return (torch.randn(out, inp, generator=g) * inp**-0.5).to(bf16)

    layers = [[weight(h, h), weight(args.kv, h), weight(args.kv, h), weight(h, h), weight(args.mlp, h),
               weight(args.mlp, h), weight(h, args.mlp)] for _ in range(args.layers)]
    head = weight(args.vocab, h)
    x = torch.randn(args.rows, h, generator=g).to(bf16)
    y = torch.randn(args.rows, args.mlp, generator=g).to(bf16)

    def pack(w):
        return torch.ops.mkldnn._reorder_linear_weight(w, args.rows)

    def packed_linear(inp, w):
        return torch.ops.mkldnn._linear_pointwise(inp, w, None, "none", [], "")

    merged = [[torch.cat(ws[:3]), ws[3], torch.cat(ws[4:6]), ws[6]] for ws in layers]
    packed = [[pack(w) for w in ws] for ws in merged]
    packed_head = pack(head)

    def run_linear():
        outs = [[F.linear(x, w) for w in ws[:4]] + [F.linear(x, w) for w in ws[4:6]] + [F.linear(y, ws[6])]
                for ws in layers]
        return outs, F.linear(x, head)

    def run_merged():
        return [[F.linear(x, ws[0]), F.linear(x, ws[1]), F.linear(x, ws[2]), F.linear(y, ws[3])] for ws in merged], \
            F.linear(x, head)

    def run_packed():
        return [[packed_linear(x, ws[0]), packed_linear(x, ws[1]), packed_linear(x, ws[2]), packed_linear(y, ws[3])]
                for ws in packed], packed_linear(x, packed_head)

    variants = {"linear": run_linear, "merged": run_merged, "packed": run_packed}
    medians = alternating_medians_ms(variants, args.repeats)

    reference, reference_head = run_linear()
    flat = [torch.cat([outs[0], outs[1], outs[2]], -1) for outs in reference]
    equal = {}
    for name in ("merged", "packed"):
        outs, head_out = variants[name]()
        equal[name] = (torch.equal(head_out, reference_head)
                       and all(torch.equal(o[0], f) and torch.equal(o[1], r[3])
                               and torch.equal(o[2], torch.cat([r[4], r[5]], -1)) and torch.equal(o[3], r[6])
                               for o, f, r in zip(outs, flat, reference)))
    print(json.dumps({"ms_per_token": medians, "speedup_over_linear": {n: medians["linear"] / m for n, m in
                                                                      medians.items()},
                      "equal_to_linear": equal, "rows": args.rows, "layers": args.layers,
                      "threads": torch.get_num_threads(), "repeats": args.repeats}))


if __name__ == "__main__":
    main()
