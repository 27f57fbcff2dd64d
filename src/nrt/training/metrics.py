"""Step metrics: metrics.jsonl, optional tensorboard, and a progress bar with ETA."""

from __future__ import annotations

import json
import math
import os
import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
        self.writer = None
        if self.is_main and config.trainer.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir.path / "tensorboard"))
        # without a terminal the bar cannot redraw, so each logged step gets a plain line
        self.plain = self.is_main and not sys.stdout.isatty()

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        if self.writer:
            self.writer.close()
        return False

    def log(self, metrics: dict) -> None:
        if not self.is_main:
            return
        append_line(self.run_dir.metrics_path, json.dumps(finite_or_null(metrics), allow_nan=False))
        if self.writer:
            for key, value in metrics.items():
                if key != "step":
                    self.writer.add_scalar(key, value, metrics["step"])
        if self.plain:
            print(f"step {metrics['step']}: " + summary(metrics), flush=True)

    def warn(self, message: str) -> None:
        if self.is_main:
            self.progress.console.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)  # one greppable line

    def advance(self, metrics: dict) -> None:
        self.progress.update(self.task, advance=1, info=summary(metrics))


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
