"""argparse types for the commands' numeric options: a finite int or float within its bounds.

Every int and float option of every command takes one of these (tests/test_cli_options.py walks every
parser and fails on a bare `type=int`), so a negative, NaN, infinite or mistyped value is refused by
the parser itself, in one line naming the option, before any work or write.
"""

from __future__ import annotations

import argparse
import math


def bounded(kind, low=None, high=None, *, low_open: bool = False):
    """A finite `kind` (int or float) in [low, high], or (low, high] with `low_open`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'greater than' if low_open else 'at least'} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    parse.bounds = (kind, low, high, low_open)
    parse.__name__ = kind.__name__
    return parse


COUNT = bounded(int, 1)  # sizes, limits, token budgets, steps: at least 1
NON_NEGATIVE = bounded(int, 0)
SEED = bounded(int, 0, 2**32 - 1)  # what torch's and numpy's generators accept
TEMPERATURE = bounded(float, 0.0)  # 0: greedy
