"""The library's typed errors. The library raises them; only `nrt.commands` turns them into a
one-line message and an exit code (docs/ARCHITECTURE.md lists the codes).
"""

from __future__ import annotations


class NRTError(Exception):
    """Base of every error nrt raises on purpose; the message is one line naming the place."""


class ConfigError(NRTError, ValueError):
    """A bad option name or value, or a run directory that cannot be used; the message names it."""


class DataError(NRTError, ValueError):
    """A problem in the user's data; the message is one line naming the file and record."""


class ModelLoadError(NRTError, ValueError):
    """A model or tokenizer that cannot be loaded or used; the message names the path."""


class CollapseStop(NRTError):
    """The collapse detector stopped the run (`trainer.on_collapse=stop`); the last healthy
    checkpoint is kept. `result` is the run's RunResult."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
