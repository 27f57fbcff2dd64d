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

A checkpoint is written to `checkpoint-N.tmp` and renamed when complete, so an interrupted
save never leaves a checkpoint that looks valid.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from nrt.peft_model import is_peft_model, keeps_whole_state, register_trainable_only_state, save_adapter

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(RuntimeError):
    pass


class RunDirectory:
    def __init__(self, output_dir: str, accelerator):
        self.path = Path(output_dir)
        self.accelerator = accelerator
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

    def start(self, config, fresh: bool) -> None:
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            if fresh:
                self.metrics_path.write_text("")
        self.accelerator.wait_for_everyone()

    def save_checkpoint(self, step: int, model, tokenizer, config, protect_before: int | None = None) -> None:
        """Write checkpoint-`step`; prune to `save_total_limit`, but never the newest checkpoint
        older than `protect_before` (the last healthy one while a collapse is suspected)."""
        final = self.path / f"checkpoint-{step}"
        tmp = self.path / f"checkpoint-{step}.tmp"
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        if self._trainable_only(model) and not self._hooked:
            register_trainable_only_state(self.accelerator, model)
            self._hooked = True
        self.accelerator.save_state(str(tmp / "training_state"))
        self._save_model(tmp, model, tokenizer, config, step)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
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
        if self.is_main and tmp.exists():
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        self._save_model(tmp, model, tokenizer, config, step)
        if self.is_main:
            if best.exists():
                shutil.rmtree(best)
            tmp.rename(best)
        self.accelerator.wait_for_everyone()

    def save_final(self, model, tokenizer, config) -> None:
        self._save_model(self.path, model, tokenizer, config, step=None)
        self.accelerator.wait_for_everyone()

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
        remaining one the run's final model. Returns that checkpoint, or None if there is none."""
        healthy = None
        if self.is_main:
            for step, path in self.checkpoints():
                if step >= unhealthy_since:
                    shutil.rmtree(path)
                else:
                    healthy = path
            if healthy is not None:
                for item in healthy.iterdir():
                    if item.is_file() and item.name != "trainer_state.json":
                        shutil.copy2(item, self.path / item.name)
        self.accelerator.wait_for_everyone()
        return healthy

    def resume(self, model, optimizer, scheduler) -> int:
        """Load the newest checkpoint's states; drop metrics logged after it. Returns its step."""
        found = self.checkpoints()
        if not found:
            raise ResumeError(f"{self.path}: no checkpoint-N directory to resume from")
        step, path = found[-1]
        if self._trainable_only(model):  # the frozen base weights are not in the checkpoint
            self.accelerator.load_state(str(path / "training_state"), strict=False)
        else:
            self.accelerator.load_state(str(path / "training_state"))
        if self.is_main and self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))
        self.accelerator.wait_for_everyone()
        return step
