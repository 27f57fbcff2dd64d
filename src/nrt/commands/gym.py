"""`nrt gym ...` commands: build the reasoning gym's base model, its Q&A splits, and probe it.

    nrt gym pretrain [--corpus FILE] [--output-dir DIR] [--steps N] [--seed S] ...
    nrt gym data --output-dir DIR [--seed S | --model DIR] [--tasks t1,t2]
    nrt gym probe --model DIR [--splits validation,test] [--limit N]

`register(subparsers)` adds them to the main `nrt` parser; `python -m nrt.commands.gym ...`
runs them alone. Library errors (bad files, bad options) become one-line messages.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from nrt.gym import tasks as T
from nrt.option_types import COUNT, NON_NEGATIVE, SEED, bounded


def _usage_error(message: str):
    from nrt.commands.usage import UsageError

    raise UsageError(message)


def _tasks(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in T.ALL_TASKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown task(s) {bad}; choose from {','.join(T.ALL_TASKS)}")
    return names


def register(subparsers) -> None:
    gym = subparsers.add_parser("gym", help="the reasoning gym: tiny base model, Q&A splits, probe")
    sub = gym.add_subparsers(dest="gym_command", required=True)

    from nrt.gym.pretrain import PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="pretrain a tokenizer + tiny Llama from scratch",
                       description="Pretrain on the gym corpus (default) or on --corpus FILE "
                       "(.txt: one document per line; .jsonl: a 'text' field per line).")
    p.add_argument("--corpus", help="your own corpus instead of the gym's")
    p.add_argument("--output-dir", default=d.output_dir, help=f"where the model goes (default {d.output_dir})")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier gym model in --output-dir")
    p.add_argument("--steps", type=COUNT, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--seed", type=SEED, default=d.seed, help="seed of world, corpus, batches and weights")
    p.add_argument("--tasks", type=_tasks, default=d.tasks, help="gym tasks in the corpus, comma separated")
    for name, help_ in (("batch_tokens", "padded tokens per batch"), ("learning_rate", "peak AdamW lr"),
                        ("warmup_steps", "linear warmup steps"), ("hidden_size", "model width"),
                        ("num_layers", "transformer layers"), ("num_heads", "attention heads"),
                        ("intermediate_size", "MLP width"), ("vocab_size", "BPE vocabulary size"),
                        ("max_length", "longest training sequence"), ("threads", "torch CPU threads")):
        default = getattr(d, name)
        kind = bounded(float, 0.0, low_open=True) if isinstance(default, float) else (
            NON_NEGATIVE if name in ("warmup_steps", "threads") else COUNT)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=f"{help_} (default {default})")
    p.set_defaults(func=run_pretrain)

    p = sub.add_parser("data", help="write each task's train/validation/test splits as jsonl")
    p.add_argument("--output-dir", required=True, help="DIR/<task>/<split>.jsonl with fields question, answer")
    p.add_argument("--overwrite", action="store_true", help="replace the splits of an earlier `nrt gym data` in DIR")
    p.add_argument("--seed", type=SEED, default=0, help="the base model's pretraining seed (default 0)")
    p.add_argument("--model", help="take seed and world options from this gym model's gym.json instead")
    p.add_argument("--tasks", type=_tasks, default=T.TASKS)
    p.set_defaults(func=run_data)

    p = sub.add_parser("probe", help="direct / forced-think / free accuracy of a gym model")
    p.add_argument("--model", required=True, help="a directory written by `nrt gym pretrain`")
    p.add_argument("--splits", default="validation", help="comma separated, from train,validation,test")
    p.add_argument("--tasks", type=_tasks, default=T.TASKS)
    p.add_argument("--limit", type=COUNT, default=200, help="questions per split")
    p.add_argument("--bbh-dir", help="also probe the BIG-Bench-Hard files of the two BBH-format tasks here")
    p.add_argument("--output", help="also write the report here (json)")
    p.set_defaults(func=run_probe)


def run_pretrain(args) -> None:
    from nrt.gym.pretrain import PretrainConfig, pretrain

    names = {f.name for f in fields(PretrainConfig)}
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    if cfg.steps < 1:
        _usage_error("--steps must be positive")
    try:
        pretrain(cfg, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as e:
        _usage_error(str(e).splitlines()[0])


def run_data(args) -> None:
    from nrt.gym.corpus import Corpus, CorpusConfig
    from nrt.gym.probe import gym_corpus_of
    from nrt.outputs import check_output_dir, mark_dir

    check_output_dir(args.output_dir, "gym data", inputs=[args.model], files=list(args.tasks),
                     overwrite=args.overwrite)

    if args.model:
        try:
            corpus = gym_corpus_of(args.model)
        except (ValueError, FileNotFoundError) as e:
            _usage_error(str(e))
    else:
        corpus = Corpus(CorpusConfig(seed=args.seed, tasks=args.tasks))
    items = {t: corpus.items[t] for t in args.tasks if t in corpus.items}
    mark_dir(Path(args.output_dir), "gym data")
    for task, c in T.write_splits(args.output_dir, items).items():
        print(f"{task}: " + ", ".join(f"{k} {v}" for k, v in c.items()))


def run_probe(args) -> None:
    from nrt.gym.probe import gym_corpus_of, probe
    from nrt.outputs import atomic_write_text, check_output_file

    if not (Path(args.model) / "config.json").exists():
        _usage_error(f"{args.model}: not a model directory")
    try:  # before the model loads: a model that `nrt gym pretrain` did not write has no gym to probe
        gym_corpus_of(args.model)
    except (ValueError, OSError) as e:
        _usage_error(str(e).splitlines()[0])
    splits = tuple(s for s in args.splits.split(",") if s)
    if any(s not in T.SPLITS for s in splits):
        _usage_error(f"--splits: choose from {','.join(T.SPLITS)}")
    if args.output:
        check_output_file(args.output, "gym probe report", inputs=[args.model])
    report = probe(args.model, args.tasks, splits, limit=args.limit, bbh_dir=args.bbh_dir)
    print(json.dumps(report, indent=1))
    if args.output:
        atomic_write_text(Path(args.output), json.dumps({"nrt_report": "gym probe report", **report}, indent=1))
