"""Step metrics: metrics.jsonl, the trackers of trainer.report_to, and a progress bar with ETA.

The trackers are accelerate's (`accelerate.tracking`: tensorboard, wandb, mlflow, trackio, ...),
started on the main process with the run's config as their hyperparameters; tensorboard writes
into output_dir/tensorboard, wandb's files go into output_dir (WANDB_MODE=offline works), the
project (wandb, trackio) or experiment (mlflow) is "nrt" and the run is named after output_dir.
The others take their usual environment variables (MLFLOW_TRACKING_URI, ...)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nrt.config import report_targets
from nrt.errors import ConfigError

# shown on the progress line; every metric goes to metrics.jsonl
KEY_METRICS = {
    "reward_mean": "reward",
    "reasoning_gain": "gain",
    "trace_length_mean": "trace",
    "response_start_share": "rs",
    "trace_entropy": "H",
    "distinct_3": "d3",
    "loss": "loss",
    "eval_accuracy": "val_acc",
}


def progress_bar(description: str, total: int, completed: int = 0, disable: bool = False) -> tuple[Progress, int]:
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        disable=disable,
    )
    task = progress.add_task(description, total=total, completed=completed, info="")
    return progress, task


class MetricsLogger:
    def __init__(self, run_dir, config, accelerator, total_steps: int, first_step: int = 0):
        self.run_dir, self.is_main = run_dir, accelerator.is_main_process
        self.progress, self.task = progress_bar("nrt train", total_steps, first_step, disable=not self.is_main)
        self.trackers = start_trackers(report_targets(config.trainer.report_to), run_dir.path, config) \
            if self.is_main else []
        # without a terminal the bar cannot redraw, so each logged step gets a plain line
        self.plain = self.is_main and not sys.stdout.isatty()

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        for tracker in self.trackers:
            tracker.finish()
        return False

    def log(self, metrics: dict) -> None:
        if not self.is_main:
            return
        append_line(self.run_dir.metrics_path, json.dumps(finite_or_null(metrics), allow_nan=False))
        numbers = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(numbers, step=metrics["step"])
        if self.plain:
            print(f"step {metrics['step']}: " + summary(metrics), flush=True)

    def warn(self, message: str) -> None:
        if self.is_main:
            self.progress.console.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)  # one greppable line

    def advance(self, metrics: dict) -> None:
        self.progress.update(self.task, advance=1, info=summary(metrics))


def start_trackers(names: list[str], output_dir, config) -> list:
    """accelerate's tracker objects for `names` (config.report_targets), started, the config stored."""
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    from nrt.training.run_record import flatten

    run = Path(output_dir).resolve().name
    arguments = {"tensorboard": (("tensorboard", str(output_dir)), {}),
                 "wandb": (("nrt",), {"name": run, "dir": str(output_dir)}),
                 "trackio": (("nrt",), {"name": run}),
                 "mlflow": ((), {"experiment_name": "nrt", "run_name": run})}
    # the trackers' hyperparameters take scalars only: None as "", anything else as its text
    flat = {k: "" if v is None else v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in flatten(config.to_dict()).items()}
    trackers = []
    for name in names:
        args, kwargs = arguments.get(name, (("nrt",), {}))
        try:
            tracker = LOGGER_TYPE_TO_CLASS[name](*args, **kwargs)
            tracker.start()
            tracker.store_init_configuration(flat)
        except Exception as e:  # a tracker's own setup (a server, a store, credentials): its first line
            for started in trackers:
                started.finish()
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"trainer.report_to: {name} could not start ({type(e).__name__}: {first})") from None
        trackers.append(tracker)
    return trackers


def finite_or_null(metrics: dict) -> dict:
    """NaN and inf become null (metrics.jsonl stays strict JSON; the step's warning names them)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}


def append_line(path, line: str) -> None:
    """Append one line, or nothing: a failed write (a full disk) is cut back to the old size before
    the error propagates, so the file never ends in a torn record."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def summary(metrics: dict) -> str:
    return " ".join(f"{short}={metrics[key]:.3g}" for key, short in KEY_METRICS.items() if key in metrics)
