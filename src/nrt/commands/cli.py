"""The `nrt` command line. Library code raises; only this package turns errors into exit codes.

Exit codes (docs/RELIABILITY.md): 0 done; 2 bad input (an option, a config file, a data
record, an output directory a run may not use): one line on stderr names the place, and
nothing has been written; 3 the collapse detector stopped training (`trainer.on_collapse=stop`);
4 the run diverged (`trainer.max_nonfinite_steps` non-finite steps in a row, or non-finite
weights): no final model, only checkpoints from before the divergence are kept; 5 SIGTERM or
SIGINT stopped training after checkpointing the last finished step (`--resume` continues);
6 a write failed during training (a full disk): the newest complete checkpoint is intact;
130 interrupted outside training (a second Ctrl-C, or one while loading).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from nrt.commands.usage import (  # noqa: F401  (re-exported for callers of main())
    COLLAPSE_STOP,
    DIVERGED,
    INTERRUPTED,
    STOPPED_BY_SIGNAL,
    USAGE_ERROR,
    WRITE_FAILED,
    OneLineParser,
    UsageError,
    bbh_file,
    fail,
    load_checked_model,
    refuse_adapter_dir,
    require_positive,
)
from nrt.option_types import COUNT, SEED, TEMPERATURE
from nrt.presets import DEFAULT_PRESET, PRESETS


# --------------------------------------------------------------------------- train


def add_train(sub) -> None:
    from nrt.config import help_text

    p = sub.add_parser(
        "train", help="train a model with NRT on Q&A data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with Native Reasoning Training.\n\n"
        "  nrt train --model PATH --data FILE --output-dir DIR [--config run.yaml] [section.option=value ...]\n\n"
        "Options are set by a YAML file (--config), then by section.option=value overrides, then by the plain flags.",
        epilog="options (section.option=default):\n" + help_text(),
    )
    p.add_argument("--model", help="model directory or hub name (model.model_name_or_path)")
    p.add_argument("--data", help="Q&A data file or datasets directory (data.path)")
    p.add_argument("--output-dir", help="where results go (trainer.output_dir)")
    p.add_argument("--method", help=f"preset applied first (default {DEFAULT_PRESET}, chosen in docs/METHODS.md; "
                   "nrt: the paper's recipe): " + ", ".join(PRESETS))
    p.add_argument("--config", help="YAML file of options, applied before the overrides")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    p.set_defaults(func=run_train, accepts_overrides=True)


def build_config(args):
    from nrt.training.api import resolve_config

    return resolve_config(args.method, args.config, args.overrides, model=args.model, data=args.data,
                          output_dir=args.output_dir)



def run_train(args) -> None:
    from nrt.training.api import train

    config = build_config(args)
    is_main = os.environ.get("RANK", "0") == "0"  # under accelerate launch / torchrun, one process reports
    result = train(config, resume=args.resume, log=print if is_main else (lambda *_: None),
                   command=shlex.join(["nrt", *args.argv]))
    if is_main:
        print(f"done: {result.steps} steps; model and metrics in {result.output_dir}")


# --------------------------------------------------------------------------- generate


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write a trace and an answer for questions")
    p.add_argument("--model", required=True, help="model directory (e.g. a training output dir)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--question", help="one question")
    group.add_argument("--questions", help="a text file, one question per line")
    p.add_argument("--prompt-template", default="{question}\n", help="plain template when no chat template")
    p.add_argument("--max-trace-tokens", type=COUNT, default=256)
    p.add_argument("--max-answer-tokens", type=COUNT, default=128)
    p.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="trace sampling temperature (0: greedy)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--raw", action="store_true", help="no <|response_start|> appended to a trace that ended at eos "
                   "or its limit (training appends it and answers after it, as generate does by default)")
    p.set_defaults(func=run_generate)


def run_generate(args) -> None:
    if args.questions:
        path = Path(args.questions)
        if not path.is_file():
            fail(f"--questions {path}: no such file")
        try:
            questions = [q for q in path.read_text(encoding="utf-8").splitlines() if q.strip()]
        except UnicodeDecodeError:
            fail(f"--questions {path}: not valid UTF-8")
        except OSError as e:
            fail(f"--questions {path}: cannot read ({e.strerror or e})")
        if not questions:
            fail(f"--questions {path}: no questions in it (one per line)")
    else:
        questions = [args.question]
    refuse_adapter_dir(args.model)
    from nrt.data import encode_prompts
    from nrt.engine.generation import think_then_answer
    from nrt.model_loading import load_tokenizer
    from nrt.tokens import RESPONSE_START, ensure_response_start_token, pad_token_id

    tokenizer = load_tokenizer(args.model)

    from jinja2 import TemplateError

    try:
        prompts = encode_prompts(tokenizer, questions, args.prompt_template)
    except ValueError as e:
        fail(f"--prompt-template: {e}")
    except TemplateError as e:
        fail(f"--model {args.model}: the chat template rejected the prompt ({str(e).splitlines()[0]})")
    model = load_checked_model(args.model, tokenizer)
    rs = ensure_response_start_token(model, tokenizer)
    results = think_then_answer(
        model, prompts, response_start_id=rs, eos_id=tokenizer.eos_token_id, pad_id=pad_token_id(tokenizer),
        max_trace_tokens=args.max_trace_tokens, max_answer_tokens=args.max_answer_tokens,
        temperature=args.temperature, seed=args.seed, append_marker=not args.raw,
    )
    for question, r in zip(questions, results):
        print(f"question: {question}")
        cut = "" if r.emitted_response_start else f"  [no {RESPONSE_START}: {'raw' if args.raw else 'appended'}]"
        print(f"trace:    {tokenizer.decode(r.trace_ids)}{cut}")
        print(f"answer:   {tokenizer.decode(r.answer_ids)}\n")


# --------------------------------------------------------------------------- eval


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy and reasoning gain of a model on Q&A data or a BBH task")
    p.add_argument("--model", required=True, help="model directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="Q&A file (same formats as nrt train)")
    source.add_argument("--bbh", metavar="TASK", help="a BIG-Bench-Hard task, e.g. boolean_expressions")
    p.add_argument("--bbh-dir", default=None, help="BBH json directory (default: ../shared/data/bbh or $NRT_BBH_DIR)")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--messages-field", default="messages", help="chat records' field, as data.messages_field")
    p.add_argument("--split-special-tokens", action="store_true",
                   help="read special-token text in the data as plain text, as data.split_special_tokens")
    p.add_argument("--prompt-template", default="{question}\n")
    p.add_argument("--limit", type=COUNT, default=None, help="evaluate the first N questions")
    p.add_argument("--max-trace-tokens", type=COUNT, default=128)
    p.add_argument("--max-answer-tokens", type=COUNT, default=32)
    p.add_argument("--batch-size", type=COUNT, default=64, help="questions per decoding pass (3 rows each)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--force-trace", action="store_true", help="forbid answering without a trace")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast, as trainer.bf16: about 2x faster on CPUs "
                   "with bf16 matmuls, but greedy traces and likelihoods differ from float32 (off by default)")
    p.add_argument("--output", help="JSON report path (default: MODEL/eval/<data name>.json; for a hub name, "
                   "eval/OWNER__NAME/<data name>.json)")
    p.set_defaults(func=run_eval)


def run_eval(args) -> None:
    from nrt.data import read_examples
    from nrt.model_loading import load_tokenizer, looks_local
    from nrt.outputs import check_output_file

    if args.bbh:
        path, fields = bbh_file(args.bbh, args.bbh_dir), ("input", "target", None)
    else:
        path, fields = Path(args.data), (args.question_field, args.answer_field, args.messages_field or None)
    require_positive(args, ("limit", "max_trace_tokens", "max_answer_tokens", "batch_size"))
    refuse_adapter_dir(args.model)
    if args.model.endswith(".gguf"):
        reports = Path(args.model).parent / "eval"
    elif Path(args.model).is_dir() or looks_local(args.model):
        reports = Path(args.model) / "eval"
    else:  # a hub name: a folder named like it would shadow the hub model in later loads
        reports = Path("eval") / args.model.replace("/", "__")
    output = Path(args.output) if args.output else reports / f"{args.bbh or path.stem}.json"
    check_output_file(output, "eval report", inputs=[path])
    tokenizer = load_tokenizer(args.model)
    records, examples, _ = read_examples(path, tokenizer, *fields, template=args.prompt_template, limit=args.limit,
                                         split_special_tokens=args.split_special_tokens)

    from nrt.evaluation.evaluate import EvalConfig, evaluate, write_report
    from nrt.tokens import ensure_response_start_token

    model = load_checked_model(args.model, tokenizer)
    rs = ensure_response_start_token(model, tokenizer)
    cfg = EvalConfig(args.max_trace_tokens, args.max_answer_tokens, args.batch_size, args.seed, args.force_trace,
                     bf16=args.bf16, one_pass=True)
    summary, rows = evaluate(model, tokenizer, examples, [r.answer for r in records], cfg, rs)
    print_summary(f"{args.bbh or path.name}", summary)
    try:
        write_report(output, summary, rows, {"model": args.model, "data": str(path), "config": vars(cfg)})
    except OSError as e:
        fail(f"--output {output}: cannot write the report ({e.strerror or e}); the summary above is its result")
    print(f"report: {output}")
    refresh_card(args.model)


def refresh_card(model: str) -> None:
    """A model directory with nrt's card (README.md): its Evaluation section gains the new report."""
    from nrt.training.model_card import refresh_model_card

    if Path(model).is_dir():
        try:
            card = refresh_model_card(model)
        except OSError as e:
            fail(f"--model {model}: cannot update its model card README.md ({e.strerror or e}); the report is written")
        if card is not None:
            print(f"model card: {card}")


