"""docs/METHODS.md: every preset side by side on the reasoning gym, in two settings.

    python scripts/methods.py [--seeds 0,1,2] [--output-dir artifacts/methods] [--doc docs/METHODS.md]

(`make methods`.) Runs the runner behind `nrt compare` (`nrt.experiments.compare.run`) in two settings on
the gym's multi-hop Q&A splits, with the same
recipe for every method (no method is tuned: one learning rate, batch, K and step budget
for all, and each run's best step is chosen on the gym's validation split):

- healthy: from models/gym-base (the multi-hop world only), from which NRT learns to think;
  its reasoning gain at the start is slightly positive (`nrt gym pretrain` reports it);
- collapse-prone: from a base pretrained on the same corpus for only WEAK_STEPS steps
  (built once into --output-dir), whose facts are not yet reliable, so its sampled traces
  lower the answer likelihood at the start (negative gain; GYM_NOTES section 3).

Then: an ablation of `nrt`'s answer term (fixed / derived / off) in the healthy setting, and
one collapse-prone `nrt` run again with `trainer.on_collapse=stop`. Both settings train and
evaluate on the same splits (the same world). The page's numbers,
and the sentences that compare methods, are computed from the runs' summaries. Resumable:
finished runs are kept (`nrt compare` skips them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from nrt.gym.pretrain import ensure_base
from nrt.experiments.compare import EvalFile, Experiment, run

METHODS = ["nrt", "nrt-ws-inverse-prob", "nrt-geometric-mean", "jlb", "verifree", "rlpr", "sft"]
WEAK_STEPS = 150
RECIPE = [  # every method, every setting
    "trainer.learning_rate=1e-4", "trainer.warmup_ratio=0.05", "trainer.max_completion_length=48",
    "trainer.bf16=true", "trainer.save_steps=1000", "trainer.eval_batch_size=144", "data.max_answer_length=16",
    "trainer.max_steps=30", "trainer.eval_steps=10", "trainer.num_generations=8",
    "trainer.per_device_train_batch_size=64", "trainer.on_collapse=warn",
]


def gym_experiment(base: Path, data: Path, output_dir: Path, methods: list[str], seeds: list[int],
                   extra: tuple[str, ...] = (), include_base: bool = True) -> Experiment:
    """The recipe on the gym's multi-hop splits: train, validation-selected, evaluated on test."""
    return Experiment(
        base_model=str(base), train_data=str(data / "train.jsonl"), output_dir=output_dir, methods=methods,
        seeds=seeds, eval_sets=[EvalFile("gym_test", str(data / "test.jsonl"))],
        validation_data=str(data / "validation.jsonl"), overrides=[*RECIPE, *extra], select="best",
        max_trace_tokens=48, include_base=include_base,
    )


def setting(name: str, base: Path, data: Path, out: Path, seeds: list[int]) -> dict:
    summary = run(gym_experiment(base, data, out / name, METHODS, seeds))
    summary["output_dir"] = str(out / name)
    summary["gain_train"] = json.loads((base / "gym.json").read_text()).get("reasoning_gain_train", {})
    return summary


ANSWER_TERMS = ("fixed", "derived", "off")


