"""Peak memory of one NRT step against trace length: linear, not quadratic.

    .venv/bin/python benchmarks/memory_scaling.py --lengths 64 128 256 512 1024 -- \
        --model artifacts/models/smollm2-135m-instruct/hf --config-only --prompts 1 --generations 8

Each length runs `nrt bench --fixed-length --steps 1 --warmup 1 --step-memory --think LENGTH`
(plus the options after --) in a fresh process, one after the other. The step's memory is the
timed step's own peak resident set minus the resident set just before it (`step_peak_mb`): the
warm-up step has made AdamW's two moments, so what is measured is what one step adds on top of
the model and optimizer state (the KV caches, activations kept for the backward, logits chunks,
gradients, the optimizer's temporaries). torch's CPU allocator keeps no statistics, so the
resident set is the measure; `--step-memory` hands freed memory back to the system (glibc
thresholds of 128 KiB) so that the resident set follows what is allocated, and resets the
high-water mark before the step (/proc/self/clear_refs).

Prints one JSON line per length, then a summary: MB per trace token between consecutive
lengths (constant for linear growth, doubling at each doubling of length for quadratic), and
the least-squares line through the points with its largest residual, and a least-squares
parabola: its x^2 coefficient and the share of the longest point's memory that term makes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quadratic_fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b x + c x^2 (3 points or more): c, and the share of the largest point's
    memory that the x^2 term accounts for (0 for linear growth)."""
    if len(xs) < 3:
        return {}
    import numpy as np

    c, b, a = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 2)
    return {"quadratic_mb_per_token_squared": float(c), "quadratic_linear_mb_per_token": float(b),
            "quadratic_intercept_mb": float(a), "quadratic_share_at_longest": float(c * max(xs) ** 2 / ys[-1])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("workload", nargs="*", help="nrt bench options, after --")
    args = p.parse_args(argv)
    points = []
    for length in args.lengths:
        cmd = [sys.executable, "-m", "nrt.commands.bench", *args.workload, "--fixed-length", "--steps", "1",
               "--warmup", "1", "--step-memory", "--think", str(length)]
        done = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        r = json.loads(lines[-1])
        point = {"think": length, "step_mb": r["step_peak_mb"], "peak_rss_mb": r["peak_rss_mb"],
                 "rss_mb_before_step": r["rss_mb_before_step"][0], "rss_mb_loaded": r["rss_mb_loaded"],
                 "trained_tokens": r["trained_tokens"],
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
        **quadratic_fit(xs, ys),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "workload": args.workload,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
