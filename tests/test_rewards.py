"""Tests for nrt.rewards.aggregate (NRT_SPEC section 5).

Every mode is checked against an independent float64 reference written with plain Python
loops over rows and valid tokens, in probability space (c_i = exp(logprob_i)), and the token
signal against c_i * df/dc_i obtained by autograd on that same reference.
"""

import math

import pytest
import torch

from nrt.rewards import AGGREGATIONS, aggregate

MODES = [
    "log_prob",
    "prob",
    "arithmetic_mean",
    "geometric_mean",
    "weighted_sum_inverse_prob",
    "weighted_sum_log_prob",
]
WEIGHTED = {"weighted_sum_inverse_prob", "weighted_sum_log_prob"}


# --------------------------------------------------------------------------- reference


def reference_f(mode, c, c0):
    """f(c_1..c_T) in probability space with plain loops.

    `c` and `c0` are sequences of scalars (Python floats or 0-d float64 tensors, so that the
    same code serves for values and for autograd). T = len(c), the valid tokens only.
    """
    t = len(c)
    if mode == "log_prob":
        total = 0.0
        for ci in c:
            total = total + (ci.log() if torch.is_tensor(ci) else math.log(ci))
        return total
    if mode == "prob":
        total = 1.0
        for ci in c:
            total = total * ci
        return total
    if mode == "arithmetic_mean":
        total = 0.0
        for ci in c:
            total = total + ci
        return total / t
    if mode == "geometric_mean":
        total = 1.0
        for ci in c:
            total = total * ci
        return total ** (1.0 / t)
    if mode == "weighted_sum_inverse_prob":
        total = 0.0
        for ci, c0i in zip(c, c0):
            total = total + ci / c0i
        return total / t
    if mode == "weighted_sum_log_prob":
        total = 0.0
        for ci, c0i in zip(c, c0):
            total = total + ci * (-math.log(c0i))
        return total / t
    raise AssertionError(mode)


def reference_rewards(mode, lp, mask, base):
    """[B] float64 rewards from the loop reference."""
    out = []
    for b in range(lp.shape[0]):
        c = [math.exp(lp[b, i].item()) for i in range(lp.shape[1]) if mask[b, i]]
        c0 = [math.exp(base[b, i].item()) for i in range(lp.shape[1]) if mask[b, i]]
        out.append(reference_f(mode, c, c0))
    return torch.tensor(out, dtype=torch.float64)


def autograd_signal(mode, lp, mask, base):
    """[B, T] float64: c_i * df/dc_i by autograd on the reference f, zero where masked."""
    out = torch.zeros(lp.shape, dtype=torch.float64)
    for b in range(lp.shape[0]):
        idx = [i for i in range(lp.shape[1]) if mask[b, i]]
        c = torch.tensor([math.exp(lp[b, i].item()) for i in idx], dtype=torch.float64, requires_grad=True)
        c0 = [math.exp(base[b, i].item()) for i in idx]
        f = reference_f(mode, list(c.unbind()), c0)
        (grad,) = torch.autograd.grad(f, c)
        for j, i in enumerate(idx):
            out[b, i] = (c[j] * grad[j]).item()
    return out


