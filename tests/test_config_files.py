"""YAML config files (`--config`): a syntax error names its line and column, a key given twice is refused
naming both lines (PyYAML alone keeps the last value silently)."""

import subprocess
import sys

import pytest

from nrt.config import load_yaml
from nrt.errors import ConfigError


@pytest.mark.parametrize("text, message", [
    ("trainer:\n  max_steps: 1\n  learning_rate: 1.0e-5\n  max_steps: 3\n",
     ":4: 'max_steps' is given twice (lines 2 and 4)"),
    ("trainer:\n  max_steps: 1\nmethod:\n  aggregation: prob\ntrainer:\n  seed: 2\n",
     ":5: 'trainer' is given twice (lines 1 and 5)"),
    ("trainer:\n  max_steps: [1\nmethod: {}\n", ":3:7: not valid YAML: expected ',' or ']', but got ':'"),
    ("trainer:\n\tmax_steps: 1\n", ":2:1: not valid YAML: found character '\\t' that cannot start any token"),
])
def test_a_bad_config_file_is_named_with_its_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_yaml(path)
    assert str(e.value).startswith(f"{path}{message}")


def test_the_same_key_in_two_sections_is_fine(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  seed: 3\ndata:\n  max_prompt_length: 64\nmodel:\n  dtype: bfloat16\n"
                    "method:\n  aggregation: prob\n")
    config = load_yaml(path)
    assert config.trainer.seed == 3 and config.data.max_prompt_length == 64 and config.method.aggregation == "prob"


def test_nrt_train_refuses_a_duplicate_key_in_one_line_before_anything_is_written(tmp_path, tiny_model_dir,
                                                                                  sums_file):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  max_steps: 1\n  max_steps: 3\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "nrt", "train", "--config", str(path), "--model", tiny_model_dir,
                           "--data", sums_file, "--output-dir", str(out)], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{path}:3: 'max_steps' is given twice (lines 2 and 3)" in lines[0]
    assert not out.exists()


def test_a_config_saved_before_an_option_existed_counts_it_at_its_default():
    """A run directory's config.yaml from an earlier nrt lacks later options: a resume (or a script's
    cache check) sees no change for them, and still sees a real change."""
    from nrt.config import Config
    from nrt.training.run_record import option_changes

    saved = Config().to_dict()
    del saved["trainer"]["use_vllm"], saved["data"]["split_special_tokens"]
    assert option_changes(saved, Config().to_dict()) == {}
    changed = Config()
    changed.trainer.use_vllm = True
    assert option_changes(saved, changed.to_dict()) == {"trainer.use_vllm": (False, True)}
