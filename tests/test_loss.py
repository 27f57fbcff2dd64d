"""Tests for nrt.loss.nrt_loss (NRT_SPEC section 6) on hand-made batches.

Each term: sum over a sequence's tokens / loss_normalizer, then mean over the B sequences.
Gradients are taken with autograd and compared with closed forms.
"""

import math

import pytest
import torch

from nrt.loss import LossInputs, nrt_loss

B, C, T = 3, 5, 4


def make_inputs(seed=0, advantages=(1.5, -0.7, 0.0), old=None):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(B, C, generator=g, dtype=torch.float64) * 3 - 0.05).requires_grad_(True)
    alp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.05).requires_grad_(True)
    trace_mask = torch.tensor(
        [[1, 1, 1, 1, 0],  # row 0: 4 trace tokens, then the appended <|response_start|>
         [1, 1, 1, 1, 1],  # row 1: trace + a self-emitted <|response_start|>, no prefix token
         [1, 1, 0, 0, 0]],  # row 2: 2 trace tokens, appended <|response_start|> at column 2
        dtype=torch.bool,
    )
    prefix_mask = torch.tensor(
        [[0, 0, 0, 0, 1],
         [0, 0, 0, 0, 0],
         [0, 0, 1, 0, 0]],
        dtype=torch.bool,
    )
    answer_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    weights = torch.randn(B, T, generator=g, dtype=torch.float64)
    return LossInputs(
        completion_logprobs=lp,
        old_completion_logprobs=lp.detach().clone() if old is None else old,
        trace_mask=trace_mask,
        advantages=torch.tensor(advantages, dtype=torch.float64),
        prefix_mask=prefix_mask,
        answer_logprobs=alp,
        answer_mask=answer_mask,
        answer_weights=weights,
    )


def grad_of(value, tensor):
    (grad,) = torch.autograd.grad(value, tensor, retain_graph=True, allow_unused=False)
    return grad


# --------------------------------------------------------------------------- trace term


@pytest.mark.parametrize("normalizer", [512.0, 7.0])
def test_on_policy_trace_gradient_closed_form(normalizer):
    x = make_inputs()
    out = nrt_loss(x, loss_normalizer=normalizer)
    m = x.trace_mask.double()
    adv = x.advantages[:, None]
    expected_grad = -adv * m / normalizer / B
    torch.testing.assert_close(grad_of(out.trace_loss, x.completion_logprobs), expected_grad)
    # value: mean over rows of -A_k * sum_t log pi(t) / normalizer (ratio = 1 on-policy)
    expected = (-(x.advantages * (x.completion_logprobs.detach() * m).sum(-1)) / normalizer).mean()
    torch.testing.assert_close(out.trace_loss.detach(), expected)
    assert out.clip_fraction.item() == 0.0


def test_trace_gradient_worked_numbers():
    # B=3, N=512, A = [1.5, -0.7, 0]: each valid trace token of row 0 gets -1.5/512/3 = -1/1024,
    # row 1 gets +0.7/1536, row 2 gets 0 (a zero advantage gives no trace gradient).
    x = make_inputs()
    grad = grad_of(nrt_loss(x).trace_loss, x.completion_logprobs)
    assert grad[0, 0].item() == pytest.approx(-1 / 1024, rel=1e-12)
    assert grad[0, 4].item() == 0.0  # the appended <|response_start|> is not a trace token
    assert grad[1, 4].item() == pytest.approx(0.7 / 1536, rel=1e-12)
    assert torch.equal(grad[2], torch.zeros(C, dtype=torch.float64))