def print_summary(title: str, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("n", "accuracy", "think share", "trace len", "logp after trace", "logp no trace", "gain"):
        table.add_column(column, justify="right")
    s = summary
    table.add_row(str(s["n"]), f"{s['accuracy']:.1%}", f"{s['think_share']:.1%}", f"{s['trace_length_mean']:.1f}",
                  f"{s['answer_logprob']:.3f}", f"{s['answer_logprob_no_trace']:.3f}", f"{s['reasoning_gain']:+.3f}")
    Console().print(table)


# --------------------------------------------------------------------------- compare


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train several methods x seeds on the same data and report them together")
    p.add_argument("--model", required=True, help="base model directory")
    p.add_argument("--data", required=True, help="training Q&A file")
    p.add_argument("--validation", help="validation Q&A file (selects each run's best model)")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=FILE", help="an evaluation set (repeatable)")
    p.add_argument("--bbh", action="append", default=[], metavar="TASK", help="a BBH task to evaluate on (repeatable)")
    p.add_argument("--bbh-dir", default=None)
    p.add_argument("--methods", default="nrt,sft", help="comma-separated presets")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--select", choices=["best", "final"], default="best",
                   help="evaluate the validation-selected model or the final one")
    p.add_argument("--max-trace-tokens", type=COUNT, default=64)
    p.set_defaults(func=run_compare, accepts_overrides=True)


