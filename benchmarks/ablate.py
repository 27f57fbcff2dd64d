"""Each speed optimisation switched off in turn, measured side by side with everything on.

    .venv/bin/python benchmarks/ablate.py --fixed-length --rounds 5 [--variants all no_fused_logprobs ...]

One trainer per variant, all built from the same seed (same weights, data and traces), in one
process; their steps alternate (all, variant 1, variant 2, ..., the order rotated every round), so every variant sees
the same machine load. Prints one JSON line per variant: median seconds per step and per
phase over the rounds, and the ratio to `all` (> 1: the optimisation pays).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from nrt.engine.cpu_runtime import keep_freed_memory
from nrt.experiments.bench import add_arguments, bf16_supported, build_trainer

# each variant: the engine switches it turns off (nrt.engine.options.EngineOptions) or other bench options
VARIANTS = {
    "all": {},
    # sequences.completion_logprobs: plain logits -> logsumexp -> gather (all C+1 positions)
    "no_fused_logprobs": {"fused_logprobs": False},
    # sampling.sample_traces: transformers' DynamicCache (grows by torch.cat)
    "no_preallocated_cache": {"preallocate_cache": False},
    # sequences.completion_logprobs: the model computes [N, V] logits (accelerate converts them to float32)
    "no_fused_head": {"fuse_head": False},
    # sequences.completion_logprobs: every row runs its own prompt through the forward-backward
    "no_shared_prompts": {"share_prompts": False},
    # sampling.sample_traces: each row reads its own copy of the prompt's keys/values while decoding
    "no_shared_prompt_cache": {"share_prompt_cache": False},
    # sampling.sample_traces: each token decoded through the model's forward (its modules, autocast casting at every
    # call) instead of nrt.engine.decode_step with weights prepared once per call (merged, packed for oneDNN)
    "no_lean_step": {"lean_step": False},
    # nrt.engine.cpu_attention: attention in bfloat16 under autocast (torch's CPU kernel), decoding and training
    "no_float32_attention": {"attention_in_float32": False},
    # trainer.torch_compile on: compiled decoder layers and decoding step (`nrt.engine.decode_step`); < 1 when it pays
    "torch_compile": {},
    # trainer.torch_compile's compiled decoder layers for the update, but decoding eagerly with the prepared weights
    # (EngineOptions.compile_step off); measured, not the option's behaviour
    "torch_compile_eager_decoding": {"compile_step": False},
    # everything above off at once: the step as it was before this work (transformers' cache, full logits)
    "none": {"preallocate_cache": False, "share_prompt_cache": False, "attention_in_float32": False,
             "fused_logprobs": False, "lean_step": False},
    "proposed_fused_adamw": {},
}


def fused_adamw(trainer) -> None:
    """A trainer change measured and not made (docs/PERFORMANCE.md): torch's fused AdamW kernel instead of foreach."""
    for group in trainer.optimizer.optimizer.param_groups:
        group["fused"], group["foreach"] = True, False


SETUPS = {"proposed_fused_adamw": fused_adamw}  # variants that change the trainer once
# variants built from other `nrt bench` options
BUILT_WITH = {"torch_compile": {"compile": True}, "torch_compile_eager_decoding": {"compile": True}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v not in SETUPS and v not in BUILT_WITH])
    args = p.parse_args(argv)
    keep_freed_memory()
    if args.dtype == "auto":
        args.dtype = "bfloat16" if bf16_supported() else "float32"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.steps = args.rounds
    trainers = {v: build_trainer(argparse.Namespace(**{**vars(args), **BUILT_WITH.get(v, {})}), **VARIANTS[v])[0]
                for v in args.variants}
    for v, trainer in trainers.items():
        SETUPS.get(v, lambda _: None)(trainer)
    times = {v: {"step": [], "generate": [], "score": [], "update": []} for v in args.variants}
    rewards = {v: [] for v in args.variants}
    names = list(trainers)
    for r in range(args.warmup + args.rounds):
        for v in names[r % len(names):] + names[: r % len(names)]:  # rotate the order every round
            trainer = trainers[v]
            tick = time.perf_counter()
            m = trainer.train_step()
            elapsed = time.perf_counter() - tick
            rewards[v].append(m["reward_mean"])
            if r >= args.warmup:
                times[v]["step"].append(elapsed)
                for phase in ("generate", "score", "update"):
                    times[v][phase].append(m[f"time_{phase}"])
    base = {k: statistics.median(x) for k, x in times["all"].items()} if "all" in times else None
    for v in args.variants:
        med = {k: statistics.median(x) for k, x in times[v].items()}
        out = {"variant": v, **{f"sec_{k}": round(x, 4) for k, x in med.items()}}
        if base:
            out.update({f"ratio_{k}": round(med[k] / base[k], 3) for k in med if base[k] > 0})
            out["max_reward_diff_vs_all"] = max(abs(a - b) for a, b in zip(rewards[v], rewards["all"]))
        out.update(load_avg=os.getloadavg()[0], threads=torch.get_num_threads(), dtype=args.dtype)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
