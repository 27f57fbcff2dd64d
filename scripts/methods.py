"""docs/METHODS.md: every method at the same budget on two gym testbeds, short and long answers.

    python scripts/methods.py [--testbeds bbh,long] [--seeds 0,1,2] [--doc docs/METHODS.md]

(`make methods`.) Each method (a preset, or `nrt` with another answer term) gets the same small
search and the same recipe on each testbed:

- seed 0 at each of LEARNING_RATES; the rate whose run reached the higher validation accuracy
  (best step, every EVAL_EVERY steps) is the method's, then seeds 1 and 2 run at it;
- every run's model is its best validation step (`trainer` keeps it in output_dir/best),
  evaluated once on the testbed's test split.

Testbeds (src/nrt/gym): `bbh`, models/gym-bbh on its three tasks (answers of 1-2 tokens, the
demo's data); `long`, models/gym-long on `multihop_long` (answers of 5-60 tokens whose key span
depends on reasoning; accuracy = the key occurs in the answer).

Resumable across sessions: each finished run is summarised in RESULTS/<testbed>/<method>/
lr<rate>_seed<k>.json (tracked in git, a few kB), keyed by everything that decides the run
(nrt.experiments.compare.run_key); a summary with the same key is read back, not redone. The
runs themselves go to --output-dir (artifacts/, not tracked). `--doc-only` writes the page from
the summaries there are, naming the runs still missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "methods"
LEARNING_RATES = ("1e-4", "3e-4")
STEPS, EVAL_EVERY = 100, 20
RECIPE = [  # every method, every testbed
    "trainer.warmup_ratio=0.05", "trainer.bf16=true", f"trainer.max_steps={STEPS}",
    f"trainer.eval_steps={EVAL_EVERY}", "trainer.num_generations=8", "trainer.per_device_train_batch_size=64",
    "trainer.eval_batch_size=144", "trainer.on_collapse=warn", "trainer.save_steps=25", "trainer.save_total_limit=0",
]
# label -> (preset, extra options): the seven presets, then nrt's other answer terms and the marginal likelihood
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nrt": ("nrt", ()),
    "nrt-ws-inverse-prob": ("nrt-ws-inverse-prob", ()),
    "nrt-geometric-mean": ("nrt-geometric-mean", ()),
    "jlb": ("jlb", ()),
    "verifree": ("verifree", ()),
    "rlpr": ("rlpr", ()),
    "sft": ("sft", ()),
    "nrt answer=derived": ("nrt", ("method.answer_loss=derived",)),
    "nrt answer=off": ("nrt", ("method.answer_loss=off",)),
    "nrt-marginal": ("nrt-marginal", ()),
}
# the reward of each method that samples traces (NRT_SPEC section 4)
AGGREGATION = {"nrt": "weighted_sum_log_prob", "nrt-ws-inverse-prob": "weighted_sum_inverse_prob",
               "nrt-geometric-mean": "geometric_mean", "jlb": "log_prob", "verifree": "prob",
               "rlpr": "arithmetic_mean", "nrt-marginal": "log_prob (posterior weights)"}


@dataclass(frozen=True)
class Testbed:
    name: str
    title: str
    base: str
    pretrain: dict
    tasks: tuple[str, ...]
    trace_tokens: int
    answer_tokens: int  # data.max_answer_length (eos included) and the evaluation's answer budget
    extra: tuple[str, ...] = field(default=())


def testbeds() -> dict[str, Testbed]:
    from nrt.gym.pretrain import BBH_BASE_PRETRAIN, LONG_BASE_PRETRAIN

    return {
        "bbh": Testbed("bbh", "short answers: models/gym-bbh, its three tasks", "models/gym-bbh", BBH_BASE_PRETRAIN,
                       ("multihop", "boolean_expressions", "multistep_arithmetic_two"), 96, 16),
        "long": Testbed("long", "long answers: models/gym-long, multihop_long", "models/gym-long", LONG_BASE_PRETRAIN,
                        ("multihop_long",), 48, 80),
    }


def testbed_data(bed: Testbed, out: Path) -> tuple[Path, Path, dict[str, Path]]:
    """(train, validation, {test name: file}) for a testbed, written once from its base's gym world."""
    from nrt.commands.demo import write_mixed
    from nrt.gym.probe import gym_corpus_of
    from nrt.gym.tasks import write_splits

    data = out / "data" / bed.name
    if not all((data / t / "test.jsonl").is_file() for t in bed.tasks):
        corpus = gym_corpus_of(bed.base)
        write_splits(str(data), {t: corpus.items[t] for t in bed.tasks})
    train, validation = write_mixed(data, list(bed.tasks))
    return train, validation, {f"gym_{t}": data / t / "test.jsonl" for t in bed.tasks}


