"""Think-then-answer generation with a trained model: a trace, `<|response_start|>`, an answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrt.engine.rollouts import split_trace
from nrt.engine.sampling import sample_traces


@dataclass
class ThoughtAnswer:
    trace_ids: list[int]  # the trace, without <|response_start|>
    answer_ids: list[int]  # the answer, without eos
    emitted_response_start: bool  # False when the trace hit its limit or eos first


@torch.no_grad()
def think_then_answer(
    model,
    prompts: list[list[int]],
    *,
    response_start_id: int,
    eos_id: int,
    pad_id: int,
    max_trace_tokens: int = 256,
    max_answer_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    force_trace: bool = False,
    append_marker: bool = True,
) -> list[ThoughtAnswer]:
    """Write a trace (greedy when temperature is 0) until `<|response_start|>`, then a greedy answer.

    A trace that ends in eos or at its limit gets `<|response_start|>` appended, as in training,
    and is answered after it. `append_marker=False` is the raw behaviour: such a trace is the
    model's whole output and its answer is empty. `force_trace` forbids an immediate
    `<|response_start|>` so the model must write a trace.
    """
    traces = sample_traces(
        model, prompts, num_generations=1, max_new_tokens=max_trace_tokens,
        stop_token_ids=[response_start_id, eos_id], pad_token_id=pad_id,
        seeds=[seed + i for i in range(len(prompts))], temperature=temperature,
        forbid_first=[response_start_id] if force_trace else None,
    )
    split = [split_trace(trace, response_start_id, eos_id) for trace in traces]
    bodies, emitted = [body for body, _ in split], [e for _, e in split]
    answers = sample_traces(
        model, [p + b + [response_start_id] for p, b in zip(prompts, bodies)], num_generations=1,
        max_new_tokens=max_answer_tokens, stop_token_ids=[eos_id], pad_token_id=pad_id,
        seeds=[0] * len(prompts), temperature=0.0,
    )
    answers = [a[:-1] if a and a[-1] == eos_id else a for a in answers]
    return [ThoughtAnswer(body, answer if e or append_marker else [], e)
            for body, answer, e in zip(bodies, answers, emitted)]