def answer_term_ablation(base: Path, data: Path, out: Path, seeds: list[int], healthy: dict) -> str:
    """`nrt` with each answer-term variant (`method.answer_loss`) in the healthy setting, same
    recipe and seeds; "fixed" is the preset's own, i.e. the healthy table's `nrt` row. A
    separate section: it gives `nrt` extra runs, so it is not part of the equal-budget table."""
    from nrt.evaluation.report import fmt, markdown_table, mean_std

    runs = {"fixed": [r for r in healthy["runs"] if r["method"] == "nrt"]}
    directories = {"fixed": out / "healthy"}
    for variant in ANSWER_TERMS[1:]:
        directories[variant] = out / f"healthy-answer-{variant}"
        exp = gym_experiment(base, data, directories[variant], ["nrt"], seeds,
                             extra=(f"method.answer_loss={variant}",), include_base=False)
        runs[variant] = run(exp)["runs"]
    rows, means, per_seed = [], {}, {}
    for variant in ANSWER_TERMS:
        runs[variant] = sorted(runs[variant], key=lambda r: r["seed"])
        acc = [r["eval"]["gym_test"]["accuracy"] for r in runs[variant]]
        means[variant], per_seed[variant] = 100 * mean(acc), acc
        last = [trace_lengths(str(directories[variant]), "nrt", r["seed"])[1] for r in runs[variant]]
        rows.append([f"`method.answer_loss={variant}`", fmt(*mean_std(acc), percent=True),
                     " / ".join(f"{100 * a:.1f}" for a in acc), fmt(*mean_std(last), digits=1),
                     f"{sum(r['collapse_step'] is not None for r in runs[variant])}/{len(acc)}"])
    table = markdown_table(["answer term", "gym_test acc %", "per seed", "trace len (final)", "collapse"], rows)
    return (f"## The answer term of `nrt`, healthy setting\n\nThe same recipe and seeds, `--method nrt` with "
            f"each answer-term variant (fixed: the preset's own, the `nrt` row above; derived: the token "
            f"signal of NRT_SPEC section 6; off: no answer term). Extra runs for `nrt` only, so this is an "
            f"ablation, not part of the equal-budget comparison.\n\n{table}\n\nAgainst the preset's fixed "
            f"answer term: " + ", ".join(f"{v} {means[v] - means['fixed']:+.1f} points" for v in ANSWER_TERMS[1:])
            + " of mean test accuracy; per seed, " + "; ".join(
                f"{v} " + " / ".join(f"{100 * (a - b):+.1f}" for a, b in zip(per_seed[v], per_seed["fixed"]))
                for v in ANSWER_TERMS[1:]) + " points.\n")


def stop_on_collapse(base: Path, data: Path, out: Path) -> dict:
    """The collapse-prone setting's `nrt` seed 0 again, with `trainer.on_collapse=stop` and a
    checkpoint every 5 steps: the detector ends the run and keeps the last healthy checkpoint."""
    import subprocess

    directory = out / "collapse-stop"
    record = directory / "stop.json"
    if record.is_file():
        return json.loads(record.read_text())
    shutil.rmtree(directory, ignore_errors=True)
    argv = [sys.executable, "-m", "nrt", "train", "--method", "nrt", "--model", str(base),
            "--data", str(data / "train.jsonl"), "--output-dir", str(directory), "trainer.seed=0",
            *[o for o in RECIPE if not o.startswith(("trainer.on_collapse", "trainer.save_steps"))],
            "trainer.on_collapse=stop", "trainer.save_steps=5"]
    done = subprocess.run(argv, capture_output=True, text=True)
    lines = done.stderr.splitlines()
    first = next((i for i, line in enumerate(lines) if "policy collapse" in line), len(lines))
    message = " ".join(line.strip() for line in lines[first:])  # the stop line
    kept = sorted(p.name for p in directory.glob("checkpoint-*"))
    result = {"command": " ".join(["nrt", *argv[3:]]), "exit_code": done.returncode, "stderr": message,
              "checkpoints_kept": kept}
    record.write_text(json.dumps(result, indent=1))
    return result


def accuracy(summary: dict, method: str) -> list[float]:
    return [100 * r["eval"]["gym_test"]["accuracy"] for r in summary["runs"] if r["method"] == method]


