"""Tests for nrt.engine.sampling: the cached, group-shared decoding loop and the inverse-CDF pick.

A tiny random Llama (hidden 32, 2 layers) over the char tokenizer; no download. The cached
loop is compared with a naive reference that reruns the full forward on the unpadded
sequence at every step.
"""

import math

import pytest
import torch

from nrt.engine.sampling import _pick, sample_traces
from nrt.tiny import char_tokenizer, tiny_llama

TOKENIZER = char_tokenizer()
VOCAB = len(TOKENIZER)
EOS = TOKENIZER.eos_token_id
PAD = TOKENIZER.pad_token_id


pytestmark = pytest.mark.usefixtures("one_thread")


def lively(model, seed, std=0.4):
    """Re-draw the weight matrices with a large std: the default init (0.02) gives near-uniform
    logits and greedy traces that repeat one token, which would hide cache/position mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return lively(tiny_llama(VOCAB, hidden=32, layers=2, seed=0), seed=0)


@pytest.fixture(scope="module")
def model64():
    # float64 so that cached/padded and naive forwards agree far below any argmax/CDF gap
    return lively(tiny_llama(VOCAB, hidden=32, layers=2, seed=1).double(), seed=1)


def encode(text):
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


P_SHORT = encode("Hi?")
P_LONG = encode("What is 12 + 30?")
P_MID = encode("Say ok.")


@torch.no_grad()
def naive_sample(model, prompt, *, num_generations, max_new_tokens, stop_token_ids, seed,
                 temperature=1.0, top_p=1.0, forbid_first=None):
    """One prompt, no padding, no cache: a full forward per step; same uniforms as the library."""
    u = torch.rand(num_generations, max(max_new_tokens, 1), generator=torch.Generator().manual_seed(seed))
    traces = []
    for k in range(num_generations):
        seq = list(prompt)
        trace = []
        for t in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([seq])).logits[:, -1].float()
            if t == 0 and forbid_first:
                logits[:, forbid_first] = -float("inf")
            token = _pick(logits, u[k, t : t + 1], temperature, top_p).item()
            trace.append(token)
            seq.append(token)
            if token in stop_token_ids:
                break
        traces.append(trace)
    return traces


def sample(model, prompts, seeds, **kw):
    args = dict(num_generations=2, max_new_tokens=10, stop_token_ids=[EOS], pad_token_id=PAD)
    args.update(kw)
    return sample_traces(model, prompts, seeds=seeds, **args)


# --------------------------------------------------------------------------- _pick


def test_pick_inverse_cdf():
    logits = torch.tensor([0.1, 0.6, 0.3]).log()[None].repeat(6, 1)
    u = torch.tensor([0.0, 0.05, 0.15, 0.5, 0.69, 0.95])
    # cdf = [0.1, 0.7, 1.0]
    assert _pick(logits, u, 1.0, 1.0).tolist() == [0, 0, 1, 1, 1, 2]


def test_pick_top_p_keeps_only_the_top_token():
    # sorted [0.6, 0.3, 0.1]: mass before each = [0, 0.6, 0.9]; with top_p = 0.6 only token 1 stays
    logits = torch.tensor([0.1, 0.6, 0.3]).log()[None].repeat(4, 1)
    u = torch.tensor([0.01, 0.5, 0.9, 0.999])
    assert _pick(logits, u, 1.0, 0.6).tolist() == [1, 1, 1, 1]


def test_pick_top_p_renormalises_the_nucleus():
    # top_p = 0.65 keeps tokens 1 (0.6) and 2 (0.3); renormalised cdf over sorted = [2/3, 1]
    logits = torch.tensor([0.1, 0.6, 0.3]).log()[None].repeat(5, 1)
    u = torch.tensor([0.01, 0.6, 0.66, 0.67, 0.99])
    assert _pick(logits, u, 1.0, 0.65).tolist() == [1, 1, 1, 2, 2]


def test_pick_temperature():
    # temperature 2: probs proportional to sqrt(p) = sqrt([0.1, 0.6, 0.3])
    p = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    q = p.sqrt() / p.sqrt().sum()
    c0, c1 = q[0].item(), (q[0] + q[1]).item()  # ~0.1768, ~0.6098
    logits = p.log().float()[None].repeat(6, 1)
    u = torch.tensor([c0 - 0.01, c0 + 0.01, c1 - 0.01, c1 + 0.01, 0.3, 0.99])
    assert _pick(logits, u, 2.0, 1.0).tolist() == [0, 1, 1, 2, 1, 2]
    # at temperature 1 the same u = 0.15 picks token 1 (cdf 0.1 < 0.15), at 2 token 0 (0.15 < 0.1768)
    assert _pick(logits[:1], torch.tensor([0.15]), 1.0, 1.0).item() == 1
    assert _pick(logits[:1], torch.tensor([0.15]), 2.0, 1.0).item() == 0


def test_pick_greedy_ignores_u():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, -1.0, 2.0]])
    assert _pick(logits, torch.tensor([0.99, 0.0]), 0.0, 1.0).tolist() == [1, 0]


def test_pick_empirical_frequencies():
    # many uniform draws reproduce the distribution (deterministic seed, tight bound for 20000 draws)
    g = torch.Generator().manual_seed(0)
    n = 20000
    probs = torch.tensor([0.1, 0.6, 0.3])
    picks = _pick(probs.log()[None].repeat(n, 1), torch.rand(n, generator=g), 1.0, 1.0)
    freq = torch.bincount(picks, minlength=3).double() / n
    torch.testing.assert_close(freq, probs.double(), atol=0.015, rtol=0)


def test_pick_never_returns_zero_probability_token_at_u_zero():
    logits = torch.tensor([[-math.inf, 0.0, 0.0]])
    assert _pick(logits, torch.tensor([0.0]), 1.0, 1.0).item() != 0


def test_pick_never_returns_zero_probability_token_inside():
    # token i owns the half-open interval [cdf_{i-1}, cdf_i) of u * total, so the zero-width
    # interval of a zero-probability token in the middle is never hit, even at the step
    logits = torch.tensor([[0.0, -math.inf, 0.0]]).repeat(3, 1)
    assert _pick(logits, torch.tensor([0.5, 0.4999, 0.5001]), 1.0, 1.0).tolist() == [2, 0, 2]


# --------------------------------------------------------------------------- decoding


def test_same_seeds_same_traces(model):
    a = sample(model, [P_SHORT, P_LONG], [3, 4], max_new_tokens=12)
    b = sample(model, [P_SHORT, P_LONG], [3, 4], max_new_tokens=12)
    assert a == b
    c = sample(model, [P_SHORT, P_LONG], [5, 4], max_new_tokens=12)
    assert c[:2] != a[:2]  # a different seed for question 0 changes its traces ...
    assert c[2:] == a[2:]  # ... and only its traces


def test_traces_do_not_depend_on_other_prompts(model):
    # the short prompt is left-padded in the batch; alone it is not
    together = sample(model, [P_SHORT, P_LONG, P_MID], [11, 22, 33], num_generations=3, max_new_tokens=15)
    alone_short = sample(model, [P_SHORT], [11], num_generations=3, max_new_tokens=15)
    alone_long = sample(model, [P_LONG], [22], num_generations=3, max_new_tokens=15)
    swapped = sample(model, [P_MID, P_SHORT], [33, 11], num_generations=3, max_new_tokens=15)
    assert together[0:3] == alone_short
    assert together[3:6] == alone_long
    assert together[6:9] == swapped[0:3]
    assert together[0:3] == swapped[3:6]


def test_greedy_matches_naive_full_forward(model64):
    prompts = [P_LONG, P_SHORT, P_MID]
    got = sample(model64, prompts, [0, 1, 2], num_generations=2, max_new_tokens=12, temperature=0.0)
    for q, prompt in enumerate(prompts):
        ref = naive_sample(model64, prompt, num_generations=1, max_new_tokens=12, stop_token_ids=[EOS],
                           seed=q, temperature=0.0)[0]
        assert got[2 * q] == ref
        assert got[2 * q + 1] == ref  # greedy: both samples of a group coincide
    assert all(len(set(t)) > 3 for t in got)  # non-degenerate traces: the check has teeth


def test_sampled_matches_naive_full_forward_with_early_stops(model64):
    # Many stop tokens so rows stop at different steps and are dropped from the cache mid-decoding;
    # the survivors must continue exactly as the naive uncached decoder does.
    stop = list(range(3, VOCAB, 6))
    prompts = [P_SHORT, P_LONG, P_MID]
    seeds = [7, 8, 9]
    got = sample(model64, prompts, seeds, num_generations=4, max_new_tokens=16, stop_token_ids=stop)
    expected = []
    for prompt, seed in zip(prompts, seeds):
        expected += naive_sample(model64, prompt, num_generations=4, max_new_tokens=16, stop_token_ids=stop, seed=seed)
    assert got == expected
    lengths = {len(t) for t in got}
    assert len(lengths) > 2  # rows really did stop at different steps


def test_top_p_matches_naive_full_forward(model64):
    prompts = [P_MID, P_LONG]
    got = sample(model64, prompts, [1, 2], num_generations=3, max_new_tokens=10, temperature=0.7, top_p=0.8)
    expected = []
    for prompt, seed in zip(prompts, [1, 2]):
        expected += naive_sample(model64, prompt, num_generations=3, max_new_tokens=10, stop_token_ids=[EOS],
                                 seed=seed, temperature=0.7, top_p=0.8)
    assert got == expected


def test_stop_tokens_and_max_new_tokens(model):
    stop = list(range(3, VOCAB, 5))
    max_new = 9
    got = sample(model, [P_SHORT, P_LONG], [1, 2], num_generations=6, max_new_tokens=max_new, stop_token_ids=stop)
    free = sample(model, [P_SHORT, P_LONG], [1, 2], num_generations=6, max_new_tokens=max_new, stop_token_ids=[-1])
    stopped = 0
    for trace, unstopped in zip(got, free):
        assert 1 <= len(trace) <= max_new
        assert all(tok not in stop for tok in trace[:-1])  # nothing after a stop token
        if trace[-1] in stop:
            stopped += 1
        else:
            assert len(trace) == max_new  # a row only ends early on a stop token
        assert unstopped[: len(trace)] == trace  # stopping does not change the tokens before it
        assert len(unstopped) == max_new
    assert stopped >= 3


def test_max_new_tokens_one(model):
    got = sample(model, [P_SHORT, P_LONG], [1, 2], num_generations=2, max_new_tokens=1)
    assert [len(t) for t in got] == [1, 1, 1, 1]


class BiasedModel(torch.nn.Module):
    """Wraps a model and adds a large bias to one token's logit at every step."""

    def __init__(self, inner, token, bias):
        super().__init__()
        self.inner, self.token, self.bias = inner, token, bias
        self.config = inner.config

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits[..., self.token] += self.bias
        return out


