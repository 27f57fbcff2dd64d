"""The library's typed errors. The library raises them; only `nrt.commands` turns them into a
one-line message and an exit code (docs/ARCHITECTURE.md lists the codes).
"""

from __future__ import annotations


class NRTError(Exception):
    """Base of every error nrt raises on purpose; the message is one line naming the place."""


class ConfigError(NRTError, ValueError):
    """A bad option name or value, or options the model cannot take; the message names the option."""


class DataError(NRTError, ValueError):
    """A problem in the user's data; the message is one line naming the file and record."""


class ModelLoadError(NRTError, ValueError):
    """A model or tokenizer that cannot be loaded or used; the message names the path."""


class OutputError(NRTError):
    """An output a command may not write (nrt.outputs): one of its inputs, a model directory, another
    program's files or another kind of nrt output, an earlier output without --overwrite, a place that
    cannot be written; nothing was written."""


class RunDirectoryError(OutputError):
    """An output directory a run may not use (the output rule, a locked run, a finished run, changed
    options on resume); nothing was written to it."""


class RunEnded(NRTError):
    """A run that ended before its last step; `result` (a RunResult) says what it left."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class CollapseStop(RunEnded):
    """The collapse detector stopped the run (`trainer.on_collapse=stop`); the last healthy
    checkpoint is kept."""


class Diverged(RunEnded):
    """`trainer.max_nonfinite_steps` non-finite steps in a row, or non-finite weights: no final
    model; only checkpoints from before the divergence are kept."""


class StoppedBySignal(RunEnded):
    """SIGTERM or SIGINT: the last finished step was checkpointed; `--resume` continues."""


class WriteFailed(RunEnded):
    """A write failed during training (a full disk); the newest complete checkpoint is intact."""
