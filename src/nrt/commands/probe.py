"""`nrt probe`: the premise probe (`nrt.evaluation.probe`) of any model on a Q&A file or BBH tasks.

    nrt probe --model DIR (--data FILE | --bbh TASK [--bbh TASK ...]) --output FILE.json
              [--limit N] [--samples K] [--max-trace-tokens T] [--think-prompt TEXT] [--bf16] [--seed S]

Options, data and the output path are checked before the model loads; the JSON report is written
whole (a temporary file renamed) after every task has run, so a failure leaves no partial report.
"""

from __future__ import annotations

import json
from pathlib import Path

from nrt.option_types import COUNT, SEED
from nrt.commands.usage import bbh_file, fail, load_checked_model, refuse_adapter_dir, require_positive


def add_probe(sub) -> None:
    p = sub.add_parser(
        "probe", help="does thinking help a model on a task? direct / forced-think / free accuracy and reasoning gain",
        description="Per task: accuracy answering at once (<|response_start|> right after the prompt), after a forced "
        "greedy trace, and when free to choose; and the reasoning gain of K sampled traces (answer log-likelihood "
        "after a trace minus without one), each with its standard error over questions.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="Q&A file (same formats as nrt train)")
    source.add_argument("--bbh", action="append", metavar="TASK", help="a BIG-Bench-Hard task (repeatable)")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--output", required=True, help="JSON report path")
    p.add_argument("--name", help="the task's name in the report with --data (default: the file name without suffix)")
    p.add_argument("--bbh-dir", default=None, help="BBH json directory (default: ../shared/data/bbh or $NRT_BBH_DIR)")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--messages-field", default="messages", help="chat records' field, as data.messages_field")
    p.add_argument("--split-special-tokens", action="store_true",
                   help="read special-token text in the data as plain text, as data.split_special_tokens")
    p.add_argument("--prompt-template", default="{question}\n", help="plain template when no chat template")
    p.add_argument("--think-prompt", default="",
                   help="text appended to each question on a new line, "
                        "e.g. 'Think step by step, then give the answer.'")
    p.add_argument("--limit", type=COUNT, default=None, help="probe the first N questions of each task")
    p.add_argument("--samples", type=COUNT, default=4, help="K sampled traces per question for the reasoning gain")
    p.add_argument("--max-trace-tokens", type=COUNT, default=128)
    p.add_argument("--max-answer-tokens", type=COUNT, default=32)
    p.add_argument("--batch-size", type=COUNT, default=16, help="questions per decoding pass (3 + K + 1 rows each)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster on CPUs with bf16 matmuls)")
    p.set_defaults(func=run_probe)


def task_files(args) -> list[tuple[str, Path, tuple[str, str, str | None]]]:
    """(task name, file, (question field, answer field, messages field)) per task; fails on a missing
    file or task."""
    if args.data:
        path = Path(args.data)
        if not path.exists():
            fail(f"--data {path}: no such file or directory")
        return [(args.name or path.stem, path, (args.question_field, args.answer_field, args.messages_field or None))]
    return [(task, bbh_file(task, args.bbh_dir), ("input", "target", None)) for task in args.bbh]


def run_probe(args) -> None:
    from nrt.data import read_examples
    from nrt.data import with_think_prompt
    from nrt.evaluation.probe import ProbeConfig, probe
    from nrt.model_loading import load_tokenizer
    from nrt.tokens import ensure_response_start_token
    from nrt.outputs import atomic_write_text, check_output_file

    require_positive(args, ("limit", "samples", "max_trace_tokens", "max_answer_tokens", "batch_size"))
    output = Path(args.output)
    tasks = task_files(args)
    check_output_file(output, "probe report", inputs=[path for _, path, _ in tasks])
    cfg = ProbeConfig(args.samples, args.max_trace_tokens, args.max_answer_tokens, args.batch_size, args.seed,
                      args.bf16, args.think_prompt)
    refuse_adapter_dir(args.model)
    tokenizer = load_tokenizer(args.model)
    data = {}
    for name, path, fields in tasks:
        think = lambda records: with_think_prompt(records, args.think_prompt)  # noqa: E731
        records, examples, _ = read_examples(path, tokenizer, *fields, template=args.prompt_template,
                                             limit=args.limit, prepare=think,
                                             split_special_tokens=args.split_special_tokens)
        data[name] = (path, records, examples)

    model = load_checked_model(args.model, tokenizer)
    rs = ensure_response_start_token(model, tokenizer)
    chat = bool(getattr(tokenizer, "chat_template", None))
    report = {"nrt_report": "probe report", "model": args.model, "config": vars(cfg), "chat_template": chat,
              "tasks": {}}
    for name, (path, records, examples) in data.items():
        summary, rows = probe(model, tokenizer, examples, [r.answer for r in records], cfg, rs)
        report["tasks"][name] = {"data": str(path), "prompt_example": tokenizer.decode(examples[0].prompt_ids),
                                 "summary": summary, "examples": rows}
        print_probe(name, summary)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=1))
    print(f"report: {output}")


def print_probe(title: str, s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("n", "direct acc", "think acc", "free acc", "free thinks", "logp after trace", "logp no trace",
                   "gain (nats)"):
        table.add_column(column, justify="right")
    pct = lambda key: f"{s[key]:.1%} ± {s[key + '_se']:.1%}"  # noqa: E731
    nats = lambda key: f"{s[key]:+.2f} ± {s[key + '_se']:.2f}"  # noqa: E731
    table.add_row(str(s["n"]), pct("direct_accuracy"), pct("think_accuracy"), pct("free_accuracy"),
                  pct("free_think_share"), nats("answer_logprob"), nats("answer_logprob_no_trace"),
                  nats("reasoning_gain"))
    Console().print(table)

