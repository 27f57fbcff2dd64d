"""Reward shaping pieces used by the prior verifier-free methods (NRT_SPEC section 8).

NRT itself uses none of them; the RLPR preset uses all three.
"""

from __future__ import annotations

import torch


def debias_by_initial(reward: torch.Tensor, initial_no_trace: torch.Tensor, clip_min: float | None) -> torch.Tensor:
    """R - R0, optionally clipped below at `clip_min`; R0 [B] is the same aggregation of the
    answer probabilities without a trace under the initial policy (RLPR's debiasing)."""
    shaped = reward - initial_no_trace
    return shaped.clamp_min(clip_min) if clip_min is not None else shaped


def mix_format_reward(reward: torch.Tensor, well_formed: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - w) * R + w * F with F = 1 for a trace that ended in <|response_start|> itself, else 0
    (RLPR mixes 0.9 of its probability reward with 0.1 of a format reward)."""
    return (1.0 - weight) * reward + weight * well_formed.to(reward.dtype)


class EmaStdFilter:
    """RLPR's prompt filter: drop a group whose reward std is below beta, where beta is an
    exponential moving average (decay `decay`) of the mean group std of past steps.

    beta starts at 0 (every group with any spread is kept) and is updated once per step
    with the step's mean over all groups of all processes, so the filter does not depend
    on how a step is split into micro-batches or processes.
    """

    def __init__(self, decay: float):
        self.decay, self.threshold = decay, 0.0

    def keep(self, group_std: torch.Tensor) -> torch.Tensor:
        """[Q] bool: groups at or above the threshold and with a non-zero std."""
        return (group_std >= self.threshold) & (group_std > 0)

    def update(self, mean_group_std: float) -> None:
        self.threshold = self.decay * self.threshold + (1.0 - self.decay) * mean_group_std

    def state_dict(self) -> dict:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = state["threshold"]