def experiment(bed: Testbed, label: str, lr: str, seed: int, out: Path, data):
    from nrt.experiments.compare import EvalFile, Experiment

    train, validation, tests = data
    preset, extra = METHODS[label]
    return Experiment(
        base_model=bed.base, train_data=str(train), output_dir=out / bed.name / label.replace(" ", "_") / f"lr{lr}",
        methods=[preset], seeds=[seed], eval_sets=[EvalFile(n, str(p)) for n, p in tests.items()],
        validation_data=str(validation), select="best", include_base=False,
        overrides=[*RECIPE, f"trainer.learning_rate={lr}", f"trainer.max_completion_length={bed.trace_tokens}",
                   f"data.max_answer_length={bed.answer_tokens}", *bed.extra, *extra],
        max_trace_tokens=bed.trace_tokens, max_answer_tokens=bed.answer_tokens)


CURVE_KEYS = ("trace_length_mean", "trace_entropy", "reward_mean", "reasoning_gain", "eval_accuracy", "loss")


def summary_path(bed: str, label: str, lr: str, seed: int) -> Path:
    return RESULTS / bed / label.replace(" ", "_") / f"lr{lr}_seed{seed}.json"


def run_one(bed: Testbed, label: str, lr: str, seed: int, out: Path, data, log=print) -> dict:
    """Train and evaluate one run unless its summary (same key) is already stored; returns the summary."""
    from nrt.evaluation.report import read_metrics
    from nrt.experiments.compare import evaluate_model, run_directory, run_key, train
    from nrt.training.run_record import atomic_write_text

    exp = experiment(bed, label, lr, seed, out, data)
    preset = METHODS[label][0]
    key, path = run_key(exp, preset, seed), summary_path(bed.name, label, lr, seed)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored
    log(f"[{bed.name}] {label} lr={lr} seed={seed}: training")
    info = train(exp, preset, seed)  # its wall_s is the training's own, also when read back from a run dir
    tick = time.perf_counter()
    directory = run_directory(exp, preset, seed)
    model_dir = directory / "best" if (directory / "best").is_dir() else directory
    tests = evaluate_model(exp, model_dir, directory / "eval")
    records = read_metrics(directory)
    validation = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    best = max(validation, key=lambda sv: sv[1]) if validation else (None, float("nan"))
    summary = {
        "testbed": bed.name, "method": label, "preset": preset, "learning_rate": lr, "seed": seed, "key": key,
        "overrides": exp.overrides, "train_wall_s": info["wall_s"],
        "wall_s": info["wall_s"] + time.perf_counter() - tick,
        "collapse_step": info["collapse_step"], "validation": validation, "best_step": best[0],
        "validation_best": best[1], "test": tests,
        "curves": [{k: r[k] for k in ("step", *CURVE_KEYS) if k in r} for r in records],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=1))
    log(f"[{bed.name}] {label} lr={lr} seed={seed}: validation {best[1]:.3f} at step {best[0]}, "
        + ", ".join(f"{n} {100 * s['accuracy']:.1f}%" for n, s in tests.items()) + f" ({summary['wall_s']:.0f} s)")
    return summary


def run_wall(run: dict) -> float:
    """Training plus test evaluation; summaries written before eval was timed on its own hold only the training."""
    return max(run["wall_s"], run["train_wall_s"])


def stored(bed: str, label: str, lr: str, seed: int) -> dict | None:
    path = summary_path(bed, label, lr, seed)
    return json.loads(path.read_text()) if path.is_file() else None


def chosen_rate(bed: str, label: str) -> str | None:
    """The learning rate whose seed-0 run had the higher best validation accuracy (ties: the first);
    None until every rate's seed-0 run is stored."""
    runs = [stored(bed, label, lr, 0) for lr in LEARNING_RATES]
    if any(r is None for r in runs):
        return None
    return max(zip(LEARNING_RATES, runs), key=lambda pair: pair[1]["validation_best"])[0]


def run_testbed(bed: Testbed, seeds: list[int], out: Path, labels: list[str]) -> None:
    """The search (seed 0 at every rate, every method), then the other seeds at each method's rate."""
    data = testbed_data(bed, out)
    for label in labels:
        for lr in LEARNING_RATES:
            run_one(bed, label, lr, 0, out, data)
    for seed in [s for s in seeds if s != 0]:
        for label in labels:
            run_one(bed, label, chosen_rate(bed.name, label), seed, out, data)


