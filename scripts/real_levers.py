"""NRT on a real pretrained model (SmolLM2-135M-Instruct): one lever changed at a time, measured.

    python scripts/real_levers.py --data DIR/multistep_arithmetic_two/train.jsonl \
        --validation DIR/multistep_arithmetic_two/validation.jsonl --variants default recipe_lr kl --steps 100

Trains on the gym's generated Q&A pairs of one BBH-format task (`nrt gym data`; never BBH items),
one seed, through the library (`nrt.train`), and writes a markdown table (answer log-likelihood
after a sampled trace and without one, mean trace length, at several steps; the collapse
detector's verdict) to `--output` (default docs/real_levers.md), with the command that made it.
With `--validation`, each final model is probed (`nrt probe`) on the first 64 questions of that
gym validation split (K=4 sampled traces): its reasoning gain with the standard error, and
accuracy. The variants are ranked by that validation gain, among those that kept thinking
(`kept_thinking`); nothing here reads an evaluation item.
Every run shares the base settings below; a variant overrides some of them. Resumable: a
finished run (its metrics reach the last step and its final model is saved) is read, not trained
again, and keeps its final model only (`train_run`); a probe report made with the same options is
read, not probed again (`probe_summary`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import nrt
from nrt.training.run_record import option_changes

MODEL = "artifacts/models/smollm2-135m-instruct/hf"
BASE = [  # K=4, 8 sequences (2 questions) per step, 96-token traces, bf16, prefix coefficient 0.3
    "trainer.num_generations=4", "trainer.per_device_train_batch_size=8", "trainer.max_completion_length=96",
    "trainer.bf16=true", "method.prefix_loss_coef=0.3", "trainer.warmup_ratio=0.05", "trainer.save_steps=1000",
    "data.max_answer_length=16", "trainer.learning_rate=1e-5",
]
THINK_PROMPT = "Think step by step, then give the answer."
VARIANTS = {
    "default": [],
    "recipe_lr": ["trainer.learning_rate=2e-6"],  # the official recipe's learning rate
    "warmup_0.2": ["trainer.warmup_ratio=0.2"],  # a 4x longer learning-rate warm-up (20 steps)
    "kl": ["trainer.beta=0.1"],  # KL to the initial model
    "answer_off": ["method.answer_loss=off"],
    "prefix_1": ["method.prefix_loss_coef=1.0"],
    "temperature_0.7": ["trainer.temperature=0.7"],
    "answer_reward": ["method.answer_loss=reward"],  # VeriFree's answer term: weighted by the trace's reward
    "format_warmup": ["trainer.format_warmup_steps=10"],  # 10 SFT steps on <|response_start|> + answer first
    "think_prompt": [f"data.think_prompt={THINK_PROMPT}"],
}
PROBE = {"samples": 4, "max_trace_tokens": 96, "max_answer_tokens": 16, "batch_size": 16, "bf16": True}
VALIDATION_LIMIT = 64  # questions of the validation split probed


def think_prompt_of(overrides: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("data.think_prompt=")), "")


def probe_flags(options: dict) -> list[str]:
    """`nrt probe`'s flags for `ProbeConfig` fields: samples=4 -> --samples 4, bf16=True -> --bf16."""
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [] if value is False else [flag, str(value)]
    return flags


def probe_summary(model: str, report: Path, source: list[str], options: dict, seed: int,
                  think_prompt: str = "") -> dict:
    """`nrt probe` of `model` on `source` (`--data FILE ...` or `--bbh TASK`, with `--limit`) with
    the `ProbeConfig` fields `options`: the summary of its one task. A report already at `report`
    is read instead when it holds the same model, options, seed and think prompt; one with others
    is an error."""
    expected = {**options, "seed": seed, "think_prompt": think_prompt}
    if report.is_file():
        saved = json.loads(report.read_text())
        differs = [k for k, v in expected.items() if saved["config"].get(k) != v]
        differs += ["model"] if saved["model"] != model else []
        if differs:
            sys.exit(f"real_levers: error: {report} holds a probe with another {', '.join(differs)}; move it away")
    else:
        command = [sys.executable, "-m", "nrt", "probe", "--model", model, *source, "--output", str(report),
                   "--seed", str(seed), *probe_flags(options)]
        if think_prompt:
            command += ["--think-prompt", think_prompt]
        subprocess.run(command, check=True)
    return next(iter(json.loads(report.read_text())["tasks"].values()))["summary"]


def validation_probe(model: str, name: str, overrides: list[str], args) -> dict:
    """The probe of `model` on the validation split, with the run's own think prompt."""
    return probe_summary(model, Path(args.runs) / "probes" / f"{name}.json",
                         ["--data", args.validation, "--name", "validation", "--limit", str(VALIDATION_LIMIT)],
                         PROBE, args.seed, think_prompt_of(overrides))


def trace_length_ends(records: list[dict], window: int = 5) -> tuple[float, float]:
    """Mean trace length over the first and over the last `window` traced steps (one step of 8
    traces is noisy; the collapse detector's reference is the same first 5 steps)."""
    traced = [r["trace_length_mean"] for r in records if "trace_length_mean" in r]
    return sum(traced[:window]) / len(traced[:window]), sum(traced[-window:]) / len(traced[-window:])


def kept_thinking(records: list[dict], window: int = 5) -> bool:
    """The issue's bar: the collapse detector silent, and the final mean trace length at least half the
    starting one (`trace_length_ends`)."""
    start, end = trace_length_ends(records, window)
    return not any(r.get("collapse_detected") for r in records) and end >= 0.5 * start


def final_model_saved(out: Path) -> bool:
    return (out / "model.safetensors").is_file() or (out / "adapter_model.safetensors").is_file()


