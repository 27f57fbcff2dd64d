"""The output directory of a run: checkpoints, the resolved config, and resuming.

    output_dir/
      config.yaml               the resolved configuration of the run
      metrics.jsonl             one record per logged step
      checkpoint-N/             Hugging Face model (safetensors) + tokenizer + config.yaml,
        training_state/         optimizer, scheduler and RNG states (accelerate.save_state)
      best/                     the model with the best validation accuracy (when data.eval_path is set)
      model.safetensors, ...    the final model, loadable with from_pretrained
                                (a LoRA run: adapter_config.json + adapter_model.safetensors, peft's
                                format; `nrt export --merge` makes a plain model of it)
      README.md                 the final model's card (model_card.py), written with it

A checkpoint is written to `checkpoint-N.tmp` and renamed when complete, so an interrupted
save never leaves a checkpoint that looks valid; the final model's files are written aside
and renamed into place one by one. A save that fails (a full disk, any exception) removes its
`.tmp` directory before the error goes on; a writer's failure is a WriteError naming what it
wrote. Weights are checked before every save (guards.py). The directory is claimed and locked
for the run's duration (run_record.py); the record says when the run finished.

A resume continues from the newest checkpoint only when it holds every part of the training
state (missing_state); a damaged one is refused naming the missing file and the previous complete
checkpoint, and nothing is removed.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import yaml

from nrt.evaluation.report import BrokenMetricsLine, metrics_records
from nrt.training.guards import check_weights
from nrt.training.model_card import write_model_card
from nrt.training.run_record import (RunDirectoryError, RunLock, atomic_write_text, check_output_dir,
                                     complete_checkpoints, record_finished, record_resume, resume_changes,
                                     write_record)
from nrt.training.peft_model import is_peft_model, keeps_whole_state, register_trainable_only_state, save_adapter

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(RunDirectoryError):
    pass


class WriteError(OSError):
    """A save that failed part-way (a full disk): what torch.save, safetensors and tokenizers raise, as an OSError."""


def is_writer_failure(error: Exception) -> bool:
    """What the writers of a save raise when a write fails, besides OSError: torch.save a RuntimeError
    ("unexpected pos"), safetensors a SafetensorError ("I/O error: ..."), tokenizers a plain Exception
    ("No space left on device (os error 28)"). A subclass of Exception that is none of these (a
    TypeError, a KeyError) is a programming error and stays one."""
    from safetensors import SafetensorError

    return isinstance(error, (RuntimeError, SafetensorError)) or type(error) is Exception


@contextmanager
def saving(tmp: Path, what: str, is_main: bool):
    """Around a save written into the directory `tmp`: on any failure (a full disk, an exception, an
    interrupt) the main process removes `tmp`, so no `.tmp` directory outlives a failed save and the
    earlier checkpoints stay as they were; a writer's failure goes on as a WriteError naming `what`,
    anything else as it was."""
    try:
        yield
    except BaseException as e:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and not isinstance(e, OSError) and is_writer_failure(e):
            raise WriteError(f"writing {what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        raise


# training_state/ as accelerate.save_state writes it, by name prefix (FSDP's sharded state writes
# directories of the same prefixes) -> the name a single-process or DDP run gives it
TRAINING_STATE = {("model", "pytorch_model"): "model.safetensors", ("optimizer",): "optimizer.bin",
                  ("scheduler",): "scheduler.bin", ("random_states_",): "random_states_0.pkl",
                  ("custom_checkpoint_",): "custom_checkpoint_0.pkl"}


def missing_state(checkpoint: Path) -> list[str]:
    """The parts of the training state absent from a checkpoint-N directory (paths relative to it);
    [] when complete. Without them accelerate's load_state fails part-way (an optimizer), or goes on
    silently with other values (random states)."""
    state = Path(checkpoint) / "training_state"
    if not state.is_dir():
        return ["training_state/"]
    names = [p.name for p in state.iterdir()]
    return [f"training_state/{usual}" for prefixes, usual in TRAINING_STATE.items()
            if not any(name.startswith(prefixes) for name in names)]


def check_resumable(path: Path) -> None:
    """Refuse a resume whose newest checkpoint is damaged (ResumeError naming the checkpoint, what it
    lacks, and the newest complete one before it); reads only: the user decides what to remove."""
    found = [Path(path) / f"checkpoint-{step}" for step in complete_checkpoints(path)]
    if not found:
        return
    newest = found[-1]
    missing = missing_state(newest)
    if not missing:
        return
    earlier = next((p.name for p in reversed(found[:-1]) if not missing_state(p)), None)
    offer = (f"remove it to resume from {earlier}" if earlier else
             "there is no complete checkpoint to resume from; start a new run (a checkpoint can be its --model)")
    raise ResumeError(f"--resume: {newest}: damaged checkpoint, {', '.join(missing)} is missing; {offer}")


class RunDirectory:
    def __init__(self, output_dir: str, accelerator, command: str | None = None):
        self.path = Path(output_dir)
        self.accelerator = accelerator
        self.command = command  # the command line that started or resumed the run, for its record and card
        self.metrics_path = self.path / "metrics.jsonl"
        self._hooked = False  # a LoRA run's training state holds only the trainable weights

    def _trainable_only(self, model) -> bool:
        return is_peft_model(model) and keeps_whole_state(self.accelerator)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := CHECKPOINT.match(p.name))]
        return sorted(found)

    def start(self, config, fresh: bool) -> dict:
        """Claim and lock the directory and write the resolved config. A fresh start refuses a
        directory that is not empty and not an nrt run, or that holds finished checkpoints, and
        clears what an unfinished earlier start left; a resume refuses option changes outside
        run_record.RESUMABLE and a damaged newest checkpoint. Returns the option changes a resume applies."""
        changes = {}
        if self.is_main:
            check_output_dir(self.path, resume=not fresh)
            self.lock = RunLock(self.path).acquire()
            if fresh:
                for stale in [*self.path.glob("checkpoint-*.tmp"), self.path / "best.tmp", self.path / ".final.tmp"]:
                    shutil.rmtree(stale, ignore_errors=True)
                write_record(self.path, config, self.command)
                self.metrics_path.write_text("")
            else:
                changes = resume_changes(self.path, config)
                check_resumable(self.path)  # before config.yaml is rewritten
            atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.accelerator.wait_for_everyone()
        return changes

    def record_resume(self, step: int, changes: dict) -> None:
        if self.is_main:
            record_resume(self.path, step, changes, self.command)

    def release(self) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def save_checkpoint(self, step: int, model, tokenizer, config, protect_before: int | None = None) -> None:
        """Write checkpoint-`step`; prune to `save_total_limit`, but never the newest checkpoint
        older than `protect_before` (the last healthy one while a collapse is suspected)."""
        final = self.path / f"checkpoint-{step}"
        tmp = self.path / f"checkpoint-{step}.tmp"
        check_weights(self.accelerator.unwrap_model(model).named_parameters(), final.name)
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        if self._trainable_only(model) and not self._hooked:
            register_trainable_only_state(self.accelerator, model)
            self._hooked = True
        with saving(tmp, tmp.name, self.is_main):
            self.accelerator.save_state(str(tmp / "training_state"))
            self._save_model(tmp, model, tokenizer, config, step)
            self.accelerator.wait_for_everyone()
            if self.is_main:
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
        if self.is_main:
            limit = config.trainer.save_total_limit
            found = self.checkpoints()
            protected = None
            if protect_before is not None:
                protected = max((s for s, _ in found if s < protect_before), default=None)
            for old_step, old in found[:-limit] if limit > 0 else []:
                if old_step != protected:
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()

    def save_best(self, model, tokenizer, config, step: int) -> None:
        """The best model on validation so far, in output_dir/best (replaced atomically)."""
        best, tmp = self.path / "best", self.path / "best.tmp"
        check_weights(self.accelerator.unwrap_model(model).named_parameters(), "best")
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        with saving(tmp, tmp.name, self.is_main):
            self._save_model(tmp, model, tokenizer, config, step)
            if self.is_main:
                if best.exists():
                    shutil.rmtree(best)
                tmp.rename(best)
        self.accelerator.wait_for_everyone()

    def save_final(self, model, tokenizer, config, step: int) -> None:
        """The final model and its card in output_dir: written to output_dir/.final.tmp, then each file
        renamed in; then the run record says the run finished at `step`."""
        check_weights(self.accelerator.unwrap_model(model).named_parameters(), "the final model")
        tmp = self.path / ".final.tmp"
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        with saving(tmp, "the final model", self.is_main):
            self._save_model(tmp, model, tokenizer, config, step=None)
            if self.is_main:
                write_model_card(self.path, tmp, step)  # renamed in with the model
                for item in sorted(tmp.iterdir()):
                    item.replace(self.path / item.name)
                tmp.rmdir()
        if self.is_main:
            record_finished(self.path, step)
        self.accelerator.wait_for_everyone()

    def drop_checkpoints_from(self, step: int) -> Path | None:
        """Remove the checkpoints of `step` and later (after a divergence or a collapse); returns the
        newest kept (on the main process)."""
        kept = None
        if self.is_main:
            for s, path in self.checkpoints():
                if s >= step:
                    shutil.rmtree(path)
                else:
                    kept = path
        self.accelerator.wait_for_everyone()
        return kept

    def _save_model(self, directory: Path, model, tokenizer, config, step) -> None:
        state_dict = self.accelerator.get_state_dict(model)  # collective under FSDP / DeepSpeed
        if not self.is_main:
            return
        directory.mkdir(parents=True, exist_ok=True)
        unwrapped = self.accelerator.unwrap_model(model)
        if is_peft_model(unwrapped):  # LoRA: adapter_config.json + adapter_model.safetensors
            save_adapter(unwrapped, directory, state_dict)
        else:
            unwrapped.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(directory)
        (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if step is not None:
            (directory / "trainer_state.json").write_text(json.dumps({"step": step}))

    def keep_healthy(self, unhealthy_since: int, tokenizer, config) -> Path | None:
        """After a collapse: drop checkpoints from step `unhealthy_since` on and make the newest
        remaining one the run's final model, with its card. Returns that checkpoint, or None if there is none."""
        healthy = self.drop_checkpoints_from(unhealthy_since)
        if self.is_main and healthy is not None:
            for item in healthy.iterdir():
                if item.is_file() and item.name != "trainer_state.json":
                    shutil.copy2(item, self.path / item.name)
            write_model_card(self.path, step=int(CHECKPOINT.match(healthy.name).group(1)))
        self.accelerator.wait_for_everyone()
        return healthy

    def resume(self, model, optimizer, scheduler) -> int:
        """Load the newest checkpoint's states; drop metrics logged after it. Returns its step."""
        found = self.checkpoints()
        if not found:
            raise ResumeError(f"{self.path}: no checkpoint-N directory to resume from")
        step, path = found[-1]
        try:
            if self._trainable_only(model):  # the frozen base weights are not in the checkpoint
                self.accelerator.load_state(str(path / "training_state"), strict=False)
            else:
                self.accelerator.load_state(str(path / "training_state"))
        except FileNotFoundError as e:  # a part missing_state does not know (another process's random states)
            raise ResumeError(f"--resume: {path}: damaged checkpoint, {e.filename or e} is missing") from None
        if self.is_main and self.metrics_path.exists():
            kept = [line for line, record in metrics_lines(self.metrics_path) if record["step"] <= step]
            atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))
        self.accelerator.wait_for_everyone()
        return step


def metrics_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each record of metrics.jsonl (evaluation.report.metrics_records: a torn last
    line is dropped); a broken line before it is a ResumeError naming it."""
    try:
        return metrics_records(path)
    except BrokenMetricsLine as e:
        raise ResumeError(f"{e}: not a metrics record; remove or repair that line") from None