def random_batch(seed, b=6, t=7, dtype=torch.float64):
    """Random log-probs of probabilities in (0.05, 1), ragged left-aligned masks, garbage padding."""
    g = torch.Generator().manual_seed(seed)
    lp = torch.empty(b, t, dtype=torch.float64).uniform_(0.05, 1.0, generator=g).log()
    base = torch.empty(b, t, dtype=torch.float64).uniform_(0.05, 0.95, generator=g).log()
    lengths = [1, t] + torch.randint(1, t + 1, (b - 2,), generator=g).tolist()
    mask = torch.zeros(b, t, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    garbage = [-math.inf, 123.0, math.nan, math.inf]
    for row in range(b):
        lp[row, ~mask[row]] = garbage[row % len(garbage)]
        base[row, ~mask[row]] = garbage[(row + 1) % len(garbage)]
    return lp.to(dtype), mask, base.to(dtype)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_matches_loop_reference_float64(mode, seed):
    lp, mask, base = random_batch(seed)
    reward, signal = aggregate(mode, lp, mask, base)
    expected = reference_rewards(mode, lp, mask, base)
    assert reward.shape == (lp.shape[0],)
    assert signal.shape == lp.shape
    torch.testing.assert_close(reward.double(), expected)


@pytest.mark.parametrize("mode", MODES)
def test_reward_matches_loop_reference_float32(mode):
    lp, mask, base = random_batch(5, b=8, t=9, dtype=torch.float32)
    reward, signal = aggregate(mode, lp, mask, base)
    assert reward.dtype == torch.float32 and signal.dtype == torch.float32
    expected = reference_rewards(mode, lp.double(), mask, base.double())
    torch.testing.assert_close(reward.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(signal.double(), autograd_signal(mode, lp.double(), mask, base.double()),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 3])
def test_token_signal_is_c_times_df_dc(mode, seed):
    lp, mask, base = random_batch(seed)
    _, signal = aggregate(mode, lp, mask, base)
    expected = autograd_signal(mode, lp, mask, base)
    torch.testing.assert_close(signal.double(), expected)
    assert (signal[~mask] == 0).all()


@pytest.mark.parametrize(
    "mode",
    [
        "log_prob",
        "prob",
        "arithmetic_mean",
        "geometric_mean",
        "weighted_sum_inverse_prob",
        "weighted_sum_log_prob",
    ],
)
def test_float64_inputs_keep_float64_precision(mode):
    # T = 7: log(7) is not exactly representable in float32, the rounding shows at 1e-8.
    g = torch.Generator().manual_seed(11)
    lp = torch.empty(4, 7, dtype=torch.float64).uniform_(0.05, 1.0, generator=g).log()
    base = torch.empty(4, 7, dtype=torch.float64).uniform_(0.05, 0.95, generator=g).log()
    mask = torch.ones(4, 7, dtype=torch.bool)
    reward, signal = aggregate(mode, lp, mask, base)
    expected = reference_rewards(mode, lp, mask, base)
    assert reward.dtype == torch.float64
    torch.testing.assert_close(reward, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(signal, autograd_signal(mode, lp, mask, base), rtol=1e-12, atol=1e-12)


def test_hand_worked_example():
    # Row 0: c = [0.5, 0.25], c0 = [0.5, 0.125], T = 2.
    # Row 1: same first token only (T = 1), padding = garbage.
    #   log_prob:  R = ln .5 + ln .25 = ln(1/8) = -3 ln2;         signal [1, 1]
    #   prob:      R = .5 * .25 = 0.125;                            signal [.125, .125]
    #   arith:     R = (.5 + .25)/2 = 0.375;                        signal [.5/2, .25/2] = [.25, .125]
    #   geom:      R = sqrt(.125) = 0.3535534;                      signal [R/2, R/2]
    #   ws 1/p:    c/c0 = [1, 2];  R = 3/2 = 1.5;                   signal [1/2, 2/2] = [.5, 1]
    #   ws -log p: -ln c0 = [ln2, 3 ln2];  c * that = [.5 ln2, .75 ln2];
    #              R = 1.25 ln2 / 2 = .625 ln2;                      signal [.25 ln2, .375 ln2]
    # Row 1 (c = [.5], c0 = [.5]): log_prob -ln2 / [1]; prob .5 / [.5]; arith .5 / [.5];
    #   geom .5 / [.5]; ws 1/p 1 / [1]; ws -log p .5 ln2 / [.5 ln2]
    ln2 = math.log(2.0)
    lp = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.5), -math.inf]], dtype=torch.float64)
    base = torch.tensor([[math.log(0.5), math.log(0.125)], [math.log(0.5), 123.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    g = math.sqrt(0.125)
    expected = {
        "log_prob": ([-3 * ln2, -ln2], [[1.0, 1.0], [1.0, 0.0]]),
        "prob": ([0.125, 0.5], [[0.125, 0.125], [0.5, 0.0]]),
        "arithmetic_mean": ([0.375, 0.5], [[0.25, 0.125], [0.5, 0.0]]),
        "geometric_mean": ([g, 0.5], [[g / 2, g / 2], [0.5, 0.0]]),
        "weighted_sum_inverse_prob": ([1.5, 1.0], [[0.5, 1.0], [1.0, 0.0]]),
        "weighted_sum_log_prob": ([0.625 * ln2, 0.5 * ln2], [[0.25 * ln2, 0.375 * ln2], [0.5 * ln2, 0.0]]),
    }
    assert set(expected) == set(MODES)
    for mode, (r, s) in expected.items():
        reward, signal = aggregate(mode, lp, mask, base)
        torch.testing.assert_close(reward, torch.tensor(r, dtype=torch.float64), msg=mode)
        torch.testing.assert_close(signal, torch.tensor(s, dtype=torch.float64), msg=mode)


def test_registry_holds_exactly_the_six_modes():
    assert set(AGGREGATIONS) == set(MODES)


# --------------------------------------------------------------------------- errors


def test_unknown_mode_lists_valid_names():
    lp, mask, base = random_batch(0)
    with pytest.raises(ValueError) as info:
        aggregate("harmonic_mean", lp, mask, base)
    message = str(info.value)
    assert "harmonic_mean" in message
    for mode in MODES:
        assert mode in message


@pytest.mark.parametrize("mode", sorted(WEIGHTED))
def test_weighted_mode_needs_baseline(mode):
    lp, mask, _ = random_batch(0)
    with pytest.raises(ValueError, match="baseline"):
        aggregate(mode, lp, mask)


@pytest.mark.parametrize("mode", sorted(set(MODES) - WEIGHTED))
def test_unweighted_mode_ignores_baseline(mode):
    lp, mask, base = random_batch(2)
    with_base = aggregate(mode, lp, mask, base)
    without = aggregate(mode, lp, mask)
    torch.testing.assert_close(with_base, without)


@pytest.mark.parametrize("mode", MODES)
def test_row_without_valid_tokens_raises(mode):
    lp, mask, base = random_batch(0)
    mask[3] = False
    with pytest.raises(ValueError):
        aggregate(mode, lp, mask, base)


@pytest.mark.parametrize("mode", MODES)
def test_nan_logprob_at_valid_token_raises(mode):
    lp, mask, base = random_batch(0)
    lp[1, 0] = math.nan
    with pytest.raises(FloatingPointError):
        aggregate(mode, lp, mask, base)


@pytest.mark.parametrize("mode", sorted(WEIGHTED))
def test_nan_baseline_at_valid_token_raises(mode):
    lp, mask, base = random_batch(0)
    base[1, 0] = math.nan
    with pytest.raises(FloatingPointError):
        aggregate(mode, lp, mask, base)


def test_minus_inf_log_prob_reward_raises():
    # A zero-probability answer token makes sum log c = -inf: an error, never used.
    lp, mask, base = random_batch(0)
    lp[1, 0] = -math.inf
    with pytest.raises(FloatingPointError):
        aggregate("log_prob", lp, mask, base)


def test_shape_mismatch_raises():
    lp, mask, base = random_batch(0)
    with pytest.raises(ValueError):
        aggregate("log_prob", lp, mask[:, :-1])
    with pytest.raises(ValueError):
        aggregate("weighted_sum_log_prob", lp, mask, base[:, :-1])


# --------------------------------------------------------------------------- stability


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
def test_very_negative_logprobs_stay_finite(mode, dtype):
    b, t = 3, 50
    lp = torch.full((b, t), -2000.0, dtype=dtype)
    base = torch.full((b, t), -2000.0, dtype=dtype)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 25:] = False
    lp[1, 25:] = -math.inf
    reward, signal = aggregate(mode, lp, mask, base)
    assert torch.isfinite(reward).all() and torch.isfinite(signal).all()
    n = mask.sum(-1).to(torch.float64)
    if mode == "log_prob":
        torch.testing.assert_close(reward.double(), -2000.0 * n)
    else:
        assert (reward >= 0).all() and (signal >= 0).all()
    if mode == "weighted_sum_inverse_prob":
        # c_i / c0_i = 1 for every token: computed as a difference of logs, not a ratio of zeros.
        torch.testing.assert_close(reward.double(), torch.ones(b, dtype=torch.float64))
        torch.testing.assert_close(signal.double(), mask / n[:, None])


def test_geometric_mean_is_computed_in_log_space():
    # prod c_i = exp(-80 * 50) underflows to 0 in float32, but (prod c)^(1/T) = exp(-80) does not.
    lp = torch.full((1, 50), -80.0)
    mask = torch.ones(1, 50, dtype=torch.bool)
    reward, signal = aggregate("geometric_mean", lp, mask)
    torch.testing.assert_close(reward, torch.tensor([math.exp(-80.0)], dtype=torch.float32))
    torch.testing.assert_close(signal, torch.full((1, 50), math.exp(-80.0) / 50))


def test_arithmetic_mean_large_logprob_spread():
    # One token near 1, the others astronomically small: R = (1 + ~0) / T.
    lp = torch.tensor([[0.0, -1000.0, -1000.0, -1000.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    reward, signal = aggregate("arithmetic_mean", lp, mask)
    torch.testing.assert_close(reward, torch.tensor([0.25]))
    torch.testing.assert_close(signal, torch.tensor([[0.25, 0.0, 0.0, 0.0]]))


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_row_by_row(mode):
    lp, mask, base = random_batch(7, b=9, t=6)
    reward, signal = aggregate(mode, lp, mask, base)
    for row in range(lp.shape[0]):
        r1, s1 = aggregate(mode, lp[row : row + 1], mask[row : row + 1], base[row : row + 1])
        torch.testing.assert_close(reward[row : row + 1], r1)
        torch.testing.assert_close(signal[row : row + 1], s1)


@pytest.mark.parametrize("mode", MODES)
def test_rows_are_independent_of_each_other(mode):
    # Changing one row's inputs leaves every other row's outputs untouched.
    lp, mask, base = random_batch(8)
    reward, signal = aggregate(mode, lp, mask, base)
    lp2 = lp.clone()
    lp2[2, :2] = math.log(0.01)
    mask2 = mask.clone()
    mask2[2, :2] = True
    reward2, signal2 = aggregate(mode, lp2, mask2, base)
    others = [r for r in range(lp.shape[0]) if r != 2]
    torch.testing.assert_close(reward2[others], reward[others])
    torch.testing.assert_close(signal2[others], signal[others])
    assert not torch.equal(reward2[2], reward[2])
