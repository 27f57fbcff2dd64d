"""Exit codes and the one-line usage error shared by every command (docs/RELIABILITY.md lists the codes)."""

from __future__ import annotations

from typing import NoReturn

USAGE_ERROR = 2  # bad input: an option, a config file, a data record, a model path
COLLAPSE_STOP = 3  # trainer.on_collapse=stop ended the run


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)
