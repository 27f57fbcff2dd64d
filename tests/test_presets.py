"""Each preset's reward, advantage and loss on a hand-made batch equal its method's formulas.

One question, K = 3 traces, T = 2 answer tokens with probabilities c (after each trace) and
c0 (without a trace). Each expected value below is written from the method's definition
(NRT_SPEC sections 5, 6 and 8), independently of the library code.
"""

import math

import pytest
import torch

from nrt.config import Config, set_option
from nrt.loss import LossInputs, nrt_loss
from nrt.advantages import ADVANTAGES
from nrt.presets import PRESETS, preset_overrides
from nrt.scoring import score_traces
from nrt.shaping import EmaStdFilter

C = [[0.5, 0.25], [0.8, 0.5], [0.1, 0.9]]  # c_ik for traces k = 0..2
C0 = [0.4, 0.2]  # c0_i
K, T = 3, 2


def config_of(name):
    config = Config()
    for key, value in preset_overrides(name).items():
        set_option(config, key, value)
    return config


def score(name, well_formed=(True, False, True), initial=None, std_filter=None):
    lp = torch.tensor(C, dtype=torch.float64).log()
    base = torch.tensor([C0] * K, dtype=torch.float64).log()
    mask = torch.ones(K, T, dtype=torch.bool)
    return score_traces(config_of(name).method, K, lp, mask, base, torch.tensor(well_formed),
                        initial, std_filter)


def group_norm(r):
    mean = sum(r) / len(r)
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
    return [(x - mean) / std for x in r]


def rloo(r):
    return [x - (sum(r) - x) / (len(r) - 1) for x in r]


def close(tensor, expected, tol=1e-6):
    torch.testing.assert_close(tensor.double(), torch.tensor(expected, dtype=torch.float64), rtol=tol, atol=tol)


# expected rewards, straight from each method's definition
EXPECTED_REWARD = {
    "nrt": [sum(c[i] * -math.log(C0[i]) for i in range(T)) / T for c in C],
    "nrt-ws-inverse-prob": [sum(c[i] / C0[i] for i in range(T)) / T for c in C],
    "nrt-geometric-mean": [math.sqrt(c[0] * c[1]) for c in C],
    "jlb": [math.log(c[0]) + math.log(c[1]) for c in C],
    "verifree": [c[0] * c[1] for c in C],
}


@pytest.mark.parametrize("name", ["nrt", "nrt-ws-inverse-prob", "nrt-geometric-mean"])
def test_nrt_family_rewards_group_norm_and_fixed_answer_weights(name):
    s = score(name)
    close(s.reward, EXPECTED_REWARD[name])
    close(s.advantages, group_norm(EXPECTED_REWARD[name]), tol=1e-5)
    close(s.answer_weights, [[1.0, 1.0]] * K)


def test_jlb_log_prob_reward_leave_one_out_and_nll_answer_term():
    s = score("jlb")
    close(s.reward, EXPECTED_REWARD["jlb"])
    close(s.advantages, rloo(EXPECTED_REWARD["jlb"]), tol=1e-5)
    close(s.answer_weights, [[1.0, 1.0]] * K)


def test_verifree_prob_reward_rloo_and_reward_weighted_answer_term():
    s = score("verifree")
    r = EXPECTED_REWARD["verifree"]
    close(s.reward, r)
    close(s.advantages, rloo(r), tol=1e-5)
    close(s.answer_weights, [[x, x] for x in r], tol=1e-5)


def test_rlpr_debiased_clipped_format_mixed_reward_with_std_filter():
    initial = sum(C0) / T  # mean answer-token probability without a trace, initial policy
    well_formed = (True, False, True)
    debiased = [max(0.0, sum(c) / T - initial) for c in C]
    expected = [0.9 * d + 0.1 * float(f) for d, f in zip(debiased, well_formed)]
    s = score("rlpr", well_formed, initial=torch.full((K,), initial, dtype=torch.float64),
              std_filter=EmaStdFilter(0.99))
    close(s.reward, expected)
    close(s.advantages, group_norm(expected), tol=1e-5)
    close(s.answer_weights, [[0.0, 0.0]] * K)
    # a threshold above this group's std filters the whole group out
    strict = EmaStdFilter(0.99)
    strict.threshold = 10.0
    filtered = score("rlpr", well_formed, initial=torch.full((K,), initial, dtype=torch.float64), std_filter=strict)
    assert not filtered.kept.any() and torch.equal(filtered.advantages, torch.zeros(K))


def test_rlpr_filter_threshold_is_an_ema_of_mean_group_std():
    f = EmaStdFilter(0.9)
    f.update(1.0)
    f.update(2.0)
    assert f.threshold == pytest.approx(0.9 * (0.1 * 1.0) + 0.1 * 2.0)


