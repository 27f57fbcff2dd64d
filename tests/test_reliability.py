"""Faults tested like features: a diverging run, bad options, a user's directory as output, a
signal, a torn metrics line, a failed write, a second run into a locked directory, a changed
option on resume, unreadable inputs, and compare reusing results made from other inputs."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nrt.commands.cli import main
from nrt.training.guards import DivergenceGuard, nonfinite_names, nonfinite_tensors
from nrt.training.metrics import append_line
from nrt.training.run_record import RunLock, file_digest, option_changes
from test_cli import SHORT_RUN
from test_resume import metrics_of, train_until_crash

pytestmark = pytest.mark.usefixtures("one_thread")


def train(model, data, out, *extra, resume=False):
    return main(["train", "--model", model, "--data", data, "--output-dir", str(out), *SHORT_RUN, *extra,
                 *(["--resume"] if resume else [])])


def tensors_in(out: Path):
    """Every tensor in every safetensors / torch file under `out`: (file, name, tensor)."""
    for path in sorted(out.rglob("*")):
        if path.suffix == ".safetensors":
            yield from ((path, k, v) for k, v in load_file(path).items())
        elif path.suffix in (".bin", ".pt", ".pth"):
            state = torch.load(path, weights_only=False)
            stack = [("", state)]
            while stack:
                name, value = stack.pop()
                if isinstance(value, torch.Tensor):
                    yield path, name, value
                elif isinstance(value, dict):
                    stack.extend((f"{name}.{k}", v) for k, v in value.items())
                elif isinstance(value, (list, tuple)):
                    stack.extend((f"{name}.{i}", v) for i, v in enumerate(value))


# ----------------------------------------------------------------------------- the guards' arithmetic


def test_nonfinite_names_and_tensors_find_exactly_the_bad_ones():
    values = {"loss": torch.tensor(1.0), "reward": torch.tensor([0.5, float("nan")]), "grad_norm": float("inf"),
              "ok": 3.0, "ids": torch.tensor([1, 2])}
    assert nonfinite_names(values) == ["reward", "grad_norm"]
    state = {"a": torch.zeros(3), "b": torch.tensor([1.0, -float("inf")]), "c": torch.tensor([2])}
    assert nonfinite_tensors(state) == ["b"]


def test_divergence_guard_counts_steps_in_a_row_and_resets_on_a_finite_step():
    guard = DivergenceGuard(3)
    assert guard.update(1, []) is None
    assert guard.update(2, ["loss"]) is None and guard.protect_before == 1
    assert guard.update(3, ["loss"]) is None
    assert guard.update(4, []) is None and guard.streak == 0 and guard.protect_before is None
    assert guard.update(5, ["grad_norm"]) is None and guard.update(6, ["grad_norm"]) is None
    message = guard.update(7, ["loss", "grad_norm"])
    assert "step 7" in message and "since step 5" in message and "loss, grad_norm" in message
    assert guard.skipped == 5


def test_divergence_guard_state_survives_a_checkpoint():
    guard = DivergenceGuard(3)
    guard.update(4, ["loss"]), guard.update(5, ["loss"])
    resumed = DivergenceGuard(3)
    resumed.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert "since step 4" in resumed.update(6, ["loss"]) and resumed.skipped == 3


def test_option_changes_lists_each_changed_option():
    old = {"trainer": {"learning_rate": 1e-5, "max_steps": 3}, "method": {"beta": 0.0}}
    new = {"trainer": {"learning_rate": 2e-5, "max_steps": 3}, "method": {"beta": 0.1}}
    assert option_changes(old, new) == {"method.beta": (0.0, 0.1), "trainer.learning_rate": (1e-5, 2e-5)}


# ----------------------------------------------------------------------------- 1. divergence


@pytest.mark.parametrize("method", ["nrt", "sft"])
def test_diverging_run_exits_4_names_the_step_and_writes_no_nonfinite_tensor(method, tiny_model_dir, sums_file,
                                                                              tmp_path, capsys):
    out = tmp_path / "out"
    # warmup: update 1 has learning rate 0 (weights unchanged), update 2 already 2.5e29: the weights blow up
    code = train(tiny_model_dir, sums_file, out, "--method", method, "trainer.learning_rate=1e30",
                 "trainer.lr_scheduler_type=linear", "trainer.warmup_ratio=0.5", "trainer.max_steps=8",
                 "trainer.save_steps=1", "trainer.save_total_limit=2")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert len(err) == 1 and "diverged at step 5" in err[0] and "grad_norm" in err[0] and "since step 3" in err[0]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r.get("skipped_update") for r in records] == [None, None, 1.0, 1.0, 1.0]
    assert [r["grad_norm"] is None for r in records] == [False, False, True, True, True]  # strict JSON: null
    # checkpoint-2 holds the weights that made step 3 non-finite: dropped; checkpoint-1 kept (pruning protected it)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not (out / "model.safetensors").exists()
    found = list(tensors_in(out))
    assert found and all(torch.isfinite(t).all() for _, _, t in found if t.is_floating_point())


def test_an_isolated_nonfinite_step_is_skipped_and_the_run_finishes(tiny_model_dir, sums_file, tmp_path, capsys,
                                                                     monkeypatch):
    from nrt.training.trainer import NRTTrainer

    real = NRTTrainer.micro_batch_loss

    def nan_at_step_2(self, *args):
        out, scored = real(self, *args)
        if self.step == 1:  # during step 2
            out.loss = out.loss * float("nan")
        return out, scored

    monkeypatch.setattr(NRTTrainer, "micro_batch_loss", nan_at_step_2)
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=3") == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_update") for r in records] == [None, 1.0, None]
    assert "step 2: non-finite loss, grad_norm; update skipped" in capsys.readouterr().out
    assert all(torch.isfinite(t).all() for _, _, t in tensors_in(out) if t.is_floating_point())


def test_skipped_update_leaves_weights_and_optimizer_state_unchanged(tiny_model_dir, sums_file, tmp_path):
    from test_trainer import make_trainer

    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path)
    trainer.train_step()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in trainer.optimizer.optimizer.state.items()}
    real = trainer.micro_batch_loss

    def nan_loss(*args):
        out, scored = real(*args)
        out.loss = out.loss + float("nan")
        return out, scored

    trainer.micro_batch_loss = nan_loss
    trainer.train_step()
    assert trainer.step_nonfinite == ["loss"]  # a constant NaN added: gradients stay finite, the loss check skips it
    for n, p in trainer.model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None
    for p, s in trainer.optimizer.optimizer.state.items():
        for k, v in s.items():
            assert torch.equal(v, moments[id(p)][k])


# ----------------------------------------------------------------------------- 3. options


BAD_OPTIONS = [
    ("trainer.max_grad_norm=0", "trainer.max_grad_norm=0.0: must be greater than 0"),
    ("trainer.max_grad_norm=-1", "trainer.max_grad_norm=-1.0: must be greater than 0"),
    ("trainer.max_steps=-5", "trainer.max_steps must be positive, or -1"),
    ("trainer.learning_rate=-1", "trainer.learning_rate=-1.0: must be at least 0"),
    ("trainer.learning_rate=.nan", "trainer.learning_rate=nan: must be a finite number"),
    ("trainer.adam_beta1=2", "trainer.adam_beta1=2.0: must be in [0, 1)"),
    ("trainer.adam_beta2=1", "trainer.adam_beta2=1.0: must be in [0, 1)"),
    ("trainer.adam_epsilon=-1e-8", "trainer.adam_epsilon"),
    ("trainer.weight_decay=-0.1", "trainer.weight_decay"),
    ("trainer.lr_scheduler_type=foo", "trainer.lr_scheduler_type: 'foo' is not one of"),
    ("trainer.lr_scheduler_type=reduce_lr_on_plateau", "trainer.lr_scheduler_type"),
    ("trainer.per_device_train_batch_size=0", "trainer.per_device_train_batch_size=0 must be a positive multiple"),
    ("trainer.beta=-1", "trainer.beta=-1.0: must be at least 0"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0: must be at least 1"),
    ("trainer.warmup_ratio=-1", "trainer.warmup_ratio=-1.0: must be in [0, 1]"),
    ("trainer.epsilon_low=2", "trainer.epsilon_low=2.0: must be in [0, 1)"),
    ("trainer.epsilon_high=-0.1", "trainer.epsilon_high"),
    ("trainer.collapse_patience=0", "trainer.collapse_patience=0: must be at least 1"),
    ("trainer.collapse_fraction=1.5", "trainer.collapse_fraction"),
    ("trainer.collapse_reference_steps=0", "trainer.collapse_reference_steps"),
    ("trainer.save_total_limit=-1", "trainer.save_total_limit"),
    ("trainer.eval_steps=-1", "trainer.eval_steps"),
    ("trainer.num_train_epochs=inf", "trainer.num_train_epochs=inf: must be a finite number"),
    ("trainer.seed=-1", "trainer.seed=-1: must be in [0, 4.29497e+09]"),
    ("trainer.temperature=0", "trainer.temperature"),
    ("trainer.top_p=1.5", "trainer.top_p"),
    ("trainer.max_nonfinite_steps=0", "trainer.max_nonfinite_steps=0: must be at least 1"),
    ("method.loss_normalizer=0", "method.loss_normalizer=0.0: must be greater than 0"),
    ("method.trace_loss_coef=-1", "method.trace_loss_coef"),
    ("method.answer_loss_coef=-1", "method.answer_loss_coef"),
    ("method.prefix_loss_coef=.inf", "method.prefix_loss_coef"),
    ("method.reward_clip_min=.nan", "method.reward_clip_min=nan: must be a finite number"),
    ("method.format_reward_weight=2", "method.format_reward_weight"),
    ("method.std_filter_decay=1", "method.std_filter_decay"),
    ('data.question_field=" "', "data.question_field must not be empty"),
    ("data.prompt_template={question}{question.foo}", "{question.foo} is not allowed"),
    ("data.prompt_template=Q:{question}{question:>9}", "{question:>9} is not allowed"),
    ("data.prompt_template=Q:{answer}{question}", "{answer} is not allowed"),
]


@pytest.mark.parametrize("override, expected", BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_out_of_range_option_exits_2_before_anything_is_written(override, expected, tiny_model_dir, sums_file,
                                                               tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out), override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


# ----------------------------------------------------------------------------- 2. output directory


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_output_dir_of_the_base_model_or_of_user_files_is_refused_untouched(tiny_model_dir, sums_file, tmp_path,
                                                                            capsys):
    before = snapshot(Path(tiny_model_dir))
    assert train(tiny_model_dir, sums_file, tiny_model_dir, "trainer.max_steps=1") == 2
    assert f"is the input {tiny_model_dir}" in capsys.readouterr().err
    assert snapshot(Path(tiny_model_dir)) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: settings\n")
    (mine / "notes.txt").write_text("do not lose\n")
    assert train(tiny_model_dir, sums_file, mine, "trainer.max_steps=1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty and not an nrt run (holds config.yaml, notes.txt)" in err
    assert snapshot(mine) == {"config.yaml": b"my: settings\n", "notes.txt": b"do not lose\n"}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(tiny_model_dir, sums_file, empty, "trainer.max_steps=1") == 0
    assert json.loads((empty / "nrt_run.json").read_text())["nrt_run"] == 1


def as_killed_in_the_first_checkpoint(out: Path) -> None:
    """Make a finished one-step run what a kill inside its first checkpoint's write leaves: the claimed
    run (its record not finished) and a .tmp checkpoint."""
    for item in out.iterdir():
        if item.name not in ("nrt_run.json", "config.yaml", "metrics.jsonl", "checkpoint-1"):
            item.unlink() if item.is_file() else None
    (out / "checkpoint-1").rename(out / "checkpoint-1.tmp")
    record = json.loads((out / "nrt_run.json").read_text())
    record.pop("finished", None)
    (out / "nrt_run.json").write_text(json.dumps(record))


def test_a_directory_left_by_a_kill_during_the_first_checkpoint_is_accepted(tiny_model_dir, sums_file, tmp_path):
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=1") == 0
    as_killed_in_the_first_checkpoint(out)
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=1", resume=True) == 0
    assert [m["step"] for m in metrics_of(out)] == [1]
    as_killed_in_the_first_checkpoint(out)
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=1") == 0  # and a new run into it
    assert [m["step"] for m in metrics_of(out)] == [1] and not (out / "checkpoint-1.tmp").exists()

    claimed = tmp_path / "claimed"  # killed while writing its run record (found by scripts/fault_injection.py)
    claimed.mkdir()
    (claimed / ".nrt.lock").write_text("123")
    (claimed / ".nrt_run.json.tmp").write_text('{"nrt_run": 1, "sta')
    assert train(tiny_model_dir, sums_file, claimed, "trainer.max_steps=1") == 0


def test_a_second_run_into_a_locked_directory_is_refused(tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "out"
    lock = RunLock(out).acquire()  # another process's run holds it (flock conflicts across open files)
    try:
        assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=1", resume=True) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"another nrt run is writing into it (pid {os.getpid()})" in err
    finally:
        lock.release()


# ----------------------------------------------------------------------------- 6. resume with changed options


def test_resume_refuses_a_changed_learning_rate_and_records_an_allowed_change(tiny_model_dir, sums_file, tmp_path,
                                                                              capsys):
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2") == 0
    config = (out / "config.yaml").read_text()
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=3", "trainer.learning_rate=0.01",
                 resume=True) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainer.learning_rate (0.001 -> 0.01)" in err
    assert (out / "config.yaml").read_text() == config

    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=3", resume=True) == 0
    assert "resume applies: trainer.max_steps 2 -> 3" in capsys.readouterr().out
    resumes = json.loads((out / "nrt_run.json").read_text())["resumes"]
    assert resumes[-1]["step"] == 2 and resumes[-1]["changed"] == {"trainer.max_steps": {"from": 2, "to": 3}}
    assert [m["step"] for m in metrics_of(out)] == [1, 2, 3]


def test_resume_refuses_changed_training_data(tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=1") == 0
    with open(sums_file, "a") as f:
        f.write('{"question": "1+1=", "answer": "2"}\n')
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2", resume=True) == 2
    assert "changed since the run started" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5. torn metrics, failed writes


def test_append_line_leaves_the_file_unchanged_when_a_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    real = os.write

    def half_then_full_disk(fd, data):
        if len(data) > 4:
            return real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full_disk)
    with pytest.raises(OSError):
        append_line(path, json.dumps({"step": 2, "loss": 0.5}))
    assert path.read_text() == '{"step": 1}\n'


def test_resume_repairs_a_torn_last_metrics_line(tiny_model_dir, sums_file, tmp_path):
    from test_trainer import make_trainer

    options = dict(trainer__max_steps=4, trainer__save_steps=2)
    straight = make_trainer(tiny_model_dir, sums_file, tmp_path / "a", **options)
    straight.train()
    train_until_crash(make_trainer(tiny_model_dir, sums_file, tmp_path / "b", **options), crash_at=3)
    out = tmp_path / "b" / "out"
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward_mean": 0.1')  # the torn tail of an append cut short
    make_trainer(tiny_model_dir, sums_file, tmp_path / "b", **options).train(resume=True)
    want, got = metrics_of(tmp_path / "a" / "out"), metrics_of(out)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for a, b in zip(want, got):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_a_failed_write_mid_run_exits_6_in_one_line_and_resume_finishes(tiny_model_dir, sums_file, tmp_path,
                                                                        monkeypatch, capsys):
    import nrt.training.metrics

    out = tmp_path / "out"
    calls = {"n": 0}
    real = nrt.training.metrics.os.write

    def disk_full_at_third_append(fd, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(nrt.training.metrics.os, "write", disk_full_at_third_append)
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=4", "trainer.save_steps=2") == 6
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "checkpoint-2" in err
    assert [m["step"] for m in metrics_of(out)] == [1, 2]
    monkeypatch.undo()
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=4", "trainer.save_steps=2", resume=True) == 0
    assert [m["step"] for m in metrics_of(out)] == [1, 2, 3, 4]


def test_a_checkpoint_write_failing_inside_torch_save_exits_6_in_one_line(tiny_model_dir, sums_file, tmp_path,
                                                                          monkeypatch, capsys):
    def full_disk(*args, **kwargs):  # what torch.save raises when the disk fills mid-file
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 124032 vs 123924")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2", "trainer.save_steps=1") == 6
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "writing checkpoint-1.tmp: [enforce fail" in err
    assert "no checkpoint was completed" in err and not list(out.glob("checkpoint-*[0-9]"))


def no_tmp_left(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp"))


WRITER_FAILURES = {
    "OSError": OSError(errno.ENOSPC, "No space left on device"),
    "tokenizers": Exception("No space left on device (os error 28)"),  # what tokenizers raises on a full disk
}


@pytest.mark.parametrize("error", WRITER_FAILURES, ids=list(WRITER_FAILURES))
@pytest.mark.parametrize("save", ["checkpoint", "final"])
def test_a_save_failing_mid_write_leaves_no_tmp_and_the_earlier_checkpoints(save, error, tiny_model_dir, sums_file,
                                                                            tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedTokenizerBase

    # the model's weights are written into the .tmp directory, then the tokenizer's save fails
    real, calls = PreTrainedTokenizerBase.save_pretrained, {"n": 0}

    def fails_on_the_second_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise WRITER_FAILURES[error]
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", fails_on_the_second_save)
    out = tmp_path / "out"
    steps = ["trainer.max_steps=3", "trainer.save_steps=1"] if save == "checkpoint" else \
        ["trainer.max_steps=2", "trainer.save_steps=2"]
    assert train(tiny_model_dir, sums_file, out, *steps) == 6
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and str(out) in err, err
    assert no_tmp_left(out) == []
    kept = "checkpoint-1" if save == "checkpoint" else "checkpoint-2"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [kept] and f"{kept} is the newest" in err
    assert json.loads((out / kept / "trainer_state.json").read_text())["step"] == int(kept.split("-")[1])
    assert (out / kept / "training_state" / "optimizer.bin").is_file()
    monkeypatch.undo()
    assert train(tiny_model_dir, sums_file, out, *steps, resume=True) == 0
    assert no_tmp_left(out) == [] and (out / "model.safetensors").is_file()


def test_a_programming_error_inside_a_save_is_not_a_write_failure(tiny_model_dir, sums_file, tmp_path, monkeypatch):
    from nrt.training.checkpoints import RunDirectory

    def broken(*args, **kwargs):
        raise TypeError("a bug, not a full disk")

    monkeypatch.setattr(RunDirectory, "_save_model", broken)
    out = tmp_path / "out"
    with pytest.raises(TypeError, match="a bug"):
        train(tiny_model_dir, sums_file, out, "trainer.max_steps=1")
    assert no_tmp_left(out) == []


# ----------------------------------------------------------------------------- 10. resume of a damaged or finished run


def untouched(directory: Path) -> dict:
    """Every file's bytes and modification time (a lock taken rewrites .nrt.lock with the same pid)."""
    return {name: (data, (directory / name).stat().st_mtime_ns) for name, data in snapshot(directory).items()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


CORRUPT = {"config.yaml": "[1, 2]\n", "nrt_run.json": '{"nrt_run": 1, "sta'}


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
@pytest.mark.parametrize("name", ["config.yaml", "nrt_run.json"])
def test_resume_refuses_a_deleted_or_corrupt_run_file_by_name(name, damage, tiny_model_dir, sums_file, tmp_path,
                                                             capsys):
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=1") == 0
    if damage == "deleted":
        (out / name).unlink()
    else:
        (out / name).write_text(CORRUPT[name])
    before = snapshot(out)
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2", "trainer.learning_rate=0.01",
                 resume=True) == 2
    err = one_line_error(capsys)
    assert str(out / name) in err and ("is missing" if damage == "deleted" else "is not") in err, err
    assert snapshot(out) == before  # not rewritten, nothing else touched


