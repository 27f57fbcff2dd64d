"""Truncated importance weights and the rollout-vs-trainer mismatch (nrt.rollout_correction) against a
hand computation, and their place in the loss and the step's metrics."""

import math

import pytest
import torch

from nrt.loss import LossInputs, nrt_loss
from nrt.rollout_correction import mismatch, truncated_importance_weights

# two traces: 3 and 2 trace tokens
TRAINER = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.3, -1.2, 0.0, 0.0]], dtype=torch.float64)
ROLLOUT = torch.tensor([[-1.1, -1.5, -0.5, 0.0], [-0.3, -3.0, 0.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])
# log r = trainer - rollout on the masked tokens: 0.1, -0.5, 0 | 0, 1.8
LOG_R = [0.1, -0.5, 0.0, 0.0, 1.8]


def test_truncated_weights_by_hand():
    w = truncated_importance_weights(TRAINER, ROLLOUT, MASK, clip_max=3.0)
    want = [[math.exp(0.1), math.exp(-0.5), 1.0, 1.0], [1.0, 3.0, 1.0, 1.0]]  # exp(1.8) = 6.05 capped at 3
    torch.testing.assert_close(w, torch.tensor(want, dtype=torch.float64))
    assert not truncated_importance_weights(TRAINER.clone().requires_grad_(), ROLLOUT, MASK, 3.0).requires_grad


def test_mismatch_sums_by_hand():
    m = mismatch(TRAINER, ROLLOUT, MASK)
    k3 = sum(math.exp(x) - 1 - x for x in LOG_R)  # KL(rollout || trainer), k3 estimator per token
    assert m.kl_sum.item() == pytest.approx(k3, rel=1e-12)
    assert m.ratio_sum.item() == pytest.approx(sum(math.exp(x) for x in LOG_R), rel=1e-12)
    assert m.ratio_max.item() == pytest.approx(math.exp(1.8), rel=1e-12)
    assert m.tokens.item() == 5
    same = mismatch(TRAINER, TRAINER, MASK)
    assert same.kl_sum.item() == 0 and same.ratio_sum.item() == 5 and same.ratio_max.item() == 1


def test_the_weights_scale_each_trace_tokens_gradient():
    """REINFORCE on-policy: d L_trace / d log pi(t) = -A_b * w_t / (normalizer * B) on trace tokens."""
    lp = TRAINER.clone().requires_grad_()
    adv = torch.tensor([0.7, -1.3], dtype=torch.float64)
    w = truncated_importance_weights(TRAINER, ROLLOUT, MASK, 3.0)
    zeros = torch.zeros_like(TRAINER)
    inputs = LossInputs(lp, lp.detach(), MASK, adv, torch.zeros_like(MASK), zeros[:, :1], MASK[:, :1], zeros[:, :1],
                        rollout_weights=w)
    out = nrt_loss(inputs, policy_loss="reinforce", loss_normalizer=4.0, prefix_coef=0.0, answer_coef=0.0)
    out.loss.backward()
    want = -adv[:, None] * w * MASK / (4.0 * 2)
    torch.testing.assert_close(lp.grad, want)
    # the loss value too: sum over tokens of -A * r(=1) * w, / normalizer, mean over the 2 traces
    assert out.trace_loss.item() == pytest.approx(float((-adv[:, None] * w * MASK).sum() / 4.0 / 2), rel=1e-12)


def test_step_metrics_hold_the_mismatch_over_micro_batches():
    """TraceStats.reduce: rollout_kl = summed k3 / tokens over every micro-batch, ratio mean likewise, max of maxes."""
    from nrt.training.stats import TraceStats

    def record(trainer, rollout, mask):
        gap = mismatch(trainer, rollout, mask)
        b = trainer.shape[0]
        one = torch.ones(1)
        return TraceStats(torch.zeros(b), torch.zeros(b), torch.zeros(b), torch.ones(b), torch.zeros(b),
                          torch.zeros(b), torch.ones(b), torch.ones(b), torch.ones(1), torch.zeros(1), torch.zeros(1),
                          one, one, gap.kl_sum, gap.ratio_sum, gap.ratio_max, gap.tokens)

    first = record(TRAINER[:1], ROLLOUT[:1], MASK[:1])
    second = record(TRAINER[1:], ROLLOUT[1:], MASK[1:])
    metrics = TraceStats.reduce([first, second])
    assert metrics["rollout_kl"] == pytest.approx(sum(math.exp(x) - 1 - x for x in LOG_R) / 5, rel=1e-6)
    assert metrics["rollout_ratio_mean"] == pytest.approx(sum(math.exp(x) for x in LOG_R) / 5, rel=1e-6)
    assert metrics["rollout_ratio_max"] == pytest.approx(math.exp(1.8), rel=1e-6)
    native = record(TRAINER, TRAINER, torch.zeros_like(MASK))  # the trainer's own model sampled: no such metrics
    assert "rollout_kl" not in TraceStats.reduce([native])
