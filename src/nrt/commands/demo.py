"""`nrt demo`: the embedded default job, on the reasoning gym, in minutes on a CPU.

1. The base model: a 4.4M-parameter Llama pretrained from scratch on the gym corpus of its
   three tasks (`nrt gym pretrain --tasks multihop,boolean_expressions,multistep_arithmetic_two
   --steps 2300`); the repo ships the result in models/gym-bbh, and the demo rebuilds it there
   when it is missing.
2. The gym's Q&A splits of those tasks (`nrt gym data`): composed multi-hop questions ("where
   does the mother of X live?") over people whose composed questions never appear in
   pretraining, and generated questions of the two BIG-Bench-Hard formats that never appear
   there either; plain question-answer pairs, no reasoning in them. The demo trains on a
   balanced mix of the three tasks (`write_mixed`).
3. SFT (direct question -> answer) and NRT (the `nrt` preset, the paper's recipe) trained on the same mix, each
   run's best step chosen on a mixed validation split.
4. Base, SFT and NRT evaluated on each task's gym test split and on the real BIG-Bench-Hard
   items of boolean_expressions and multistep_arithmetic_two; a table of accuracy, one of
   think share and trace length, a report directory with markdown and PNG curves, and
   optionally docs/RESULTS.md (which adds the base's premise on training questions and on
   the real items).

`--base models/gym-base` (the multi-hop world only) runs the same job on that one task.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

BASE_DIR = "models/gym-bbh"
TASKS = ("multihop", "boolean_expressions", "multistep_arithmetic_two")  # trained on, together
BBH_TASKS = ("boolean_expressions", "multistep_arithmetic_two")  # their real items: evaluation only
TRAIN_PER_TASK = 432  # the multihop train split whole; as many of each other task's (balanced mix)
VALIDATION_PER_TASK = 48  # model selection on 144 validation questions, a third per task
TRACE_TOKENS = 96  # arithmetic traces are the longest: about 70 tokens
COMMON = [  # both methods
    "trainer.learning_rate=1e-4", "trainer.warmup_ratio=0.05", f"trainer.max_completion_length={TRACE_TOKENS}",
    "trainer.bf16=true", "trainer.save_steps=1000", "trainer.eval_batch_size=144", "data.max_answer_length=16",
]
METHODS = {
    "sft": ["trainer.max_steps=40", "trainer.eval_steps=10", "trainer.per_device_train_batch_size=64"],
    "nrt": ["trainer.max_steps=50", "trainer.eval_steps=10", "trainer.num_generations=8",
            "trainer.per_device_train_batch_size=128"],
}


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the embedded default: SFT vs NRT on the reasoning gym, evaluated on BBH too")
    p.add_argument("--output-dir", default="artifacts/demo", help="where runs and the report go")
    p.add_argument("--base", default=BASE_DIR, help="the gym base model (built there when missing)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (docs/RESULTS.md uses 0,1,2)")
    p.add_argument("--results", help="also write this markdown results page (e.g. docs/RESULTS.md)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> None:
    from nrt.commands.usage import fail
    from nrt.evaluation.evaluate import default_bbh_dir
    from nrt.gym.pretrain import BBH_BASE_PRETRAIN, ensure_base
    from nrt.experiments.compare import EvalFile, Experiment, run
    from nrt.outputs import check_output_dir, check_output_file

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        fail(f"--seeds {args.seeds!r}: expected comma-separated integers")
    out = Path(args.output_dir)
    # the output rule (nrt.outputs) before the base is pretrained or any data written
    check_output_dir(out, "comparison", inputs=[args.base], resumable=True)
    if args.results:
        check_output_file(args.results, "demo results")
    base = ensure_base(Path(args.base), **BBH_BASE_PRETRAIN)
    if not (base / "gym.json").is_file():
        fail(f"--base {base}: no gym.json; not a model written by `nrt gym pretrain`")
    try:
        pretrain_report = json.loads((base / "gym.json").read_text())
        tasks = write_gym_data(base, out / "data")
    except (ValueError, KeyError, TypeError) as e:  # a corrupt gym.json, or a base pretrained on a user corpus
        fail(f"--base {base}: {type(e).__name__}: {e}")
    train, validation = write_mixed(out / "data", tasks)
    eval_sets = [EvalFile(f"gym_{task}", str(out / "data" / task / "test.jsonl")) for task in tasks]
    bbh_dir = default_bbh_dir()
    for task in BBH_TASKS:
        if (bbh_dir / f"{task}.json").is_file():
            eval_sets.append(EvalFile(f"bbh_{task}", str(bbh_dir / f"{task}.json"), "input", "target"))
        else:
            print(f"note: {bbh_dir / (task + '.json')} not found; skipping that BBH task", file=sys.stderr)
    exp = Experiment(
        base_model=str(base), train_data=str(train), output_dir=out,
        methods=list(METHODS), seeds=seeds, eval_sets=eval_sets,
        validation_data=str(validation), overrides=COMMON,
        method_overrides=METHODS, select="best", max_trace_tokens=TRACE_TOKENS,
    )
    summary = run(exp)
    report = (out / "report.md").read_text()
    print(report)
    if args.results:
        write_results(Path(args.results), out, exp, summary, seeds, pretrain_report, tasks)
        print(f"results: {args.results}")


def write_gym_data(base: Path, data: Path) -> list[str]:
    """DATA/<task>/<split>.jsonl: the gym splits of the base's corpus (`nrt gym data`) for the
    TASKS it was pretrained on, which it returns. Deterministic from the base's gym.json."""
    from nrt.gym.probe import gym_corpus_of
    from nrt.gym.tasks import write_splits

    corpus = gym_corpus_of(str(base))
    tasks = [t for t in TASKS if t in corpus.items]
    write_splits(str(data), {t: corpus.items[t] for t in tasks})
    return tasks