# the trace term of each preset's policy loss, on- and off-policy (A > 0, eps from the preset)
@pytest.mark.parametrize("name, ratio, expected_weight", [
    ("nrt", 1.0, 1.0), ("nrt", 1.5, 0.0), ("nrt", 0.5, 0.8),          # CISPO: drop above 1.28, clip weight
    ("rlpr", 1.0, 1.0), ("rlpr", 1.5, 0.0), ("rlpr", 0.5, 0.5),       # PPO: clip active above 1.27
    ("jlb", 1.0, 1.0), ("jlb", 1.5, 1.5), ("verifree", 0.5, 0.5),     # REINFORCE: -A * r, no clip
])
def test_policy_loss_gradient_of_each_preset(name, ratio, expected_weight):
    """d loss / d log pi(t) = -A * w / normalizer / B for a trace token, with w as stated."""
    config = config_of(name)
    m, t = config.method, config.trainer
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = lp.detach() - math.log(ratio)
    advantage = 0.7
    inputs = LossInputs(lp, old, torch.tensor([[True, False]]), torch.tensor([advantage]),
                        torch.zeros(1, 2, dtype=torch.bool), torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool),
                        torch.zeros(1, 1))
    out = nrt_loss(inputs, policy_loss=m.policy_loss, epsilon_low=t.epsilon_low, epsilon_high=t.epsilon_high,
                   loss_normalizer=m.loss_normalizer)
    (grad,) = torch.autograd.grad(out.loss, lp)
    assert grad[0, 0].item() == pytest.approx(-advantage * expected_weight / 512.0, rel=1e-5, abs=1e-12)
    assert grad[0, 1].item() == 0.0


def test_every_preset_is_tested_and_unknown_names_get_a_suggestion():
    assert set(PRESETS) == {"nrt", "nrt-ws-inverse-prob", "nrt-geometric-mean", "nrt-marginal", "jlb", "verifree",
                            "rlpr", "sft"}
    with pytest.raises(ValueError, match="did you mean 'verifree'"):
        preset_overrides("verifre")
    assert config_of("sft").method.objective == "sft"


def test_answer_loss_off_is_a_choice_not_a_yaml_boolean(tmp_path):
    # YAML reads a bare `off` as False; the option takes it back as the choice "off"
    from nrt.config import ConfigError, apply_overrides, load_yaml

    assert apply_overrides(Config(), ["method.answer_loss=off"]).method.answer_loss == "off"
    path = tmp_path / "run.yaml"
    path.write_text("method:\n  answer_loss: off\n")
    assert load_yaml(path).method.answer_loss == "off"
    with pytest.raises(ConfigError, match="answer_loss: True is not one of"):
        apply_overrides(Config(), ["method.answer_loss=yes"])  # no choice is spelled like True


# ---------------------------------------------------------------- the marginal likelihood (nrt-marginal)


@pytest.mark.parametrize("policy_loss", ["cispo", "reinforce", "ppo"])
def test_marginal_preset_gradient_is_autograd_of_the_k_sample_log_mean_exp_in_float64(policy_loss):
    """Two groups of K=3 traces with masked trace and answer tokens: the nrt-marginal loss's gradient
    (on-policy, ratio 1) equals -(K / (B * normalizer)) x autograd of
        sum_q log (1/K) sum_k exp(l_qk + s_qk - sg(s_qk)),
    l = log p(y* | x, z_k) (answer tokens), s = log pi(z_k | x) (trace tokens): the marginal likelihood
    with the traces held as samples, so that its gradient is sum_k w_k (grad s_k + grad l_k)."""
    torch.manual_seed(0)
    q, k, c, t = 2, 3, 4, 3
    b = q * k
    lp = (torch.rand(b, c, dtype=torch.float64) * -3).requires_grad_()
    alp = (torch.rand(b, t, dtype=torch.float64) * -4).requires_grad_()
    trace_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]],
                              dtype=torch.bool)
    answer_mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    m = config_of("nrt-marginal").method
    scores = score_traces(m, k, alp.detach(), answer_mask, torch.zeros(b, t, dtype=torch.float64),
                          torch.ones(b, dtype=torch.bool))
    inputs = LossInputs(lp, lp.detach(), trace_mask, scores.advantages.double(), torch.zeros(b, c), alp, answer_mask,
                        scores.answer_weights.double())
    out = nrt_loss(inputs, policy_loss=policy_loss, loss_normalizer=m.loss_normalizer)
    got = torch.autograd.grad(out.loss, [lp, alp])

    s = (lp * trace_mask).sum(1)
    ell = (alp * answer_mask).sum(1)
    objective = torch.logsumexp((ell + s - s.detach()).view(q, k), dim=1) - math.log(k)
    want = torch.autograd.grad(-objective.sum() * k / (b * m.loss_normalizer), [lp, alp])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)  # the weights pass through float32
    # the weights: K x posterior shares, never negative, mean 1 per group, and exact in float64
    shares = torch.softmax(ell.detach().view(q, k), dim=1).flatten() * k
    torch.testing.assert_close(ADVANTAGES["posterior"](ell.detach(), k), shares, rtol=0, atol=1e-15)
    assert (scores.advantages >= 0).all() and scores.advantages.view(q, k).mean(1).sub(1).abs().max() < 1e-6


def test_posterior_weights_refuse_a_shaped_or_other_reward():
    from nrt.config import apply_overrides, validate_posterior
    from nrt.errors import ConfigError

    def check(name, override):
        validate_posterior(apply_overrides(config_of(name), [override]).method)

    check("nrt-marginal", "method.reward_baseline=none")
    for override, option in (("method.aggregation=prob", "method.aggregation=log_prob"),
                             ("method.format_reward_weight=0.1", "method.format_reward_weight=0.0"),
                             ("method.reward_clip_min=0", "method.reward_clip_min=None")):
        with pytest.raises(ConfigError, match=option):
            check("nrt-marginal", override)
    with pytest.raises(ConfigError, match="method.answer_loss=posterior"):
        check("nrt", "method.answer_loss=posterior")
