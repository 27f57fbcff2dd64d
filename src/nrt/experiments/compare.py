"""Several methods x seeds on the same data and budget, evaluated and reported together.

Used by `nrt compare` and `nrt demo`. Runs go one after another into

    output_dir/runs/<method>/seed<k>/      a normal `nrt train` output directory
    output_dir/runs/<method>/seed<k>/eval/ one JSON report per evaluation set
    output_dir/report.md, curves.png, summary.json

and the whole thing is resumable: a finished run (run_info.json) or evaluation (its JSON)
is skipped, an interrupted run continues from its newest checkpoint. Reuse is keyed by
everything that determines the result (run_key, eval_key: contents of the data files and
base model, method, seed, options); a run or evaluation made with other inputs is done again.
A run's key sits beside its directory (runs/<method>/seed<k>.key).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from nrt.evaluation.report import fmt, markdown_table, mean_std, plot_curves, read_metrics
from nrt.outputs import check_output_dir, mark_dir

CURVES = {
    "reward_mean": "reward (before normalisation)",
    "reasoning_gain": "reasoning gain (nats)",
    "eval_accuracy": "validation accuracy",
    "trace_length_mean": "trace length (tokens)",
    "trace_entropy": "trace token entropy",
    "distinct_3": "distinct 3-gram ratio",
}


@dataclass
class EvalFile:
    name: str
    path: str
    question_field: str = "question"
    answer_field: str = "answer"


@dataclass
class Experiment:
    base_model: str
    train_data: str
    output_dir: Path
    methods: list[str]
    seeds: list[int]
    eval_sets: list[EvalFile]
    validation_data: str | None = None
    overrides: list[str] = field(default_factory=list)  # for every run
    method_overrides: dict[str, list[str]] = field(default_factory=dict)  # per method
    select: str = "best"  # evaluate output_dir/best (validation-selected) or the final model
    include_base: bool = True
    max_trace_tokens: int = 64
    max_answer_tokens: int = 16


def run_directory(exp: Experiment, method: str, seed: int) -> Path:
    return Path(exp.output_dir) / "runs" / method / f"seed{seed}"


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# The files of a model directory that decide what it computes: weights, config, and the tokenizer
# with its chat template (a template added later changes every prompt).
MODEL_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
               "vocab.*", "merges.txt", "chat_template.*", "*.jinja")


def model_digest(model: str | Path) -> str:
    """Contents of a local model's weights, config and tokenizer files (file_digest of each), else its hub name."""
    from nrt.training.run_record import file_digest

    path = Path(model)
    files = sorted({f for pattern in MODEL_FILES for f in path.glob(pattern)}) if path.is_dir() else []
    files = [f for f in files if f.is_file()]
    return _hash([[f.name, file_digest(f)] for f in files]) if files else f"name:{model}"


def run_key(exp: Experiment, method: str, seed: int) -> str:
    """What determines a trained run: method, seed, options, base model and data contents."""
    from nrt.training.run_record import file_digest

    return _hash({
        "method": method, "seed": seed, "overrides": list(exp.overrides),
        "method_overrides": list(exp.method_overrides.get(method, [])), "base_model": model_digest(exp.base_model),
        "train_data": file_digest(exp.train_data),
        "validation": file_digest(exp.validation_data) if exp.validation_data else None,
    })


def eval_key(exp: Experiment, s: EvalFile, model: str) -> str:
    """What determines an evaluation: the model (see model_digest), the set's contents and fields, lengths."""
    from nrt.training.run_record import file_digest

    return _hash({"model": model, "data": file_digest(s.path), "fields": [s.question_field, s.answer_field],
                  "max_trace_tokens": exp.max_trace_tokens, "max_answer_tokens": exp.max_answer_tokens})


def run_overrides(exp: Experiment, method: str, seed: int) -> list[str]:
    """The options of one run, after its method's preset: seed, validation set, the shared then the method's."""
    validation = [f"data.eval_path={exp.validation_data}"] if exp.validation_data else []
    return [f"trainer.seed={seed}", *validation, *exp.overrides, *exp.method_overrides.get(method, [])]


