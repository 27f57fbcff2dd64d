"""The NRT loss (NRT_SPEC section 6): a trace term, a response-prefix term and an answer term.

    loss = trace_coef * L_trace + prefix_coef * L_prefix + answer_coef * L_answer

    L_trace  = a policy loss over trace tokens and a self-emitted <|response_start|>, by default
               -A_k * sg(clip(r, 1-eps_low, 1+eps_high)) * log pi(t), dropping a token when
               (A_k > 0 and r > 1+eps_high) or (A_k < 0 and r < 1-eps_low)  (CISPO-style;
               r = pi / pi_old per token); PPO-clip and plain REINFORCE are the alternatives
    L_prefix = -log pi(<|response_start|>)  for traces that did not emit it themselves
    L_answer = -w_ik * log pi(y*_i | x, z_k, y*_<i)  over answer tokens (w = 1 for the fixed
               token signal, the group-normalised c_i * df/dc_i for the derived one)
    (+ beta * KL(pi || pi_ref) on trace tokens, k3 estimator, when a reference model is used)

With traces sampled by another engine (vLLM), each trace token's term is multiplied by its
truncated importance weight min(pi_theta / pi_rollout, clip_max) (`nrt.rollout_correction`).

Each term is a sum over a sequence's tokens divided by a constant (`loss_normalizer`, 512 in
the official recipe), then a mean over sequences, so a token's weight does not depend on
how long the other sequences in the batch are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# (logprobs [B, C], old_logprobs [B, C], advantages [B, 1], eps_low, eps_high)
#   -> (per-token loss [B, C], dropped-by-clip [B, C] bool)
PolicyLoss = Callable[..., tuple[torch.Tensor, torch.Tensor]]
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str):
    def decorator(fn: PolicyLoss) -> PolicyLoss:
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


@register_policy_loss("cispo")
def cispo(lp, old, adv, eps_low, eps_high):
    """-A * sg(clip(r, 1-eps_low, 1+eps_high)) * log pi; a token is dropped when
    (A > 0 and r > 1+eps_high) or (A < 0 and r < 1-eps_low).  (NRT's official recipe)"""
    ratio = (lp - old).exp()
    dropped = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low))
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high).detach()
    return -adv * clipped * lp * (~dropped), dropped


@register_policy_loss("ppo")
def ppo(lp, old, adv, eps_low, eps_high):
    """-min(r * A, clip(r, 1-eps_low, 1+eps_high) * A); "dropped" marks tokens where the clip
    is active (their gradient is zero).  (PPO / GRPO; RLPR uses 0.2 / 0.27)"""
    ratio = (lp - old).exp()
    unclipped, clipped = ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    dropped = clipped < unclipped
    return -torch.minimum(unclipped, clipped), dropped


@register_policy_loss("reinforce")
def reinforce(lp, old, adv, eps_low, eps_high):
    """-A * r with r = pi / pi_old: plain REINFORCE (gradient -A * grad log pi on-policy),
    importance-weighted without a clip.  (VeriFree, JLB)"""
    ratio = (lp - old).exp()
    return -adv * ratio, torch.zeros_like(ratio, dtype=torch.bool)


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
    rollout_weights: torch.Tensor | None = None  # [B, C] importance weights of traces sampled by another engine


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
    policy_loss: str = "cispo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    trace_coef: float = 1.0,
    prefix_coef: float = 1.0,
    answer_coef: float = 1.0,
    beta: float = 0.0,
    loss_normalizer: float = 512.0,
) -> LossOutputs:
    trace_mask = x.trace_mask.to(x.completion_logprobs.dtype)
    per_token, dropped = POLICY_LOSSES[policy_loss](
        x.completion_logprobs, x.old_completion_logprobs, x.advantages[:, None], epsilon_low, epsilon_high
    )
    if x.rollout_weights is not None:
        per_token = per_token * x.rollout_weights.detach()
    trace_loss = _per_sequence_mean(per_token * trace_mask, loss_normalizer)

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