def test_forbid_first_greedy(model):
    free = sample(model, [P_SHORT, P_LONG], [0, 0], max_new_tokens=3, temperature=0.0)
    top = free[0][0]  # the argmax first token of prompt 0
    got = sample(model, [P_SHORT, P_LONG], [0, 0], max_new_tokens=3, temperature=0.0, forbid_first=[top])
    assert got[0][0] != top and got[1][0] != top
    # the replacement is the second-best first token
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([P_SHORT])).logits[0, -1]
    assert got[0][0] == logits.topk(2).indices[1].item()


def test_forbid_first_sampled_only_acts_on_first_token(model):
    forbidden = encode("#")[0]
    biased = BiasedModel(model, forbidden, 50.0)  # the forbidden token is the near-certain choice
    free = sample(biased, [P_SHORT, P_LONG], [0, 1], num_generations=5, max_new_tokens=4)
    assert all(t[0] == forbidden for t in free)
    got = sample(biased, [P_SHORT, P_LONG], [0, 1], num_generations=5, max_new_tokens=4, forbid_first=[forbidden])
    assert all(len(t) == 4 for t in got)
    assert all(t[0] != forbidden for t in got)
    assert all(t[1:] == [forbidden] * 3 for t in got)  # later steps are unaffected


def test_rows_are_group_major(model):
    got = sample(model, [P_SHORT, P_LONG], [5, 6], num_generations=3, max_new_tokens=8)
    assert len(got) == 6
    first = sample(model, [P_SHORT], [5], num_generations=3, max_new_tokens=8)
    second = sample(model, [P_LONG], [6], num_generations=3, max_new_tokens=8)
    assert got[0:3] == first
    assert got[3:6] == second
    assert len({tuple(t) for t in got[0:3]}) > 1  # the K samples of a group differ
