"""Tests for nrt.advantages (NRT_SPEC section 6): group normalisation of rewards and token signals.

Rows are group-major: trace k of question q is row q*K + k. References are float64 loops.
"""

import math

import pytest
import torch

from nrt.advantages import ADVANTAGES, normalize_token_signal

group_norm = ADVANTAGES["group_norm"]


def reference_group_norm(rewards, k):
    values = rewards.double().tolist()
    out = []
    for q in range(len(values) // k):
        group = values[q * k : (q + 1) * k]
        mean = sum(group) / k
        var = sum((v - mean) ** 2 for v in group) / (k - 1) if k > 1 else 0.0
        std = math.sqrt(var)
        out.extend((v - mean) / std if std > 0 else 0.0 for v in group)
    return torch.tensor(out, dtype=torch.float64)


def reference_token_norm(signal, mask, k):
    n_rows, t = signal.shape
    out = torch.zeros(n_rows, t, dtype=torch.float64)
    for q in range(n_rows // k):
        rows = range(q * k, (q + 1) * k)
        values = [signal[r, i].item() for r in rows for i in range(t) if mask[r, i]]
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        std = math.sqrt(var)
        if std == 0:
            continue
        for r in rows:
            for i in range(t):
                if mask[r, i]:
                    out[r, i] = (signal[r, i].item() - mean) / std
    return out


# --------------------------------------------------------------------------- group_norm


def test_registry_has_group_norm():
    assert "group_norm" in ADVANTAGES


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("q,k", [(1, 2), (4, 5), (3, 8)])
def test_group_norm_matches_loop_reference(q, k, dtype):
    g = torch.Generator().manual_seed(q * 100 + k)
    rewards = (torch.randn(q * k, generator=g, dtype=torch.float64) * 3 + 1).to(dtype)
    adv = group_norm(rewards, k)
    assert adv.shape == (q * k,)
    assert adv.dtype == dtype
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(adv.double(), reference_group_norm(rewards, k), **tol)


def test_group_norm_hand_example():
    # Group 0: [1, 2, 3] -> mean 2, unbiased std 1 -> [-1, 0, 1].
    # Group 1: [0, 0, 6] -> mean 2, var (4 + 4 + 16) / 2 = 12, std 2*sqrt(3) -> [-1/sqrt3, -1/sqrt3, 2/sqrt3].
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 6.0], dtype=torch.float64)
    s3 = math.sqrt(3.0)
    expected = torch.tensor([-1.0, 0.0, 1.0, -1 / s3, -1 / s3, 2 / s3], dtype=torch.float64)
    torch.testing.assert_close(group_norm(rewards, 3), expected)