def write_mixed(data: Path, tasks: list[str]) -> tuple[Path, Path]:
    """DATA/train.jsonl and DATA/validation.jsonl: the first TRAIN_PER_TASK / VALIDATION_PER_TASK
    lines of each task's split file, interleaved (one of each task in turn)."""
    from nrt.training.run_record import atomic_write_text

    mixed = []
    for split, per_task in (("train", TRAIN_PER_TASK), ("validation", VALIDATION_PER_TASK)):
        columns = [(data / t / f"{split}.jsonl").read_text().splitlines()[:per_task] for t in tasks]
        mixed.append(data / f"{split}.jsonl")
        atomic_write_text(mixed[-1], "".join(line + "\n" for row in zip(*columns) for line in row))
    return mixed[0], mixed[1]


def premise_table(pretrain_report: dict) -> str:
    """What `nrt gym pretrain` measured on each task's training questions before any RL run."""
    from nrt.evaluation.report import markdown_table

    rows = []
    for task, g in pretrain_report.get("reasoning_gain_train", {}).items():
        accuracy = [f"{100 * g[k]:.1f}" if k in g else "n/a" for k in ("direct_accuracy", "think_accuracy",
                                                                        "free_accuracy")]
        rows.append([task, str(g["questions"]), *accuracy, f"{g['mean']:+.3f} ± {g['stderr']:.3f}"])
    return markdown_table(["task", "questions", "direct acc %", "forced think acc %", "free acc %",
                           "reasoning gain (nats)"], rows)


def probe_base_on_bbh(base: Path, eval_sets, out: Path) -> dict:
    """The base's premise probe (`nrt probe`: direct, forced-think and free accuracy, reasoning gain)
    on the real BBH items; written to OUT/base_bbh_probe.json."""
    from nrt.data import read_examples
    from nrt.evaluation.probe import ProbeConfig, probe
    from nrt.model_loading import load_model, load_tokenizer
    from nrt.tokens import ensure_response_start_token
    from nrt.training.run_record import atomic_write_text

    tokenizer, model = load_tokenizer(base), load_model(base).eval()
    rs = ensure_response_start_token(model, tokenizer)
    cfg = ProbeConfig(samples=2, max_trace_tokens=TRACE_TOKENS, max_answer_tokens=16, batch_size=64, bf16=True)
    report = {}
    for s in eval_sets:
        if s.name.startswith("bbh_"):
            records, examples, _ = read_examples(s.path, tokenizer, s.question_field, s.answer_field)
            report[s.name], _ = probe(model, tokenizer, examples, [r.answer for r in records], cfg, rs)
    atomic_write_text(out / "base_bbh_probe.json", json.dumps({"model": str(base), "config": vars(cfg),
                                                               "tasks": report}, indent=1))
    return report