# ---- the page: every number below is read from the stored summaries


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def final_runs(bed: str, label: str, seeds: list[int]) -> list[dict]:
    lr = chosen_rate(bed, label)
    return [r for r in (stored(bed, label, lr, s) for s in seeds) if r is not None] if lr else []


def test_accuracy(run: dict) -> float:
    """Mean test accuracy over the testbed's test sets (they are the same size), in %."""
    return 100 * sum(s["accuracy"] for s in run["test"].values()) / len(run["test"])


def first_last(run: dict, key: str) -> tuple[float, float] | None:
    values = [c[key] for c in run["curves"] if key in c]
    return (values[0], values[-1]) if values else None


def method_row(bed: str, label: str, seeds: list[int]) -> tuple[list[str], dict]:
    runs = final_runs(bed, label, seeds)
    search = [stored(bed, label, lr, 0) for lr in LEARNING_RATES]
    search_cell = " / ".join("-" if r is None else f"{100 * r['validation_best']:.1f}" for r in search)
    if not runs:
        return [f"`{label}`", search_cell, "not run yet", "", "", "", "", "", "", ""], {}
    acc = [test_accuracy(r) for r in runs]
    names = list(runs[0]["test"])
    gain = [sum(r["test"][n]["reasoning_gain"] for n in names) / len(names) for r in runs]
    logp = [sum(r["test"][n]["answer_logprob"] for n in names) / len(names) for r in runs]
    lengths = [first_last(r, "trace_length_mean") for r in runs]
    entropy = [first_last(r, "trace_entropy") for r in runs]
    m, s = mean_sd(acc)
    cells = [
        f"`{label}`", search_cell + f" → {runs[0]['learning_rate']}", f"{m:.1f} ± {s:.1f}",
        " / ".join(f"{a:.1f}" for a in acc), "{:.2f} ± {:.2f}".format(*mean_sd(logp)),
        "{:+.2f} ± {:.2f}".format(*mean_sd(gain)),
        "n/a" if None in lengths else "{:.1f} → {:.1f}".format(*[mean_sd([x[i] for x in lengths])[0] for i in (0, 1)]),
        "n/a" if None in entropy else "{:.2f} → {:.2f}".format(*[mean_sd([x[i] for x in entropy])[0] for i in (0, 1)]),
        f"{sum(r['collapse_step'] is not None for r in runs)}/{len(runs)}",
        "{:.0f}".format(mean_sd([r["train_wall_s"] for r in runs])[0]),
    ]
    return cells, {"acc": acc, "mean": m, "sd": s, "runs": runs}


def testbed_section(bed: Testbed, seeds: list[int], doc_dir: Path) -> tuple[str, dict]:
    from nrt.evaluation.report import markdown_table, plot_curves

    rows, stats = [], {}
    for label in METHODS:
        cells, stats[label] = method_row(bed.name, label, seeds)
        rows.append(cells)
    header = ["method", "validation % at " + " / ".join(LEARNING_RATES) + " → chosen", "test acc %",
              "per seed", "answer log-lik", "gain (nats)", "trace len first → last", "entropy first → last",
              "collapse", "train s"]
    gain = json.loads((Path(bed.base) / "gym.json").read_text()).get("reasoning_gain_train", {})
    premise = "; ".join(f"{t}: direct {100 * g['direct_accuracy']:.1f}%, forced think {100 * g['think_accuracy']:.1f}%,"
                        f" gain {g['mean']:+.3f} ± {g['stderr']:.3f} nats" for t, g in gain.items()
                        if t in bed.tasks and "direct_accuracy" in g)
    text = (f"## Testbed `{bed.name}`: {bed.title}\n\nThe base model before any run (its gym.json, training "
            f"questions): {premise or 'not recorded'}. Trace budget {bed.trace_tokens} tokens, answer budget "
            f"{bed.answer_tokens}.\n\n{markdown_table(header, rows)}\n")
    curves = {label: [r["curves"] for r in s["runs"]] for label, s in stats.items() if s and label != "sft"}
    if curves:
        figure = plot_curves(curves, {"trace_length_mean": "trace length (tokens)", "trace_entropy":
                                      "trace token entropy", "reward_mean": "reward (before normalisation)",
                                      "eval_accuracy": "validation accuracy"},
                             doc_dir / f"methods_{bed.name}.png", title=f"testbed {bed.name}, mean over seeds")
        text += f"\n![{bed.name} curves]({figure.name})\n"
    return text, stats


def differ(a: dict, b: dict) -> bool:
    """Means further apart than the two seed standard deviations together."""
    return abs(a["mean"] - b["mean"]) > a["sd"] + b["sd"]


