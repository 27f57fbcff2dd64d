"""What the update's forward keeps for the backward, against trace length: the tensors autograd saves.

    .venv/bin/python benchmarks/saved_tensors.py --model artifacts/models/smollm2-135m-instruct/hf \
        --layers 2 --rows 8 --lengths 128 256 512

A model of `--model`'s architecture (its config, `--layers` decoder layers, random weights) runs
`completion_logprobs` under bf16 autocast over `--rows` rows of one shared 32-token prompt and a
completion of each length, inside `torch.autograd.graph.saved_tensors_hooks`; each distinct saved
tensor (by storage pointer, dtype and shape) is counted once. Prints one JSON line per length: the
total MB, and the saved tensors with two dimensions that grow with the completion length (the
quadratic ones: MB and number of distinct tensors per dtype and shape), then a summary with MB
per completion token between consecutive lengths.
Complements `memory_scaling.py`, whose peak RSS also holds transient buffers and freed memory.
"""

from __future__ import annotations

import argparse
import json

import torch

PROMPT = 32  # tokens of the shared prompt


def saved_for_backward(model, rows: int, length: int) -> dict:
    from nrt.engine.sequences import completion_logprobs, pack

    batch = pack([list(range(5, 5 + PROMPT))] * rows, [list(range(100, 100 + length))] * rows, pad_id=0)
    saved = {}

    def keep(t):
        saved[(t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        completion_logprobs(model, batch)
    quadratic, copies = {}, {}  # per dtype and shape: MB of all distinct tensors, and how many there are
    for (_, dtype, shape), size in saved.items():
        if sum(length - 1 <= d <= length + PROMPT for d in shape) >= 2:
            key = f"{dtype} {list(shape)}"
            quadratic[key] = round(quadratic.get(key, 0.0) + size / 2**20, 2)
            copies[key] = copies.get(key, 0) + 1
    return {"think": length, "saved_mb": sum(saved.values()) / 2**20, "quadratic_mb": quadratic,
            "quadratic_copies": copies}


def main(argv=None) -> dict:
    from transformers import AutoModelForCausalLM

    from nrt.model_loading import load_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model directory or .gguf file: its config is used")
    p.add_argument("--layers", type=int, default=2, help="decoder layers (fewer than the model's: faster)")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(args.model)
    config.num_hidden_layers = args.layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    points = []
    for length in args.lengths:
        points.append(saved_for_backward(model, args.rows, length))
        print(json.dumps(points[-1]), flush=True)
    summary = {
        "lengths": args.lengths, "layers": args.layers, "rows": args.rows,
        "saved_mb": [round(x["saved_mb"], 1) for x in points],
        "mb_per_token_between": [round((b["saved_mb"] - a["saved_mb"]) / (b["think"] - a["think"]), 3)
                                 for a, b in zip(points, points[1:])],
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
