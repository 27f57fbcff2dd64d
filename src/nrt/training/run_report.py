"""`nrt report RUN_DIR`: one run's curves as a PNG and a markdown page, finished or still training.

    OUT/report.md    the run's state, step, method and data, the final value of each metric, the
                     steps the collapse detector or the finite checks marked, and the curves
    OUT/report.png   one panel per metric, dashed vertical lines at the marked steps

OUT is the run directory unless told otherwise. metrics.jsonl is read as a run appends it (a torn last
line is left out), so a report of a run in progress shows the steps logged so far. Each file is replaced
only when it is nrt's own run report (nrt.outputs), and is written to a temporary name and renamed.
"""

from __future__ import annotations

from pathlib import Path

from nrt.errors import DataError
from nrt.evaluation.report import markdown_table, plot_curves, read_metrics
from nrt.outputs import PAGE_TITLES, atomic_write_text, check_output_file, output_kind
from nrt.training.model_card import matching_preset, read_json, read_yaml
from nrt.training.run_record import complete_checkpoints, is_locked, lock_owner

KIND = "run report"
# metric -> panel title, in panel order; a run shows those it logged
RUN_CURVES = {
    "reward_mean": "reward (mean over traces)",
    "reasoning_gain": "reasoning gain (nats)",
    "trace_length_mean": "trace length (tokens)",
    "trace_entropy": "trace token entropy",
    "zero_std_group_share": "share of zero-std groups",
    "eval_accuracy": "validation accuracy",
}
FALLBACK_CURVES = {"loss": "loss"}  # a run that logged none of the above (SFT without validation)
# metric flag -> the label of its marks
MARKS = {"collapse_detected": "collapse detected", "nothing_to_reinforce_detected": "nothing to reinforce",
         "skipped_update": "update skipped (non-finite)"}


def check_run_dir(run_dir: Path) -> None:
    """Refuse, in one line, a directory that is not an nrt run (DataError)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"RUN_DIR {run_dir}: no such directory")
    kind = output_kind(run_dir)
    if kind != "run":
        what = f"is an nrt {kind}" if kind else "has no nrt_run.json"
        raise DataError(f"RUN_DIR {run_dir}: not an nrt run directory ({what}); give the output dir of an nrt train")


def run_marks(records: list[dict]) -> dict[str, list[int]]:
    """label -> the steps whose record holds the flag (only flags some step holds)."""
    found = {label: [r["step"] for r in records if r.get(flag)] for flag, label in MARKS.items()}
    return {label: steps for label, steps in found.items() if steps}


def curve_keys(records: list[dict]) -> dict[str, str]:
    logged = {key for r in records for key, value in r.items() if value is not None}
    keys = {k: v for k, v in RUN_CURVES.items() if k in logged}
    return keys or {k: v for k, v in FALLBACK_CURVES.items() if k in logged}


def run_state(run_dir: Path, records: list[dict], config: dict) -> str:
    """What the run is doing, in words: training, finished, stopped (and what is left to use)."""
    if is_locked(run_dir):
        return f"in progress (pid {lock_owner(run_dir)} is training it)"
    finished = read_json(run_dir / "nrt_run.json").get("finished")
    if isinstance(finished, dict):
        return f"finished at step {finished.get('step')}; the final model is in the run directory"
    checkpoints = complete_checkpoints(run_dir)
    stops = (config.get("trainer") or {}).get("on_collapse") == "stop"
    if stops and any(r.get(flag) for r in records for flag in ("collapse_detected", "nothing_to_reinforce_detected")):
        return ("stopped by the collapse detector; the run's model (in the run directory) is "
                f"checkpoint-{checkpoints[-1]}, the last healthy one" if checkpoints else
                "stopped by the collapse detector, before any healthy checkpoint")
    if checkpoints:
        return f"not running and not finished; `nrt train --resume` continues from checkpoint-{checkpoints[-1]}"
    return "not running and not finished; no checkpoint yet"


def final_values(records: list[dict], keys: dict[str, str]) -> list[list[str]]:
    rows = []
    for key, label in keys.items():
        logged = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if not logged:
            continue
        values = [v for _, v in logged]
        step, last = logged[-1]
        rows.append([label, f"`{key}`", f"{last:.4g}", str(step), f"{values[0]:.4g}", f"{min(values):.4g}",
                     f"{max(values):.4g}"])
    return rows


def run_page(run_dir: Path, records: list[dict], png_name: str) -> str:
    """The markdown page of the run (its first line is the page title nrt.outputs knows)."""
    config = read_yaml(run_dir / "config.yaml")
    model, data, trainer = (config.get(s) or {} for s in ("model", "data", "trainer"))
    last = records[-1]["step"]
    total = trainer.get("max_steps")
    of = f" of {total}" if isinstance(total, int) and total > 0 else ""
    preset = matching_preset(config)
    keys = curve_keys(records)
    marks = run_marks(records)
    events = "\n".join(f"- {label}: step{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))}"
                       for label, steps in marks.items())
    events = events or "None: no collapse, nothing-to-reinforce or skipped update."
    values = markdown_table(["metric", "key", "last value", "at step", "first", "min", "max"],
                            final_values(records, keys))
    lora = " (LoRA)" if model.get("use_peft") else ""
    base = model.get("model_name_or_path") or "?"
    return f"""{PAGE_TITLES[KIND]}

Run `{run_dir}`: {run_state(run_dir, records, config)}.

- last step logged: {last}{of} ({len(records)} records in metrics.jsonl)
- method: {f'the `{preset}` preset' if preset else 'custom options'}{lora}; model `{base}`
- data: `{data.get('path') or '?'}`{f", validation `{data['eval_path']}`" if data.get('eval_path') else ''}

## Final values

{values}

## Marked steps

{events}

## Curves

![curves]({png_name})
"""


def write_run_report(run_dir: str | Path, output_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write OUT/report.md and OUT/report.png of the run in `run_dir` (OUT: `output_dir`, default the run
    directory); returns their paths. DataError for a directory that is not a run or has no step logged;
    OutputError for an output nrt may not replace; both before anything is written."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    out = Path(output_dir) if output_dir is not None else run_dir
    page, png = out / "report.md", out / "report.png"
    for path in (page, png):
        check_output_file(path, KIND, flag="--output-dir")
    records = read_metrics(run_dir)
    if not records:
        raise DataError(f"RUN_DIR {run_dir}: no step logged yet ({run_dir / 'metrics.jsonl'} holds no record)")
    if not curve_keys(records):
        raise DataError(f"RUN_DIR {run_dir}: {run_dir / 'metrics.jsonl'} holds no metric to plot yet")
    name = run_dir.resolve().name
    plot_curves({name: [records]}, curve_keys(records), png, title=f"{name}: step {records[-1]['step']}",
                marks=run_marks(records), metadata={"nrt_report": KIND})
    atomic_write_text(page, run_page(run_dir, records, png.name))
    return page, png
