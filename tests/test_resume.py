"""Resume: a run stopped after step N and resumed logs the same metrics as the uninterrupted run."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from test_trainer import make_trainer



def metrics_of(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in rows]  # timings differ


def train_until_crash(trainer, crash_at: int) -> None:
    """trainer.train(), killed (KeyboardInterrupt) as step crash_at + 1 begins."""
    real_step = trainer.train_step

    def step_then_crash():
        if trainer.step == crash_at:
            raise KeyboardInterrupt
        return real_step()

    trainer.train_step = step_then_crash
    with pytest.raises(KeyboardInterrupt):
        trainer.train()


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tiny_model_dir, sums_file, tmp_path):
    options = dict(trainer__max_steps=5, trainer__save_steps=2, trainer__warmup_ratio=0.4)
    straight = make_trainer(tiny_model_dir, sums_file, tmp_path / "a", **options)
    straight.train()

    # dies during step 4, after checkpoint-2 and the metrics of step 3
    train_until_crash(make_trainer(tiny_model_dir, sums_file, tmp_path / "b", **options), crash_at=3)
    out_b = tmp_path / "b" / "out"
    assert [m["step"] for m in metrics_of(out_b)] == [1, 2, 3]

    resumed = make_trainer(tiny_model_dir, sums_file, tmp_path / "b", **options)
    resumed.train(resume=True)

    expected, got = metrics_of(tmp_path / "a" / "out"), metrics_of(out_b)
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5]
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (want["step"], key)
    a = load_file(tmp_path / "a" / "out" / "model.safetensors")
    b = load_file(out_b / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_a_library_resume_refuses_a_damaged_checkpoint_or_a_finished_run_before_writing(tiny_model_dir, sums_file,
                                                                                       tmp_path):
    """Trainer.train(resume=True), not through nrt.train: the same refusals, with the directory untouched."""
    from nrt.errors import RunDirectoryError

    options = dict(trainer__max_steps=2, trainer__save_steps=1)
    make_trainer(tiny_model_dir, sums_file, tmp_path, **options).train()
    out = tmp_path / "out"
    (out / "checkpoint-2" / "training_state" / "random_states_0.pkl").unlink()  # accelerate would go on without
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".nrt.lock"}
    longer = make_trainer(tiny_model_dir, sums_file, tmp_path, trainer__max_steps=3, trainer__save_steps=1)
    with pytest.raises(RunDirectoryError, match="checkpoint-2: damaged checkpoint, training_state/random_states_0"):
        longer.train(resume=True)
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    with pytest.raises(RunDirectoryError, match="holds a finished run \\(step 2\\)"):  # not a fresh start over it
        make_trainer(tiny_model_dir, sums_file, tmp_path, **options).train(resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".nrt.lock"} == {
        p: data for p, data in before.items() if "checkpoint-" not in str(p)}