def test_off_policy_cispo_cases():
    # ratio r = exp(lp - old) per token, eps_low = 0.2, eps_high = 0.28 (clip to [0.8, 1.28]).
    #   row 0, A = +2: r = 1.5 dropped (A>0, r>1.28); r = 0.5 kept with weight 0.8;
    #                  r = 1.1 kept with weight 1.1;  r = 1.28 - tiny kept with weight r;
    #                  col 4 padding with r = 5 (not a trace token: neither dropped nor counted)
    #   row 1, A = -1: r = 0.5 dropped (A<0, r<0.8); r = 1.5 kept with weight 1.28;
    #                  r = 0.9 kept with weight 0.9; r = 0.81 kept; r = 3 kept with weight 1.28
    #   row 2, A = 0:  r = 2.0 and r = 0.1: nothing dropped, zero gradient
    ratios = torch.tensor(
        [[1.5, 0.5, 1.1, 1.2799, 5.0],
         [0.5, 1.5, 0.9, 0.81, 3.0],
         [2.0, 0.1, 1.0, 1.0, 1.0]],
        dtype=torch.float64,
    )
    weight = torch.tensor(
        [[0.0, 0.8, 1.1, 1.2799, 0.0],
         [0.0, 1.28, 0.9, 0.81, 1.28],
         [0.0, 0.0, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    x = make_inputs(advantages=(2.0, -1.0, 0.0))
    x.old_completion_logprobs = x.completion_logprobs.detach() - ratios.log()
    out = nrt_loss(x, epsilon_low=0.2, epsilon_high=0.28, loss_normalizer=10.0)
    adv = x.advantages[:, None]
    expected_grad = -adv * weight / 10.0 / B
    grad = grad_of(out.trace_loss, x.completion_logprobs)
    torch.testing.assert_close(grad, expected_grad)
    # 2 dropped tokens (row 0 col 0, row 1 col 0) out of 4 + 5 + 2 = 11 trace tokens
    assert out.clip_fraction.item() == pytest.approx(2 / 11, rel=1e-12)
    assert not out.clip_fraction.requires_grad
    expected = (-(adv * weight * x.completion_logprobs.detach()).sum(-1) / 10.0).mean()
    torch.testing.assert_close(out.trace_loss.detach(), expected)


def test_off_policy_other_eps():
    # eps_low = 0.5, eps_high = 0.1: r = 1.2 with A>0 is now dropped, r = 0.6 with A<0 now kept.
    ratios = torch.tensor([[1.2, 1.05, 0.4, 1.0, 1.0], [0.6, 0.4, 1.3, 1.0, 1.0], [1.0] * 5], dtype=torch.float64)
    weight = torch.tensor([[0.0, 1.05, 0.5, 1.0, 0.0], [0.6, 0.0, 1.1, 1.0, 1.0], [0.0] * 5], dtype=torch.float64)
    x = make_inputs(advantages=(1.0, -3.0, 0.0))
    x.old_completion_logprobs = x.completion_logprobs.detach() - ratios.log()
    out = nrt_loss(x, epsilon_low=0.5, epsilon_high=0.1, loss_normalizer=1.0)
    expected_grad = -x.advantages[:, None] * weight / B
    torch.testing.assert_close(grad_of(out.trace_loss, x.completion_logprobs), expected_grad)
    assert out.clip_fraction.item() == pytest.approx(2 / 11, rel=1e-12)


# --------------------------------------------------------------------------- prefix and answer


@pytest.mark.parametrize("normalizer", [512.0, 3.0])
def test_prefix_term(normalizer):
    x = make_inputs(seed=1)
    out = nrt_loss(x, loss_normalizer=normalizer)
    lp = x.completion_logprobs.detach()
    expected = sum(-lp[b][x.prefix_mask[b]].sum().item() / normalizer for b in range(B)) / B
    assert out.prefix_loss.item() == pytest.approx(expected, rel=1e-12)
    # hand check: rows 0 and 2 each contribute -lp at their prefix column, row 1 nothing
    assert out.prefix_loss.item() == pytest.approx(-(lp[0, 4] + lp[2, 2]).item() / normalizer / 3, rel=1e-12)
    expected_grad = -x.prefix_mask.double() / normalizer / B
    torch.testing.assert_close(grad_of(out.prefix_loss, x.completion_logprobs), expected_grad)


@pytest.mark.parametrize("normalizer", [512.0, 3.0])
def test_answer_term(normalizer):
    x = make_inputs(seed=2)
    x.answer_weights[x.answer_mask.logical_not()] = 1e3  # padding weights must not count
    out = nrt_loss(x, loss_normalizer=normalizer)
    alp = x.answer_logprobs.detach()
    expected = 0.0
    for b in range(B):
        row = 0.0
        for t in range(T):
            if x.answer_mask[b, t]:
                row += -x.answer_weights[b, t].item() * alp[b, t].item()
        expected += row / normalizer
    expected /= B
    assert out.answer_loss.item() == pytest.approx(expected, rel=1e-12)
    expected_grad = -x.answer_weights * x.answer_mask / normalizer / B
    torch.testing.assert_close(grad_of(out.answer_loss, x.answer_logprobs), expected_grad)
    # the answer term does not touch the completion log-probs
    assert grad_of(out.answer_loss + 0 * x.completion_logprobs.sum(), x.completion_logprobs).abs().max() == 0


def test_fixed_token_signal_is_plain_nll():
    x = make_inputs(seed=3)
    x.answer_weights = torch.ones(B, T, dtype=torch.float64)
    out = nrt_loss(x, loss_normalizer=1.0)
    nll = -(x.answer_logprobs.detach() * x.answer_mask).sum(-1).mean()
    torch.testing.assert_close(out.answer_loss.detach(), nll)


def test_coefficients_scale_each_term():
    x = make_inputs(seed=4)
    x.old_completion_logprobs = x.completion_logprobs.detach() + 0.1
    base = nrt_loss(x)
    torch.testing.assert_close(base.loss, base.trace_loss + base.prefix_loss + base.answer_loss)
    out = nrt_loss(x, trace_coef=0.3, prefix_coef=2.0, answer_coef=5.0)
    for name in ("trace_loss", "prefix_loss", "answer_loss"):
        torch.testing.assert_close(getattr(out, name), getattr(base, name))
    torch.testing.assert_close(out.loss, 0.3 * base.trace_loss + 2.0 * base.prefix_loss + 5.0 * base.answer_loss)
    g_lp = grad_of(out.loss, x.completion_logprobs)
    expected = (0.3 * grad_of(base.trace_loss, x.completion_logprobs)
                + 2.0 * grad_of(base.prefix_loss, x.completion_logprobs))
    torch.testing.assert_close(g_lp, expected)
    torch.testing.assert_close(grad_of(out.loss, x.answer_logprobs), 5.0 * grad_of(base.answer_loss, x.answer_logprobs))
    zero = nrt_loss(x, trace_coef=0.0, prefix_coef=0.0, answer_coef=1.0)
    torch.testing.assert_close(zero.loss, base.answer_loss)


# --------------------------------------------------------------------------- KL


def test_beta_without_ref_raises():
    with pytest.raises(ValueError):
        nrt_loss(make_inputs(), beta=0.1)


def test_no_kl_by_default():
    x = make_inputs()
    x.ref_logprobs = x.completion_logprobs.detach() - 1.0
    out = nrt_loss(x)
    assert out.kl.item() == 0.0
    torch.testing.assert_close(out.loss, out.trace_loss + out.prefix_loss + out.answer_loss)


@pytest.mark.parametrize("normalizer", [512.0, 2.0])
def test_kl_k3_formula(normalizer):
    x = make_inputs(seed=5)
    g = torch.Generator().manual_seed(9)
    x.ref_logprobs = x.completion_logprobs.detach() + torch.randn(B, C, generator=g, dtype=torch.float64)
    beta = 0.25
    out = nrt_loss(x, beta=beta, loss_normalizer=normalizer)
    lp = x.completion_logprobs.detach()
    expected = 0.0
    for b in range(B):
        row = 0.0
        for c in range(C):
            if x.trace_mask[b, c]:
                d = x.ref_logprobs[b, c].item() - lp[b, c].item()
                row += math.exp(d) - d - 1
        expected += row / normalizer
    expected /= B
    assert out.kl.item() == pytest.approx(expected, rel=1e-12)
    assert out.kl.item() > 0
    torch.testing.assert_close(out.loss, out.trace_loss + out.prefix_loss + out.answer_loss + beta * out.kl)
    # d/dlp [exp(ref - lp) - (ref - lp) - 1] = 1 - exp(ref - lp)
    expected_grad = (1 - (x.ref_logprobs - lp).exp()) * x.trace_mask / normalizer / B
    torch.testing.assert_close(grad_of(out.kl, x.completion_logprobs), expected_grad)


def test_kl_zero_when_policy_equals_reference():
    x = make_inputs(seed=6)
    x.ref_logprobs = x.completion_logprobs.detach().clone()
    out = nrt_loss(x, beta=1.0)
    assert out.kl.item() == 0.0
