"""The NRT trainer: sample traces -> score answers -> aggregate -> normalise -> loss -> step.

One training step takes a rollout batch of questions, samples K traces per question with
the current policy, splices the reference answer after every trace, and trains on

    reward of a trace  R_k = f(c_1k .. c_Tk),  c_ik = pi(y*_i | x, z_k, y*_<i)   (rewards.py)
    advantage          A_k = group-normalised R_k                                (advantages.py)
    (both, with the prior methods' shaping, in one pure function                   scoring.py)
    loss               trace RL term + response-prefix term + answer term          (loss.py)

When a rollout batch gets a single optimizer update (the default) the answer
log-probabilities that make the reward come from the update's own forward pass (detached):
scoring costs no extra pass over the traces. Only the no-trace baseline c0 needs its own
forward, one short row per question. With `steps_per_generation > 1` a no-grad scoring
pass at rollout time provides the old policy's log-probabilities for the importance ratio.

Devices, DDP/FSDP/DeepSpeed and mixed precision come from `accelerate`: run it under
`accelerate launch` unchanged. Each process takes whole groups, so group statistics never
depend on how many processes run.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from nrt.advantages import is_constant
from nrt.checkpoints import RunDirectory
from nrt.collapse import CollapseDetector
from nrt.config import Config
from nrt.data import TokenizedExample
from nrt.gradient_checkpointing import enable as enable_gradient_checkpointing
from nrt.metrics import MetricsLogger
from nrt.peft_model import AdaptersDisabled, wrap_lora
from nrt.loss import LossInputs, nrt_loss
from nrt.rewards import aggregate
from nrt.rollouts import Rollout, build_rollout, no_trace_batch
from nrt.sampling import sample_traces
from nrt.scoring import score_traces
from nrt.shaping import EmaStdFilter
from nrt.sequences import completion_logprobs, gather_columns
from nrt.tokens import ensure_response_start_token


@dataclass
class EvalSet:
    """Validation questions and their reference answers (text, for exact match)."""

    examples: list[TokenizedExample]
    references: list[str]


class BestModel:
    """The best validation accuracy so far and its step; `output_dir/best` holds that model."""

    def __init__(self):
        self.accuracy, self.step = -1.0, None

    def state_dict(self) -> dict:
        return {"accuracy": self.accuracy, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.accuracy, self.step = state["accuracy"], state["step"]


@dataclass
class SFTLoss:
    loss: torch.Tensor


@dataclass
class Question:
    position: int  # place in the global question stream (seeds its traces)
    index: int  # index into the training examples
    example: TokenizedExample


@dataclass
class Scored:
    """What scoring a rollout yields; fixed for all updates on that rollout."""

    advantages: torch.Tensor  # [B]
    answer_weights: torch.Tensor  # [B, T]
    old_logprobs: torch.Tensor | None  # [B, C], None when the update's own forward is the old policy
    stats: dict


def make_accelerator(bf16: bool) -> Accelerator:
    """An Accelerator for this launch; several processes without a GPU use gloo on the CPU.

    accelerate only picks its multi-CPU mode when asked for the CPU explicitly, so a run
    started by `accelerate launch --multi_gpu --num_processes N` or `torchrun` on a machine
    without CUDA asks for it here.
    """
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=multi_process and not torch.cuda.is_available())


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
        raise ValueError(f"trainer.torch_compile: no decoder layers found in {type(model).__name__}")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for layer in layers:
        layer.compile()
    return len(layers)


class NRTTrainer:
    def __init__(self, config: Config, model, tokenizer, examples: list[TokenizedExample], accelerator=None,
                 eval_set: EvalSet | None = None):
        self.config, self.tokenizer, self.examples, self.eval_set = config, tokenizer, examples, eval_set
        t = config.trainer
        self.accelerator = accelerator or make_accelerator(t.bf16)
        set_seed(t.seed)
        self.response_start_id = ensure_response_start_token(model, tokenizer)
        if config.model.use_peft:  # LoRA: the adapters and the response-start rows train, nothing else
            model = wrap_lora(model, config.model, [self.response_start_id])
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.k = t.num_generations

        procs = self.accelerator.num_processes
        # sft trains one sequence per question; nrt K
        self.questions_per_micro_batch = t.per_device_train_batch_size // (
            self.k if config.method.objective == "nrt" else 1)
        self.micro_batches_per_step = t.gradient_accumulation_steps * t.steps_per_generation
        self.questions_per_step = procs * self.questions_per_micro_batch * self.micro_batches_per_step
        if t.max_steps > 0:
            self.total_steps = t.max_steps
        else:
            self.total_steps = max(1, math.ceil(t.num_train_epochs * len(examples) / self.questions_per_step))
        updates = self.total_steps * t.steps_per_generation

        self.ref_model = None
        if t.beta > 0 and not config.model.use_peft:  # with LoRA the reference is the model, adapters off
            import copy

            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.accelerator.device)
        if t.torch_compile:  # after the copy: the reference model stays eager
            compile_decoder_layers(model)
        if t.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and p.requires_grad]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 and p.requires_grad]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_epsilon,
        )
        scheduler = get_scheduler(
            t.lr_scheduler_type, optimizer,
            num_warmup_steps=math.ceil(t.warmup_ratio * updates), num_training_steps=updates,
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        if t.beta > 0 and config.model.use_peft:
            self.ref_model = AdaptersDisabled(self.model)
        self.run_dir = RunDirectory(t.output_dir, self.accelerator)
        self.step = 0
        self.stopped_by_collapse: str | None = None
        self._orders: dict[int, list[int]] = {}

        m = config.method
        # RLPR's debiasing needs the *initial* policy's no-trace reward: computed now, before any update
        self.initial_no_trace_reward = self.no_trace_rewards() if m.reward_baseline == "initial_no_trace" else None
        self.std_filter = EmaStdFilter(m.std_filter_decay) if m.std_filter_decay > 0 else None
        self.collapse = CollapseDetector(t.collapse_fraction, t.collapse_patience, t.collapse_reference_steps)
        self.best = BestModel()
        for stateful in (self.std_filter, self.collapse, self.best):
            if stateful is not None:
                self.accelerator.register_for_checkpointing(stateful)

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

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict:
        if self.config.method.objective == "sft":
            return self.sft_step()
        t = self.config.trainer
        chunks = self.micro_batches(self.step)
        timer = {"generate": 0.0, "score": 0.0, "update": 0.0}

        # 1. Sample K traces per question and splice the reference answers in.
        tick = time.perf_counter()
        rollouts = [self.sample(chunk) for chunk in chunks]
        timer["generate"] = time.perf_counter() - tick

        # 2. The no-trace baseline c0: one forward per question.
        tick = time.perf_counter()
        baselines = [self.no_trace_logprobs(chunk) for chunk in chunks]
        scored: list[Scored | None] = [None] * len(chunks)
        if t.steps_per_generation > 1:  # the old policy must be frozen before the first update
            with torch.no_grad():
                for i, (rollout, base) in enumerate(zip(rollouts, baselines)):
                    logprobs, entropy = completion_logprobs(self.model, rollout.batch, with_entropy=True)
                    scored[i] = self.score(rollout, chunks[i], logprobs, entropy, base, keep_old=True)
        timer["score"] = time.perf_counter() - tick

        # 3. Updates: steps_per_generation optimizer steps, each over gradient_accumulation_steps micro-batches.
        tick = time.perf_counter()

        def loss_of(j: int):
            out, scored[j] = self.micro_batch_loss(rollouts[j], chunks[j], baselines[j], scored[j])
            return out

        losses, update_stats = self.optimizer_updates(loss_of)
        timer["update"] = time.perf_counter() - tick

        self.step += 1
        metrics = self.step_metrics(scored, losses, update_stats, timer)
        if self.std_filter is not None:
            self.std_filter.update(metrics["group_reward_std_mean"])
        return metrics

    def micro_batches(self, step: int) -> list[list[Question]]:
        questions = self.step_questions(step)
        n = self.questions_per_micro_batch
        return [questions[i : i + n] for i in range(0, len(questions), n)]

    def optimizer_updates(self, loss_of) -> tuple[list, list[dict]]:
        """steps_per_generation optimizer updates; update u accumulates micro-batches
        u*GA .. (u+1)*GA-1, each loss_of(j).loss scaled by 1/GA (gradients synced on the last)."""
        t = self.config.trainer
        ga = t.gradient_accumulation_steps
        outputs, update_stats = [], []
        for update in range(t.steps_per_generation):
            for j in range(update * ga, (update + 1) * ga):
                sync = j == (update + 1) * ga - 1
                with self.accelerator.no_sync(self.model) if not sync else nullcontext():
                    out = loss_of(j)
                    self.accelerator.backward(out.loss / ga)
                outputs.append(out)
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
            update_stats.append({"grad_norm": float(grad_norm), "learning_rate": self.scheduler.get_last_lr()[0]})
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs, update_stats

    def sft_step(self) -> dict:
        """The SFT baseline: NLL of `<|response_start|>` + answer directly after the prompt
        (mean over tokens), on the same question stream and optimizer as NRT."""
        chunks = self.micro_batches(self.step)
        tick = time.perf_counter()
        answer_logprob = []

        def loss_of(j: int):
            examples = [q.example for q in chunks[j]]
            batch, _, _ = no_trace_batch([e.prompt_ids for e in examples], [e.answer_ids for e in examples],
                                         self.response_start_id, self.pad_id, self.accelerator.device)
            logprobs, _ = completion_logprobs(self.model, batch)
            mask = batch.completion_mask
            answer_logprob.append((logprobs.detach() * mask)[:, 1:].sum(-1))
            return SFTLoss(-(logprobs * mask).sum() / mask.sum())

        losses, update_stats = self.optimizer_updates(loss_of)
        self.step += 1
        gather = self.accelerator.gather
        metrics = {
            "step": self.step,
            "loss": gather(torch.stack([o.loss.detach() for o in losses])).mean(),
            "answer_logprob_no_trace": gather(torch.cat(answer_logprob)).mean(),
            "grad_norm": sum(u["grad_norm"] for u in update_stats) / len(update_stats),
            "learning_rate": update_stats[-1]["learning_rate"],
            "time_update": time.perf_counter() - tick,
        }
        return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}

    def sample(self, chunk: list[Question]) -> Rollout:
        t = self.config.trainer
        prompts = [q.example.prompt_ids for q in chunk]
        policy = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():
            traces = sample_traces(
                policy, prompts,
                num_generations=self.k, max_new_tokens=t.max_completion_length,
                stop_token_ids=[self.response_start_id, self.eos_id], pad_token_id=self.pad_id,
                seeds=[t.seed * 1_000_003 + q.position for q in chunk],
                temperature=t.temperature, top_p=t.top_p, compile_step=t.torch_compile,
            )
        return build_rollout(
            prompts, [q.example.answer_ids for q in chunk], traces, num_generations=self.k,
            response_start_id=self.response_start_id, eos_id=self.eos_id, pad_id=self.pad_id,
            device=self.accelerator.device,
        )

    @torch.no_grad()
    def no_trace_logprobs(self, chunk: list[Question], repeat: bool = True) -> torch.Tensor:
        """log c0 [Q*K, T]: each question's no-trace answer log-probabilities, repeated for its K rows."""
        examples = [q.example for q in chunk]
        batch, start, length = no_trace_batch(
            [ex.prompt_ids for ex in examples], [ex.answer_ids for ex in examples],
            self.response_start_id, self.pad_id, self.accelerator.device,
        )
        logprobs, _ = completion_logprobs(self.model, batch)
        answer, _ = gather_columns(logprobs, start, length)
        return answer.repeat_interleave(self.k, 0) if repeat else answer

    def no_trace_rewards(self, batch_size: int = 64) -> torch.Tensor:
        """R0 [N]: the aggregation of every training question's no-trace answer probabilities."""
        rewards = []
        for first in range(0, len(self.examples), batch_size):
            chunk = [Question(0, i, self.examples[i]) for i in range(first, min(first + batch_size, len(self.examples)))]
            lp = self.no_trace_logprobs(chunk, repeat=False).double()
            mask = torch.arange(lp.shape[1], device=lp.device)[None, :] < torch.tensor(
                [len(q.example.answer_ids) for q in chunk], device=lp.device)[:, None]
            rewards.append(aggregate(self.config.method.aggregation, lp, mask, lp)[0].cpu())
        return torch.cat(rewards)

    def score(self, rollout: Rollout, chunk: list[Question], logprobs, entropy, baseline, keep_old: bool) -> Scored:
        """Rewards, advantages and answer-term weights from detached completion log-probs [B, C]."""
        m = self.config.method
        logprobs = logprobs.detach()
        answer, mask = gather_columns(logprobs, rollout.answer_start, rollout.answer_length)
        initial = None
        if self.initial_no_trace_reward is not None:
            initial = self.initial_no_trace_reward[[q.index for q in chunk]].repeat_interleave(self.k)
        scores = score_traces(m, self.k, answer, mask, baseline, rollout.emitted_response_start, initial,
                              self.std_filter)
        reward, group_std, kept = scores.reward, scores.group_std, scores.kept
        trace_tokens = rollout.trace_mask & (rollout.batch.completion_ids != self.response_start_id)
        stats = {
            "reward": reward.float(),
            "group_reward_std": group_std.float(),
            "zero_std_group": is_constant(reward.view(-1, self.k), group_std[:, None]).squeeze(1).float(),
            "filtered_group": (~kept).float(),
            "empty_trace": (rollout.trace_length == 0).float(),
            "distinct_2": rollout.distinct_2.float(),
            "distinct_3": rollout.distinct_3.float(),
            "answer_logprob": answer.sum(-1),
            "answer_logprob_no_trace": (baseline * mask).sum(-1),
            "trace_length": rollout.trace_length.float(),
            "response_start_share": rollout.emitted_response_start.float(),
            "entropy_sum": (entropy * trace_tokens).sum().reshape(1),
            "entropy_count": trace_tokens.sum().float().reshape(1),
        }
        return Scored(scores.advantages, scores.answer_weights, logprobs if keep_old else None, stats)

    def micro_batch_loss(self, rollout: Rollout, chunk: list[Question], baseline, scored: Scored | None):
        """Forward with grad; score from this same forward when no rollout-time scores exist."""
        t, m = self.config.trainer, self.config.method
        logprobs, entropy = completion_logprobs(self.model, rollout.batch, with_entropy=scored is None)
        if scored is None:  # single update per rollout: the reward comes from this very pass
            scored = self.score(rollout, chunk, logprobs, entropy, baseline, keep_old=False)
        answer, mask = gather_columns(logprobs, rollout.answer_start, rollout.answer_length)
        ref = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref, _ = completion_logprobs(self.ref_model, rollout.batch)
        inputs = LossInputs(
            completion_logprobs=logprobs,
            old_completion_logprobs=scored.old_logprobs if scored.old_logprobs is not None else logprobs.detach(),
            trace_mask=rollout.trace_mask,
            advantages=scored.advantages,
            prefix_mask=rollout.prefix_mask,
            answer_logprobs=answer,
            answer_mask=mask,
            answer_weights=scored.answer_weights,
            ref_logprobs=ref,
        )
        out = nrt_loss(
            inputs, policy_loss=m.policy_loss, epsilon_low=t.epsilon_low, epsilon_high=t.epsilon_high,
            trace_coef=m.trace_loss_coef, prefix_coef=m.prefix_loss_coef, answer_coef=m.answer_loss_coef,
            beta=t.beta, loss_normalizer=m.loss_normalizer,
        )
        return out, scored

    # ------------------------------------------------------------------ metrics
    def step_metrics(self, scored: list[Scored], losses, update_stats, timer) -> dict:
        """Step metrics over all processes: means over traces / questions, sums for counts."""
        gather = self.accelerator.gather
        cat = {key: gather(torch.cat([s.stats[key] for s in scored]).float().to(self.accelerator.device))
               for key in scored[0].stats}
        gain = cat["answer_logprob"].mean() - cat["answer_logprob_no_trace"].mean()
        loss_stack = lambda name: gather(torch.stack([getattr(o, name).detach().float() for o in losses])).mean()
        metrics = {
            "step": self.step,
            "reward_mean": cat["reward"].mean(),
            "reward_std": cat["reward"].std(),
            "answer_logprob": cat["answer_logprob"].mean(),
            "answer_logprob_no_trace": cat["answer_logprob_no_trace"].mean(),
            "reasoning_gain": gain,
            "trace_length_mean": cat["trace_length"].mean(),
            "trace_length_min": cat["trace_length"].min(),
            "trace_length_max": cat["trace_length"].max(),
            "response_start_share": cat["response_start_share"].mean(),
            "trace_entropy": cat["entropy_sum"].sum() / cat["entropy_count"].sum().clamp_min(1),
            "zero_std_group_share": cat["zero_std_group"].mean(),
            "group_reward_std_mean": cat["group_reward_std"].mean(),
            "filtered_group_share": cat["filtered_group"].mean(),
            "empty_trace_share": cat["empty_trace"].mean(),
            "distinct_2": cat["distinct_2"].nanmean(),
            "distinct_3": cat["distinct_3"].nanmean(),
            "loss": loss_stack("loss"),
            "trace_loss": loss_stack("trace_loss"),
            "prefix_loss": loss_stack("prefix_loss"),
            "answer_loss": loss_stack("answer_loss"),
            "kl": loss_stack("kl"),
            "clip_fraction": loss_stack("clip_fraction"),
            "grad_norm": sum(u["grad_norm"] for u in update_stats) / len(update_stats),
            "learning_rate": update_stats[-1]["learning_rate"],
            **{f"time_{k}": v for k, v in timer.items()},
        }
        return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}

    # ------------------------------------------------------------------ validation
    def evaluate(self) -> dict:
        """Greedy think-then-answer accuracy on the validation set (every process evaluates the
        same set, so all agree on the best step); the best model so far goes to output_dir/best."""
        from nrt.evaluate import EvalConfig, evaluate

        t = self.config.trainer
        cfg = EvalConfig(max_trace_tokens=t.max_completion_length, max_answer_tokens=self.config.data.max_answer_length,
                         batch_size=t.eval_batch_size, seed=t.seed)
        tick = time.perf_counter()
        with self.accelerator.autocast():
            summary, _ = evaluate(self.accelerator.unwrap_model(self.model), self.tokenizer, self.eval_set.examples,
                                  self.eval_set.references, cfg, self.response_start_id)
        if summary["accuracy"] > self.best.accuracy:
            self.best.accuracy, self.best.step = summary["accuracy"], self.step
            self.run_dir.save_best(self.model, self.tokenizer, self.config, self.step)
        metrics = {f"eval_{k}": float(v) for k, v in summary.items() if k != "n"}
        metrics["time_eval"] = time.perf_counter() - tick
        return metrics

    # ------------------------------------------------------------------ loop
    def train(self, resume: bool = False) -> None:
        t = self.config.trainer
        if resume:
            self.step = self.run_dir.resume(self.model, self.optimizer, self.scheduler)
        self.run_dir.start(self.config, fresh=not resume)
        logger = MetricsLogger(self.run_dir, self.config, self.accelerator, total_steps=self.total_steps,
                               first_step=self.step)
        with logger:
            if self.eval_set is not None and t.eval_steps > 0 and self.step == 0:
                logger.log({"step": 0, **self.evaluate()})
            while self.step < self.total_steps:
                metrics = self.train_step()
                if self.eval_set is not None and (
                    self.step == self.total_steps or (t.eval_steps > 0 and self.step % t.eval_steps == 0)
                ):
                    metrics.update(self.evaluate())
                collapse = self.collapse.update(metrics) if "trace_length_mean" in metrics else None
                if collapse:
                    metrics["collapse_detected"] = 1.0
                if self.step % t.logging_steps == 0 or self.step == self.total_steps or collapse:
                    logger.log(metrics)
                logger.advance(metrics)
                if collapse:
                    logger.warn(collapse)
                    if t.on_collapse == "stop":
                        self.stopped_by_collapse = collapse
                        self.run_dir.keep_healthy(self.collapse.unhealthy_since, self.tokenizer, self.config)
                        return
                if self.step % t.save_steps == 0 or self.step == self.total_steps:
                    self.run_dir.save_checkpoint(self.step, self.model, self.tokenizer, self.config,
                                                 protect_before=self.collapse.unhealthy_since)
        self.run_dir.save_final(self.model, self.tokenizer, self.config)
