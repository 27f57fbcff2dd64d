"""The library entry point: `nrt.train(config) -> RunResult`, typed errors before anything is written,
and the same run as the command line's."""

import json

import pytest

import nrt
from nrt.commands.cli import main

SHORT = ["trainer.max_completion_length=8", "trainer.num_generations=4", "trainer.per_device_train_batch_size=8",
         "trainer.learning_rate=1e-3", "trainer.warmup_ratio=0", "trainer.max_steps=2"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_returns_a_run_result_with_the_same_metrics_as_the_command(tiny_model_dir, sums_file, tmp_path):
    # no method on either side: the library's default preset is the command line's
    config = nrt.resolve_config(model=tiny_model_dir, data=sums_file, output_dir=str(tmp_path / "lib"),
                                overrides=SHORT)
    result = nrt.train(config, log=lambda *_: None)
    assert isinstance(result, nrt.RunResult) and result.steps == 2 and result.examples == 24
    assert result.best_step is None and result.stopped_by_collapse is None
    assert (result.output_dir / "model.safetensors").is_file()
    assert main(["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(tmp_path / "cli"),
                 *SHORT]) == 0
    timeless = lambda records: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in records]  # noqa: E731
    assert timeless(metrics(tmp_path / "lib")) == timeless(metrics(tmp_path / "cli"))


def test_bad_option_and_bad_data_raise_typed_errors_before_anything_is_written(tiny_model_dir, sums_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(nrt.ConfigError, match="trainer.num_generatoins"):
        nrt.resolve_config(model=tiny_model_dir, data=sums_file, output_dir=str(out),
                           overrides=["trainer.num_generatoins=4"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2="}\n')
    config = nrt.resolve_config(model=tiny_model_dir, data=str(bad), output_dir=str(out), overrides=SHORT)
    with pytest.raises(nrt.DataError, match="bad.jsonl:2"):
        nrt.train(config, log=lambda *_: None)
    assert not out.exists()


def test_sft_objective_gets_the_sft_trainer(tiny_model_dir, sums_file, tmp_path):
    from nrt.training.api import make_trainer
    from nrt.training.sft import SFTTrainer
    from nrt.training.trainer import NRTTrainer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nrt.training.api import load_examples

    kinds = {}
    for method in ("sft", "nrt"):
        config = nrt.resolve_config(method, model=tiny_model_dir, data=sums_file, output_dir=str(tmp_path / method),
                                    overrides=SHORT)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        examples, _, _ = load_examples(config, tokenizer)
        kinds[method] = type(make_trainer(config, AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                                          examples))
    assert kinds == {"sft": SFTTrainer, "nrt": NRTTrainer}


def test_each_library_error_has_its_exit_code():
    from nrt.commands.usage import exit_code
    from nrt.errors import RunDirectoryError, StoppedBySignal, WriteFailed

    codes = {nrt.ConfigError("x"): 2, nrt.DataError("x"): 2, nrt.ModelLoadError("x"): 2, RunDirectoryError("x"): 2,
             nrt.CollapseStop("x"): 3, nrt.Diverged("x"): 4, StoppedBySignal("x"): 5, WriteFailed("x"): 6}
    assert {type(e).__name__: exit_code(e) for e in codes} == {type(e).__name__: c for e, c in codes.items()}


def test_two_runs_in_one_process_may_use_different_precisions(tiny_model_dir, sums_file, tmp_path):
    """accelerate keeps one state per process; the library resets it when a run asks for another precision."""
    for i, bf16 in enumerate(("false", "true", "false")):
        config = nrt.resolve_config("nrt", model=tiny_model_dir, data=sums_file, output_dir=str(tmp_path / str(i)),
                                    overrides=[*SHORT, "trainer.max_steps=1", f"trainer.bf16={bf16}"])
        assert nrt.train(config, log=lambda *_: None).steps == 1
