"""Reports of runs, finished or in progress: metrics curves as PNG and tables as markdown. One plotting
path (plot_curves) draws the curves of `nrt report`, `nrt compare` and `nrt demo`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from nrt.errors import DataError


class BrokenMetricsLine(ValueError):
    """A line of metrics.jsonl, before its last one, that is not a record; `number` is 1-based."""

    def __init__(self, path: Path, number: int):
        super().__init__(f"{path}:{number}")
        self.path, self.number = path, number


def metrics_records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each record of a metrics.jsonl file: a JSON object with an integer step. A run
    appends one line per step, so the last line may be torn (a run killed mid-write, or still
    writing): it is left out. A broken line before it raises BrokenMetricsLine."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError
        except ValueError:
            if all(not rest.strip() for rest in lines[number:]):
                break  # the torn tail of an append
            raise BrokenMetricsLine(Path(path), number) from None
        records.append((line, record))
    return records


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl ([] when absent; see metrics_records); a broken line before
    the last is a DataError naming it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        return [record for _, record in metrics_records(path)]
    except BrokenMetricsLine as e:
        raise DataError(f"{e}: not a metrics record (a JSON object with a step)") from None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt(mean: float, std: float, percent: bool = False, digits: int = 2) -> str:
    if math.isnan(mean):
        return "n/a"
    if percent:
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def curve(records_per_seed: list[list[dict]], key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of `key` at every step where all seeds that reached it logged it."""
    by_step: dict[int, list[float]] = {}
    for records in records_per_seed:
        for r in records:
            if key in r and r[key] is not None and not (isinstance(r[key], float) and math.isnan(r[key])):
                by_step.setdefault(r["step"], []).append(r[key])
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def plot_curves(runs: dict[str, list[list[dict]]], keys: dict[str, str], path: Path, title: str = "",
                marks: dict[str, list[int]] | None = None, metadata: dict[str, str] | None = None) -> Path:
    """One panel per metric (keys: metric -> panel title), one line per method (mean over seeds), a dashed
    vertical line in every panel at each step of `marks` (label -> steps: a collapse, a skipped update);
    a PNG, written to a temporary name and renamed (a page that shows it never sees half an image).
    metadata: PNG text chunks (nrt.outputs reads "nrt_report" to know its own report)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = curves_figure(runs, keys, title, marks)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=110, format="png", metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


MARK_COLOURS = ("red", "purple", "grey", "brown")


def curves_figure(runs: dict[str, list[list[dict]]], keys: dict[str, str], title: str = "",
                  marks: dict[str, list[int]] | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    # one colour per method in every panel: a panel where a method logged nothing must not shift the others
    colors = {method: f"C{i}" for i, method in enumerate(runs)}
    for ax, (key, label) in zip(axes.flat, keys.items()):
        for method, per_seed in runs.items():
            steps, values = curve(per_seed, key)
            if steps:
                ax.plot(steps, values, label=method, color=colors[method], marker="." if len(steps) < 30 else None)
        for (name, steps), colour in zip((marks or {}).items(), MARK_COLOURS):
            for i, step in enumerate(steps):
                ax.axvline(step, color=colour, linestyle="--", linewidth=1, alpha=0.7, label=name if i == 0 else None)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:  # one legend for all panels: a method may be missing from some
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    # below the panels, in a strip of its own: in a corner it would cover a panel's title
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=max(1, min(len(handles), 6)), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.4 / (3.4 * rows), 1, 1))
    return fig
