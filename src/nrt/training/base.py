"""What every trainer shares: the question stream, the optimizer and its updates, validation,
checkpoints and the loop. A trainer subclass defines one thing, `train_step()`.

Devices, DDP/FSDP/DeepSpeed and mixed precision come from `accelerate`: run it under
`accelerate launch` unchanged. Each process takes whole questions (NRT: whole groups), so
group statistics never depend on how many processes run.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from accelerate.utils import set_seed
from transformers import get_scheduler

from nrt.config import Config
from nrt.errors import ConfigError
from nrt.data import TokenizedExample
from nrt.engine.cpu_attention import float32_attention
from nrt.engine.gradient_checkpointing import enable as enable_gradient_checkpointing
from nrt.engine.options import EngineOptions
from nrt.tokens import ensure_response_start_token, pad_token_id
from nrt.training.checkpoints import RunDirectory
from nrt.training.collapse import CollapseDetector
from nrt.training.guards import WATCHED, DivergenceGuard, NonFiniteError, StopSignal, check_weights, nonfinite_names
from nrt.training.metrics import MetricsLogger
from nrt.training.peft_model import wrap_lora


@dataclass
class EvalSet:
    """Validation questions and their reference answers (text, for exact match)."""

    examples: list[TokenizedExample]
    references: list[str]


@dataclass
class Question:
    position: int  # place in the global question stream (seeds its traces)
    index: int  # index into the training examples
    example: TokenizedExample


class BestModel:
    """The best validation accuracy so far and its step; `output_dir/best` holds that model."""

    def __init__(self):
        self.accuracy, self.step = -1.0, None

    def state_dict(self) -> dict:
        return {"accuracy": self.accuracy, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.accuracy, self.step = state["accuracy"], state["step"]


def make_accelerator(bf16: bool) -> Accelerator:
    """An Accelerator for this launch; several processes without a GPU use gloo on the CPU.

    accelerate only picks its multi-CPU mode when asked for the CPU explicitly, so a run
    started by `accelerate launch --multi_gpu --num_processes N` or `torchrun` on a machine
    without CUDA asks for it here.
    """
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    precision = "bf16" if bf16 else "no"
    if not multi_process:  # accelerate keeps one state per process: a second run may ask for another precision
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=precision, cpu=multi_process and not torch.cuda.is_available())


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer in place (the classes the model lists in `_no_split_modules`,
    transformers' own unit for sharding); returns how many. Parameter names and checkpoints are
    unchanged. Shapes are specialised at the first call and made symbolic at the first change
    (dynamo's default). A layer is compiled once per cache state it meets (the prompt pass of the
    update fills the cache layer by layer), per grad mode and per shape kind: about a dozen
    graphs, so dynamo's recompile limit (8 per function) is raised to 64, for the whole process."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"trainer.torch_compile: no decoder layers found in {type(model).__name__}")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in layers:
        layer.compile()
    return len(layers)


def adamw_with_schedule(model, t, updates: int):
    """AdamW over the trainable parameters (no weight decay on vectors: norms, biases) and the
    learning-rate schedule over `updates` optimizer steps, warmup included (trainer options `t`)."""
    decay = [p for p in model.parameters() if p.ndim >= 2 and p.requires_grad]
    no_decay = [p for p in model.parameters() if p.ndim < 2 and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
    )
    scheduler = get_scheduler(
        t.lr_scheduler_type, optimizer,
        num_warmup_steps=math.ceil(t.warmup_ratio * updates), num_training_steps=updates,
    )
    return optimizer, scheduler


class Trainer:
    """The shared machinery; `sequences_per_question` rows of a micro-batch belong to one question."""

    sequences_per_question = 1

    def __init__(self, config: Config, model, tokenizer, examples: list[TokenizedExample], accelerator=None,
                 eval_set: EvalSet | None = None, engine: EngineOptions | None = None, command: str | None = None):
        self.config, self.tokenizer, self.examples, self.eval_set = config, tokenizer, examples, eval_set
        t = config.trainer
        self.engine = engine or EngineOptions(compile_step=t.torch_compile)
        self.accelerator = accelerator or make_accelerator(t.bf16)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed's engine steps inside every backward: gradient accumulation, the non-finite skip and
            # trainer.max_grad_norm of optimizer_updates would not hold (configs/accelerate/zero*.yaml: not run)
            raise ConfigError("DeepSpeed launches are not supported by the trainer's update loop yet; use the DDP or "
                              "FSDP config (configs/accelerate/)")
        set_seed(t.seed)
        self.response_start_id = ensure_response_start_token(model, tokenizer)
        if config.model.use_peft:  # LoRA: the adapters and the response-start rows train, nothing else
            model = wrap_lora(model, config.model, [self.response_start_id])
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = pad_token_id(tokenizer)

        procs = self.accelerator.num_processes
        self.questions_per_micro_batch = t.per_device_train_batch_size // self.sequences_per_question
        self.micro_batches_per_step = t.gradient_accumulation_steps * t.steps_per_generation
        self.questions_per_step = procs * self.questions_per_micro_batch * self.micro_batches_per_step
        if t.max_steps > 0:
            self.total_steps = t.max_steps
        else:
            self.total_steps = max(1, math.ceil(t.num_train_epochs * len(examples) / self.questions_per_step))
        updates = self.total_steps * t.steps_per_generation

        self.before_optimizer(model)
        if t.torch_compile:  # after before_optimizer: a reference copy stays eager
            compile_decoder_layers(model)
        if t.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        optimizer, scheduler = adamw_with_schedule(model, t, updates)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.after_prepare()
        self.run_dir = RunDirectory(t.output_dir, self.accelerator, command)
        self.step = 0
        self.stopped_by_collapse: str | None = None
        self.stopped_by_divergence: str | None = None  # the message; the run wrote no final model
        self.stopped_by_signal: str | None = None  # SIGTERM / SIGINT: checkpointed at a step boundary
        self.step_nonfinite: list[str] = []  # what the last step found non-finite (its updates were skipped)
        self._orders: dict[int, list[int]] = {}
        self.collapse = CollapseDetector(t.collapse_fraction, t.collapse_patience, t.collapse_reference_steps)
        self.best = BestModel()
        self.divergence = DivergenceGuard(t.max_nonfinite_steps)

    def before_optimizer(self, model) -> None:
        """Called with the plain model before compiling, the optimizer and accelerate's wrapping."""

    def after_prepare(self) -> None:
        """Called once self.model is accelerate's (wrapped) model."""

    def register_state(self, stateful: list) -> None:
        """Objects with state_dict/load_state_dict saved in every checkpoint, in this order."""
        for s in stateful:
            if s is not None:
                self.accelerator.register_for_checkpointing(s)

    def train_step(self) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ data
    def step_questions(self, step: int) -> list[Question]:
        """This process's questions for `step`, with their position in the global question stream.

        The stream is the concatenation of per-epoch permutations (seeded); step s covers
        positions [s*G, (s+1)*G) and process p takes the p-th contiguous share of them.
        """
        g, n = self.questions_per_step, len(self.examples)
        share = g // self.accelerator.num_processes
        first = step * g + self.accelerator.process_index * share
        out = []
        for pos in range(first, first + share):
            epoch, index = divmod(pos, n)
            example = self.epoch_order(epoch)[index]
            out.append(Question(pos, example, self.examples[example]))
        return out

    def epoch_order(self, epoch: int) -> list[int]:
        """The seeded permutation of the examples for `epoch` (the two newest are kept)."""
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.config.trainer.seed + epoch)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = torch.randperm(len(self.examples), generator=generator).tolist()
        return self._orders[epoch]

    def micro_batches(self, step: int) -> list[list[Question]]:
        questions = self.step_questions(step)
        n = self.questions_per_micro_batch
        return [questions[i : i + n] for i in range(0, len(questions), n)]

    # ------------------------------------------------------------------ updates
    def optimizer_updates(self, loss_of, watched=None) -> tuple[list, list[dict]]:
        """steps_per_generation optimizer updates; update u accumulates micro-batches
        u*GA .. (u+1)*GA-1, each loss_of(j).loss scaled by 1/GA (gradients synced on the last).
        An update whose loss, watched(j) values (rewards) or gradient norm is non-finite on any
        process is skipped: gradients dropped, optimizer untouched, the schedule still advances."""
        t = self.config.trainer
        ga = t.gradient_accumulation_steps
        outputs, update_stats = [], []
        self.step_nonfinite = []
        for update in range(t.steps_per_generation):
            nonfinite = []
            for j in range(update * ga, (update + 1) * ga):
                sync = j == (update + 1) * ga - 1
                with self.accelerator.no_sync(self.model) if not sync else nullcontext():
                    out = loss_of(j)
                    # checkpointed layers recompute their forward in the backward: with the forward's attention
                    with float32_attention(self.model, enabled=self.engine.attention_in_float32):
                        self.accelerator.backward(out.loss / ga)
                outputs.append(out)
                nonfinite += nonfinite_names({"loss": out.loss, **(watched(j) if watched else {})})
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
            nonfinite = self.agreed(nonfinite + nonfinite_names({"grad_norm": grad_norm}))
            update_stats.append({"grad_norm": float(grad_norm), "learning_rate": self.scheduler.get_last_lr()[0]})
            if nonfinite:
                self.step_nonfinite = sorted(set(self.step_nonfinite) | set(nonfinite), key=WATCHED.index)
                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": skipped on purpose
                    warnings.simplefilter("ignore")
                    self.scheduler.step()
            else:
                self.optimizer.step()
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs, update_stats

    def agreed(self, names: list[str]) -> list[str]:
        """The WATCHED names found on any process (all processes skip the same updates)."""
        if self.accelerator.num_processes == 1:
            return [n for n in WATCHED if n in names]
        flags = torch.tensor([[float(n in names) for n in WATCHED]], device=self.accelerator.device)
        found = self.accelerator.gather(flags).amax(0)
        return [n for n, f in zip(WATCHED, found.tolist()) if f > 0]

    def weights_finite(self) -> bool:
        """True when every process's parameters are finite (checked before each save)."""
        try:
            check_weights(self.accelerator.unwrap_model(self.model).named_parameters(), "")
            bad = 0.0
        except NonFiniteError:
            bad = 1.0
        if self.accelerator.num_processes > 1:
            bad = float(self.accelerator.gather(torch.tensor([bad], device=self.accelerator.device)).amax())
        return bad == 0.0

    def update_metrics(self, losses: list, update_stats: list[dict], names: tuple[str, ...]) -> dict:
        """Loss terms (mean over micro-batches and processes), grad norm (mean over updates), last lr."""
        gather = self.accelerator.gather
        metrics = {name: float(gather(torch.stack([getattr(o, name).detach().float() for o in losses])).mean())
                   for name in names}
        metrics["grad_norm"] = sum(u["grad_norm"] for u in update_stats) / len(update_stats)
        metrics["learning_rate"] = update_stats[-1]["learning_rate"]
        return metrics

    # ------------------------------------------------------------------ validation
    def evaluate(self) -> dict:
        """Greedy think-then-answer accuracy on the validation set (every process evaluates the
        same set, so all agree on the best step); the best model so far goes to output_dir/best."""
        from nrt.evaluation.evaluate import EvalConfig, evaluate

        t = self.config.trainer
        cfg = EvalConfig(max_trace_tokens=t.max_completion_length, max_answer_tokens=self.config.data.max_answer_length,
                         batch_size=t.eval_batch_size, seed=t.seed)
        tick = time.perf_counter()
        with self.accelerator.autocast():
            summary, _ = evaluate(self.accelerator.unwrap_model(self.model), self.tokenizer, self.eval_set.examples,
                                  self.eval_set.references, cfg, self.response_start_id)
        if summary["accuracy"] > self.best.accuracy and self.weights_finite():
            self.best.accuracy, self.best.step = summary["accuracy"], self.step
            self.run_dir.save_best(self.model, self.tokenizer, self.config, self.step)
        metrics = {f"eval_{k}": float(v) for k, v in summary.items() if k != "n"}
        metrics["time_eval"] = time.perf_counter() - tick
        return metrics

    # ------------------------------------------------------------------ loop
    def train(self, resume: bool = False) -> None:
        """Run to total_steps. Ends early, with no final model written, on a collapse stop
        (stopped_by_collapse), a divergence (stopped_by_divergence) or SIGTERM/SIGINT
        (stopped_by_signal, after checkpointing the last finished step)."""
        if resume and not self.run_dir.checkpoints():  # claimed, but killed before its first checkpoint
            resume = False
        try:  # a start refused after the directory is locked (a resume's checks) releases it too
            changes = self.run_dir.start(self.config, fresh=not resume)
            if resume:
                self.step = self.run_dir.resume(self.model, self.optimizer, self.scheduler)
                self.run_dir.record_resume(self.step, changes)
            with StopSignal() as stop:
                self.loop(stop)
        finally:
            self.run_dir.release()

    def loop(self, stop: StopSignal) -> None:
        """Steps until the last, each followed by validation, the collapse and divergence checks,
        logging and checkpoints; the final model at the end."""
        t = self.config.trainer
        logger = MetricsLogger(self.run_dir, self.config, self.accelerator, total_steps=self.total_steps,
                               first_step=self.step)
        with logger:
            if self.eval_set is not None and t.eval_steps > 0 and self.step == 0:
                logger.log({"step": 0, **self.evaluate()})
            while self.step < self.total_steps:
                metrics = self.train_step()
                nonfinite = self.step_nonfinite
                if nonfinite:
                    metrics["skipped_update"] = 1.0
                if self.eval_set is not None and (
                    self.step == self.total_steps or (t.eval_steps > 0 and self.step % t.eval_steps == 0)
                ):
                    metrics.update(self.evaluate())
                watch = "trace_length_mean" in metrics and not nonfinite
                collapse = self.collapse.update(metrics) if watch else None
                diverged = self.divergence.update(self.step, nonfinite)
                if collapse:
                    metrics[self.collapse.flag] = 1.0
                if self.step % t.logging_steps == 0 or self.step == self.total_steps or collapse or nonfinite:
                    logger.log(metrics)
                logger.advance(metrics)
                if nonfinite:
                    logger.warn(self.divergence.warning(self.step, nonfinite))
                if diverged or (nonfinite and not self.weights_finite()):
                    # the weights that produced the first non-finite step are suspect: drop their checkpoints
                    self.stopped_by_divergence = diverged or f"non-finite weights after step {self.step}"
                    self.run_dir.drop_checkpoints_from(self.divergence.protect_before)
                    return
                if collapse:
                    logger.warn(collapse)
                    if t.on_collapse == "stop":
                        self.stopped_by_collapse = collapse
                        self.run_dir.keep_healthy(self.collapse.unhealthy_since, self.tokenizer, self.config)
                        return
                stopping = self.agreed_stop(stop)
                if self.step % t.save_steps == 0 or self.step == self.total_steps or stopping:
                    if not self.weights_finite():
                        self.stopped_by_divergence = f"non-finite weights after step {self.step}"
                        self.run_dir.drop_checkpoints_from(self.divergence.protect_before or self.step)
                        return
                    protect = [s for s in (self.collapse.unhealthy_since, self.divergence.protect_before) if s]
                    self.run_dir.save_checkpoint(self.step, self.model, self.tokenizer, self.config,
                                                 protect_before=min(protect) if protect else None)
                if stopping:
                    self.stopped_by_signal = stopping
                    return
        self.run_dir.save_final(self.model, self.tokenizer, self.config, self.step)

    def agreed_stop(self, stop: StopSignal) -> str | None:
        """The signal received by any process (all stop at the same step), or None."""
        if self.accelerator.num_processes == 1:
            return stop.received
        got = self.accelerator.gather(torch.tensor([float(stop.received is not None)], device=self.accelerator.device))
        return (stop.received or "SIGTERM") if float(got.amax()) > 0 else None