def trace_lengths(output_dir: str, method: str, seed: int) -> tuple[float, float]:
    """(first, last) logged `trace_length_mean` of one run."""
    from nrt.experiments.compare import read_metrics

    values = [r["trace_length_mean"] for r in read_metrics(Path(output_dir) / "runs" / method / f"seed{seed}")
              if "trace_length_mean" in r]
    return values[0], values[-1]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def findings(summary: dict) -> list[str]:
    """The answers to the paper's claims for one setting, computed from its runs."""
    means = {m: mean(accuracy(summary, m)) for m in METHODS}
    base = 100 * summary["base"]["gym_test"]["accuracy"]
    ranked = sorted(METHODS, key=means.get, reverse=True)
    prior = ["jlb", "verifree", "rlpr"]
    lines = [
        f"Best mean test accuracy: `{ranked[0]}` ({means[ranked[0]]:.1f}%); base model {base:.1f}%.",
        f"`nrt` vs `sft`: {means['nrt']:.1f}% vs {means['sft']:.1f}% "
        f"({means['nrt'] - means['sft']:+.1f} points).",
        "`nrt` vs the prior verifier-free methods: "
        + ", ".join(f"`{m}` {means[m]:.1f}% ({means['nrt'] - means[m]:+.1f})" for m in prior) + ".",
    ]
    lines.append("Test accuracy per seed: " + "; ".join(
        f"`{m}` " + " / ".join(f"{a:.1f}" for a in accuracy(summary, m)) for m in METHODS) + ".")
    lengths = {m: [trace_lengths(summary["output_dir"], m, r["seed"]) for r in summary["runs"] if r["method"] == m]
               for m in METHODS if m != "sft"}
    lines.append("Mean trace length (tokens), first step -> last step, mean over seeds: " + "; ".join(
        f"`{m}` {mean([x[0] for x in v]):.1f} -> {mean([x[1] for x in v]):.1f}" for m, v in lengths.items()) + ".")
    collapsed = {}
    for r in summary["runs"]:
        if r["collapse_step"] is not None:
            collapsed.setdefault(r["method"], []).append(f"seed {r['seed']} at step {r['collapse_step']}")
    if collapsed:
        lines.append("Collapse detected: " + "; ".join(f"`{m}` ({', '.join(v)})" for m, v in collapsed.items()) + ".")
    else:
        lines.append("No run tripped the collapse detector.")
    return lines


def answers(results: dict[str, dict]) -> str:
    """The paper's claims (NRT beats SFT and the prior verifier-free methods; weighted-sum
    rewards do not collapse), answered from the runs; each sentence only where its data says so."""
    out = ["## The paper's claims on this testbed\n"]
    for name, summary in results.items():
        means = {m: mean(accuracy(summary, m)) for m in METHODS}
        better = [m for m in ("sft", "jlb", "verifree", "rlpr") if means["nrt"] > means[m]]
        worse = [m for m in ("sft", "jlb", "verifree", "rlpr") if means["nrt"] <= means[m]]
        collapses = {m: sum(r["collapse_step"] is not None for r in summary["runs"] if r["method"] == m)
                     for m in METHODS if m != "sft"}
        text = f"- {name}: on mean test accuracy `nrt` "
        beaten = ", ".join(f"`{m}`" for m in better)
        text += f"beats {beaten}" if better else "beats none of `sft`, `jlb`, `verifree`, `rlpr`"
        text += (f"; it does not beat {', '.join(f'`{m}`' for m in worse)}" if better and worse else "") + ". "
        collapsed = [f"`{m}` {c}/{len(summary['runs']) // len(METHODS)}" for m, c in collapses.items() if c]
        text += ("Runs that collapsed: " + ", ".join(collapsed) + "." if collapsed else "No run collapsed.")
        out.append(text)
    healthy = results.get("healthy")
    beat_nrt = healthy and {m for m in METHODS if mean(accuracy(healthy, m)) > mean(accuracy(healthy, "nrt"))}
    if beat_nrt == {"verifree", "rlpr"}:
        out.append("\nIn the healthy setting, the two methods that beat `nrt` are the two whose answer term does "
                   "not train the reference answer after every trace: VeriFree weights it by the trace's reward, "
                   "RLPR has none. GYM_NOTES section 4 saw NRT with the answer term off beat NRT with it on, on an "
                   "earlier version of this world. Every preset above ran as specified; the next section measures "
                   "`nrt` with the other answer-term variants.")
    return "\n".join(out) + "\n"