def run_compare(args) -> None:
    from nrt.experiments.compare import EvalFile, Experiment, run
    from nrt.presets import PRESETS

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        if method not in PRESETS:
            import difflib

            hint = difflib.get_close_matches(method, PRESETS, n=1)
            fail(f"--methods: unknown method {method!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    from nrt.config import Config, apply_overrides

    overrides = apply_overrides(Config(), args.overrides)  # names and values checked before any run
    if overrides.model.use_peft:
        fail("model.use_peft: nrt compare evaluates whole models; train LoRA runs with nrt train, merge them "
             "with nrt export --merge, then nrt eval each")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        fail(f"--seeds {args.seeds!r}: expected comma-separated integers")
    eval_sets = []
    for item in args.eval:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            fail(f"--eval {item!r}: expected NAME=FILE with an existing file")
        eval_sets.append(EvalFile(name, path))
    for task in args.bbh:
        eval_sets.append(EvalFile(f"bbh_{task}", str(bbh_file(task, args.bbh_dir)), "input", "target"))
    if not eval_sets:
        fail("give at least one --eval NAME=FILE or --bbh TASK")
    for path, flag in ((args.model, "--model"), (args.data, "--data"), (args.validation, "--validation")):
        if path and not Path(path).exists():
            fail(f"{flag} {path}: no such file or directory")
    exp = Experiment(args.model, args.data, Path(args.output_dir), methods, seeds, eval_sets,
                     validation_data=args.validation, overrides=args.overrides, select=args.select,
                     max_trace_tokens=args.max_trace_tokens)
    run(exp)  # a run that diverges, is stopped by a signal or cannot write keeps its exit code (4-6)
    print(f"report: {Path(args.output_dir) / 'report.md'}")


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nrt", description="Native Reasoning Training")
    sub = parser.add_subparsers(dest="command", required=True)
    from nrt.commands.bench import add_bench
    from nrt.commands.data import register as add_data
    from nrt.commands.demo import add_demo
    from nrt.commands.export import add_export
    from nrt.commands.gym import register as add_gym
    from nrt.commands.harness import add_lm_eval
    from nrt.commands.probe import add_probe
    from nrt.commands.report import add_report

    add_train(sub)
    add_generate(sub)
    add_eval(sub)
    add_probe(sub)
    add_compare(sub)
    add_gym(sub)
    add_data(sub)
    add_demo(sub)
    add_bench(sub)
    add_export(sub)
    add_report(sub)
    add_lm_eval(sub)
    return parser


def quiet_libraries() -> None:
    """Keep the terminal for nrt's own progress: no weight-loading bars or save notices."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if args_in[:1] == ["lm-eval"]:  # the harness parses its own arguments (nrt.commands.harness)
        from nrt.commands.harness import run_harness

        return run_harness(args_in[1:])
    quiet_libraries()
    parser = build_parser()
    try:  # a bad option: one line and exit code 2 (OneLineParser), returned to callers of main()
        # options may come anywhere among `section.option=value` overrides
        args, extra = parser.parse_known_args(args_in)
        args.argv = args_in
        args.overrides = [x for x in extra if "=" in x and not x.startswith("-")]
        unknown = [x for x in extra if x not in args.overrides]
        if unknown or (args.overrides and not getattr(args, "accepts_overrides", False)):
            parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else USAGE_ERROR
    from nrt.commands.usage import exit_code
    from nrt.errors import ModelLoadError, NRTError, RunEnded

    try:
        args.func(args)
    except (UsageError, NRTError) as e:
        code = exit_code(e)
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch / torchrun, one process reports
            ended_well = isinstance(e, RunEnded) and code in (COLLAPSE_STOP, STOPPED_BY_SIGNAL)
            where = "--model " if isinstance(e, ModelLoadError) and not str(e).startswith("--") else ""
            print(str(e) if ended_well else f"nrt {args.command}: error: {where}{e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"nrt {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except SystemExit as e:  # an exit code raised by a command (argparse's 2): returned to callers of main()
        if isinstance(e.code, int):
            return e.code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
