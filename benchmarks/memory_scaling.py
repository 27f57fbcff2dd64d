"""Peak memory of one NRT step against trace length: linear, not quadratic.

    .venv/bin/python benchmarks/memory_scaling.py --lengths 64 128 256 512 -- \
        --model artifacts/models/smollm2-135m-instruct/hf --config-only --prompts 2 --generations 8

Each length runs `nrt bench --fixed-length --steps 1 --warmup 0 --think LENGTH` (plus the
options after --) in a fresh process, one after the other. The step's memory is the process's
peak resident set (ru_maxrss) minus its resident set after the model, tokenizer, data and
trainer were built (`rss_mb_loaded`): what the step adds (activations kept for the backward,
logits chunks, the KV caches, gradients, AdamW's two moments made at the first step). torch's
CPU allocator keeps no statistics, so RSS is the measure; glibc keeps freed memory
(`keep_freed_memory`), so the peak is never under-counted by memory handed back mid-step.

Prints one JSON line per length, then a summary: MB per trace token between consecutive
lengths (constant for linear growth, doubling at each doubling of length for quadratic), and
the least-squares line through the points with its largest residual.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("workload", nargs="*", help="nrt bench options, after --")
    args = p.parse_args(argv)
    points = []
    for length in args.lengths:
        cmd = [sys.executable, "-m", "nrt.commands.bench", *args.workload, "--fixed-length", "--steps", "1",
               "--warmup", "0", "--think", str(length)]
        done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        r = json.loads(lines[-1])
        point = {"think": length, "step_mb": r["peak_rss_mb"] - r["rss_mb_loaded"], "peak_rss_mb": r["peak_rss_mb"],
                 "rss_mb_loaded": r["rss_mb_loaded"], "trained_tokens": r["trained_tokens"],
                 "sec_per_step": r["sec_per_step"], "load_avg": r["load_avg"]}
        points.append(point)
        print(json.dumps(point), flush=True)
    xs, ys = [pt["think"] for pt in points], [pt["step_mb"] for pt in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-9, sum((x - mx) ** 2 for x in xs))
    intercept = my - slope * mx
    summary = {
        "lengths": xs,
        "step_mb": [round(y, 1) for y in ys],
        "mb_per_trace_token_between": [round((ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]), 2) for i in range(n - 1)],
        "line_mb_per_trace_token": slope,
        "line_intercept_mb": intercept,
        "largest_residual_mb": max(abs(y - (intercept + slope * x)) for x, y in zip(xs, ys)),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "workload": args.workload,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