def train(exp: Experiment, method: str, seed: int) -> dict:
    """Train one (method, seed) unless finished; returns its run_info."""
    from nrt.errors import CollapseStop
    from nrt.training.api import resolve_config
    from nrt.training.api import train as train_run

    directory = run_directory(exp, method, seed)
    info_path = directory / "run_info.json"
    key, key_path = run_key(exp, method, seed), directory.with_name(directory.name + ".key")
    if key_path.is_file() and key_path.read_text() == key:
        if info_path.is_file():
            return json.loads(info_path.read_text())
    elif directory.exists():  # made with other data, options or base model (or before keys): train again
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text(key)
    resume = any(directory.glob("checkpoint-*"))
    config = resolve_config(method, overrides=run_overrides(exp, method, seed), model=exp.base_model,
                            data=exp.train_data, output_dir=str(directory))
    tick = time.perf_counter()
    try:  # any other end (divergence, a signal, a full disk) propagates with its own exit code
        train_run(config, resume=resume)
        stopped = False
    except CollapseStop:
        stopped = True
    records = read_metrics(directory)
    collapsed = [r["step"] for r in records if r.get("collapse_detected")]
    info = {"method": method, "seed": seed, "key": key, "wall_s": time.perf_counter() - tick,
            "stopped_by_collapse": stopped, "collapse_step": collapsed[0] if collapsed else None}
    info_path.write_text(json.dumps(info))
    return info


def evaluate_model(exp: Experiment, model_dir: Path, out_dir: Path) -> dict[str, dict]:
    """Evaluate one model on every evaluation set (cached per set); name -> summary."""
    from nrt.data import read_examples
    from nrt.evaluation.evaluate import EvalConfig, evaluate, write_report
    from nrt.model_loading import load_model, load_tokenizer
    from nrt.tokens import ensure_response_start_token

    results, model, tokenizer = {}, None, None
    identity = model_digest(model_dir)
    for s in exp.eval_sets:
        path = out_dir / f"{s.name}.json"
        key = eval_key(exp, s, identity)
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                results[s.name] = cached["summary"]
                continue
        if model is None:
            tokenizer = load_tokenizer(model_dir)
            model = load_model(model_dir).eval()
            rs = ensure_response_start_token(model, tokenizer)
        records, examples, _ = read_examples(s.path, tokenizer, s.question_field, s.answer_field)
        cfg = EvalConfig(exp.max_trace_tokens, exp.max_answer_tokens)
        summary, rows = evaluate(model, tokenizer, examples, [r.answer for r in records], cfg, rs)
        write_report(path, summary, rows, {"model": str(model_dir), "data": s.path, "key": key})
        results[s.name] = summary
    return results


def inputs_of(exp: Experiment) -> list:
    """The files and directories a comparison reads, which its output may not be (nrt.outputs)."""
    return [exp.base_model, exp.train_data, exp.validation_data, *(s.path for s in exp.eval_sets)]


