"""The demo's data (three gym tasks mixed, BBH never in it) and its results arithmetic."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from nrt.commands import demo
from nrt.evaluation.evaluate import default_bbh_dir
from nrt.experiments.compare import EvalFile, Experiment, behaviour_table
from nrt.gym.corpus import CorpusConfig


def fake_base(path: Path, **corpus) -> Path:
    """A directory with the gym.json of a gym-pretrained model (all the demo's data needs)."""
    path.mkdir(parents=True)
    cfg = asdict(CorpusConfig(**corpus))
    (path / "gym.json").write_text(json.dumps({"config": {"corpus": None}, "corpus_config": cfg}))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    tasks = demo.write_gym_data(fake_base(root / "base"), root / "data")
    return (tasks, *demo.write_mixed(root / "data", tasks)), root / "data"


def test_mixed_files_hold_each_task_equally_and_interleaved(data):
    (tasks, train, validation), folder = data
    assert tasks == list(demo.TASKS)
    for mixed, split, per_task in ((train, "train", demo.TRAIN_PER_TASK),
                                   (validation, "validation", demo.VALIDATION_PER_TASK)):
        rows = read(mixed)
        assert len(rows) == per_task * len(tasks)
        for k, task in enumerate(tasks):  # row i*3+k is the i-th question of task k's split
            assert rows[k::len(tasks)] == read(folder / task / f"{split}.jsonl")[:per_task]


def test_no_question_is_in_two_splits_and_no_bbh_input_anywhere(data):
    (tasks, train, validation), folder = data
    questions = {split: {r["question"] for t in tasks for r in read(folder / t / f"{split}.jsonl")}
                 for split in ("train", "validation", "test")}
    assert not questions["train"] & questions["validation"] and not questions["train"] & questions["test"]
    assert not questions["validation"] & questions["test"]
    written = {r["question"] for f in folder.rglob("*.jsonl") for r in read(f)}
    bbh = set()
    for task in demo.BBH_TASKS:
        path = default_bbh_dir() / f"{task}.json"
        if not path.exists():
            pytest.skip("BBH files not available")
        bbh |= {ex["input"] for ex in json.loads(path.read_text())["examples"]}
    assert len(bbh) == 500 and not written & bbh
    # the same questions, in BBH's format: a generated question equal to a BBH input would be caught
    assert any(q.endswith((" is", " =")) for q in written)


def test_a_multihop_only_base_gives_the_multihop_demo(tmp_path):
    tasks = demo.write_gym_data(fake_base(tmp_path / "base", tasks=("multihop",)), tmp_path / "data")
    train, _ = demo.write_mixed(tmp_path / "data", tasks)
    assert tasks == ["multihop"] and len(read(train)) == demo.TRAIN_PER_TASK


@pytest.mark.parametrize("gym_json", [None, "{not json", '{"config": {"corpus": "mine.txt"}}'])
def test_a_base_that_is_no_gym_model_fails_in_one_line_before_any_run(tmp_path, capsys, gym_json):
    from nrt.commands.cli import main

    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"")  # a model is there, so nothing is pretrained
    if gym_json is not None:
        (base / "gym.json").write_text(gym_json)
    assert main(["demo", "--base", str(base), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--base {base}" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_margin_is_nrt_minus_the_best_other_mean_in_points():
    def run(method, acc):
        return {"method": method, "eval": {"x": {"accuracy": acc}}}

    summary = {"base": {"x": {"accuracy": 0.10}},
               "runs": [run("sft", 0.20), run("sft", 0.30), run("nrt", 0.40), run("nrt", 0.50)]}
    assert demo.margin(summary, "x", ("base", "sft")) == pytest.approx(100 * (0.45 - 0.25))
    assert demo.margin(summary, "x", ("base",)) == pytest.approx(100 * (0.45 - 0.10))


def test_behaviour_table_gives_think_share_and_trace_length_per_set_and_method():
    exp = Experiment(base_model="b", train_data="t", output_dir=Path("o"), methods=["nrt"], seeds=[0, 1],
                     eval_sets=[EvalFile("a", "a.jsonl"), EvalFile("b", "b.jsonl")])

    def ev(share, length):
        return {n: {"think_share": share, "trace_length_mean": length} for n in ("a", "b")}

    summary = {"base": ev(0.0, 0.0), "runs": [{"method": "nrt", "eval": ev(0.5, 10.0)},
                                              {"method": "nrt", "eval": ev(1.0, 20.0)}]}
    lines = behaviour_table(exp, summary).splitlines()
    assert lines[0] == "| evaluation set | base | nrt |"
    assert lines[2] == "| a | 0.0 ± 0.0 % · 0.0 ± 0.0 tokens | 75.0 ± 35.4 % · 15.0 ± 7.1 tokens |"
    assert len(lines) == 4


def test_premise_notes_explain_only_the_tasks_whose_gain_was_negative():
    premise = {"a": {"mean": 1.0, "stderr": 0.1, "direct_accuracy": 0.1, "think_accuracy": 0.9},
               "b": {"mean": -0.7, "stderr": 0.15, "direct_accuracy": 0.008, "think_accuracy": 0.717}}
    summary = {"base": {"gym_a": {"accuracy": 0.1}, "gym_b": {"accuracy": 0.01}},
               "runs": [{"method": "nrt", "eval": {"gym_a": {"accuracy": 0.9}, "gym_b": {"accuracy": 0.6}}},
                        {"method": "nrt", "eval": {"gym_a": {"accuracy": 0.9}, "gym_b": {"accuracy": 0.7}}}]}
    notes = demo.premise_notes({"reasoning_gain_train": premise}, summary)
    assert len(notes) == 1 and notes[0].startswith("- `b`: the base's mean reasoning gain was negative (-0.70 ± 0.15")
    assert "71.7% against 0.8% direct" in notes[0] and "NRT reached 65.0%" in notes[0] and "(base 1.0%)" in notes[0]