def write_doc(path: Path, out: Path, seeds: list[int], results: dict[str, dict], command: str,
              stop: dict | None = None, ablation: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"""# Methods side by side on the reasoning gym

Produced by `{command}` (`make methods`); mean ± std over seeds {', '.join(map(str, seeds))}.
Every method runs the same recipe: {', '.join(f'`{o}`' for o in RECIPE)}. `--method NAME`
applies the preset first (src/nrt/presets.py; NRT_SPEC section 8), so only the preset's own
options differ between rows. No method was tuned: the search budget is the same for all
(one setting, and each run's best step, every 10 steps, on the gym's validation split). SFT
trains on question -> answer directly with the same batch size in sequences (64 questions
per step against 8 questions x 8 traces). Accuracy is exact match after the model's own
greedy think-then-answer on the gym's multi-hop test split (288 questions about people
whose composed questions never appear in pretraining or training); "gain" is the answer
log-likelihood after a sampled trace minus without one on that split. The collapse column
is the detector of src/nrt/training/collapse.py (trace length or entropy below 0.25 x its value over
the first 5 steps, for 5 consecutive steps), run with `on_collapse=warn` so every curve
runs to the end.
"""]
    titles = {"healthy": "Healthy setting: models/gym-base", "collapse-prone": f"Collapse-prone setting: "
              f"the same corpus, {WEAK_STEPS} pretraining steps"}
    for name in [n for n in titles if n in results]:
        summary = results[name]
        figure = path.parent / f"methods_{name}.png"
        shutil.copy(out / name / "curves.png", figure)
        gain = ", ".join(f"{t} {g['mean']:+.3f} ± {g['stderr']:.3f} nats (mean ± standard error over {g['questions']} "
                         f"questions)" for t, g in summary["gain_train"].items()) or "not recorded"
        parts.append(f"## {titles[name]}\n\nBase model's reasoning gain on the training questions at the "
                     f"start (from its gym.json): {gain}.\n\n{summary['table']}\n\n![{name} curves]({figure.name})\n\n"
                     + "\n".join(f"- {line}" for line in findings(summary)) + "\n")
    parts.append(answers(results))
    if ablation:
        parts.append(ablation)
    if stop is not None:
        parts.append(f"""## `on_collapse=stop` on a real collapse

The collapse-prone setting's `nrt` run, seed 0, again with `trainer.on_collapse=stop` and a
checkpoint every 5 steps:

    {stop['command']}

Exit code {stop['exit_code']} (3 = stopped by the collapse detector). Its message (stderr):

    {stop['stderr']}

Checkpoints left in the run directory: {', '.join(stop['checkpoints_kept']) or 'none'} (the
last one before the unhealthy streak began is also copied to the run directory as its model).
""")
    path.write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--output-dir", default="artifacts/methods")
    p.add_argument("--base", default="models/gym-base")
    p.add_argument("--doc", default="docs/METHODS.md")
    p.add_argument("--settings", default="healthy,collapse-prone")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    out = Path(args.output_dir)
    base = Path(args.base)
    if not (base / "gym.json").is_file():
        sys.exit(f"--base {base}: no gym model there (run `nrt gym pretrain` or `make demo` first)")
    data = out / "data" / "multihop"
    if not (data / "test.jsonl").is_file():
        from nrt.gym.tasks import write_splits
        from nrt.gym.probe import gym_corpus_of

        write_splits(str(out / "data"), {"multihop": gym_corpus_of(str(base)).items["multihop"]})
    bases = {"healthy": base, "collapse-prone": out / "gym-weak"}
    results = {}
    for name in args.settings.split(","):
        if name not in bases:
            sys.exit(f"--settings: unknown setting {name!r} (valid: {', '.join(bases)})")
        if name == "collapse-prone":
            ensure_base(bases[name], tasks=("multihop",), steps=WEAK_STEPS)
            worlds = [json.loads((b / "gym.json").read_text())["corpus_config"] for b in (base, bases[name])]
            if worlds[0] != worlds[1]:
                sys.exit(f"{bases[name]} was built on another gym world than {base}; delete it to rebuild")
        results[name] = setting(name, bases[name], data, out, seeds)
    stop = stop_on_collapse(bases["collapse-prone"], data, out) if "collapse-prone" in results else None
    ablation = answer_term_ablation(base, data, out, seeds, results["healthy"]) if "healthy" in results else None
    command = "python scripts/methods.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_doc(Path(args.doc), out, seeds, results, command.strip(), stop, ablation)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
