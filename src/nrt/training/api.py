"""The library entry point: `train(config) -> RunResult`.

    from nrt.training.api import resolve_config, train
    config = resolve_config(method="nrt", overrides=["model.model_name_or_path=...", "data.path=...",
                                                     "trainer.output_dir=runs/a"])
    result = train(config)

Everything that can be checked is checked before the model loads: options (`ConfigError`),
the output directory (`RunDirectoryError`), the tokenizer, a model nrt's engine cannot run
(`nrt.engine.model_support`) and one whose vocabulary or positions the data does not fit
(`ModelLoadError`), every data record (`DataError`). A run that ends before its last step
raises a `RunEnded` (`CollapseStop`, `Diverged`, `StoppedBySignal`, `WriteFailed`:
nrt.errors), whose `result` says what it left.
`nrt train`, `nrt compare`, the demo and the scripts all train through this function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nrt.config import Config, apply_overrides, load_yaml, set_option, validate
from nrt.data import TokenizedExample, read_examples, with_think_prompt
from nrt.engine.model_support import check_engine_supports
from nrt.errors import CollapseStop, ConfigError, Diverged, StoppedBySignal, WriteFailed
from nrt.model_loading import ModelSource, check_model_fits, load_config, load_model, load_tokenizer
from nrt.presets import DEFAULT_PRESET, preset_overrides
from nrt.training.base import EvalSet, Trainer
from nrt.training.checkpoints import check_resumable
from nrt.training.run_record import (a_finished_run, check_output_dir, complete_checkpoints, finished_resume,
                                     resume_changes)


@dataclass
class RunResult:
    output_dir: Path
    steps: int  # training steps done (where the run stopped, when it ended early)
    best_step: int | None  # the validation-selected step (output_dir/best), None without validation
    best_accuracy: float | None
    stopped_by_collapse: str | None  # the detector's verdict when it stopped the run
    skipped_records: int = 0  # over-long records skipped (data.skip_overlong)
    examples: int = 0


def resolve_config(method: str | None = None, config_file: str | None = None, overrides=(), **plain) -> Config:
    """A validated Config: the preset `method` (default: presets.DEFAULT_PRESET) first, then the YAML file,
    then `section.option=value` overrides, then the plain options (`model`, `data`, `output_dir`) when given."""
    config = Config()
    try:
        preset = preset_overrides(method or DEFAULT_PRESET)
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
    records, examples, skipped = read_examples(
        path or d.path, tokenizer, d.question_field, d.answer_field, d.messages_field or None, d.prompt_template,
        d.max_prompt_length, d.max_answer_length, d.skip_overlong,
        prepare=lambda records: with_think_prompt(records, d.think_prompt), split_special_tokens=d.split_special_tokens,
    )
    kept = {ex.source for ex in examples}
    return examples, [r.answer for r in records if r.source in kept], skipped


def write_failure(error: OSError) -> str:
    """What failed, in a few words: the error and the file it names, if any."""
    reason = error.strerror or str(error)
    return f"{reason} ({error.filename})" if error.strerror and error.filename else reason


def make_trainer(config: Config, model, tokenizer, examples, eval_set=None, **kwargs) -> Trainer:
    """The trainer of `method.objective`: NRT (traces) or the SFT baseline."""
    if config.method.objective == "sft":
        from nrt.training.sft import SFTTrainer

        return SFTTrainer(config, model, tokenizer, examples, eval_set=eval_set, **kwargs)
    from nrt.training.trainer import NRTTrainer

    return NRTTrainer(config, model, tokenizer, examples, eval_set=eval_set, **kwargs)


def train(config: Config, resume: bool = False, log=print, command: str | None = None) -> RunResult:
    """Train as `config` says; returns what the run produced (see the module docstring for errors).
    `command`: the command line to keep in the run record (nrt_run.json) and the model card."""
    validate(config)
    out = Path(config.trainer.output_dir)
    # read-only checks, before anything loads
    check_output_dir(out, resume, config.model.model_name_or_path, inputs=[config.data.path, config.data.eval_path])
    finished = finished_resume(out, config) if resume else None
    if finished is not None:  # its final model is written and its checkpoints are gone: nothing to go on from
        log(f"--resume: {out} holds {a_finished_run(finished)} and no checkpoint to go on from; nothing to do")
        return RunResult(out, finished["step"] or 0, None, None, None)
    resuming = resume and bool(complete_checkpoints(out))  # else a run killed before its first checkpoint
    changes = resume_changes(out, config) if resuming else {}
    if resuming:
        check_resumable(out)
    source = ModelSource.from_config(config.model)
    tokenizer = load_tokenizer(source)
    model_config = load_config(source)  # the checks of the model's kind and sizes, before its weights load
    check_engine_supports(model_config, config.model.model_name_or_path)
    examples, _, skipped = load_examples(config, tokenizer)
    eval_set = None
    if config.data.eval_path:
        eval_examples, references, _ = load_examples(config, tokenizer, config.data.eval_path)
        eval_set = EvalSet(eval_examples, references)
    log(f"data: {len(examples)} examples from {config.data.path}"
        + (f", {skipped} over-long skipped" if skipped else ""))

    # the vocabulary and position limits, from the model's config before its weights load, then on the model
    checked = examples + (eval_set.examples if eval_set else [])
    check_model_fits(model_config, tokenizer, config, checked)
    if config.trainer.use_vllm:
        from nrt.engine.vllm_sampler import check_architecture

        check_architecture(model_config, config.model.model_name_or_path)
    model = load_model(source, dtype=getattr(torch, config.model.dtype))
    check_model_fits(model, tokenizer, config, checked)
    trainer = make_trainer(config, model, tokenizer, examples, eval_set, command=command)
    if changes:
        log("resume applies: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    try:
        trainer.train(resume=resume)
        failed_write = None
    except OSError as e:
        failed_write = e
    result = RunResult(out, trainer.step, trainer.best.step,
                       trainer.best.accuracy if trainer.best.step is not None else None,
                       trainer.stopped_by_collapse, skipped, len(examples))
    if failed_write is not None:
        kept = complete_checkpoints(out)
        kept = (f"checkpoint-{kept[-1]} is the newest complete checkpoint (--resume continues from it)" if kept
                else "no checkpoint was completed")
        raise WriteFailed(f"writing to {out} failed at step {trainer.step}: {write_failure(failed_write)}; {kept}",
                          result)
    if trainer.stopped_by_divergence:
        kept = complete_checkpoints(out)
        kept = f"checkpoint-{kept[-1]} is the newest kept checkpoint" if kept else "no checkpoint is kept"
        raise Diverged(f"{trainer.stopped_by_divergence}; no final model written, {kept} in {out} (lower "
                       "trainer.learning_rate and start a new run; a kept checkpoint can be its --model)", result)
    if trainer.stopped_by_signal:
        raise StoppedBySignal(f"stopped by {trainer.stopped_by_signal} after step {trainer.step}; "
                              f"checkpoint-{trainer.step} saved in {out} (--resume continues)", result)
    if trainer.stopped_by_collapse:
        kept = complete_checkpoints(out)
        kept = (f"the last healthy checkpoint (checkpoint-{kept[-1]}) is kept as the run's model in {out}" if kept
                else f"no healthy checkpoint, so no model was written in {out}")
        raise CollapseStop(f"stopped: {trainer.stopped_by_collapse}; {kept}", result)
    return result

