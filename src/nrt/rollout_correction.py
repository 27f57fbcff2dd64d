"""Off-policy correction for traces sampled by another engine (vLLM) than the trainer's forward.

The engine's weights are a synced bf16 copy running other kernels, so its sampling policy
pi_rollout differs a little from the trainer's pi_theta. Per trace token t (TRL's "token_truncate"
mode, verl's truncated importance sampling):

    r_t = pi_theta(t) / pi_rollout(t) = exp(log pi_theta(t) - log pi_rollout(t))
    w_t = min(r_t, clip_max)                       (no gradient; multiplies the trace term's token loss)

pi_theta is the trainer's policy when the traces were sampled (the update's own detached forward
with one update per rollout, the scoring pass with several). The mismatch is reported per step
over all trace tokens:

    rollout_kl         = mean_t (r_t - 1 - log r_t)     k3 estimate of KL(pi_rollout || pi_theta), >= 0
    rollout_ratio_mean = mean_t r_t,  rollout_ratio_max = max_t r_t
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def log_ratio(trainer_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log r [B, C] = log pi_theta - log pi_rollout on the masked (trace) tokens, 0 elsewhere; no gradient."""
    return torch.where(mask, trainer_logprobs.detach() - rollout_logprobs, torch.zeros_like(rollout_logprobs))


def truncated_importance_weights(trainer_logprobs, rollout_logprobs, mask, clip_max: float) -> torch.Tensor:
    """w [B, C] = min(r, clip_max) on the masked tokens, 1 elsewhere (where it multiplies nothing)."""
    return log_ratio(trainer_logprobs, rollout_logprobs, mask).exp().clamp(max=clip_max)


@dataclass
class Mismatch:
    """Sums over one micro-batch's trace tokens, reduced over micro-batches and processes to the step's metrics."""

    kl_sum: torch.Tensor  # [1] sum of r - 1 - log r
    ratio_sum: torch.Tensor  # [1] sum of r
    ratio_max: torch.Tensor  # [1] max of r (0 with no token)
    tokens: torch.Tensor  # [1] trace tokens counted


def mismatch(trainer_logprobs, rollout_logprobs, mask) -> Mismatch:
    lr = log_ratio(trainer_logprobs, rollout_logprobs, mask).double()
    r = lr.exp()
    m = mask.to(r.dtype)
    kl = ((r - 1 - lr) * m).sum()
    ratio_max = (r * m).max() if mask.any() else torch.zeros((), dtype=r.dtype, device=r.device)
    return Mismatch(kl.reshape(1), (r * m).sum().reshape(1), ratio_max.reshape(1), m.sum().reshape(1))
