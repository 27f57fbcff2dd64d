"""Decoding loop variants side by side (alternating, medians): seconds to sample one step's traces.

    .venv/bin/python benchmarks/sampling_speed.py --dtype bfloat16 --repeats 5

Same model and prompts as `nrt bench`; every trace runs to --think tokens.
"""

import argparse
import contextlib
import json
import os
import statistics
import time


import torch  # noqa: E402

from nrt.experiments.bench import bench_model, synthetic_examples
from nrt.engine.options import EngineOptions
from nrt.engine.sampling import sample_traces


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--think", type=int, default=48)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=["all", "preallocated", "dynamic", "no_optimisations"])
    args = p.parse_args(argv)
    model = bench_model(args.vocab, args.hidden, args.layers, 0).eval()
    prompts = [ex.prompt_ids for ex in synthetic_examples(args.prompts, args.prompt_tokens, 4, args.vocab, 0)]
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())
    kwargs = dict(num_generations=args.generations, max_new_tokens=args.think, stop_token_ids=[1, 2],
                  pad_token_id=0, seeds=list(range(args.prompts)))
    variants = {
        "all": dict(),
        "forward": dict(lean_step=False),  # each token through the model's forward, not nrt.engine.decode_step
        "compiled": dict(compile_step=True),
        "dynamic": dict(preallocate_cache=False, share_prompt_cache=False),
        "preallocated": dict(share_prompt_cache=False),
        "bf16_attention": dict(attention_in_float32=False),
        "no_optimisations": dict(preallocate_cache=False, share_prompt_cache=False, attention_in_float32=False,
                                 lean_step=False),
        "one_thread": dict(),  # all optimisations, decoding on 1 thread
    }
    times = {v: [] for v in args.variants}
    traces = {}
    for r in range(args.repeats + 1):
        for v in args.variants:
            threads = torch.get_num_threads()
            if v == "one_thread":
                torch.set_num_threads(1)
            with autocast:
                tick = time.perf_counter()
                traces[v] = sample_traces(model, prompts, **kwargs,
                                          engine=EngineOptions(fixed_length=True, **variants[v]))
                elapsed = time.perf_counter() - tick
            torch.set_num_threads(threads)
            if r:
                times[v].append(elapsed)
    same = all(traces[v] == traces[args.variants[0]] for v in args.variants)
    out = {v: round(statistics.median(t), 4) for v, t in times.items()}
    out.update(same_traces=same, load_avg=os.getloadavg()[0], threads=torch.get_num_threads(), dtype=args.dtype)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
