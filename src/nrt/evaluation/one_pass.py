"""`nrt eval`'s three measurements of a batch of questions in one decoding pass, and bf16 autocast.

The plain path (`nrt.evaluation.evaluate.evaluate` with `EvalConfig(one_pass=False)`) runs a
greedy think-then-answer (two generations), one sampled trace, and two scoring forwards. Here
the same three rows per question (greedy think-then-answer; sampled trace + reference answer
scored; reference answer scored without a trace) share one prompt prefill and one decoding loop
(`nrt.engine.answer_rows`); the values are the plain path's up to float rounding
(tests/test_answer_rows.py).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from nrt.engine.answer_rows import RowKind, decode_rows
from nrt.engine.generation import ThoughtAnswer


def autocast_bf16(model, enabled: bool):
    """bfloat16 autocast on the model's device, as the trainer's `trainer.bf16`; one context around a
    whole evaluation, so autocast casts each weight once (its cast cache) rather than at every step."""
    if not enabled:
        return nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def eval_rows(max_trace_tokens: int, force_trace: bool, response_start_id: int) -> list[RowKind]:
    """greedy think-then-answer; one sampled trace, answer scored; answer scored without a trace."""
    return [
        RowKind(max_trace_tokens, 0.0, (response_start_id,) if force_trace else ()),
        RowKind(max_trace_tokens, 1.0, (), score_answer=True),
        RowKind(0, 0.0, (), score_answer=True),
    ]


def one_pass_batch(model, prompts: list[list[int]], answers: list[list[int]], seeds: list[int], *,
                   max_trace_tokens: int, max_answer_tokens: int, force_trace: bool, response_start_id: int,
                   eos_id: int, pad_id: int) -> tuple[list[ThoughtAnswer], torch.Tensor, torch.Tensor]:
    """(greedy think-then-answer per question, log p(answer | sampled trace) [Q], log p(answer | no trace) [Q])."""
    results = decode_rows(model, prompts, eval_rows(max_trace_tokens, force_trace, response_start_id),
                          answers=answers, seeds=seeds, response_start_id=response_start_id, eos_id=eos_id,
                          pad_id=pad_id, max_answer_tokens=max_answer_tokens)
    greedy = [ThoughtAnswer(g.trace_ids, g.answer_ids, g.emitted_response_start) for g, _, _ in results]
    with_trace = torch.tensor([s.answer_logprob for _, s, _ in results])
    without = torch.tensor([d.answer_logprob for _, _, d in results])
    return greedy, with_trace, without