def probe_table(report: dict) -> str:
    from nrt.evaluation.report import markdown_table

    pct = lambda s, k: f"{100 * s[k]:.1f} ± {100 * s[k + '_se']:.1f}"  # noqa: E731
    rows = [[name, str(s["n"]), pct(s, "direct_accuracy"), pct(s, "think_accuracy"), pct(s, "free_accuracy"),
             f"{s['reasoning_gain']:+.2f} ± {s['reasoning_gain_se']:.2f}"] for name, s in report.items()]
    return markdown_table(["real items", "n", "direct acc %", "forced think acc %", "free acc %",
                           "reasoning gain (nats)"], rows)


def margin(summary: dict, eval_set: str, against: tuple[str, ...]) -> float:
    """NRT's mean accuracy on `eval_set` minus the best mean of the methods `against` (points)."""
    from nrt.evaluation.report import mean_std

    def mean(method: str) -> float:
        if method == "base":
            return summary["base"][eval_set]["accuracy"]
        return mean_std([r["eval"][eval_set]["accuracy"] for r in summary["runs"] if r["method"] == method])[0]

    return 100 * (mean("nrt") - max(mean(m) for m in against))


def selected_steps(exp, method: str) -> list[int]:
    """The validation-selected step of each seed's run of `method` (0: the base model itself)."""
    from nrt.experiments.compare import run_directory

    steps = []
    for seed in exp.seeds:
        state = run_directory(exp, method, seed) / "best" / "trainer_state.json"
        steps.append(json.loads(state.read_text())["step"] if state.is_file() else None)
    return steps


def premise_notes(pretrain_report: dict, summary: dict) -> list[str]:
    """For each task where the base's mean reasoning gain was negative: what that mean hides, and
    how NRT did there (its gym test split), from the numbers of this run."""
    notes = []
    for task, g in pretrain_report.get("reasoning_gain_train", {}).items():
        runs = [r["eval"][f"gym_{task}"]["accuracy"] for r in summary["runs"]
                if r["method"] == "nrt" and f"gym_{task}" in r["eval"]]
        if g["mean"] >= -2 * g["stderr"] or not runs or "think_accuracy" not in g:
            continue
        notes.append(
            f"- `{task}`: the base's mean reasoning gain was negative ({g['mean']:+.2f} ± {g['stderr']:.2f} nats), "
            f"while its forced think-then-answer accuracy was {100 * g['think_accuracy']:.1f}% against "
            f"{100 * g['direct_accuracy']:.1f}% direct. The mean is carried by the sampled traces that go wrong (the "
            "answer follows its trace, so a wrong one costs many nats); the trainer's group-normalised advantage "
            "ranks each question's samples against each other, and the right traces rank first. NRT reached "
            f"{100 * sum(runs) / len(runs):.1f}% on this task's gym test split "
            f"(base {100 * summary['base'][f'gym_{task}']['accuracy']:.1f}%).")
    return notes


