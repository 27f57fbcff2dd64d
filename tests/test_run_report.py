"""`nrt report RUN_DIR`: a run's curves (PNG) and page (markdown), for a finished run and one in progress;
marks at the steps the detectors flagged; a directory that is not a run refused in one line."""

import json
import shutil

import matplotlib.pyplot as plt
import pytest

from nrt.commands.cli import main
from nrt.evaluation.report import curves_figure
from nrt.outputs import mark_dir, report_kind
from nrt.training.run_record import RunLock
from nrt.training.run_report import RUN_CURVES, run_marks


pytestmark = pytest.mark.usefixtures("one_thread")


def records_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_gets_its_curves_and_a_page_of_its_final_values(finished_run, capsys):
    finished_run, _ = finished_run
    assert main(["report", str(finished_run)]) == 0
    page, png = finished_run / "report.md", finished_run / "report.png"
    assert str(page) in capsys.readouterr().out
    assert png.read_bytes().startswith(b"\x89PNG") and report_kind(png) == "run report"
    text = page.read_text()
    assert report_kind(page) == "run report" and "![curves](report.png)" in text
    assert "finished at step 2" in text and "last step logged: 2 of 2 (3 records" in text
    last = records_of(finished_run)[-1]
    for key in ("reward_mean", "reasoning_gain", "trace_length_mean", "trace_entropy", "zero_std_group_share",
                "eval_accuracy"):
        row = next(line for line in text.splitlines() if f"`{key}`" in line)
        assert f"| {last[key]:.4g} | 2 |" in row, row
    assert "None: no collapse" in text
    assert main(["report", str(finished_run)]) == 0  # its own earlier report is replaced


def test_a_run_in_progress_with_a_torn_last_line(finished_run, tmp_path):
    finished_run, _ = finished_run
    run = tmp_path / "live"
    run.mkdir()
    for name in ("nrt_run.json", "config.yaml"):
        shutil.copy(finished_run / name, run / name)
    record = json.loads((finished_run / "nrt_run.json").read_text())
    record.pop("finished")
    (run / "nrt_run.json").write_text(json.dumps(record))
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[1] + "\n" + lines[2][: len(lines[2]) // 2])  # step 1, half of step 2
    lock = RunLock(run).acquire()  # a training process holds it
    try:
        out = tmp_path / "elsewhere"
        assert main(["report", str(run), "--output-dir", str(out)]) == 0
    finally:
        lock.release()
    text = (out / "report.md").read_text()
    assert "in progress (pid" in text and "last step logged: 1 of 2 (1 records" in text
    assert f"| {json.loads(lines[1])['reward_mean']:.4g} | 1 |" in text
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG")
    assert not (run / "report.md").exists()


def test_marks_at_the_flagged_steps_on_every_panel_and_in_the_page(tmp_path):
    run = tmp_path / "run"
    mark_dir(run, "run")
    (run / "config.yaml").write_text("trainer:\n  max_steps: 10\n  on_collapse: stop\n")
    (run / "checkpoint-3").mkdir()
    records = [{"step": s, "reward_mean": 0.1 * s, "trace_length_mean": 10.0 - s, "trace_entropy": 2.0}
               for s in range(1, 7)]
    records[1]["skipped_update"] = 1.0
    records[5]["collapse_detected"] = 1.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_marks(records) == {"collapse detected": [6], "update skipped (non-finite)": [2]}
    fig = curves_figure({"run": [records]}, {k: RUN_CURVES[k] for k in ("reward_mean", "trace_length_mean")},
                        marks=run_marks(records))
    for ax in fig.axes[:2]:
        vertical = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
        assert vertical == [2, 6]
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"run", "collapse detected",
                                                                   "update skipped (non-finite)"}
    plt.close(fig)
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "- collapse detected: step 6" in text and "- update skipped (non-finite): step 2" in text
    assert "stopped by the collapse detector" in text and "checkpoint-3" in text and "6 of 10" in text


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such directory"),
    ("plain", "not an nrt run directory (has no nrt_run.json)"),
    ("comparison", "not an nrt run directory (is an nrt comparison)"),
    ("empty run", "no step logged yet"),
    ("broken line", "metrics.jsonl:1: not a metrics record"),
])
def test_what_is_not_a_run_with_steps_is_refused_in_one_line(tmp_path, capsys, case, expected):
    target = tmp_path / "dir"
    if case != "missing":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    if case == "comparison":
        mark_dir(target, "comparison")
    if case in ("empty run", "broken line"):
        mark_dir(target, "run")
        (target / "metrics.jsonl").write_text("" if case == "empty run" else 'x\n{"step": 2}\n')
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (target / "report.md").exists() and not (target / "report.png").exists()


def test_a_report_file_of_someone_else_is_not_replaced(finished_run, tmp_path, capsys):
    finished_run, _ = finished_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.png").write_bytes(b"\x89PNG\r\n\x1a\nmine")
    assert main(["report", str(finished_run), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "report.png: exists and is not an nrt run report" in err
    assert (out / "report.png").read_bytes() == b"\x89PNG\r\n\x1a\nmine" and not (out / "report.md").exists()
