"""accelerate: a 2-process CPU run (gloo) makes the same update as 1 process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

RUN = ["trainer.max_steps=2", "trainer.max_completion_length=8", "trainer.num_generations=4",
       "trainer.per_device_train_batch_size=8", "trainer.learning_rate=1e-3", "trainer.warmup_ratio=0"]


def run(prefix, model, data, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [*prefix, "-m", "nrt", "train", "--model", model, "--data", data, "--output-dir", str(out), *RUN, *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_process_gloo_run_equals_one_process_with_accumulation(tiny_model_dir, sums_file, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two = run(launch, tiny_model_dir, sums_file, tmp_path / "two")
    one = run([sys.executable], tiny_model_dir, sums_file, tmp_path / "one", "trainer.gradient_accumulation_steps=2")

    for a, b in zip(one, two):
        for key in ("reward_mean", "reward_std", "reasoning_gain", "trace_length_mean", "loss", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), key
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5)
    moved = max((w1[n] - base[n]).abs().max().item() for n in w1 if n in base)
    assert moved > 1e-4  # the runs trained: equality is not two untouched models
