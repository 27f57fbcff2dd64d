"""Exit codes, the one-line usage error and the checked model loading shared by the commands
(docs/RELIABILITY.md lists the codes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

USAGE_ERROR = 2  # bad input: an option, a config file, a data record, a model path, an output directory
COLLAPSE_STOP = 3  # trainer.on_collapse=stop ended the run
DIVERGED = 4  # trainer.max_nonfinite_steps non-finite steps in a row, or non-finite weights
STOPPED_BY_SIGNAL = 5  # SIGTERM / SIGINT: the last finished step is checkpointed
WRITE_FAILED = 6  # an OSError while writing during training (disk full, ...)
INTERRUPTED = 130  # Ctrl-C outside training


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


def exit_code(error: Exception) -> int:
    """The exit code of a library error (nrt.errors); anything else nrt raises on purpose is bad input."""
    from nrt.errors import CollapseStop, Diverged, StoppedBySignal, WriteFailed

    for kind, code in ((CollapseStop, COLLAPSE_STOP), (Diverged, DIVERGED), (StoppedBySignal, STOPPED_BY_SIGNAL),
                       (WriteFailed, WRITE_FAILED)):
        if isinstance(error, kind):
            return code
    return USAGE_ERROR


def refuse_adapter_dir(path: str) -> None:
    """A LoRA run's folder holds an adapter, not a model: say how to merge it."""
    from nrt.training.peft_model import is_adapter_dir

    if is_adapter_dir(path):
        fail(f"--model {path}: holds a LoRA adapter, not a model; merge it first: "
             f"nrt export --model {path} --merge --output-dir DIR, then use DIR")


def load_checked_model(path: str, tokenizer):
    """The `--model` of generate, eval and probe, in eval mode. Refused from its config, before the
    weights load, when nrt's engine cannot run it (`nrt.engine.model_support`) or it has fewer embedding
    rows than the tokenizer has ids (`<|response_start|>` aside: nrt adds it); the rows are checked
    again on the loaded model, whose config may not say its true size."""
    from nrt.engine.model_support import check_engine_supports
    from nrt.model_loading import check_vocabulary, load_config, load_model

    config = load_config(path)
    check_engine_supports(config, path)
    check_vocabulary(config, tokenizer, path)
    model = load_model(path)
    check_vocabulary(model, tokenizer, path)
    return model.eval()


def bbh_file(task: str, bbh_dir: str | None) -> Path:
    """The BIG-Bench-Hard file of `task` in `bbh_dir` (default: nrt.evaluation.evaluate.default_bbh_dir);
    fails naming the task and the closest existing one."""
    from nrt.evaluation.evaluate import default_bbh_dir

    directory = Path(bbh_dir) if bbh_dir else default_bbh_dir()
    path = directory / f"{task}.json"
    if not path.is_file():
        import difflib

        hint = difflib.get_close_matches(task, sorted(p.stem for p in directory.glob("*.json")), n=1)
        fail(f"--bbh {task}: no such task in {directory}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return path


def require_positive(args, names: tuple[str, ...]) -> None:
    """Each named integer option (None: unset) is at least 1, else one line naming it."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (`nrt train: error: ...`) and exit code 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (--help lists the options)\n")
