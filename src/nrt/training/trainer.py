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

The question stream, optimizer updates, validation, checkpoints and the loop are shared with
the SFT baseline (`nrt.training.base`). With `trainer.format_warmup_steps` N, the first N steps
are SFT steps on the answer after a given `<|response_start|>` (`nrt.training.sft.sft_step`),
no traces: a pretrained model learns the new marker's format before any trace is rewarded.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from nrt.engine.rollouts import Rollout, build_rollout, no_trace_batch
from nrt.engine.samplers import NativeSampler, SampledTraces, TraceRequest
from nrt.engine.sampling import question_seed
from nrt.engine.sequences import completion_logprobs, gather_columns
from nrt.loss import LossInputs, LossOutputs, nrt_loss
from nrt.rewards import aggregate
from nrt.rollout_correction import truncated_importance_weights
from nrt.scoring import score_traces
from nrt.shaping import EmaStdFilter
from nrt.training.base import EvalSet, Question, Trainer  # noqa: F401  (EvalSet: part of this module's API)
from nrt.training.peft_model import AdaptersDisabled
from nrt.training.sft import sft_step
from nrt.training.stats import TraceStats

LOSS_TERMS = ("loss", "trace_loss", "prefix_loss", "answer_loss", "kl", "clip_fraction")


@dataclass
class Scored:
    """What scoring a rollout yields; fixed for all updates on that rollout."""

    advantages: torch.Tensor  # [B]
    answer_weights: torch.Tensor  # [B, T]
    old_logprobs: torch.Tensor | None  # [B, C], None when the update's own forward is the old policy
    stats: TraceStats


