"""From answer log-probabilities after each trace to rewards, advantages and answer weights.

    reward      R_k = f(c_1k .. c_Tk)                         the aggregation (rewards.py)
    shaping     R_k - R0, clip, format mix                   prior methods only (shaping.py)
    advantage   A_k over the group of K traces                (advantages.py)
    filter      A_k = 0 for groups under RLPR's std threshold prior methods only
    weights     w_ik of the answer term: 1 (fixed), normalised c_i df/dc_i (derived),
                R_k (reward, VeriFree), K x the trace's posterior share (posterior: the
                marginal likelihood's) or 0 (off)

Rows are group-major (q*K + k). A pure function of its inputs, so each preset's numbers can
be checked on a hand-made batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrt.advantages import ADVANTAGES, normalize_token_signal, posterior
from nrt.rewards import aggregate
from nrt.shaping import EmaStdFilter, debias_by_initial, mix_format_reward


@dataclass
class TraceScores:
    reward: torch.Tensor  # [B] after shaping (what the advantage sees)
    raw_reward: torch.Tensor  # [B] the aggregation alone
    advantages: torch.Tensor  # [B]
    answer_weights: torch.Tensor  # [B, T]
    group_std: torch.Tensor  # [Q] std of the shaped rewards per group
    kept: torch.Tensor  # [Q] bool, False for groups the std filter dropped


def score_traces(
    method,
    k: int,
    answer_logprobs: torch.Tensor,
    answer_mask: torch.Tensor,
    baseline_logprobs: torch.Tensor,
    well_formed: torch.Tensor,
    initial_no_trace_reward: torch.Tensor | None = None,
    std_filter: EmaStdFilter | None = None,
) -> TraceScores:
    """`method` is a MethodConfig; tensors [B, T] / [B] as in the module docstring.

    well_formed [B]: the trace ended in `<|response_start|>` itself (the format reward).
    initial_no_trace_reward [B]: R0 per row, needed when method.reward_baseline is
    "initial_no_trace". Rewards are computed in float64.
    """
    m = method
    raw, token_signal = aggregate(m.aggregation, answer_logprobs.double(), answer_mask, baseline_logprobs.double())
    reward = raw
    if m.reward_baseline == "initial_no_trace":
        if initial_no_trace_reward is None:
            raise ValueError("method.reward_baseline=initial_no_trace needs the initial no-trace rewards")
        reward = debias_by_initial(reward, initial_no_trace_reward.to(reward), m.reward_clip_min)
    elif m.reward_clip_min is not None:
        reward = reward.clamp_min(m.reward_clip_min)
    if m.format_reward_weight > 0:
        reward = mix_format_reward(reward, well_formed, m.format_reward_weight)

    advantages = ADVANTAGES[m.advantage](reward, k)
    group_std = reward.view(-1, k).std(1)
    kept = torch.ones_like(group_std, dtype=torch.bool)
    if std_filter is not None:
        kept = std_filter.keep(group_std)
        advantages = advantages * kept.repeat_interleave(k)

    mask = answer_mask.to(torch.float32)
    if m.answer_loss == "fixed":
        weights = mask
    elif m.answer_loss == "derived":
        weights = normalize_token_signal(token_signal, answer_mask, k).float()
    elif m.answer_loss == "reward":
        weights = raw.float()[:, None] * mask
    elif m.answer_loss == "posterior":  # raw = log p(y* | x, z_k): config requires the log_prob aggregation
        weights = posterior(raw, k).float()[:, None] * mask
    else:
        weights = torch.zeros_like(mask)
    return TraceScores(reward, raw, advantages.float(), weights, group_std, kept)