def shrank(run: dict) -> bool:
    """The run's last training step's mean trace length is under a quarter of its first step's."""
    ends = first_last(run, "trace_length_mean")
    return ends is not None and ends[1] < 0.25 * ends[0]


def questions(stats: dict, n_seeds: int) -> str:
    """The three questions of the comparison, answered from one testbed's numbers."""
    done = {label: s for label, s in stats.items() if s and len(s["acc"]) == n_seeds}
    lines = []
    aggregations = [m for m in AGGREGATION if m in done]
    if len(aggregations) >= 2:
        ranked = sorted(aggregations, key=lambda m: done[m]["mean"], reverse=True)
        apart = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:] if differ(done[a], done[b])]
        lines.append(
            "1. Do the aggregations differ? Mean test accuracy by reward: " + ", ".join(
                f"`{m}` ({AGGREGATION[m]}) {done[m]['mean']:.1f} ± {done[m]['sd']:.1f}" for m in ranked)
            + f"; spread {done[ranked[0]]['mean'] - done[ranked[-1]]['mean']:.1f} points. "
            + (f"{len(apart)} of {len(ranked) * (len(ranked) - 1) // 2} pairs are further apart than their two "
               f"seed sds together: " + ", ".join(f"`{a}` > `{b}`" for a, b in apart) + "." if apart else
               "No pair is further apart than its two seed sds together."))
    sampled = [m for m in done if m != "sft"]
    if sampled:
        collapsed = {m: sum(r["collapse_step"] is not None for r in done[m]["runs"]) for m in sampled}
        hit = [f"`{m}` {c}/{n_seeds}" for m, c in collapsed.items() if c]
        shrunk = {m: sum(shrank(r) for r in done[m]["runs"]) for m in sampled}
        gone = [f"`{m}` {c}/{n_seeds}" for m, c in shrunk.items() if c]
        lines.append("2. Which methods collapse? " + (", ".join(hit) + " (the detector of "
                     "src/nrt/training/collapse.py)." if hit else f"No run of the {len(sampled)} methods tripped "
                     "the collapse detector.") + " Runs whose traces ended shorter than a quarter of their first "
                     "step's: " + (", ".join(gone) + "." if gone else "none."))
    if "nrt" in done:
        rivals = [m for m in ("verifree", "rlpr", "jlb", "sft") if m in done]
        verdict = []
        for m in rivals:
            d = done["nrt"]["mean"] - done[m]["mean"]
            per_seed = " / ".join(f"{a - b:+.1f}" for a, b in zip(done["nrt"]["acc"], done[m]["acc"]))
            word = "beats" if d > 0 else "loses to"
            word += "" if differ(done["nrt"], done[m]) else " (within the seed sds)"
            verdict.append(f"{word} `{m}` by {abs(d):.1f} points (per seed {per_seed})")
        lines.append("3. Does `nrt` (the paper's preset) beat the others? It " + "; ".join(verdict) + ".")
    return "\n".join(lines) + "\n" if lines else ""


# the settings a default can be chosen among: the `nrt` preset with each answer term, and the marginal likelihood
DEFAULT_CANDIDATES = ("nrt", "nrt answer=derived", "nrt answer=off", "nrt-marginal")


def defaults_section(beds: list[Testbed], seeds: list[int]) -> str:
    """Validation accuracy (each run's best step, at the method's chosen rate) of the candidates for the
    default, per testbed and averaged over testbeds: the evidence the default is chosen from (test never)."""
    rows, overall = [], {}
    for label in DEFAULT_CANDIDATES:
        cells, means = [], []
        for bed in beds:
            runs = final_runs(bed.name, label, seeds)
            if len(runs) < len(seeds):
                cells.append("-")
                continue
            vals = [100 * r["validation_best"] for r in runs]
            m, sd = mean_sd(vals)
            means.append(m)
            cells.append(f"{m:.1f} ± {sd:.1f} ({' / '.join(f'{v:.1f}' for v in vals)})")
        if len(means) == len(beds):
            overall[label] = sum(means) / len(means)
        rows.append(f"| `{label}` | {' | '.join(cells)} | {overall[label]:.1f} |" if label in overall else
                    f"| `{label}` | {' | '.join(cells)} | - |")
    head = ("| setting | " + " | ".join(f"validation % on `{b.name}`, mean ± sd (per seed)" for b in beds)
            + " | mean over testbeds |\n|" + "---|" * (len(beds) + 2))
    verdict = ""
    if len(overall) == len(DEFAULT_CANDIDATES):
        best = max(overall, key=overall.get)
        verdict = (f"\nHighest mean validation accuracy over both testbeds: `{best}` ({overall[best]:.1f}%, against "
                   f"{overall['nrt']:.1f}% for the `nrt` preset as the paper sets it).\n")
    return ("## Choosing the defaults (validation only)\n\nThe candidates differ from the paper's `nrt` preset only in "
            "the answer term (and, for `nrt-marginal`, the trace weights); they are compared on the validation "
            "split, never on test items:\n\n" + head + "\n" + "\n".join(rows) + "\n" + verdict)