def test_group_norm_is_group_major():
    # q*K + k layout: with K=2, rows (0,1) and (2,3) form groups, not (0,2) and (1,3).
    rewards = torch.tensor([0.0, 10.0, 5.0, 5.0], dtype=torch.float64)
    adv = group_norm(rewards, 2)
    s = math.sqrt(50.0)  # unbiased std of [0, 10]
    torch.testing.assert_close(adv, torch.tensor([-5 / s, 5 / s, 0.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("value", [0.0, 0.1, -3.7, 1e6])
def test_group_norm_constant_group_is_exactly_zero(value):
    other = torch.tensor([0.3, -1.2, 2.5, 0.0])
    rewards = torch.cat([torch.full((4,), value), other])
    adv = group_norm(rewards, 4)
    assert torch.equal(adv[:4], torch.zeros(4))
    torch.testing.assert_close(adv[4:].double(), reference_group_norm(other, 4), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(adv).all()


def test_group_norm_k1_gives_zero():
    # One trace per question: nothing to compare against, advantage 0 (no NaN from std of 1 value).
    adv = group_norm(torch.tensor([1.0, -2.0, 3.0]), 1)
    assert torch.equal(adv, torch.zeros(3))


@pytest.mark.parametrize("n,k", [(5, 2), (7, 3), (4, 3)])
def test_group_norm_indivisible_raises(n, k):
    with pytest.raises(ValueError):
        group_norm(torch.zeros(n), k)


def test_group_norm_small_scale_rewards_are_not_zeroed():
    # `prob` rewards for a 20-token answer at c ~ 0.4 are ~1e-8: scale must not matter.
    rewards = torch.tensor([1e-8, 2e-8, 3e-8], dtype=torch.float64)
    torch.testing.assert_close(group_norm(rewards, 3), torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))


def test_group_norm_is_scale_and_shift_invariant():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(12, generator=g, dtype=torch.float64)
    torch.testing.assert_close(group_norm(rewards * 7.5 - 4.0, 4), group_norm(rewards, 4))


# --------------------------------------------------------------------------- token signal


def ragged_batch(seed, q=3, k=4, t=6):
    g = torch.Generator().manual_seed(seed)
    signal = torch.rand(q * k, t, generator=g, dtype=torch.float64) * 2
    lengths = torch.randint(1, t + 1, (q * k,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    signal[~mask] = 123.0  # padding garbage must be ignored
    return signal, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_signal_matches_loop_reference(seed):
    signal, mask = ragged_batch(seed)
    out = normalize_token_signal(signal, mask, 4)
    assert out.shape == signal.shape
    torch.testing.assert_close(out, reference_token_norm(signal, mask, 4))
    assert (out[~mask] == 0).all()


def test_token_signal_float32_and_float_mask():
    signal, mask = ragged_batch(4, q=2, k=3, t=5)
    out = normalize_token_signal(signal.float(), mask.float(), 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_token_norm(signal, mask, 3), rtol=1e-5, atol=1e-5)


def test_token_signal_hand_example():
    # One group of K=2 rows, valid tokens: row 0 -> [1, 3], row 1 -> [5] (+ one padded slot).
    # mean = 3, unbiased var = (4 + 0 + 4) / 2 = 4, std = 2 -> row 0 [-1, 0], row 1 [1, 0(pad)].
    signal = torch.tensor([[1.0, 3.0], [5.0, -50.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    expected = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(normalize_token_signal(signal, mask, 2), expected)


def test_token_signal_statistics_are_per_group():
    signal, mask = ragged_batch(5, q=3, k=2, t=4)
    out = normalize_token_signal(signal, mask, 2)
    # Changing group 1 leaves groups 0 and 2 untouched.
    signal2 = signal.clone()
    signal2[2:4][mask[2:4]] += 10.0 * torch.arange(int(mask[2:4].sum()), dtype=torch.float64)
    out2 = normalize_token_signal(signal2, mask, 2)
    torch.testing.assert_close(out2[:2], out[:2])
    torch.testing.assert_close(out2[4:], out[4:])
    assert not torch.allclose(out2[2:4], out[2:4])
    # Each group's valid weights have mean 0 and unbiased std 1.
    for q in range(3):
        w = out[2 * q : 2 * q + 2][mask[2 * q : 2 * q + 2]]
        torch.testing.assert_close(w.mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(w.std(), torch.tensor(1.0, dtype=torch.float64))


def test_token_signal_constant_group_is_zero():
    signal, mask = ragged_batch(6, q=2, k=3, t=5)
    signal[:3] = torch.where(mask[:3], 0.25, 99.0)  # group 0 constant over its valid tokens
    out = normalize_token_signal(signal, mask, 3)
    assert torch.equal(out[:3], torch.zeros_like(out[:3]))
    torch.testing.assert_close(out[3:], reference_token_norm(signal, mask, 3)[3:])


def test_token_signal_log_prob_mode_signal_is_zero():
    # log_prob mode's signal is 1 on every valid token: constant -> all weights 0.
    _, mask = ragged_batch(7)
    out = normalize_token_signal(mask.double(), mask, 4)
    assert torch.equal(out, torch.zeros_like(out))


def test_token_signal_single_valid_token_group_is_zero():
    # A group with one valid token in total has no spread: 0, not NaN.
    signal = torch.tensor([[0.7, 9.0], [3.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False], [False, False]])
    out = normalize_token_signal(signal, mask, 2)
    assert torch.equal(out, torch.zeros_like(out))


def test_token_signal_indivisible_raises():
    with pytest.raises(ValueError):
        normalize_token_signal(torch.zeros(5, 3), torch.ones(5, 3, dtype=torch.bool), 2)
