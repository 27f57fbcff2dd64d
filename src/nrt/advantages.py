"""Advantage estimators: from trace rewards of a group of K traces to per-trace advantages.

Rows are group-major: traces k = 0..K-1 of question q sit at rows q*K + k. Each
estimator takes rewards [N] (N = Q*K) and returns advantages [N]. Add one with
`@register_advantage`.
"""

from __future__ import annotations

from typing import Callable

import torch

# A group counts as constant when its std is within rounding of zero relative to its
# rewards' magnitude (the mean of K equal floats need not equal them exactly), so tiny
# but genuinely different rewards (prob rewards of 1e-8) keep their advantages.
STD_RTOL = 1e-6

AdvantageEstimator = Callable[[torch.Tensor, int], torch.Tensor]
ADVANTAGES: dict[str, AdvantageEstimator] = {}


def register_advantage(name: str):
    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        ADVANTAGES[name] = fn
        return fn

    return decorator


def is_constant(groups: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[Q, 1] bool: groups [Q, K...] whose std is zero up to rounding."""
    scale = groups.abs().flatten(1).amax(1, keepdim=True).view_as(std)
    return std <= STD_RTOL * scale


def _groups(x: torch.Tensor, k: int) -> torch.Tensor:
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rows cannot be split into groups of {k}")
    return x.view(-1, k, *x.shape[1:])


@register_advantage("group_norm")
def group_norm(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """A_k = (R_k - mean_g R) / std_g R, and 0 for a group whose std is 0 (NRT_SPEC section 6).

    std is the unbiased sample std over the group's K rewards, as in GRPO and verl.
    """
    g = _groups(rewards, k)
    centred = g - g.mean(1, keepdim=True)
    std = g.std(1, keepdim=True) if k > 1 else torch.zeros_like(g[:, :1])
    constant = is_constant(g, std)
    return torch.where(constant, 0.0, centred / torch.where(constant, 1.0, std)).flatten()


@register_advantage("rloo")
def rloo(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """A_k = R_k - (1/(K-1)) sum_{j != k} R_j: the leave-one-out baseline, no std scaling.

    (RLOO; VeriFree's estimator and JLB's leave-one-out baseline.)
    """
    g = _groups(rewards, k)
    if k < 2:
        raise ValueError("rloo needs at least 2 traces per group")
    others = (g.sum(1, keepdim=True) - g) / (k - 1)
    return (g - others).flatten()


@register_advantage("posterior")
def posterior(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """A_k = K w_k, w_k = exp(R_k) / sum_j exp(R_j): each trace's posterior share within its group.

    With R_k = log p(y* | x, z_k) (the log_prob aggregation) w_k = p(y*|x,z_k) / sum_j p(y*|x,z_j),
    and -sum_k w_k (log pi(z_k|x) + log p(y*|x,z_k)) has the gradient of the K-sample marginal
    likelihood log (1/K) sum_k p(y* | x, z_k) (z_k held as samples). Never negative; a trace that
    leaves the answer unlikely gets a weight near 0. Times K, so that K equal traces get 1 each
    (the fixed answer term's weight).
    """
    g = _groups(rewards, k)
    return (k * torch.softmax(g, dim=1)).flatten()


def normalize_token_signal(signal: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Centre and scale token signals [N, T] per group over the group's valid answer tokens.

    The derived answer-term weights (NRT_SPEC section 6): w_ik = (s_ik - mean_g s) / std_g s,
    mean and unbiased std over all valid tokens of the group's K traces; 0 where masked and
    for a group whose std is 0.
    """
    mask = mask.to(signal.dtype)
    s, m = _groups(signal * mask, k), _groups(mask, k)
    n = m.sum((1, 2), keepdim=True)
    mean = s.sum((1, 2), keepdim=True) / n
    var = (((s - mean) * m) ** 2).sum((1, 2), keepdim=True) / (n - 1).clamp_min(1)
    std = var.sqrt()
    constant = is_constant(s, std)
    weights = torch.where(constant, 0.0, (s - mean) / torch.where(constant, 1.0, std)) * m
    return weights.flatten(0, 1)