def train_run(out: Path, method: str, overrides: list[str], model: str, data: str) -> list[dict]:
    """Train (or resume) one run through `nrt.train` and return its metrics records. A finished run
    (metrics at the last step, final model saved) whose saved config is this one is read, not trained
    again; one with another config is an error. A finished run's checkpoints are removed: they only
    serve a resume, and for SmolLM2 each holds 1.6 GB (weights and optimizer state), which over the
    nine runs of `make real-results` would fill a small disk."""
    config = nrt.resolve_config(method, model=model, data=data, output_dir=str(out), overrides=overrides)
    metrics, saved = out / "metrics.jsonl", out / "config.yaml"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    if saved.is_file() and option_changes(yaml.safe_load(saved.read_text()) or {}, config.to_dict()):
        sys.exit(f"real_levers: error: {out} holds a run of another config; move it away or pick another --runs")
    if not records or records[-1].get("step") != config.trainer.max_steps or not final_model_saved(out):
        try:
            nrt.train(config, resume=out.is_dir() and any(out.glob("checkpoint-*")))
        except nrt.CollapseStop:
            pass
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
    if final_model_saved(out):
        for checkpoint in out.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)
    return records


def run_variant(name: str, args) -> list[dict]:
    overrides = [*BASE, *VARIANTS[name], f"trainer.max_steps={args.steps}", f"trainer.seed={args.seed}"]
    return train_run(Path(args.runs) / name, "nrt", overrides, args.model, args.data)


def row(name: str, records: list[dict], at: list[int]) -> list[str]:
    by_step = {r["step"]: r for r in records if "answer_logprob" in r}
    first_traced = min(by_step)  # step 1, or the first step after a format warm-up
    cells = []
    for s in at:
        r = by_step.get(max(s, first_traced))
        cells.append(f"{r['answer_logprob']:.1f} / {r['answer_logprob_no_trace']:.1f}, {r['trace_length_mean']:.0f}"
                     if r else "")
    collapsed = [r["step"] for r in records if r.get("collapse_detected")]
    return [f"`{name}`", " ".join(VARIANTS[name]) or "(base)", *cells,
            f"warned at {collapsed[0]}" if collapsed else "silent", "yes" if kept_thinking(records) else "no"]


def probe_cells(summary: dict) -> list[str]:
    return [f"{summary['reasoning_gain']:+.2f} ± {summary['reasoning_gain_se']:.2f}",
            f"{summary['sampled_trace_length']:.0f}",
            f"{summary['think_accuracy']:.1%}", f"{summary['direct_accuracy']:.1%}"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=MODEL)
    p.add_argument("--data", required=True, help="a gym train split, e.g. DIR/boolean_expressions/train.jsonl")
    p.add_argument("--validation", help="the gym validation split of the same task: probe every final model on it")
    p.add_argument("--runs", default=None, help="run directories (default artifacts/real/seed{SEED}: shared with "
                   "scripts/real.py, which reads a finished run of the same config instead of training it again)")
    p.add_argument("--output", default="docs/real_levers.md")
    args = p.parse_args(argv)
    args.runs = args.runs or f"artifacts/real/seed{args.seed}"
    at = sorted({1, *range(args.steps // 4, args.steps + 1, args.steps // 4)})
    try:
        runs = {name: run_variant(name, args) for name in args.variants}
    except nrt.NRTError as e:  # a bad option, data file or model: one line, as `nrt train` says it
        sys.exit(f"real_levers: error: {e}")
    rows = [row(name, records, at) for name, records in runs.items()]
    header = ["variant", "overrides", *[f"step {s}" for s in at], "collapse detector", "kept thinking"]
    table = markdown_table(header, rows)
    validation = ""
    if args.validation:
        probes = {"(untrained)": validation_probe(args.model, "untrained", [], args)}
        probes |= {name: validation_probe(str(Path(args.runs) / name), name, VARIANTS[name], args) for name in runs}
        kept = sorted((n for n in runs if kept_thinking(runs[n])), key=lambda n: -probes[n]["reasoning_gain"])
        vrows = [[f"`{n}`", *probe_cells(probes[n])] for n in probes]
        validation = (
            f"\n## On the validation split\n\nEach final model probed on the first {VALIDATION_LIMIT} questions of "
            f"`{args.validation}` (`nrt probe --limit {VALIDATION_LIMIT} {' '.join(probe_flags(PROBE))}`, the run's "
            "think prompt if it has one): reasoning gain (nats, ± standard"
            " error over questions), mean sampled trace length, forced-think and direct accuracy.\n\n"
            + markdown_table(["model", "reasoning gain", "trace length", "think acc", "direct acc"], vrows)
            + "\n\nRanked by validation gain among the runs that kept thinking (detector silent, and the mean trace "
            "length of the last 5 steps at least half that of the first 5): "
            f"{', '.join(f'`{n}`' for n in kept) or 'none'}.\n")
    command = "python scripts/real_levers.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = (f"# NRT on SmolLM2-135M-Instruct: levers, one at a time\n\nProduced by `{command}`.\n\n"
            f"Base settings for every run: `{' '.join(BASE)}`, seed {args.seed}, data `{args.data}` (generated by "
            "`nrt gym data`, no BBH item). Each cell: answer log-likelihood after a sampled trace / without one "
            "(nats, summed over answer tokens), then mean trace length (tokens); with a format warm-up the step-1 "
            "column is the first NRT step. The model's weights are 4-bit quantised then dequantised "
            "(docs/MODELS.md).\n\n" + table + "\n" + validation)
    Path(args.output).write_text(text)
    print(text)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *["| " + " | ".join(r) + " |" for r in rows]])


if __name__ == "__main__":
    main()
