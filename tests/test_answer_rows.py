"""One decoding pass per question (nrt.engine.answer_rows) against the separate passes it replaces."""

import math

import pytest
import torch

from nrt.engine.answer_rows import RowKind, decode_rows
from nrt.engine.generation import think_then_answer
from nrt.engine.sampling import question_seed
from nrt.evaluation.evaluate import EvalConfig, answer_logprobs, evaluate

from conftest import tiny_sums_setup  # the tests folder is on the path (pytest rootdir conftest)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_sums_setup(tiny_model_dir, tmp_path_factory.mktemp("d") / "s.jsonl", n=10)


def test_greedy_rows_match_think_then_answer_free_and_forced(setup):
    model, tok, _, examples, rs = setup
    prompts = [ex.prompt_ids for ex in examples]
    eos = tok.eos_token_id
    for forbid in ((), (rs,)):  # think_then_answer's force_trace forbids <|response_start|>
        got = decode_rows(model, prompts, [RowKind(7, 0.0, forbid)], answers=None, seeds=[0] * len(prompts),
                          response_start_id=rs, eos_id=eos, pad_id=tok.pad_token_id, max_answer_tokens=5)
        want = think_then_answer(model, prompts, response_start_id=rs, eos_id=eos, pad_id=tok.pad_token_id,
                                 max_trace_tokens=7, max_answer_tokens=5, force_trace=bool(forbid))
        assert [g[0].trace_ids for g in got] == [w.trace_ids for w in want]
        assert [g[0].answer_ids for g in got] == [w.answer_ids for w in want]
        assert [g[0].emitted_response_start for g in got] == [w.emitted_response_start for w in want]
        if forbid:
            assert all(len(g[0].trace_ids) >= 1 for g in got)


def test_scored_rows_match_answer_logprobs_with_the_same_sampled_traces(setup):
    model, tok, _, examples, rs = setup
    prompts, answers = [ex.prompt_ids for ex in examples], [ex.answer_ids for ex in examples]
    eos, k = tok.eos_token_id, 3
    seeds = [question_seed(5, i) for i in range(len(prompts))]
    kinds = [RowKind(6, 1.0, score_answer=True)] * k + [RowKind(0, 0.0, score_answer=True)]
    got = decode_rows(model, prompts, kinds, answers=answers, seeds=seeds, response_start_id=rs, eos_id=eos,
                      pad_id=tok.pad_token_id, max_answer_tokens=4)
    with_trace, without = answer_logprobs(model, prompts, answers, num_generations=k, max_trace_tokens=6,
                                          seeds=seeds, response_start_id=rs, eos_id=eos, pad_id=tok.pad_token_id)
    mine = torch.tensor([[row.answer_logprob for row in g[:k]] for g in got], dtype=torch.float64).flatten()
    torch.testing.assert_close(mine, with_trace.double(), atol=1e-4, rtol=0)
    direct = torch.tensor([g[k].answer_logprob for g in got], dtype=torch.float64)
    torch.testing.assert_close(direct, without.double(), atol=1e-4, rtol=0)
    assert len({tuple(row.trace_ids) for g in got for row in g[:k]}) > len(prompts)  # the K traces differ
    assert all(g[k].trace_ids == [] and not math.isnan(g[k].answer_logprob) for g in got)


def test_no_trace_score_is_a_plain_forward(setup):
    model, tok, _, examples, rs = setup
    ex = examples[3]
    got = decode_rows(model, [ex.prompt_ids], [RowKind(0, score_answer=True)], answers=[ex.answer_ids], seeds=[0],
                      response_start_id=rs, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_answer_tokens=1)
    ids = torch.tensor([ex.prompt_ids + [rs] + ex.answer_ids], dtype=torch.float64).long()
    with torch.no_grad():
        logp = torch.log_softmax(model.double()(input_ids=ids).logits[0].double(), -1)
    model.float()
    start = len(ex.prompt_ids) + 1
    expected = sum(logp[start - 1 + i, t].item() for i, t in enumerate(ex.answer_ids))
    assert got[0][0].answer_logprob == pytest.approx(expected, abs=1e-4)


def test_one_pass_eval_equals_the_three_pass_eval_in_float32_and_is_close_in_bf16(setup):
    model, tok, records, examples, rs = setup
    refs = [r.answer for r in records]
    plain = evaluate(model, tok, examples, refs, EvalConfig(8, 4, batch_size=4, one_pass=False), rs)
    fast = evaluate(model, tok, examples, refs, EvalConfig(8, 4, batch_size=4, one_pass=True), rs)
    for a, b in zip(plain[1], fast[1]):
        assert (a["prediction"], a["trace"], a["correct"]) == (b["prediction"], b["trace"], b["correct"])
        assert b["answer_logprob"] == pytest.approx(a["answer_logprob"], abs=1e-4)
        assert b["answer_logprob_no_trace"] == pytest.approx(a["answer_logprob_no_trace"], abs=1e-4)
    bf16 = evaluate(model, tok, examples, refs, EvalConfig(8, 4, batch_size=4, one_pass=True, bf16=True), rs)[1]
    # bf16 rounds the logits: the no-trace score (a fixed sequence) stays within 0.05 nats per answer token
    for a, b, ex in zip(fast[1], bf16, examples):
        tolerance = 0.05 * len(ex.answer_ids)
        assert b["answer_logprob_no_trace"] == pytest.approx(a["answer_logprob_no_trace"], abs=tolerance)
