"""The NRT loss (NRT_SPEC section 6): a trace term, a response-prefix term and an answer term.

    loss = trace_coef * L_trace + prefix_coef * L_prefix + answer_coef * L_answer

    L_trace  = -A_k * sg(clip(r, 1-eps_low, 1+eps_high)) * log pi(t)  over trace tokens and a
               self-emitted <|response_start|>, dropping a token when (A_k > 0 and r > 1+eps_high)
               or (A_k < 0 and r < 1-eps_low)  (CISPO-style; r = pi / pi_old per token)
    L_prefix = -log pi(<|response_start|>)  for traces that did not emit it themselves
    L_answer = -w_ik * log pi(y*_i | x, z_k, y*_<i)  over answer tokens (w = 1 for the fixed
               token signal, the group-normalised c_i * df/dc_i for the derived one)
    (+ beta * KL(pi || pi_ref) on trace tokens, k3 estimator, when a reference model is used)

Each term is a sum over a sequence's tokens divided by a constant (`loss_normalizer`, 512 in
the official recipe), then a mean over sequences, so a token's weight does not depend on
how long the other sequences in the batch are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossInputs:
    """All tensors of one micro-batch of B sequences; C completion columns, T answer columns."""

    completion_logprobs: torch.Tensor  # [B, C] log pi of every completion token (with grad)
    old_completion_logprobs: torch.Tensor  # [B, C] the same under the rollout policy (no grad)
    trace_mask: torch.Tensor  # [B, C] trace tokens + a self-emitted <|response_start|>
    advantages: torch.Tensor  # [B]
    prefix_mask: torch.Tensor  # [B, C] the appended <|response_start|> (at most one per row)
    answer_logprobs: torch.Tensor  # [B, T] log pi of the reference answer tokens (with grad)
    answer_mask: torch.Tensor  # [B, T]
    answer_weights: torch.Tensor  # [B, T] w_ik (no grad)
    ref_logprobs: torch.Tensor | None = None  # [B, C] reference policy, only when beta > 0


@dataclass
class LossOutputs:
    loss: torch.Tensor
    trace_loss: torch.Tensor
    prefix_loss: torch.Tensor
    answer_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor  # share of trace tokens dropped by the clip


def _per_sequence_mean(per_token: torch.Tensor, normalizer: float) -> torch.Tensor:
    return (per_token.sum(-1) / normalizer).mean()


def nrt_loss(
    x: LossInputs,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    trace_coef: float = 1.0,
    prefix_coef: float = 1.0,
    answer_coef: float = 1.0,
    beta: float = 0.0,
    loss_normalizer: float = 512.0,
) -> LossOutputs:
    trace_mask = x.trace_mask.to(x.completion_logprobs.dtype)
    adv = x.advantages[:, None]
    ratio = (x.completion_logprobs - x.old_completion_logprobs).exp()
    dropped = ((adv > 0) & (ratio > 1 + epsilon_high)) | ((adv < 0) & (ratio < 1 - epsilon_low))
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high).detach()
    keep = trace_mask * (~dropped).to(trace_mask.dtype)
    trace_loss = _per_sequence_mean(-adv * clipped_ratio * x.completion_logprobs * keep, loss_normalizer)

    prefix_loss = _per_sequence_mean(-x.completion_logprobs * x.prefix_mask, loss_normalizer)
    answer_loss = _per_sequence_mean(-x.answer_weights * x.answer_logprobs * x.answer_mask, loss_normalizer)

    kl = torch.zeros((), dtype=trace_loss.dtype, device=trace_loss.device)
    if beta != 0.0:
        if x.ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        delta = x.ref_logprobs - x.completion_logprobs
        kl = _per_sequence_mean((delta.exp() - delta - 1) * trace_mask, loss_normalizer)

    loss = trace_coef * trace_loss + prefix_coef * prefix_loss + answer_coef * answer_loss + beta * kl
    clip_fraction = (dropped.to(trace_mask.dtype) * trace_mask).sum() / trace_mask.sum().clamp_min(1)
    return LossOutputs(loss, trace_loss, prefix_loss, answer_loss, kl, clip_fraction.detach())
