"""scripts/methods.py: the search, the selection and the page's sentences follow from the stored runs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "methods.py"


@pytest.fixture()
def methods(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("methods_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    return module


def store(methods, label, lr, seed, accuracy, validation, collapse_step=None, lengths=(8.0, 9.0), bed="long"):
    path = methods.summary_path(bed, label, lr, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "method": label, "learning_rate": lr, "seed": seed, "validation_best": validation,
        "collapse_step": collapse_step, "wall_s": 100.0, "train_wall_s": 90.0,
        "test": {"gym_multihop_long": {"accuracy": accuracy, "reasoning_gain": 0.1, "answer_logprob": -5.0}},
        "curves": [{"step": 1, "trace_length_mean": lengths[0], "trace_entropy": 0.3},
                   {"step": 2, "trace_length_mean": lengths[1], "trace_entropy": 0.2}]}))


def test_rate_chosen_on_validation_then_the_other_seeds_are_read_at_it(methods):
    low, high = methods.LEARNING_RATES
    store(methods, "nrt", low, 0, accuracy=0.9, validation=0.2)  # best test, worse validation: not chosen
    assert methods.chosen_rate("long", "nrt") is None  # the search is not finished
    store(methods, "nrt", high, 0, accuracy=0.1, validation=0.3)
    assert methods.chosen_rate("long", "nrt") == high
    store(methods, "nrt", high, 1, accuracy=0.3, validation=0.3)
    store(methods, "nrt", low, 1, accuracy=0.99, validation=0.9)  # another rate's seed 1: never read
    runs = methods.final_runs("long", "nrt", [0, 1, 2])
    assert [(r["learning_rate"], r["seed"]) for r in runs] == [(high, 0), (high, 1)]


def test_the_three_questions_follow_the_numbers(methods):
    low, high = methods.LEARNING_RATES
    acc = {"nrt": [0.50, 0.52, 0.54], "verifree": [0.20, 0.40, 0.60], "rlpr": [0.10, 0.11, 0.12],
           "jlb": [0.60, 0.61, 0.62], "sft": [0.05, 0.05, 0.05]}
    for label, values in acc.items():
        store(methods, label, low, 0, values[0], validation=0.5)
        store(methods, label, high, 0, 0.0, validation=0.1)
        for seed in (1, 2):
            store(methods, label, low, seed, values[seed], validation=0.5,
                  collapse_step=7 if (label, seed) == ("rlpr", 2) else None,
                  lengths=(8.0, 1.9) if (label, seed) == ("jlb", 1) else (8.0, 9.0))
    stats = {label: methods.method_row("long", label, [0, 1, 2])[1] for label in methods.METHODS}
    text = methods.questions(stats, 3)
    assert "`jlb` (log_prob) 61.0 ± 1.0, `nrt` (weighted_sum_log_prob) 52.0 ± 2.0" in text
    assert "spread 50.0 points" in text  # jlb 61 - rlpr 11
    assert "`jlb` > `nrt`" in text and "`nrt` > `rlpr`" in text and "`verifree` > `rlpr`" in text
    assert "`nrt` > `verifree`" not in text  # 12 points apart, sds 2 + 20
    assert "2. Which methods collapse? `rlpr` 1/3" in text
    assert "Runs whose traces ended shorter than a quarter of their first step's: `jlb` 1/3." in text  # 1.9 < 2
    assert "beats (within the seed sds) `verifree` by 12.0 points (per seed +30.0 / +12.0 / -6.0)" in text
    assert "beats `rlpr` by 41.0 points" in text and "loses to `jlb` by 9.0 points" in text
    row, _ = methods.method_row("long", "nrt", [0, 1, 2])
    assert row[1] == "50.0 / 10.0 → " + low and row[2] == "52.0 ± 2.0" and row[3] == "50.0 / 52.0 / 54.0"
    assert row[6] == "8.0 → 9.0" and row[8] == "0/3"
    assert methods.method_row("long", "nrt-marginal", [0, 1, 2])[0][2] == "not run yet"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
    (["--seeds", "1,2"], "--seeds '1,2': seed 0 runs the learning-rate search and must be included"),
    (["--testbeds", "short"], "--testbeds: unknown testbed 'short' (valid: bbh, long)"),
])
def test_bad_options_are_one_line_usage_errors(methods, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        methods.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: " + message)


def test_the_default_is_chosen_by_validation_over_both_testbeds(methods):
    """Validation decides (test accuracy is never read): `nrt answer=off` is best on `long`, `nrt` on
    `bbh`, and the mean over testbeds picks answer=off."""
    low, high = methods.LEARNING_RATES
    val = {"nrt": (0.80, 0.10), "nrt answer=derived": (0.50, 0.20), "nrt answer=off": (0.75, 0.40),
           "nrt-marginal": (0.60, 0.30)}
    for label, (on_bbh, on_long) in val.items():
        for bed, v in (("bbh", on_bbh), ("long", on_long)):
            store(methods, label, low, 0, accuracy=0.99 if label == "nrt" else 0.0, validation=v, bed=bed)
            store(methods, label, high, 0, accuracy=0.0, validation=v - 0.05, bed=bed)
            for seed in (1, 2):
                store(methods, label, low, seed, accuracy=0.99 if label == "nrt" else 0.0,
                      validation=v + (0.02 if seed == 1 else -0.02), bed=bed)
    beds = [methods.testbeds()[b] for b in ("bbh", "long")]
    text = methods.defaults_section(beds, [0, 1, 2])
    assert "| `nrt answer=off` | 75.0 ± 2.0 (75.0 / 77.0 / 73.0) | 40.0 ± 2.0 (40.0 / 42.0 / 38.0) | 57.5 |" in text
    assert "Highest mean validation accuracy over both testbeds: `nrt answer=off` (57.5%, against 45.0%" in text
    store(methods, "nrt-marginal", low, 2, accuracy=0.0, validation=0.3, bed="long")
    (methods.summary_path("long", "nrt-marginal", low, 2)).unlink()  # a candidate's seed missing: no verdict
    assert "Highest" not in methods.defaults_section(beds, [0, 1, 2])


def test_the_default_preset_is_the_one_the_methods_page_chose(methods):
    """src/nrt/presets.DEFAULT_PRESET follows docs/METHODS.md's validation verdict; without one (runs
    missing) it stays the paper's `nrt`."""
    import re

    from nrt.presets import DEFAULT_PRESET

    page = (SCRIPT.parents[1] / "docs" / "METHODS.md").read_text()
    verdict = re.search(r"Highest mean validation accuracy over both testbeds: `([^`]+)`", page)
    if verdict is None:
        assert DEFAULT_PRESET == "nrt"
        return
    preset, extra = methods.METHODS[verdict.group(1)]
    assert not extra, f"the chosen setting {verdict.group(1)!r} is no preset: name it in src/nrt/presets.py"
    assert DEFAULT_PRESET == preset