class NRTTrainer(Trainer):
    def __init__(self, config, model, tokenizer, examples, accelerator=None, eval_set=None, engine=None,
                 command=None):
        self.k = config.trainer.num_generations
        self.sequences_per_question = self.k
        m = config.method
        self.std_filter = EmaStdFilter(m.std_filter_decay) if m.std_filter_decay > 0 else None
        super().__init__(config, model, tokenizer, examples, accelerator, eval_set, engine, command)
        # RLPR's debiasing needs the *initial* policy's no-trace reward: computed now, before any update
        self.initial_no_trace_reward = self.no_trace_rewards() if m.reward_baseline == "initial_no_trace" else None
        self.register_state([self.std_filter, self.collapse, self.best, self.divergence])
        self.sampler = self.make_sampler()
        self.synced_step: int | None = None  # the step whose weights the sampler holds

    def make_sampler(self):
        """nrt's engine, or with trainer.use_vllm a vLLM engine in this process (nrt.engine.samplers)."""
        t = self.config.trainer
        policy = self.accelerator.unwrap_model(self.model)
        if not t.use_vllm:
            return NativeSampler(policy, self.pad_id, self.engine)
        from nrt.engine.vllm_sampler import VLLMOptions, VLLMSampler

        bf16 = t.bf16 or next(policy.parameters()).dtype == torch.bfloat16
        options = VLLMOptions(
            dtype="bfloat16" if bf16 else "float32", gpu_memory_utilization=t.vllm_gpu_memory_utilization,
            tensor_parallel_size=t.vllm_tensor_parallel_size, enable_sleep_mode=t.vllm_enable_sleep_mode,
            max_model_length=t.vllm_max_model_length or self.config.data.max_prompt_length + t.max_completion_length,
            seed=t.seed, fixed_length=self.engine.fixed_length,
        )
        return VLLMSampler(policy, options, multi_process=self.accelerator.num_processes > 1)

    def before_optimizer(self, model) -> None:
        """With a KL term (trainer.beta > 0), a frozen copy of the initial model is the reference;
        with LoRA it is the policy itself with its adapters disabled (after_prepare), no copy."""
        self.ref_model = None
        if self.config.trainer.beta > 0 and not self.config.model.use_peft:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.accelerator.device)

    def after_prepare(self) -> None:
        if self.config.trainer.beta > 0 and self.config.model.use_peft:
            self.ref_model = AdaptersDisabled(self.model)

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict:
        if self.step < self.config.trainer.format_warmup_steps:  # the answer format first, no traces
            return {**sft_step(self, train_marker=False), "format_warmup": 1.0}
        chunks = self.micro_batches(self.step)
        timer = {}

        # 1. Sample K traces per question with the current weights and splice the reference answers in.
        tick = time.perf_counter()
        if self.synced_step != self.step:
            self.sampler.sync(self.accelerator.unwrap_model(self.model))
            self.synced_step = self.step
        timer["weight_sync"] = time.perf_counter() - tick
        tick = time.perf_counter()
        rollouts = self.sample_micro_batches(chunks)
        timer["generate"] = time.perf_counter() - tick

        # 2. The no-trace baseline c0 (one forward per question); with several updates per rollout,
        #    the rewards and the old policy's log-probs, frozen before the first update.
        tick = time.perf_counter()
        baselines = [self.no_trace_logprobs(chunk) for chunk in chunks]
        scored: list[Scored | None] = [None] * len(chunks)
        if self.config.trainer.steps_per_generation > 1:
            scored = [self.score_without_grad(*args) for args in zip(rollouts, chunks, baselines)]
        timer["score"] = time.perf_counter() - tick

        # 3. Updates: steps_per_generation optimizer steps, each over gradient_accumulation_steps micro-batches.
        tick = time.perf_counter()

        def loss_of(j: int) -> LossOutputs:
            out, scored[j] = self.micro_batch_loss(rollouts[j], chunks[j], baselines[j], scored[j])
            return out

        losses, update_stats = self.optimizer_updates(loss_of, watched=lambda j: {"reward": scored[j].stats.reward})
        timer["update"] = time.perf_counter() - tick

        self.step += 1
        metrics = {"step": self.step, **TraceStats.reduce([s.stats for s in scored], self.accelerator.gather),
                   **self.update_metrics(losses, update_stats, LOSS_TERMS),
                   **{f"time_{k}": v for k, v in timer.items()}}
        if self.std_filter is not None:
            self.std_filter.update(metrics["group_reward_std_mean"])
        return metrics

    def sample(self, chunk: list[Question]) -> Rollout:
        """K traces per question of one micro-batch, the reference answers spliced in."""
        return self.rollout(chunk, self.sample_traces(chunk))

    def sample_micro_batches(self, chunks: list[list[Question]]) -> list[Rollout]:
        """One rollout per micro-batch. With `EngineOptions.sample_step_at_once` every question of the
        step is decoded in one batch, then split: decoding a token costs about as much for 16 rows as
        for 64 (each token reads every weight once), so micro-batches lower the update's memory without
        multiplying the decoding time. A question's traces depend only on its seed
        (`nrt.engine.sampling`), so they are the same traces as sampled one micro-batch at a time."""
        if not self.engine.sample_step_at_once or len(chunks) < 2:
            return [self.sample(chunk) for chunk in chunks]
        traces = self.sample_traces([q for chunk in chunks for q in chunk])
        rollouts, first = [], 0
        for chunk in chunks:
            rows = slice(first * self.k, (first + len(chunk)) * self.k)
            part = SampledTraces(traces.token_ids[rows], traces.logprobs[rows] if traces.logprobs else None)
            rollouts.append(self.rollout(chunk, part))
            first += len(chunk)
        return rollouts

    def sample_traces(self, questions: list[Question]) -> SampledTraces:
        """K traces per question, group-major (question q's are rows q*K .. q*K + K - 1)."""
        t = self.config.trainer
        request = TraceRequest(
            [q.example.prompt_ids for q in questions], self.k, t.max_completion_length,
            [self.response_start_id, self.eos_id], [question_seed(t.seed, q.position) for q in questions],
            t.temperature, t.top_p,
        )
        with self.accelerator.autocast():
            return self.sampler.sample(request)

    def rollout(self, chunk: list[Question], traces: SampledTraces) -> Rollout:
        return build_rollout(
            [q.example.prompt_ids for q in chunk], [q.example.answer_ids for q in chunk], traces.token_ids,
            num_generations=self.k, response_start_id=self.response_start_id, eos_id=self.eos_id,
            pad_id=self.pad_id, device=self.accelerator.device, trace_logprobs=traces.logprobs,
        )

    @torch.no_grad()
    def no_trace_logprobs(self, chunk: list[Question], repeat: bool = True) -> torch.Tensor:
        """log c0 [Q*K, T]: each question's no-trace answer log-probabilities, repeated for its K rows."""
        examples = [q.example for q in chunk]
        batch, start, length = no_trace_batch(
            [ex.prompt_ids for ex in examples], [ex.answer_ids for ex in examples],
            self.response_start_id, self.pad_id, self.accelerator.device,
        )
        logprobs, _ = completion_logprobs(self.model, batch, engine=self.engine)
        answer, _ = gather_columns(logprobs, start, length)
        return answer.repeat_interleave(self.k, 0) if repeat else answer

    def no_trace_rewards(self, batch_size: int = 64) -> torch.Tensor:
        """R0 [N]: the aggregation of every training question's no-trace answer probabilities."""
        rewards = []
        for first in range(0, len(self.examples), batch_size):
            last = min(first + batch_size, len(self.examples))
            chunk = [Question(0, i, self.examples[i]) for i in range(first, last)]
            lp = self.no_trace_logprobs(chunk, repeat=False).double()
            mask = torch.arange(lp.shape[1], device=lp.device)[None, :] < torch.tensor(
                [len(q.example.answer_ids) for q in chunk], device=lp.device)[:, None]
            rewards.append(aggregate(self.config.method.aggregation, lp, mask, lp)[0].cpu())
        return torch.cat(rewards)

    @torch.no_grad()
    def score_without_grad(self, rollout: Rollout, chunk: list[Question], baseline) -> Scored:
        """Scores from a no-grad pass, keeping its log-probs as the old policy's."""
        logprobs, entropy = completion_logprobs(self.model, rollout.batch, with_entropy=True, engine=self.engine)
        return self.score(rollout, chunk, logprobs, entropy, baseline, keep_old=True)

    def score(self, rollout: Rollout, chunk: list[Question], logprobs, entropy, baseline, keep_old: bool) -> Scored:
        """Rewards, advantages and answer-term weights from detached completion log-probs [B, C]."""
        logprobs = logprobs.detach()
        answer, mask = rollout.answer_columns(logprobs)
        initial = None
        if self.initial_no_trace_reward is not None:
            initial = self.initial_no_trace_reward[[q.index for q in chunk]].repeat_interleave(self.k)
        scores = score_traces(self.config.method, self.k, answer, mask, baseline, rollout.emitted_response_start,
                              initial, self.std_filter)
        stats = TraceStats.of(rollout, scores, answer, mask, baseline, entropy, self.response_start_id, logprobs)
        return Scored(scores.advantages, scores.answer_weights, logprobs if keep_old else None, stats)

    def micro_batch_loss(self, rollout: Rollout, chunk: list[Question], baseline, scored: Scored | None):
        """Forward with grad; score from this same forward when no rollout-time scores exist."""
        t, m = self.config.trainer, self.config.method
        logprobs, entropy = completion_logprobs(self.model, rollout.batch, with_entropy=scored is None,
                                                engine=self.engine)
        if scored is None:  # single update per rollout: the reward comes from this very pass
            scored = self.score(rollout, chunk, logprobs, entropy, baseline, keep_old=False)
        answer, mask = rollout.answer_columns(logprobs)
        ref = None
        if self.ref_model is not None:
            with torch.no_grad():
                ref, _ = completion_logprobs(self.ref_model, rollout.batch, engine=self.engine)
        old = scored.old_logprobs if scored.old_logprobs is not None else logprobs.detach()
        rollout_weights = None  # traces from another engine (vLLM): its policy differs a little from this one
        if rollout.rollout_logprobs is not None and t.vllm_importance_sampling_correction:
            rollout_weights = truncated_importance_weights(old, rollout.rollout_logprobs, rollout.trace_mask,
                                                           t.vllm_importance_sampling_clip_max)
        inputs = LossInputs(
            completion_logprobs=logprobs,
            old_completion_logprobs=old,
            trace_mask=rollout.trace_mask,
            advantages=scored.advantages,
            prefix_mask=rollout.prefix_mask,
            answer_logprobs=answer,
            answer_mask=mask,
            answer_weights=scored.answer_weights,
            ref_logprobs=ref,
            rollout_weights=rollout_weights,
        )
        out = nrt_loss(
            inputs, policy_loss=m.policy_loss, epsilon_low=t.epsilon_low, epsilon_high=t.epsilon_high,
            trace_coef=m.trace_loss_coef, prefix_coef=m.prefix_loss_coef, answer_coef=m.answer_loss_coef,
            beta=t.beta, loss_normalizer=m.loss_normalizer,
        )
        return out, scored
