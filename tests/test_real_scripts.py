"""scripts/real_levers.py and scripts/real.py: the verdicts and data steps their reports rest on."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    sys.path.insert(0, str(SCRIPTS))  # real.py imports real_levers as a sibling
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def records(lengths, collapse_at=None, warmup=0):
    out = [{"step": i + 1, "loss": 1.0, "format_warmup": 1.0} for i in range(warmup)]
    for i, x in enumerate(lengths):
        step = warmup + i + 1
        flag = {"collapse_detected": 1.0} if step == collapse_at else {}
        out.append({"step": step, "trace_length_mean": x, **flag})
    return out


def test_kept_thinking_needs_a_silent_detector_and_half_the_starting_trace_length():
    levers = load("real_levers")
    assert levers.kept_thinking(records([60, 40, 30]), window=1)
    assert not levers.kept_thinking(records([60, 40, 29]), window=1)  # below half of 60
    assert not levers.kept_thinking(records([60, 40, 50], collapse_at=2), window=1)  # the detector fired once
    # means over the first and the last `window` traced steps: 60 and 29 alone fail, (60+40)/2 and (28+29)/2 pass
    assert levers.kept_thinking(records([60, 40, 50, 28, 29]), window=2)
    assert not levers.kept_thinking(records([60, 40, 50, 28, 29]), window=1)
    # after a format warm-up the first NRT step is the reference (warm-up steps have no traces)
    assert levers.kept_thinking(records([40, 30, 20], warmup=3), window=1)


def test_gsm8k_final_answer_is_the_number_after_the_marks(tmp_path):
    real = load("real")
    source = tmp_path / "test.jsonl"
    source.write_text(json.dumps({"question": "Q1?", "answer": "2 + 2 = <<2+2=4>>4\n#### 1,234"}) + "\n"
                      + json.dumps({"question": "Q2?", "answer": "so\n#### 7"}) + "\n")
    out = real.gsm8k_final_answers(source, tmp_path / "out" / "g.jsonl", limit=1)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"question": "Q1?", "answer": "1234"}]


def test_a_cached_run_of_another_config_is_refused(tmp_path, tiny_model_dir, sums_file):
    levers = load("real_levers")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({"trainer": {"learning_rate": 1.0}}))
    with pytest.raises(SystemExit, match="holds a run of another config"):
        levers.train_run(out, "nrt", ["trainer.max_steps=1"], tiny_model_dir, sums_file)


def test_probe_flags_and_a_cached_probe_is_read_only_with_the_same_options(tmp_path, tiny_model_dir, sums_file):
    levers = load("real_levers")
    options = {"samples": 2, "max_trace_tokens": 4, "max_answer_tokens": 3, "batch_size": 2, "bf16": False}
    assert levers.probe_flags(options) == ["--samples", "2", "--max-trace-tokens", "4", "--max-answer-tokens", "3",
                                           "--batch-size", "2"]
    assert levers.probe_flags({"bf16": True}) == ["--bf16"]
    report = tmp_path / "p.json"
    source = ["--data", sums_file, "--limit", "2"]
    summary = levers.probe_summary(tiny_model_dir, report, source, options, seed=3)
    assert summary["n"] == 2 and json.loads(report.read_text())["config"]["seed"] == 3
    before = report.read_text()
    assert levers.probe_summary(tiny_model_dir, report, source, options, seed=3) == summary  # read, not redone
    for changed in ({**options, "samples": 3}, options):
        seed = 3 if changed is not options else 4
        with pytest.raises(SystemExit, match="holds a probe with another (samples|seed)"):
            levers.probe_summary(tiny_model_dir, report, source, changed, seed=seed)
    with pytest.raises(SystemExit, match="another think_prompt"):
        levers.probe_summary(tiny_model_dir, report, source, options, seed=3, think_prompt="Think.")
    with pytest.raises(SystemExit, match="another model"):
        levers.probe_summary(tiny_model_dir + "/", report, source, options, seed=3)
    assert report.read_text() == before


def test_a_run_whose_final_model_was_not_written_is_resumed_and_a_finished_runs_checkpoints_go(
        tmp_path, tiny_model_dir, sums_file):
    import nrt
    from safetensors.torch import load_file

    levers = load("real_levers")
    overrides = ["trainer.max_steps=2", "trainer.save_steps=1", "trainer.per_device_train_batch_size=2",
                 "trainer.num_generations=2", "trainer.max_completion_length=4"]
    whole = tmp_path / "whole"
    records = levers.train_run(whole, "nrt", overrides, tiny_model_dir, sums_file)
    assert records[-1]["step"] == 2 and levers.final_model_saved(whole) and not list(whole.glob("checkpoint-*"))
    # the same run, as a full disk leaves it: metrics at the last step, its checkpoint, no final model
    cut = tmp_path / "cut"
    nrt.train(nrt.resolve_config("nrt", model=tiny_model_dir, data=sums_file, output_dir=str(cut),
                                 overrides=overrides))
    (cut / "model.safetensors").unlink()
    assert (cut / "checkpoint-2").is_dir() and not levers.final_model_saved(cut)
    records = levers.train_run(cut, "nrt", overrides, tiny_model_dir, sums_file)  # resumed, not read
    assert records[-1]["step"] == 2 and levers.final_model_saved(cut) and not list(cut.glob("checkpoint-*"))
    resumed, uninterrupted = load_file(cut / "model.safetensors"), load_file(whole / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_report_says_which_runs_met_the_bar(tmp_path):
    real = load("real")
    summary = {"direct_accuracy": 0.0, "think_accuracy": 0.02, "free_accuracy": 0.01, "free_think_share": 1.0,
               "sampled_trace_length": 30.0, "reasoning_gain": 0.5, "reasoning_gain_se": 0.1}
    weak = {**summary, "reasoning_gain": 0.15}  # under 2 standard errors
    records = {"sft": {0: [{"step": 1, "loss": 1.0}], 1: [{"step": 1, "loss": 1.0}]},
               "nrt_default": {0: records_of([60] * 5 + [5] * 5), 1: records_of([60, 50, 40])},
               "nrt_best": {0: records_of([60, 50, 40]), 1: records_of([60, 50, 40])}}
    probes = {"BBH": {"base": [summary], "sft": [summary, summary], "nrt_default": [summary, summary],
                      "nrt_best": [summary, weak]}}
    args = type("Args", (), {"output": str(tmp_path / "report.md")})()
    real.write_report(args, [0, 1], records, probes, 1.0, ["--seeds", "0,1"])
    text = (tmp_path / "report.md").read_text()
    assert "- `nrt_default`: met in 1 of 2 seeds (seeds 1)." in text  # seed 0 collapsed
    assert "- `nrt_best`: met in 1 of 2 seeds (seeds 0)." in text  # seed 1's gain is within 2 standard errors
    assert (tmp_path / "report_curves.png").is_file()


def records_of(lengths):
    return [{"step": i + 1, "trace_length_mean": x, "answer_logprob": -5.0, "answer_logprob_no_trace": -5.5,
             "reasoning_gain": 0.5} for i, x in enumerate(lengths)]


def test_the_shipped_small_model_config_is_the_reports_nrt_best(tiny_model_dir, sums_file, tmp_path):
    import nrt

    real = load("real")
    config_file = SCRIPTS.parent / "configs" / "real" / "smollm2-135m-cpu.yaml"
    common = {"model": tiny_model_dir, "data": sums_file, "output_dir": str(tmp_path / "run")}
    shipped = nrt.resolve_config("nrt", config_file=str(config_file), overrides=["trainer.seed=0"], **common)
    preset, extra, _ = real.RUNS["nrt_best"]
    report = nrt.resolve_config(preset, overrides=[*real.BASE, *extra, f"trainer.max_steps={real.STEPS}",
                                                   "trainer.seed=0"], **common)
    assert shipped.to_dict() == report.to_dict()