def test_a_checkpoint_missing_its_optimizer_state_is_refused_as_damaged(tiny_model_dir, sums_file, tmp_path,
                                                                        capsys):
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2", "trainer.save_steps=1") == 0
    (out / "checkpoint-2" / "training_state" / "optimizer.bin").unlink()
    before = snapshot(out)
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=3", "trainer.save_steps=1", resume=True) == 2
    err = one_line_error(capsys)
    assert f"{out / 'checkpoint-2'}: damaged checkpoint" in err and "training_state/optimizer.bin" in err, err
    assert "remove it to resume from checkpoint-1" in err
    assert snapshot(out) == before

    (out / "checkpoint-1" / "training_state" / "scheduler.bin").unlink()  # no complete one left
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=3", "trainer.save_steps=1", resume=True) == 2
    err = one_line_error(capsys)
    assert "checkpoint-2: damaged checkpoint" in err and "no complete checkpoint to resume from" in err, err


def test_resume_knows_the_training_file_by_its_contents_not_its_spelling(tiny_model_dir, sums_file, tmp_path,
                                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert train(tiny_model_dir, "sums.jsonl", out, "trainer.max_steps=1") == 0
    assert train(tiny_model_dir, str(tmp_path / "sums.jsonl"), out, "trainer.max_steps=2", resume=True) == 0
    link = tmp_path / "link.jsonl"
    link.symlink_to(sums_file)
    assert train(tiny_model_dir, str(link), out, "trainer.max_steps=3", resume=True) == 0
    assert [m["step"] for m in metrics_of(out)] == [1, 2, 3]
    capsys.readouterr()

    other = tmp_path / "other.jsonl"
    other.write_text(Path(sums_file).read_text() + '{"question": "1+1=", "answer": "2"}\n')
    assert train(tiny_model_dir, str(other), out, "trainer.max_steps=4", resume=True) == 2
    assert "changed since the run started" in one_line_error(capsys)


def test_a_finished_run_without_its_checkpoints_is_refused_and_resume_has_nothing_to_do(
        tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2") == 0
    assert json.loads((out / "nrt_run.json").read_text())["finished"]["step"] == 2
    for checkpoint in out.glob("checkpoint-*"):  # what `make real` does with a finished run
        shutil.rmtree(checkpoint)
    before = untouched(out)
    capsys.readouterr()

    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2") == 2
    err = one_line_error(capsys)
    assert f"--output-dir {out}: holds a finished run" in err, err
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=2", resume=True) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=3", resume=True) == 2  # cannot go on
    assert "trainer.max_steps (2 -> 3)" in one_line_error(capsys)
    assert untouched(out) == before


# ----------------------------------------------------------------------------- 4. signals


@pytest.mark.parametrize("delay", [0.2, 0.8])
def test_ctrl_c_while_the_command_imports_is_one_line_and_exit_130(delay, tiny_model_dir, sums_file, tmp_path):
    import time

    out = tmp_path / "out"
    # a child of a background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "nrt", "train", "--model", tiny_model_dir, "--data", sums_file,
                             "--output-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)  # torch and transformers take seconds to import: the signal lands among the imports
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err == "nrt train: interrupted\n", err[-2000:]
    assert not out.exists()


def test_sigint_checkpoints_the_finished_step_and_exits_5_without_a_traceback(tiny_model_dir, sums_file, tmp_path,
                                                                               monkeypatch, capsys):
    from nrt.training.trainer import NRTTrainer

    real = NRTTrainer.train_step
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN in a background job

    def step_with_ctrl_c(self):
        metrics = real(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 2 runs
        return metrics

    monkeypatch.setattr(NRTTrainer, "train_step", step_with_ctrl_c)
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=5", "trainer.save_steps=10") == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stopped by SIGINT after step 2" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_sigterm_mid_run_checkpoints_and_resume_matches_the_uninterrupted_run(tiny_model_dir, sums_file, tmp_path):
    steps = ["trainer.max_steps=12", "trainer.save_steps=100"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nrt", "train", "--model", tiny_model_dir, "--data", sums_file,
         "--output-dir", str(out), *SHORT_RUN, *steps],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    for line in proc.stdout:  # one plain line per step without a terminal
        if line.startswith("step 2:"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    stopped = [m["step"] for m in metrics_of(out)]
    assert stopped[-1] < 12 and "stopped by SIGTERM after step" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{stopped[-1]}"]

    torch.set_num_threads(1)
    assert train(tiny_model_dir, sums_file, out, *steps, resume=True) == 0
    straight = tmp_path / "straight"
    assert train(tiny_model_dir, sums_file, straight, *steps) == 0
    want, got = metrics_of(straight), metrics_of(out)
    assert [m["step"] for m in got] == list(range(1, 13))
    for a, b in zip(want, got):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    for name, tensor in load_file(straight / "model.safetensors").items():
        torch.testing.assert_close(load_file(out / "model.safetensors")[name], tensor, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- 9. one line instead of a traceback


def test_unreadable_data_and_unwritable_output_dir_are_one_line_errors(tiny_model_dir, sums_file, tmp_path,
                                                                       monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert train(tiny_model_dir, sums_file, blocker / "out", "trainer.max_steps=1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a directory" in err

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user without write permission
    assert train(tiny_model_dir, sums_file, tmp_path / "new" / "out", "trainer.max_steps=1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err
    monkeypatch.undo()

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads any file: the refusal is injected
    out = tmp_path / "out"
    assert train(tiny_model_dir, sums_file, out, "trainer.max_steps=1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sums.jsonl: cannot read (Permission denied)" in err
    assert not out.exists()


def test_generate_with_an_empty_questions_file_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    questions = tmp_path / "q.txt"
    questions.write_text("\n  \n")
    assert main(["generate", "--model", tiny_model_dir, "--questions", str(questions)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no questions in it" in err


def test_a_chat_template_that_rejects_a_record_is_a_one_line_error_naming_it(tiny_model_dir, sums_file, tmp_path,
                                                                             capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tmp_path / "chat_model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # refuses a user turn whose text holds "7" (the sums file's 3rd question is "7+...")
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' and '7' in m['content'] %}"
                               "{{ raise_exception('Conversation roles must alternate system/assistant') }}"
                               "{% endif %}{{ m['content'] }}{% endfor %}")
    tokenizer.save_pretrained(model_dir)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    capsys.readouterr()  # transformers' progress bars
    out = tmp_path / "out"
    assert train(str(model_dir), sums_file, out, "trainer.max_steps=1") == 2
    err = capsys.readouterr().err.strip()
    first = next(i for i, line in enumerate(Path(sums_file).read_text().splitlines(), 1)
                 if "7" in json.loads(line)["question"])
    assert len(err.splitlines()) == 1 and "roles must alternate" in err and not out.exists()
    assert f"{sums_file}:{first}: the chat template cannot render this record" in err, err
    assert main(["generate", "--model", str(model_dir), "--question", "1+7="]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "chat template rejected" in err


# ----------------------------------------------------------------------------- 10. eval and compare


def test_eval_checks_its_output_before_evaluating_and_keeps_the_result_if_writing_fails(
        tiny_model_dir, sums_file, tmp_path, monkeypatch, capsys):
    import nrt.evaluation.evaluate

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    calls = []
    real = nrt.evaluation.evaluate.evaluate
    monkeypatch.setattr(nrt.evaluation.evaluate, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    argv = ["eval", "--model", tiny_model_dir, "--data", sums_file, "--limit", "2", "--max-trace-tokens", "2",
            "--max-answer-tokens", "2"]
    assert main([*argv, "--output", str(blocker / "r.json")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and calls == []

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nrt.evaluation.evaluate, "write_report", full_disk)
    assert main([*argv, "--output", str(tmp_path / "r.json")]) == 2
    captured = capsys.readouterr()
    assert calls == [1] and "accuracy" in captured.out  # the result was printed before the write
    assert len(captured.err.strip().splitlines()) == 1 and "No space left on device" in captured.err


def test_compare_refuses_a_directory_of_user_files_before_any_work(tiny_model_dir, sums_file, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report\n")
    code = main(["compare", "--model", tiny_model_dir, "--data", sums_file, "--eval", f"test={sums_file}",
                 "--methods", "sft", "--seeds", "0", "--output-dir", str(mine)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not an nrt comparison (holds report.md)" in err
    assert snapshot(mine) == {"report.md": b"my report\n"}


def test_compare_reruns_a_run_and_its_evaluation_when_the_data_changes(tiny_model_dir, sums_file, tmp_path):
    from nrt.experiments.compare import EvalFile, Experiment, run, run_directory

    exp = Experiment(tiny_model_dir, sums_file, tmp_path / "cmp", ["sft"], [0], [EvalFile("test", sums_file)],
                     overrides=["trainer.max_steps=1", "trainer.per_device_train_batch_size=4",
                                "trainer.num_generations=2"],
                     include_base=False, max_trace_tokens=2, max_answer_tokens=2)
    log = []
    run(exp, log=log.append)
    directory = run_directory(exp, "sft", 0)
    first = json.loads((directory / "run_info.json").read_text())
    run(exp, log=log.append)  # same inputs: reused
    assert json.loads((directory / "run_info.json").read_text())["wall_s"] == first["wall_s"]

    with open(sums_file, "a") as f:
        f.write('{"question": "9+9=", "answer": "18"}\n')
    run(exp, log=log.append)  # the training data changed: trained and evaluated again
    second = json.loads((directory / "run_info.json").read_text())
    assert second["key"] != first["key"]
    assert json.loads((directory / "nrt_run.json").read_text())["data_digest"] == file_digest(sums_file)
    report = json.loads((directory / "eval" / "test.json").read_text())
    assert report["summary"]["n"] == 25


@pytest.mark.parametrize("args, says", [
    (["--methods", ","], "--methods: names none"),
    (["--methods", "sft,sft"], "--methods: sft given twice"),
    (["--seeds", "0,0"], "--seeds: 0 given twice"),
    (["--seeds", "-1"], "trainer.seed=-1"),
    (["--eval", "t=EVAL"], "the evaluation set name 't' is given twice"),
    (["--eval", "u=BAD"], "BAD:2: missing field 'answer'"),
    (["--validation", "BAD"], "BAD:2: missing field 'answer'"),
    (["--data", "BAD"], "BAD:2: missing field 'answer'"),
])
def test_compare_checks_methods_seeds_and_every_file_before_the_base_model_is_evaluated(
        args, says, tiny_model_dir, sums_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2="}\n')
    args = [a.replace("EVAL", sums_file).replace("BAD", str(bad)) for a in args]
    says = says.replace("BAD", str(bad))
    out = tmp_path / "c"
    base = {"--model": tiny_model_dir, "--data": sums_file, "--methods": "sft", "--seeds": "0",
            "--output-dir": str(out)}
    for flag, value in zip(args[::2], args[1::2]):
        if flag in base:
            base[flag] = value
    extra = [a for f, v in zip(args[::2], args[1::2]) if f not in base for a in (f, v)]
    code = main(["compare", *[a for kv in base.items() for a in kv], "--eval", f"t={sums_file}", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and says in err, err
    assert not out.exists()


def test_compare_evaluates_the_base_again_when_its_tokenizer_changes(tiny_model_dir, sums_file, tmp_path):
    import shutil

    from nrt.experiments.compare import model_digest

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    before = model_digest(base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    assert model_digest(base) != before
    (base / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert len({before, model_digest(base)}) == 2 and model_digest(base) == model_digest(base)
