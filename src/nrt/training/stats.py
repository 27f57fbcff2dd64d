"""What the NRT step reports about its traces: a typed record per micro-batch, reduced to the
step's metrics in one place (`TraceStats.reduce`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from nrt.advantages import is_constant
from nrt.rollout_correction import mismatch


@dataclass
class TraceStats:
    """B traces of Q = B / K questions; per-trace fields are [B], per-question fields [Q]."""

    reward: torch.Tensor  # [B] trace reward before normalisation
    answer_logprob: torch.Tensor  # [B] log p(answer | x, trace), summed over answer tokens
    answer_logprob_no_trace: torch.Tensor  # [B] log p(answer | x, no trace), the question's value repeated
    trace_length: torch.Tensor  # [B] trace tokens, <|response_start|> excluded
    emitted_response_start: torch.Tensor  # [B] 1 where the model emitted <|response_start|> itself
    empty_trace: torch.Tensor  # [B] 1 where the trace is empty
    distinct_2: torch.Tensor  # [B] distinct 2-gram ratio (NaN for traces under 2 tokens)
    distinct_3: torch.Tensor  # [B] distinct 3-gram ratio (NaN for traces under 3 tokens)
    group_reward_std: torch.Tensor  # [Q] std of the group's rewards
    zero_std_group: torch.Tensor  # [Q] 1 where all K rewards are equal (no learning signal)
    filtered_group: torch.Tensor  # [Q] 1 where RLPR's std filter dropped the group
    entropy_sum: torch.Tensor  # [1] summed policy entropy over trace tokens
    entropy_count: torch.Tensor  # [1] trace tokens counted in entropy_sum
    # traces sampled by another engine (vLLM): its policy against the trainer's (nrt.rollout_correction)
    rollout_kl_sum: torch.Tensor  # [1]
    rollout_ratio_sum: torch.Tensor  # [1]
    rollout_ratio_max: torch.Tensor  # [1]
    rollout_tokens: torch.Tensor  # [1] 0 when the trainer's own model sampled

    @classmethod
    def of(cls, rollout, scores, answer: torch.Tensor, answer_mask: torch.Tensor, baseline: torch.Tensor,
           entropy: torch.Tensor | None, response_start_id: int, logprobs: torch.Tensor) -> "TraceStats":
        """From a rollout, its scores (`nrt.scoring.Scores`), the answer log-probs [B, T] after each
        trace and without one, the entropy [B, C] and the trainer's log-probs [B, C] of every completion token."""
        k = rollout.num_generations
        reward = scores.reward.float()
        trace_tokens = rollout.trace_mask & (rollout.batch.completion_ids != response_start_id)
        if rollout.rollout_logprobs is not None:
            gap = mismatch(logprobs, rollout.rollout_logprobs, rollout.trace_mask)
        else:
            gap = mismatch(logprobs, logprobs, torch.zeros_like(rollout.trace_mask))
        return cls(
            reward=reward,
            answer_logprob=answer.sum(-1),
            answer_logprob_no_trace=(baseline * answer_mask).sum(-1),
            trace_length=rollout.trace_length.float(),
            emitted_response_start=rollout.emitted_response_start.float(),
            empty_trace=(rollout.trace_length == 0).float(),
            distinct_2=rollout.distinct_2.float(),
            distinct_3=rollout.distinct_3.float(),
            group_reward_std=scores.group_std.float(),
            zero_std_group=is_constant(scores.reward.view(-1, k), scores.group_std[:, None]).squeeze(1).float(),
            filtered_group=(~scores.kept).float(),
            entropy_sum=(entropy * trace_tokens).sum().reshape(1),
            entropy_count=trace_tokens.sum().float().reshape(1),
            rollout_kl_sum=gap.kl_sum, rollout_ratio_sum=gap.ratio_sum, rollout_ratio_max=gap.ratio_max,
            rollout_tokens=gap.tokens,
        )

    @staticmethod
    def reduce(records: list["TraceStats"], gather=lambda x: x) -> dict[str, float]:
        """The step's trace metrics over every micro-batch and (through `gather`) every process:
        means over traces or questions, min/max of lengths, entropy per trace token."""
        device = records[0].reward.device
        c = {f.name: gather(torch.cat([getattr(r, f.name) for r in records]).float().to(device))
             for f in fields(TraceStats)}
        metrics = {
            "reward_mean": c["reward"].mean(),
            "reward_std": c["reward"].std(),
            "answer_logprob": c["answer_logprob"].mean(),
            "answer_logprob_no_trace": c["answer_logprob_no_trace"].mean(),
            "reasoning_gain": c["answer_logprob"].mean() - c["answer_logprob_no_trace"].mean(),
            "trace_length_mean": c["trace_length"].mean(),
            "trace_length_min": c["trace_length"].min(),
            "trace_length_max": c["trace_length"].max(),
            "response_start_share": c["emitted_response_start"].mean(),
            "trace_entropy": c["entropy_sum"].sum() / c["entropy_count"].sum().clamp_min(1),
            "zero_std_group_share": c["zero_std_group"].mean(),
            "group_reward_std_mean": c["group_reward_std"].mean(),
            "filtered_group_share": c["filtered_group"].mean(),
            "empty_trace_share": c["empty_trace"].mean(),
            "distinct_2": c["distinct_2"].nanmean(),
            "distinct_3": c["distinct_3"].nanmean(),
        }
        tokens = c["rollout_tokens"].sum()
        if tokens > 0:  # another engine sampled: how far its policy is from the trainer's
            metrics.update(rollout_kl=c["rollout_kl_sum"].sum() / tokens,
                           rollout_ratio_mean=c["rollout_ratio_sum"].sum() / tokens,
                           rollout_ratio_max=c["rollout_ratio_max"].max())
        return {k: float(v) for k, v in metrics.items()}