def write_results(path: Path, out: Path, exp, summary: dict, seeds: list[int], pretrain_report: dict,
                  tasks: list[str]) -> None:
    """docs/RESULTS.md: the demo's tables over seeds, the premises, the plots, and how each split was used."""
    import shutil

    from nrt.gym.pretrain import pretrain_command

    path.parent.mkdir(parents=True, exist_ok=True)
    figure = path.parent / "results_curves.png"
    shutil.copy(out / "curves.png", figure)
    command = "nrt demo " + shlex.join(["--seeds", ",".join(map(str, seeds)), "--results", str(path)])
    base = pretrain_report
    names = [s.name for s in exp.eval_sets]
    goals = []
    if "gym_multihop" in names:
        goals.append(f"- Multi-hop (gym test people): NRT {margin(summary, 'gym_multihop', ('sft',)):+.1f} points "
                     "against SFT (goal: at least +10).")
    if "bbh_multistep_arithmetic_two" in names:
        m = margin(summary, "bbh_multistep_arithmetic_two", ("base", "sft"))
        goals.append(f"- Real BBH `multistep_arithmetic_two`: NRT {m:+.1f} points against the better of base and "
                     f"SFT (goal: at least +10; {'met' if m >= 10 else f'missed by {10 - m:.1f} points'}).")
    tasks_text = ", ".join(f"`{t}`" for t in tasks)
    built_by = pretrain_command({"tasks": pretrain_report["config"]["tasks"],
                                 "steps": pretrain_report["config"]["steps"]})
    steps = {m: selected_steps(exp, m) for m in exp.methods}
    goals.append("- Validation-selected steps per seed: " + "; ".join(f"{m} {v}" for m, v in steps.items()) + ".")
    if 0 in steps.get("sft", []):
        goals.append(f"- SFT's selected step was step 0, the base itself, in {steps['sft'].count(0)} of "
                     f"{len(steps['sft'])} seeds: training on the answers alone lowered validation accuracy.")
    notes = premise_notes(base, summary)
    bbh_probe = probe_base_on_bbh(Path(exp.base_model), exp.eval_sets, out)
    text = f"""# Results on the reasoning gym

Produced by `{command}` (`make results`); numbers are mean ± std over seeds {', '.join(map(str, seeds))}.

Base model: a {base['parameters'] / 1e6:.2f}M-parameter Llama pretrained from scratch by
`{built_by}` ({base['tokens_seen'] / 1e6:.1f}M tokens,
{base['wall_s'] / 60:.0f} min wall on the machine that built it) on the gym corpus of {tasks_text}
(`multihop`: composed questions over a synthetic world; the BBH-named tasks: generated questions in
BIG-Bench-Hard's format, every BBH item removed by fingerprint). SFT and NRT train on the gym's
question-answer pairs of these tasks together. Accuracy is exact match of
the answer the model writes after its own greedy think-then-answer; "gain" is the answer
log-likelihood after a sampled trace minus without one, on the gym's multi-hop test split.

{summary['table']}

{chr(10).join(goals)}

Thinking (share of greedy answers written after a trace, and the trace's mean length):

{summary['behaviour_table']}

![curves]({figure.name})

The premise, measured by `nrt gym pretrain` on each task's training questions before any RL run
(greedy accuracy answering directly, after a forced trace, and free to choose; reasoning gain
over 4 sampled traces per question, ± standard error over questions):

{premise_table(base)}
{chr(10) + chr(10).join(notes) + chr(10) if notes else ""}
The base on the real BBH items (`nrt probe`: 2 sampled traces per question for the gain,
bf16; ± standard error over questions; chance is 50% for `boolean_expressions`):

{probe_table(bbh_probe)}

How the data was used:
- Training (SFT and NRT): {TRAIN_PER_TASK} question-answer pairs of the gym train split of each
  of {tasks_text}, interleaved (no reasoning in them).
- Model selection: each run is evaluated on {VALIDATION_PER_TASK} questions of each task's gym
  validation split every 10 steps (and at step 0); the step with the best validation accuracy
  is the one reported. The recipe's settings (learning rate, steps, batch) are those fixed
  from validation runs on the gym's multi-hop task; the trace limit ({TRACE_TOKENS} tokens) is
  what the longest arithmetic trace needs.
- The BIG-Bench-Hard files are evaluation data only: never in the pretraining corpus (the
  gym's generators drop any BBH question by fingerprint; tests/test_gym_corpus.py checks the
  corpus against the files' text), never in training or validation, never used to choose anything.
"""
    path.write_text(text)
