"""nrt vs TRL's GRPOTrainer on the same work, alternating in one run; prints the ratio.

    .venv/bin/python benchmarks/compare_trl.py --rounds 3 --steps 3 --warmup 1 \
        -- --hidden 256 --layers 4 --prompts 16 --generations 8 --think 48

Each round runs `nrt bench --fixed-length` and `benchmarks/trl_grpo.py` (same options) one after
the other, each in a fresh process with the same environment, so both see the same machine
load; the order alternates between rounds. Per round: the ratio of TRL's median seconds per step
to nrt's. The summary (last line, JSON) has the median ratio over the rounds and both sides'
medians; every round's two JSON lines are printed first. Both sides inherit the environment:
on a shared, oversubscribed CPU, run it with `OMP_WAIT_POLICY=PASSIVE` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], env: dict) -> dict:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--nrt-compile", action="store_true",
                   help="nrt side with trainer.torch_compile (`nrt bench --compile`; TRL stays eager)")
    p.add_argument("workload", nargs="*", help="options for both sides, after --")
    args = p.parse_args(argv)
    env = dict(os.environ)
    common = [*args.workload, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    nrt_cmd = [sys.executable, "-m", "nrt.commands.bench", "--fixed-length", *common,
               *(["--compile"] * args.nrt_compile)]
    trl_cmd = [sys.executable, str(ROOT / "benchmarks" / "trl_grpo.py"), *common]
    rounds = []
    for r in range(args.rounds):
        order = [("nrt", nrt_cmd), ("trl", trl_cmd)]
        if r % 2:
            order.reverse()
        results = {}
        for name, cmd in order:
            results[name] = run(cmd, env)
            print(json.dumps({"round": r, "side": name, **results[name]}), flush=True)
        results["ratio"] = results["trl"]["sec_per_step"] / results["nrt"]["sec_per_step"]
        rounds.append(results)

    def med(side, key):
        return statistics.median(x[side][key] for x in rounds)

    summary = {
        "ratio_trl_over_nrt": statistics.median(x["ratio"] for x in rounds),
        "ratios": [round(x["ratio"], 3) for x in rounds],
        **{f"{side}_{key}": med(side, key) for side in ("nrt", "trl")
           for key in ("sec_per_step", "sec_generate", "sec_score", "sec_update", "peak_rss_mb")},
        "nrt_floor_sec": med("nrt", "floor_sec"),
        "nrt_step_over_floor": med("nrt", "step_over_floor"),
        "nrt_update_matmul_fraction": med("nrt", "update_matmul_fraction"),
        "matmul_gflops_bf16": med("nrt", "matmul_gflops"),
        "load_avg": [x[s]["load_avg"] for x in rounds for s in ("nrt", "trl")],
        "omp_wait_policy": env.get("OMP_WAIT_POLICY", "unset"),
        "workload": args.workload,
        "nrt_compile": args.nrt_compile,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
