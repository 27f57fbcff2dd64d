"""One step's speed against its micro-batch size (questions per micro-batch), alternating in one run.

    .venv/bin/python benchmarks/micro_batches.py --micro-prompts 1 2 4 8 --rounds 2 --steps 2 --warmup 1 -- \
        --model artifacts/models/smollm2-135m-instruct/hf --config-only --prompts 8 --generations 8 \
        --think 128 --answer-tokens 16

Each round runs `nrt bench --fixed-length --micro-prompts M` for every M, each in a fresh process, the
order rotated every round. Prints one JSON line per run, then a summary: per M, the median seconds
per step and per phase over the rounds, peak RSS, and the step's ratio to the fastest M.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from compare_trl import run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micro-prompts", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("workload", nargs="*", help="`nrt bench` options, after --")
    args = p.parse_args(argv)
    if min(args.micro_prompts) < 1 or args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        raise SystemExit("micro_batches: --micro-prompts, --rounds and --steps must be >= 1, --warmup >= 0")
    command = [sys.executable, "-m", "nrt.commands.bench", "--fixed-length", *args.workload,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    runs = {m: [] for m in args.micro_prompts}
    for r in range(args.rounds):
        shift = r % len(args.micro_prompts)
        for m in args.micro_prompts[shift:] + args.micro_prompts[:shift]:
            result = run([*command, "--micro-prompts", str(m)], dict(os.environ))
            runs[m].append(result)
            print(json.dumps({"round": r, "micro_prompts": m, **result}), flush=True)
    keys = ("sec_per_step", "sec_generate", "sec_score", "sec_update", "peak_rss_mb", "step_over_floor")
    summary = {m: {k: statistics.median(x[k] for x in results) for k in keys} for m, results in runs.items()}
    fastest = min(s["sec_per_step"] for s in summary.values())
    for s in summary.values():
        s["step_over_fastest"] = s["sec_per_step"] / fastest
    print(json.dumps({"summary": summary, "rounds": args.rounds}), flush=True)
    return summary


if __name__ == "__main__":
    main()
