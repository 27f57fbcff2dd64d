"""The `nrt` command line: a short real run, and bad input stopping with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nrt.commands.cli import main
from nrt.tokens import RESPONSE_START

SHORT_RUN = ["trainer.max_completion_length=8", "trainer.num_generations=4", "trainer.per_device_train_batch_size=8",
             "trainer.learning_rate=1e-3", "trainer.warmup_ratio=0"]


def test_three_step_run_writes_checkpoints_metrics_and_a_loadable_model(tiny_model_dir, sums_file, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 "trainer.max_steps=3", "trainer.save_steps=2", *SHORT_RUN])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("reward_mean", "reward_std", "answer_logprob", "answer_logprob_no_trace", "reasoning_gain",
                "trace_length_mean", "trace_length_min", "trace_length_max", "response_start_share",
                "trace_entropy", "zero_std_group_share", "trace_loss", "prefix_loss", "answer_loss",
                "grad_norm", "learning_rate", "time_generate", "time_score", "time_update"):
        assert key in records[0]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    for directory in (out / "checkpoint-2", out):
        assert (directory / "model.safetensors").is_file() and (directory / "config.yaml").is_file()
        model = AutoModelForCausalLM.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        rs = tokenizer.convert_tokens_to_ids(RESPONSE_START)
        assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) > rs
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(out)
    assert not torch.equal(base.model.layers[0].mlp.up_proj.weight, trained.model.layers[0].mlp.up_proj.weight)


def test_generate_prints_trace_and_answer(tiny_model_dir, capsys):
    assert main(["generate", "--model", tiny_model_dir, "--question", "1+2=", "--max-trace-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert "trace:" in printed and "answer:" in printed and "1+2=" in printed


def test_generate_answers_after_a_trace_that_never_emits_the_marker_and_raw_does_not(tiny_model_dir, monkeypatch,
                                                                                      capsys):
    import nrt.model_loading
    from test_probe import biased_towards

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    token = tokenizer.convert_tokens_to_ids("7")  # the model writes 7s, never <|response_start|> nor eos
    monkeypatch.setattr(nrt.model_loading, "load_model", lambda source, dtype=None: biased_towards(tiny_model_dir,
                                                                                                  token, 100.0))
    args = ["generate", "--model", tiny_model_dir, "--question", "1+2=", "--max-trace-tokens", "4",
            "--max-answer-tokens", "3"]
    assert main(args) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if ":" in line)
    assert lines["trace"].strip() == f"7777  [no {RESPONSE_START}: appended]" and lines["answer"].strip() == "777"
    assert main(args + ["--raw"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if ":" in line)
    assert lines["trace"].strip() == f"7777  [no {RESPONSE_START}: raw]" and lines["answer"].strip() == ""


def test_train_help_lists_every_option_with_its_default():
    result = subprocess.run([sys.executable, "-m", "nrt", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("trainer.num_generations=8", "trainer.learning_rate=2e-06", "trainer.epsilon_high=0.28",
                   "method.aggregation='weighted_sum_log_prob'", "trainer.per_device_train_batch_size=8"):
        assert option in result.stdout


def bad(tmp_path, lines: list[bytes]):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


GOOD = b'{"question": "1+1=", "answer": "2"}'
BAD_DATA = {
    "invalid_json": ([GOOD, b'{"question": "2+2=" "answer": "4"}'], "bad.jsonl:2: invalid JSON"),
    "missing_field": ([GOOD, GOOD, b'{"question": "2+2="}'], "bad.jsonl:3: missing field 'answer'"),
    "empty_field": ([b'{"question": "", "answer": "4"}'], "bad.jsonl:1:"),
    "wrong_type": ([GOOD, b'{"question": "2+2=", "answer": 4}'], "bad.jsonl:2: field 'answer' must be a string"),
    "non_utf8": ([GOOD, b'{"question": "2+2=\xff", "answer": "4"}'], "bad.jsonl:2: not valid UTF-8"),
    "too_long": ([GOOD, b'{"question": "' + b"1+" * 40 + b'1=", "answer": "41"}'], "bad.jsonl:2: prompt is"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_record_exits_2_naming_the_line_and_writes_nothing(case, tiny_model_dir, tmp_path, capsys):
    lines, expected = BAD_DATA[case]
    out = tmp_path / "out"
    code = main(["train", "--model", tiny_model_dir, "--data", bad(tmp_path, lines), "--output-dir", str(out),
                 "data.max_prompt_length=32", *SHORT_RUN])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv, expected", [
    (["trainer.learnin_rate=1e-5"], "did you mean 'trainer.learning_rate'"),
    (["learning_rate=1e-5"], "did you mean 'trainer.learning_rate'"),
    (["method.aggregation=weighted_sum_logprob"], "did you mean 'weighted_sum_log_prob'"),
    (["trainer.num_generations=many"], "trainer.num_generations: expected int"),
    (["trainer.per_device_train_batch_size=6"], "multiple of trainer.num_generations"),
    (["--config", "missing.yaml"], "missing.yaml: no such config file"),
])
def test_bad_option_exits_2_with_a_suggestion(argv, expected, tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_missing_data_file_and_missing_model_exit_2(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--model", tiny_model_dir, "--data", str(tmp_path / "nope.jsonl"),
                 "--output-dir", str(out)]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert main(["train", "--model", str(tmp_path / "nomodel"), "--data", str(tmp_path / "x.jsonl"),
                 "--output-dir", str(out)]) == 2
    assert "nomodel" in capsys.readouterr().err
    assert not out.exists()


def test_yaml_config_and_overrides_apply_in_order(tiny_model_dir, sums_file, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("trainer:\n  max_steps: 1\n  learning_rate: 1.0e-4\nmethod:\n  aggregation: prob\n")
    out = tmp_path / "out"
    assert main(["train", "--config", str(config), "--model", tiny_model_dir, "--data", sums_file,
                 "--output-dir", str(out), "method.aggregation=log_prob", *SHORT_RUN]) == 0
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["trainer"]["max_steps"] == 1 and resolved["method"]["aggregation"] == "log_prob"


def test_skip_overlong_counts_and_trains_on_the_rest(tiny_model_dir, tmp_path, capsys):
    data = bad(tmp_path, [GOOD] * 4 + [b'{"question": "' + b"1+" * 40 + b'1=", "answer": "41"}'])
    out = tmp_path / "out"
    assert main(["train", "--model", tiny_model_dir, "--data", data, "--output-dir", str(out),
                 "data.max_prompt_length=32", "data.skip_overlong=true", "trainer.max_steps=1", *SHORT_RUN]) == 0
    printed = capsys.readouterr().out
    assert "4 examples" in printed and "1 over-long skipped" in printed


def test_existing_run_needs_resume(tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 "trainer.max_steps=1", *SHORT_RUN]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 "trainer.max_steps=1", *SHORT_RUN]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


def test_validation_every_n_steps_logs_accuracy_and_keeps_the_best_model(tiny_model_dir, sums_file, tmp_path):
    out = tmp_path / "out"
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 f"data.eval_path={sums_file}", "trainer.eval_steps=2", "trainer.max_steps=4", *SHORT_RUN]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r["step"] for r in records if "eval_accuracy" in r]
    assert evaluated == [0, 2, 4]
    best_step = json.loads((out / "best" / "trainer_state.json").read_text())["step"]
    accuracy = {r["step"]: r["eval_accuracy"] for r in records if "eval_accuracy" in r}
    assert best_step == min(s for s in accuracy if accuracy[s] == max(accuracy.values()))
    assert AutoModelForCausalLM.from_pretrained(out / "best") is not None


def test_bad_validation_record_exits_2_before_training(tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "out"
    validation = bad(tmp_path, [GOOD, b'{"question": 1, "answer": "x"}'])
    code = main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 f"data.eval_path={validation}", *SHORT_RUN])
    assert code == 2 and "bad.jsonl:2" in capsys.readouterr().err and not out.exists()


def test_tensorboard_logs_when_asked(tiny_model_dir, sums_file, tmp_path):
    out = tmp_path / "out"
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 "trainer.report_to=tensorboard", "trainer.max_steps=1", *SHORT_RUN]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "reasoning_gain" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("reasoning_gain")] == [1]
    hparams = list((out / "tensorboard").glob("*/hparams.yml"))  # the config, as accelerate's tracker stores it
    assert len(hparams) == 1 and "trainer.learning_rate" in hparams[0].read_text()


@pytest.mark.parametrize("value, says", [
    ("aim", "trainer.report_to='aim': aim is not installed (pip install aim)"),
    ("tensorbord", "did you mean 'tensorboard'?"),
    ("tensorboard,none", "none stands alone"),
    ("tensorboard,tensorboard", "named twice"),
])
def test_report_to_is_checked_before_anything_is_written(value, says, tiny_model_dir, sums_file, tmp_path, capsys):
    import importlib.util

    if value == "aim" and importlib.util.find_spec("aim") is not None:
        pytest.skip("aim is installed here")
    out = tmp_path / "out"
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out),
                 f"trainer.report_to={value}", *SHORT_RUN]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not out.exists()


def test_report_to_all_is_every_installed_tracker_and_a_yaml_list_is_read(tmp_path):
    import importlib.util

    from nrt.config import TRACKER_PACKAGES, Config, load_yaml, report_targets

    assert report_targets("all") == [n for n, package in TRACKER_PACKAGES.items()
                                     if importlib.util.find_spec(package) is not None]
    assert "tensorboard" in report_targets("all") and report_targets("none") == []
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  report_to: [tensorboard]\n")
    config = Config()
    load_yaml(str(path), config)
    assert report_targets(config.trainer.report_to) == ["tensorboard"]


def test_compare_refuses_lora_and_bad_overrides_before_any_run(tiny_model_dir, sums_file, tmp_path, capsys):
    base = ["compare", "--model", tiny_model_dir, "--data", sums_file, "--eval", f"t={sums_file}", "--methods", "sft",
            "--seeds", "0", "--output-dir", str(tmp_path / "c")]
    assert main([*base, "model.use_peft=true"]) == 2
    assert "model.use_peft: nrt compare evaluates whole models" in capsys.readouterr().err
    assert main([*base, "trainer.learning_rat=1"]) == 2
    assert "trainer.learning_rat" in capsys.readouterr().err and not (tmp_path / "c").exists()
