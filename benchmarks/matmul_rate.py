"""Measured matmul rate of this machine, float32 and bfloat16 (GFLOP/s, median of repeats).

    .venv/bin/python benchmarks/matmul_rate.py [--sizes 1024 2048] [--repeats 20]

The FLOP floor and the achieved-fraction numbers in docs/PERFORMANCE.md divide by these.
Shapes: square n x n @ n x n (2 n^3 FLOPs) and the shapes of the benchmark model's update
(tokens x hidden @ hidden x {hidden, 2 hidden, vocab}).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


import torch  # noqa: E402


def rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tick)
    return 2 * m * k * n / statistics.median(times) / 1e9


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    out = {"threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0]}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[-1]
        for n in args.sizes:
            out[f"{name}_{n}"] = round(rate(n, n, n, dtype, args.repeats), 1)
        # shapes of the bench update: ~6000 tokens x 256 hidden
        out[f"{name}_6144x256x256"] = round(rate(6144, 256, 256, dtype, args.repeats), 1)
        out[f"{name}_6144x256x512"] = round(rate(6144, 256, 512, dtype, args.repeats), 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
