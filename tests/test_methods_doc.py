"""scripts/methods.py: the sentences of docs/METHODS.md follow from the runs' summaries."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "methods.py"


@pytest.fixture(scope="module")
def methods():
    spec = importlib.util.spec_from_file_location("methods_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_summary(tmp_path: Path, methods, accuracy: dict[str, list[float]], collapse: dict[str, int]) -> dict:
    runs = []
    for method in methods.METHODS:
        for seed, acc in enumerate(accuracy[method]):
            directory = tmp_path / "runs" / method / f"seed{seed}"
            directory.mkdir(parents=True)
            lengths = [] if method == "sft" else [8.0, 4.0, 2.0 if collapse.get(method) == seed else 9.0]
            (directory / "metrics.jsonl").write_text(
                "".join(json.dumps({"step": i + 1, "trace_length_mean": x}) + "\n" for i, x in enumerate(lengths)))
            runs.append({"method": method, "seed": seed, "eval": {"gym_test": {"accuracy": acc}},
                         "collapse_step": 3 if collapse.get(method) == seed else None})
    return {"runs": runs, "base": {"gym_test": {"accuracy": 0.03}}, "output_dir": str(tmp_path)}


def test_findings_and_answers_follow_the_numbers(methods, tmp_path):
    accuracy = {m: [0.10, 0.20] for m in methods.METHODS}
    accuracy["nrt"] = [0.50, 0.70]  # mean 60%
    accuracy["verifree"] = [0.80, 0.80]  # beats nrt
    accuracy["rlpr"] = [0.65, 0.75]  # mean 70%: beats nrt
    summary = fake_summary(tmp_path, methods, accuracy, collapse={"jlb": 1})
    lines = methods.findings(summary)
    assert lines[0] == "Best mean test accuracy: `verifree` (80.0%); base model 3.0%."
    assert lines[1] == "`nrt` vs `sft`: 60.0% vs 15.0% (+45.0 points)."
    assert "`jlb` 15.0% (+45.0)" in lines[2] and "`verifree` 80.0% (-20.0)" in lines[2]
    assert "`nrt` 50.0 / 70.0" in lines[3]
    assert "`jlb` 8.0 -> 5.5" in lines[4] and "`nrt` 8.0 -> 9.0" in lines[4]
    assert lines[5] == "Collapse detected: `jlb` (seed 1 at step 3)."

    text = methods.answers({"healthy": summary})
    assert "`nrt` beats `sft`, `jlb`; it does not beat `verifree`, `rlpr`." in text
    assert "Runs that collapsed: `jlb` 1/2." in text
    assert "whose answer term does not train" in text  # both verifree and rlpr beat nrt


def test_no_answer_term_sentence_when_nrt_wins(methods, tmp_path):
    accuracy = {m: [0.10, 0.20] for m in methods.METHODS}
    accuracy["nrt"] = [0.90, 0.90]
    text = methods.answers({"healthy": fake_summary(tmp_path, methods, accuracy, collapse={})})
    assert "beats `sft`, `jlb`, `verifree`, `rlpr`." in text and "No run collapsed." in text
    assert "answer term" not in text


def test_bad_seeds_are_a_one_line_usage_error(methods, capsys):
    with pytest.raises(SystemExit) as exit_info:
        methods.main(["--seeds", "0,x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: --seeds '0,x': expected comma-separated integers")
