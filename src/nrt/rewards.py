"""Aggregations: from per-token answer probabilities to a trace reward (NRT_SPEC section 5).

Every mode is a function f(c_1..c_T) of the probabilities c_i = pi(y*_i | x, z, y*_<i) that
the policy gives the reference answer's tokens after a trace z. Each returns

    trace_reward  R = f(c)            [B]     the reward of the trace (RL term)
    token_signal  c_i * df/dc_i       [B, T]  the weight of the answer token's NLL term

All inputs are [B, T]: answer tokens only, left-aligned, padding masked by `mask`; the
baseline row of a trace is its question's no-trace log-probabilities c0 (position-aligned).
Everything is computed from log-probabilities (logsumexp for means of probabilities) and
vectorised over the batch. T counts valid tokens only.

Add a mode by writing one function with the `@register_aggregation` decorator.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Aggregation = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
AGGREGATIONS: dict[str, Aggregation] = {}


def register_aggregation(name: str):
    def decorator(fn: Aggregation) -> Aggregation:
        AGGREGATIONS[name] = fn
        return fn

    return decorator


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x.masked_fill(~mask, -math.inf), dim=-1)


def _require_baseline(baseline: torch.Tensor | None, mode: str) -> torch.Tensor:
    if baseline is None:
        raise ValueError(f"aggregation {mode!r} needs baseline_logprobs (the no-trace answer log-probabilities)")
    return baseline


@register_aggregation("log_prob")
def log_prob(lp, mask, baseline):
    """R = sum_i log c_i;  c_i * df/dc_i = 1.  (JLB / JEPO / LaTRO)"""
    reward = (lp * mask).sum(-1)
    return reward, mask.to(lp.dtype)


@register_aggregation("prob")
def prob(lp, mask, baseline):
    """R = prod_i c_i;  c_i * df/dc_i = prod_j c_j for every i.  (VeriFree)"""
    reward = (lp * mask).sum(-1).exp()
    return reward, reward[:, None] * mask


@register_aggregation("arithmetic_mean")
def arithmetic_mean(lp, mask, baseline):
    """R = (1/T) sum_i c_i;  c_i * df/dc_i = c_i / T.  (RLPR before its debiasing)"""
    n = mask.sum(-1).to(lp.dtype)
    reward = (_masked_logsumexp(lp, mask) - n.log()).exp()
    return reward, lp.exp() / n[:, None] * mask


@register_aggregation("geometric_mean")
def geometric_mean(lp, mask, baseline):
    """R = (prod_i c_i)^(1/T);  c_i * df/dc_i = R / T.  (NRT-GM)"""
    n = mask.sum(-1).to(lp.dtype)
    reward = ((lp * mask).sum(-1) / n).exp()
    return reward, (reward / n)[:, None] * mask


@register_aggregation("weighted_sum_inverse_prob")
def weighted_sum_inverse_prob(lp, mask, baseline):
    """R = (1/T) sum_i c_i / c0_i;  c_i * df/dc_i = c_i / (T * c0_i).  (NRT-WS(1/p))"""
    base = _require_baseline(baseline, "weighted_sum_inverse_prob")
    n = mask.sum(-1).to(lp.dtype)
    log_ratio = lp - base
    reward = (_masked_logsumexp(log_ratio, mask) - n.log()).exp()
    return reward, log_ratio.exp() / n[:, None] * mask


@register_aggregation("weighted_sum_log_prob")
def weighted_sum_log_prob(lp, mask, baseline):
    """R = (1/T) sum_i c_i * (-log c0_i);  c_i * df/dc_i = c_i * (-log c0_i) / T.  (NRT-WS(-log p))

    The weight -log c0_i is the token's surprisal without a trace: tokens the model cannot
    produce without thinking count most. It does not depend on the trace.
    """
    base = _require_baseline(baseline, "weighted_sum_log_prob")
    n = mask.sum(-1).to(lp.dtype)
    signal = lp.exp() * (-base) / n[:, None] * mask
    return signal.sum(-1), signal


def aggregate(
    mode: str,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    baseline_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace reward [B] and token signal [B, T] (zero where masked) for aggregation `mode`.

    logprobs, mask, baseline_logprobs: [B, T], answer tokens only, left-aligned.
    Raises ValueError for an unknown mode, a row without answer tokens, or a reward
    that is NaN or infinite (never silently used).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    mask = mask.bool()
    if logprobs.shape != mask.shape or (baseline_logprobs is not None and baseline_logprobs.shape != mask.shape):
        raise ValueError("logprobs, mask and baseline_logprobs must have the same [B, T] shape")
    if not mask.any(-1).all():
        raise ValueError("every row needs at least one answer token (the eos counts)")
    # Padding may hold anything (even -inf); zero it so masked positions cannot leak NaN.
    logprobs = logprobs.masked_fill(~mask, 0.0)
    if baseline_logprobs is not None:
        baseline_logprobs = baseline_logprobs.masked_fill(~mask, 0.0)
    reward, signal = AGGREGATIONS[mode](logprobs, mask, baseline_logprobs)
    if not torch.isfinite(reward).all() or not torch.isfinite(signal).all():
        raise FloatingPointError(f"aggregation {mode!r} produced a NaN or infinite reward")
    return reward, signal