def check_experiment(exp: Experiment) -> None:
    """Everything a comparison can get wrong, checked before it evaluates or writes anything: the
    methods and seeds (known, none twice), the evaluation sets (names unique, files present), every
    method's options, and the training, validation and evaluation records read as the runs will
    read them. Raises ConfigError or DataError naming the option, file or line."""
    from nrt.data import read_examples
    from nrt.errors import ConfigError
    from nrt.model_loading import load_tokenizer
    from nrt.training.api import load_examples, resolve_config

    for what, values in (("--methods", exp.methods), ("--seeds", exp.seeds)):
        if not values:
            raise ConfigError(f"{what}: names none")
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{what}: {', '.join(twice)} given twice (each run has one directory)")
    names = [s.name for s in exp.eval_sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--eval: the evaluation set name {twice[0]!r} is given twice (reports are kept by name)")
    for s in exp.eval_sets:
        if not s.name or "/" in s.name or s.name.startswith("."):
            raise ConfigError(f"--eval {s.name}={s.path}: the name must be a plain file name")
    configs = {}
    for method in exp.methods:
        for seed in exp.seeds:
            configs[method, seed] = resolve_config(method, overrides=run_overrides(exp, method, seed),
                                                   model=exp.base_model, data=exp.train_data,
                                                   output_dir=str(run_directory(exp, method, seed)))
    tokenizer = load_tokenizer(exp.base_model)
    for config in {repr(c.data): c for c in configs.values()}.values():  # each distinct way of reading the data
        load_examples(config, tokenizer)
        if exp.validation_data:
            load_examples(config, tokenizer, exp.validation_data)
    for s in exp.eval_sets:
        read_examples(s.path, tokenizer, s.question_field, s.answer_field)


def run(exp: Experiment, log=print) -> dict:
    """Train and evaluate everything, then write the report; returns the summary."""
    summary: dict = {"runs": []}
    check_experiment(exp)
    check_output_dir(exp.output_dir, "comparison", inputs=inputs_of(exp), resumable=True)
    mark_dir(Path(exp.output_dir), "comparison")
    if exp.include_base:
        log(f"evaluating the base model {exp.base_model}")
        base = evaluate_model(exp, Path(exp.base_model), Path(exp.output_dir) / "base_eval")
        summary["base"] = base
    for method in exp.methods:
        for seed in exp.seeds:
            log(f"{method} seed {seed}: training")
            info = train(exp, method, seed)
            directory = run_directory(exp, method, seed)
            model_dir = directory / "best" if exp.select == "best" and (directory / "best").is_dir() else directory
            log(f"{method} seed {seed}: evaluating {model_dir.name}")
            info["eval"] = evaluate_model(exp, model_dir, directory / "eval")
            info["last"] = next((r for r in reversed(read_metrics(directory)) if "loss" in r), {})
            summary["runs"].append(info)
    write_report(exp, summary)
    return summary


def behaviour_table(exp: Experiment, summary: dict) -> str:
    """Per evaluation set and model: how often the greedy answer came after a trace (%), and the
    trace's mean length in tokens, each mean ± std over seeds."""
    per_method = [("base", [summary["base"]])] if "base" in summary else []
    per_method += [(m, [r["eval"] for r in summary["runs"] if r["method"] == m]) for m in exp.methods]
    rows = []
    for s in exp.eval_sets:
        cells = [f"{fmt(*mean_std([e[s.name]['think_share'] for e in evals]), percent=True)} % · "
                 f"{fmt(*mean_std([e[s.name]['trace_length_mean'] for e in evals]), digits=1)} tokens"
                 for _, evals in per_method]
        rows.append([s.name, *cells])
    return markdown_table(["evaluation set", *[m for m, _ in per_method]], rows)


def write_report(exp: Experiment, summary: dict) -> Path:
    out = Path(exp.output_dir)
    names = [s.name for s in exp.eval_sets]
    header = ["method", *[f"{n} acc %" for n in names], f"gain ({names[0]})", "trace len (final)",
              "entropy (final)", "collapse", "wall s"]
    rows = []
    if "base" in summary:
        b = summary["base"]
        rows.append(["base", *[fmt(b[n]["accuracy"], 0.0, percent=True) for n in names],
                     fmt(b[names[0]]["reasoning_gain"], 0.0), "", "", "", ""])
    for method in exp.methods:
        runs = [r for r in summary["runs"] if r["method"] == method]
        cells = [fmt(*mean_std([r["eval"][n]["accuracy"] for r in runs]), percent=True) for n in names]
        gain = fmt(*mean_std([r["eval"][names[0]]["reasoning_gain"] for r in runs]))
        length = fmt(*mean_std([r["last"].get("trace_length_mean", float("nan")) for r in runs]), digits=1)
        entropy = fmt(*mean_std([r["last"].get("trace_entropy", float("nan")) for r in runs]))
        collapsed = [r for r in runs if r["collapse_step"] is not None]
        collapse = f"{len(collapsed)}/{len(runs)}" + (
            f" (step {', '.join(str(r['collapse_step']) for r in collapsed)})" if collapsed else "")
        wall = fmt(*mean_std([r["wall_s"] for r in runs]), digits=0)
        rows.append([method, *cells, gain, length, entropy, collapse, wall])
    table = markdown_table(header, rows)
    behaviour = behaviour_table(exp, summary)
    curves = plot_curves({m: [read_metrics(run_directory(exp, m, s)) for s in exp.seeds] for m in exp.methods},
                         CURVES, out / "curves.png")
    seeds = ", ".join(map(str, exp.seeds))
    text = (f"# Comparison\n\nMethods trained on `{exp.train_data}` from `{exp.base_model}`, seeds {seeds}; "
            f"accuracy of greedy think-then-answer (exact match), mean ± std over seeds, "
            f"{'validation-selected' if exp.select == 'best' else 'final'} models.\n\n{table}\n\n"
            f"Thinking: the share of greedy answers that came after a trace, and the trace's mean length:"
            f"\n\n{behaviour}\n\n![curves]({curves.name})\n")
    (out / "report.md").write_text(text)
    summary["table"] = table  # for pages that quote it (docs/RESULTS.md, docs/METHODS.md)
    summary["behaviour_table"] = behaviour
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return out / "report.md"
