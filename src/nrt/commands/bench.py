"""`nrt bench` (also `python -m nrt.commands.bench`): time NRT steps; prints one JSON line.
The workload and what is counted: `nrt.experiments.bench`."""

from __future__ import annotations

import json

from nrt.commands.usage import OneLineParser
from nrt.experiments.bench import __doc__ as WORKLOAD_DOC
from nrt.experiments.bench import add_arguments, check_arguments, run_bench


def bench_and_print(args, error) -> None:
    """Check the options, time the steps, print the JSON line; a bad option or a model that does not
    load goes to `error` (one line, exit code 2)."""
    from nrt.errors import ModelLoadError

    try:
        check_arguments(args)  # a --model that is not there: ModelLoadError, a ValueError too
    except ValueError as e:
        error(str(e))
    try:
        result = run_bench(args)
    except ModelLoadError as e:  # a model that does not load, or whose tokenizer has no usable vocabulary
        error(str(e))
    print(json.dumps(result), flush=True)


def run_command(args) -> None:
    from nrt.commands.usage import fail

    bench_and_print(args, fail)


def add_bench(subparsers) -> None:
    """`nrt bench`, for cli.build_parser."""
    p = subparsers.add_parser("bench", help="time NRT steps on a random Llama or a real model; prints one JSON line",
                              description=WORKLOAD_DOC.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=run_command)


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(prog="nrt bench", description=WORKLOAD_DOC.splitlines()[0])
    add_arguments(p)
    bench_and_print(p.parse_args(argv), p.error)


if __name__ == "__main__":
    main()