def write_doc(path: Path, beds: list[Testbed], seeds: list[int], command: str) -> None:
    from nrt.training.run_record import atomic_write_text

    sections, missing, wall = [], 0, 0.0
    for bed in beds:
        text, stats = testbed_section(bed, seeds, path.parent)
        text += "\n" + questions(stats, len(seeds))
        sections.append(text)
    for bed in beds:
        for label in METHODS:
            for lr in LEARNING_RATES:
                r = stored(bed.name, label, lr, 0)
                missing += r is None
                wall += run_wall(r) if r else 0.0
            rate = chosen_rate(bed.name, label)
            for seed in [s for s in seeds if s != 0]:
                r = stored(bed.name, label, rate, seed) if rate else None
                missing += r is None
                wall += run_wall(r) if r else 0.0
    status = (f"All {len(beds) * len(METHODS) * (len(LEARNING_RATES) + len(seeds) - 1)} runs are in." if not missing
              else f"**{missing} runs are still missing**: rerun the command; it does only those.")
    head = f"""# Methods side by side on the reasoning gym: short and long answers

Produced by `{command}` (`make methods`) on the 2-core CPU machine; the runs took {wall / 3600:.1f} h
of wall time in all (training and test evaluation, `wall_s` of each summary in results/methods/).
{status}

Every method runs the same recipe, {', '.join(f'`{o}`' for o in RECIPE)}, with the testbed's
trace and answer budgets, after its preset (src/nrt/presets.py; NRT_SPEC section 8). The same
search for every method: seed 0 at learning rates {' and '.join(LEARNING_RATES)}; the rate with the
higher validation accuracy (best of the steps every {EVAL_EVERY}) is kept and seeds
{', '.join(str(s) for s in seeds if s != 0)} run at it. Each run's model is its best validation step,
evaluated once on the test split (questions about people whose composed facts never appear in
pretraining or training). Test accuracy: exact match after the model's own greedy think-then-answer
(on `multihop_long`, the key span occurs in the answer as a whole word); mean ± sd over seeds
{', '.join(map(str, seeds))} and per seed. Answer log-lik: the reference answer's summed log-probability
after a sampled trace; gain: that minus the same without a trace (nats). Trace length and entropy:
the training batch's, at the first and last step. Collapse: the detector of
src/nrt/training/collapse.py, run with `on_collapse=warn` so every curve runs to the end. SFT
trains on question -> answer with the same batch in sequences (64 questions per step against 8
questions x 8 traces). `nrt answer=derived` / `answer=off` are `nrt` with `method.answer_loss`
changed; `nrt-marginal` is the K-sample marginal likelihood (not a method of the paper). What the
fixed answer term does to a run, over its checkpoints: docs/ANSWER_TERM.md (scripts/answer_term.py).
The defaults are chosen from these runs' validation accuracy at the end of the page.
"""
    atomic_write_text(path, head + "\n" + "\n".join(sections) + "\n" + defaults_section(beds, seeds))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--testbeds", default="bbh,long")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated labels (default: all)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--output-dir", default="artifacts/methods")
    p.add_argument("--doc", default="docs/METHODS.md")
    p.add_argument("--doc-only", action="store_true", help="write the page from the stored summaries; train nothing")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if 0 not in seeds:
        p.error(f"--seeds {args.seeds!r}: seed 0 runs the learning-rate search and must be included")
    beds = testbeds()
    unknown = [b for b in args.testbeds.split(",") if b not in beds]
    if unknown:
        p.error(f"--testbeds: unknown testbed {unknown[0]!r} (valid: {', '.join(beds)})")
    labels = args.methods.split(",")
    if any(label not in METHODS for label in labels):
        p.error(f"--methods: unknown method {next(x for x in labels if x not in METHODS)!r} "
                f"(valid: {', '.join(METHODS)})")
    chosen = [beds[b] for b in args.testbeds.split(",")]
    if not args.doc_only:
        from nrt.gym.pretrain import ensure_base

        for bed in chosen:
            ensure_base(Path(bed.base), **bed.pretrain)
            run_testbed(bed, seeds, Path(args.output_dir), labels)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--doc-only"]
    command = "python scripts/methods.py " + " ".join(given)
    write_doc(Path(args.doc), chosen, seeds, command.strip())
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
