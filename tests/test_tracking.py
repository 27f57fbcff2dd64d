"""trainer.report_to through accelerate's trackers: each tracker installed here runs offline on a
short run, and its own files hold the step metrics of metrics.jsonl."""

import glob
import json
import struct

import pytest

from nrt.commands.cli import main
from test_cli import SHORT_RUN


def train_reporting_to(tracker, model, data, out):
    assert main(["train", "--model", model, "--data", data, "--output-dir", str(out), f"trainer.report_to={tracker}",
                 "trainer.max_steps=2", *SHORT_RUN]) == 0
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def leveldb_log_records(path, block=32768):
    """The records of a wandb offline run file: a 7-byte header, then LevelDB's log format (32 KiB
    blocks of records: crc32, length, type FULL/FIRST/MIDDLE/LAST, data)."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, records, parts = 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(parts)
            parts = b""
    return records


def test_wandb_offline_logs_every_step_and_the_config(tiny_model_dir, sums_file, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    steps = train_reporting_to("wandb", tiny_model_dir, sums_file, out)
    (path,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, config = [], {}
    for raw in leveldb_log_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.config.update})
    assert [row["_step"] for row in history] == [1, 2]
    for row in history:
        assert row["reasoning_gain"] == pytest.approx(steps[row["_step"]]["reasoning_gain"], rel=1e-12)
        assert row["loss"] == pytest.approx(steps[row["_step"]]["loss"], rel=1e-12)
    assert config["trainer.max_steps"] == 2


def test_mlflow_local_store_logs_every_step_and_the_config(tiny_model_dir, sums_file, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store only on request
    out = tmp_path / "out"
    steps = train_reporting_to("mlflow", tiny_model_dir, sums_file, out)
    (gain,) = glob.glob(str(store / "*" / "*" / "metrics" / "reasoning_gain"))
    logged = [line.split() for line in open(gain).read().splitlines()]  # "timestamp value step"
    assert [int(step) for _, _, step in logged] == [1, 2]
    assert [float(v) for _, v, _ in logged] == pytest.approx([steps[1]["reasoning_gain"], steps[2]["reasoning_gain"]])
    (lr,) = glob.glob(str(store / "*" / "*" / "params" / "trainer.learning_rate"))
    import yaml

    assert float(open(lr).read()) == yaml.safe_load((out / "config.yaml").read_text())["trainer"]["learning_rate"]


def test_a_tracker_that_cannot_start_is_one_line_naming_it(tiny_model_dir, sums_file, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(tmp_path / "out"),
                 "trainer.report_to=mlflow", "trainer.max_steps=1", *SHORT_RUN]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trainer.report_to: mlflow could not start (MlflowException:" in err
