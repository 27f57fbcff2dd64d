"""`nrt bench` (also `python -m nrt.commands.bench`): time NRT steps; prints one JSON line.
The workload and what is counted: `nrt.experiments.bench`."""

from __future__ import annotations

import argparse
import json

from nrt.experiments.bench import __doc__ as WORKLOAD_DOC
from nrt.experiments.bench import add_arguments, check_arguments, run_bench


def run_command(args) -> None:
    from nrt.commands.usage import fail
    from nrt.errors import ModelLoadError

    try:
        check_arguments(args)  # a --model that is not there: ModelLoadError, a ValueError too
    except ValueError as e:
        fail(str(e))
    try:
        result = run_bench(args)
    except ModelLoadError as e:  # a model that does not load, or whose tokenizer has no usable vocabulary
        fail(str(e))
    print(json.dumps(result), flush=True)


def add_bench(subparsers) -> None:
    """`nrt bench`, for cli.build_parser."""
    p = subparsers.add_parser("bench", help="time NRT steps on a random Llama or a real model; prints one JSON line",
                              description=WORKLOAD_DOC.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=run_command)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="nrt bench", description=WORKLOAD_DOC.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    from nrt.errors import ModelLoadError

    try:
        check_arguments(args)
    except ValueError as e:
        p.error(str(e))  # one line, exit code 2
    try:
        result = run_bench(args)
    except ModelLoadError as e:
        p.error(str(e))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
