"""The library entry point: `train(config) -> RunResult`.

    from nrt.training.api import resolve_config, train
    config = resolve_config(method="nrt", overrides=["model.model_name_or_path=...", "data.path=...",
                                                     "trainer.output_dir=runs/a"])
    result = train(config)

Everything that can be checked is checked before the model loads: options (`ConfigError`),
every data record (`DataError`), the tokenizer (`ModelLoadError`). A run stopped by the
collapse detector raises `CollapseStop`, whose `result` says where the healthy model is.
`nrt train`, `nrt compare`, the demo and the scripts all train through this function.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nrt.config import Config, apply_overrides, load_yaml, set_option, validate
from nrt.data import TokenizedExample, load_qa_records, tokenize_records
from nrt.errors import CollapseStop, ConfigError, DataError
from nrt.model_loading import load_model, load_tokenizer
from nrt.presets import preset_overrides
from nrt.training.base import EvalSet, Trainer


@dataclass
class RunResult:
    output_dir: Path
    steps: int  # training steps done (the newest checkpoint's, after a collapse stop)
    best_step: int | None  # the validation-selected step (output_dir/best), None without validation
    best_accuracy: float | None
    stopped_by_collapse: str | None  # the detector's verdict when it stopped the run
    skipped_records: int = 0  # over-long records skipped (data.skip_overlong)
    examples: int = 0


def resolve_config(method: str | None = None, config_file: str | None = None, overrides=(), **plain) -> Config:
    """A validated Config: the preset `method` first, then the YAML file, then `section.option=value`
    overrides, then the plain options (`model`, `data`, `output_dir`) when given."""
    config = Config()
    if method:
        try:
            preset = preset_overrides(method)
        except ValueError as e:
            raise ConfigError(f"--method: {e}") from None
        for key, value in preset.items():
            set_option(config, key, value)
    if config_file:
        load_yaml(config_file, config)
    apply_overrides(config, list(overrides))
    for name, dotted in (("model", "model.model_name_or_path"), ("data", "data.path"),
                         ("output_dir", "trainer.output_dir")):
        if plain.get(name):
            apply_overrides(config, [f"{dotted}={plain[name]}"])
    validate(config)
    return config


def load_examples(config: Config, tokenizer, path=None) -> tuple[list[TokenizedExample], list[str], int]:
    """Read and validate a whole dataset (before the model is loaded): (examples, references, skipped)."""
    d = config.data
    records = load_qa_records(path or d.path, d.question_field, d.answer_field, d.messages_field or None)
    try:
        examples, skipped = tokenize_records(
            records, tokenizer, d.prompt_template, d.max_prompt_length, d.max_answer_length, d.skip_overlong
        )
    except ValueError as e:  # a prompt template or chat template that cannot render a record
        raise e if isinstance(e, DataError) else DataError(str(e)) from None
    kept = {ex.source for ex in examples}
    return examples, [r.answer for r in records if r.source in kept], skipped


def check_run_directory(config: Config, resume: bool) -> None:
    out = Path(config.trainer.output_dir)
    has_run = out.is_dir() and any(out.glob("checkpoint-*"))
    if has_run and not resume:
        raise ConfigError(f"--output-dir {out}: holds an earlier run; pass --resume to continue it or choose "
                          "another directory")
    if resume and not has_run:
        raise ConfigError(f"--output-dir {out}: no checkpoint to resume from")


def make_trainer(config: Config, model, tokenizer, examples, eval_set=None, **kwargs) -> Trainer:
    """The trainer of `method.objective`: NRT (traces) or the SFT baseline."""
    if config.method.objective == "sft":
        from nrt.training.sft import SFTTrainer

        return SFTTrainer(config, model, tokenizer, examples, eval_set=eval_set, **kwargs)
    from nrt.training.trainer import NRTTrainer

    return NRTTrainer(config, model, tokenizer, examples, eval_set=eval_set, **kwargs)


def train(config: Config, resume: bool = False, log=print) -> RunResult:
    """Train as `config` says; returns what the run produced (see the module docstring for errors)."""
    validate(config)
    check_run_directory(config, resume)
    tokenizer = load_tokenizer(config.model.model_name_or_path)
    examples, _, skipped = load_examples(config, tokenizer)
    eval_set = None
    if config.data.eval_path:
        eval_examples, references, _ = load_examples(config, tokenizer, config.data.eval_path)
        eval_set = EvalSet(eval_examples, references)
    is_main = os.environ.get("RANK", "0") == "0"  # under accelerate launch / torchrun, one process reports
    if is_main:
        log(f"data: {len(examples)} examples from {config.data.path}"
            + (f", {skipped} over-long skipped" if skipped else ""))

    model = load_model(config.model.model_name_or_path, config.model.dtype)
    trainer = make_trainer(config, model, tokenizer, examples, eval_set)
    trainer.train(resume=resume)
    result = RunResult(Path(config.trainer.output_dir), trainer.step, trainer.best.step,
                       trainer.best.accuracy if trainer.best.step is not None else None,
                       trainer.stopped_by_collapse, skipped, len(examples))
    if trainer.stopped_by_collapse:
        raise CollapseStop(f"stopped: {trainer.stopped_by_collapse}; the last healthy checkpoint is kept in "
                           f"{result.output_dir}", result)
    return result
