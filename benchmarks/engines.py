"""nrt's step with its traces sampled by vLLM against nrt's own engine, on the same work, alternating in one run.

    .venv/bin/python benchmarks/engines.py --rounds 3 --steps 2 --warmup 1 -- \
        --model artifacts/models/smollm2-135m-instruct/hf --config-only --prompts 8 --micro-prompts 2 \
        --generations 8 --think 128 --answer-tokens 16

Each round runs `nrt bench --fixed-length --engine nrt` and `... --engine vllm` (the same options), each
in a fresh process, the order alternating between rounds. Per round and side: seconds per step, generating
and syncing weights (median over the timed steps), peak memory. The last line (JSON) has the median over
rounds of each, the ratios nrt-engine / vLLM, and the share of the vLLM step spent syncing weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from compare_trl import run

KEYS = ("sec_per_step", "sec_weight_sync", "sec_generate", "sec_score", "sec_update", "peak_rss_mb")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per side per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- then nrt bench's workload options")
    args = p.parse_args(argv)
    workload = [a for a in args.bench if a != "--"]
    common = [*workload, "--fixed-length", "--steps", str(args.steps), "--warmup", str(args.warmup)]
    sides = {side: [sys.executable, "-m", "nrt", "bench", *common, "--engine", side] for side in ("nrt", "vllm")}
    results: dict[str, list[dict]] = {"nrt": [], "vllm": []}
    for r in range(args.rounds):
        for side in (("nrt", "vllm") if r % 2 == 0 else ("vllm", "nrt")):
            out = run(sides[side], dict(os.environ))
            results[side].append(out)
            print(json.dumps({"round": r, "engine": side, **{k: out[k] for k in KEYS}}), flush=True)
    med = {side: {k: statistics.median(o[k] for o in outs) for k in KEYS} for side, outs in results.items()}
    summary = {
        "rounds": args.rounds, "nrt_engine": med["nrt"], "vllm": med["vllm"],
        "step_nrt_over_vllm": med["nrt"]["sec_per_step"] / med["vllm"]["sec_per_step"],
        "generate_nrt_over_vllm": med["nrt"]["sec_generate"] / med["vllm"]["sec_generate"],
        "vllm_sync_share_of_step": med["vllm"]["sec_weight_sync"] / med["vllm"]["sec_per_step"],
        "workload": workload,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
