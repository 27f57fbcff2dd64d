"""One decoding pass per question for evaluation: traces, greedy answers and answer scores together.

Evaluating a question needs several continuations of one prompt: a greedy think-then-answer,
sampled traces whose reference-answer log-likelihood is scored, the same score without a trace,
and (for the probe) a direct answer and a forced trace. Done one by one, that is a prompt
prefill per pass, a second prefill of prompt + trace before each answer, and a scoring forward
over prompt + trace + answer. Here each question's prompt is prefilled once, its cache repeated
to R rows (one per `RowKind`), and all rows advance one token per step in lockstep, each through
its own phases:

    trace:  greedy or sampled tokens until `<|response_start|>`, eos or `max_trace_tokens`
            (eos and the limit are replaced by / followed with `<|response_start|>`, as in
            training: `nrt.engine.rollouts.split_trace`); max_trace_tokens = 0: no trace;
    answer: after `<|response_start|>`, either greedy tokens until eos (`score_answer=False`),
            or the reference answer fed token by token, its log-probabilities summed
            (`score_answer=True`: log p(answer + eos | prompt, trace, <|response_start|>)).

Nothing is re-tokenised and nothing is recomputed: the answer continues the trace's cache. The
values are the ones the separate passes compute (`sample_traces`, `think_then_answer`,
`nrt.evaluation.evaluate.answer_logprobs`), up to float rounding; tests/test_answer_rows.py
checks it. Sampled rows draw token t of trace k of a question from u[k, t] of
`torch.rand(K, max_trace_tokens)` seeded with the question's seed, as `sample_traces` does, so
they sample the same traces.

Finished rows stay in the batch (fed a pad token, their outputs ignored) until a quarter of the
batch has finished: then the batch and its cache are compacted, instead of copying the cache at
every finish.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrt.engine.cpu_attention import float32_attention, uses_float32_attention
from nrt.engine.options import EngineOptions
from nrt.engine.sampling import _decoding_cache, _pick, run_eagerly
from nrt.engine.transformers_compat import cache_kwargs


@dataclass(frozen=True)
class RowKind:
    """What one row of each question does (see the module docstring)."""

    max_trace_tokens: int  # 0: `<|response_start|>` right after the prompt
    temperature: float = 0.0  # trace tokens: 0 greedy, else sampled at this temperature (top_p 1)
    forbid_first: tuple[int, ...] = ()  # token ids the trace may not start with (a forced trace)
    score_answer: bool = False  # True: score the reference answer; False: write a greedy answer


@dataclass
class RowResult:
    trace_ids: list[int]  # the trace body, without <|response_start|> / eos
    emitted_response_start: bool  # the model wrote <|response_start|> itself
    answer_ids: list[int]  # greedy answer without eos (empty for scored rows)
    answer_logprob: float  # scored rows: log p(reference answer + eos | ...), nats; else nan
    # a forced row whose own first choice (the same pick without `forbid_first`) was forbidden; for a
    # greedy row: left free, the model would have stopped at once (the trace `[]`, then the answer
    # of a `RowKind(0)` row), and otherwise it writes this very row
    first_choice_forbidden: bool = False


TRACE, ANSWER, DONE = 0, 1, 2


@torch.no_grad()
def decode_rows(model, prompts: list[list[int]], kinds: list[RowKind], *, answers: list[list[int]] | None,
                seeds: list[int], response_start_id: int, eos_id: int, pad_id: int, max_answer_tokens: int,
                engine: EngineOptions = EngineOptions()) -> list[list[RowResult]]:
    """Rows `kinds` for every prompt; returns results[q][r]. `answers[q]` (eos included) is needed when
    a kind scores the answer. The sampled kinds of a question share one uniform stream (`seeds[q]`),
    in the order they appear in `kinds`, so they need one `max_trace_tokens`."""
    sampled = [k for k in kinds if k.temperature > 0]
    if len({k.max_trace_tokens for k in sampled}) > 1:
        raise ValueError("the sampled row kinds of one call must share max_trace_tokens")
    if any(k.score_answer for k in kinds) and answers is None:
        raise ValueError("scoring row kinds need the reference answers")
    if any(k.max_trace_tokens < 0 for k in kinds) or max_answer_tokens < 1:
        raise ValueError("max_trace_tokens must be >= 0 and max_answer_tokens >= 1")
    with float32_attention(model, enabled=engine.attention_in_float32), run_eagerly():
        return _decode(model, prompts, kinds, answers, seeds, response_start_id, eos_id, pad_id, max_answer_tokens,
                       engine.attention_in_float32 and uses_float32_attention(model))


def _pick_per_temperature(logits: torch.Tensor, u: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """`_pick` for rows of mixed temperatures (greedy rows: 0)."""
    chosen = torch.empty(len(logits), dtype=torch.long)
    for temp in temperatures.unique().tolist():
        sel = (temperatures == temp).nonzero().squeeze(1)
        chosen[sel] = _pick(logits[sel], u[sel], temp, 1.0)
    return chosen


def _decode(model, prompts, kinds, answers, seeds, rs, eos, pad, max_answer, float32_cache):
    device = next(model.parameters()).device
    q, r = len(prompts), len(kinds)
    n = q * r
    width = max(len(p) for p in prompts)
    sampled_rows = [i for i, k in enumerate(kinds) if k.temperature > 0]
    trace_steps = max([kinds[i].max_trace_tokens for i in sampled_rows] + [1])
    answer_len = max([len(a) for a in answers] + [max_answer]) if answers is not None else max_answer
    steps = max(k.max_trace_tokens for k in kinds) + 1 + answer_len

    # per-row constants [N], rows question-major (q * R + r)
    rep = lambda values, dtype: torch.tensor(values, dtype=dtype).repeat(q)  # noqa: E731
    max_trace = rep([k.max_trace_tokens for k in kinds], torch.long)
    temperature = rep([k.temperature for k in kinds], torch.float32)
    scores = rep([k.score_answer for k in kinds], torch.bool)
    forbid = torch.zeros((n, 0), dtype=torch.long)
    forbid_width = max(len(k.forbid_first) for k in kinds)
    if forbid_width:
        # each kind's forbidden first tokens, padded to one width by repeating its first (-1: nothing forbidden)
        per_kind = [list(k.forbid_first) + [k.forbid_first[0] if k.forbid_first else -1]
                    * (forbid_width - len(k.forbid_first)) for k in kinds]
        forbid = torch.tensor(per_kind, dtype=torch.long).repeat(q, 1)  # -1: nothing forbidden
    uniforms = torch.zeros((n, trace_steps))
    for qi, seed in enumerate(seeds):
        if sampled_rows:
            u = torch.rand(len(sampled_rows), trace_steps, generator=torch.Generator().manual_seed(int(seed)))
            uniforms[[qi * r + i for i in sampled_rows]] = u
    reference = torch.full((n, answer_len), pad, dtype=torch.long)
    ref_len = torch.zeros(n, dtype=torch.long)
    if answers is not None:
        for qi, answer in enumerate(answers):
            reference[qi * r : (qi + 1) * r, : len(answer)] = torch.tensor(answer, dtype=torch.long)
            ref_len[qi * r : (qi + 1) * r] = len(answer)

    # per-row state
    phase = torch.full((n,), TRACE, dtype=torch.long)
    trace_count = torch.zeros(n, dtype=torch.long)
    answer_count = torch.zeros(n, dtype=torch.long)
    emitted = torch.zeros(n, dtype=torch.bool)
    forbidden_choice = torch.zeros(n, dtype=torch.bool)
    answer_logprob = torch.zeros(n, dtype=torch.float64)
    traces = torch.full((n, max(max_trace.max().item(), 1)), -1, dtype=torch.long)
    generated = torch.full((n, max_answer), -1, dtype=torch.long)

    # prefill: one forward over the left-padded prompts, the cache repeated to the R rows of each
    ids = torch.full((q, width), pad, dtype=torch.long)
    mask = torch.zeros((q, width + steps), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1  # the step columns are all ones: every row feeds a token per step
    positions = (mask[:, :width].cumsum(-1) - 1).clamp_min(0)
    cache = _decoding_cache(model, width + steps, torch.float32 if float32_cache else None)
    out = model(input_ids=ids.to(device), attention_mask=mask[:, :width].to(device),
                position_ids=positions.to(device), **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(r)
    logits = out.logits[:, -1].float().cpu().repeat_interleave(r, 0)  # [N, V]
    mask = mask.repeat_interleave(r, 0)
    next_position = positions[:, -1].repeat_interleave(r, 0) + 1
    active = torch.arange(n)  # original row of each batch row

    for t in range(steps):
        a = active
        ph = phase[a]
        tokens = torch.full((len(a),), pad, dtype=torch.long)
        # trace rows: pick a token, or <|response_start|> at the limit
        in_trace = ph == TRACE
        if in_trace.any():
            rows = in_trace.nonzero().squeeze(1)
            orig = a[rows]
            lg = logits[rows]
            first = trace_count[orig] == 0
            temps = temperature[orig]
            u = uniforms[orig, trace_count[orig].clamp_max(trace_steps - 1)]
            if forbid_width and first.any():
                f = forbid[orig]
                own_choice = _pick_per_temperature(lg, u, temps)
                forbidden_choice[orig[first]] = (own_choice[first, None] == f[first]).any(-1)
                for j in range(forbid_width):
                    hit = first & (f[:, j] >= 0)
                    lg[hit.nonzero().squeeze(1), f[hit, j]] = -float("inf")
            picked = _pick_per_temperature(lg, u, temps)
            at_limit = trace_count[orig] >= max_trace[orig]
            stop = at_limit | (picked == rs) | (picked == eos)
            emitted[orig] = ~at_limit & (picked == rs)
            body = ~stop
            traces[orig[body], trace_count[orig[body]]] = picked[body]
            trace_count[orig[body]] += 1
            phase[orig[stop]] = ANSWER
            tokens[rows] = torch.where(stop, torch.full_like(picked, rs), picked)
        # answer rows: score the reference token, or write a greedy one
        in_answer = ph == ANSWER
        if in_answer.any():
            rows = in_answer.nonzero().squeeze(1)
            orig = a[rows]
            lg = logits[rows]
            score = scores[orig]
            j = answer_count[orig]
            ref = reference[orig, j.clamp_max(answer_len - 1)]
            lp = torch.log_softmax(lg, -1).gather(1, ref[:, None]).squeeze(1)
            answer_logprob[orig[score]] += lp[score].double()
            greedy = lg.argmax(-1)
            write = ~score
            generated[orig[write], j[write]] = greedy[write]
            answer_count[orig] += 1
            done = torch.where(score, answer_count[orig] >= ref_len[orig],
                               (greedy == eos) | (answer_count[orig] >= max_answer))
            phase[orig[done]] = DONE
            tokens[rows] = torch.where(score, ref, greedy)
        finished = phase[a] == DONE
        if bool(finished.all()):
            break
        if int(finished.sum()) * 4 >= len(a):  # compact the batch and its cache
            keep = (~finished).nonzero().squeeze(1)
            cache.batch_select_indices(keep.to(device))
            active, tokens, mask, next_position = a[keep], tokens[keep], mask[keep], next_position[keep]
        logits = model(input_ids=tokens[:, None].to(device), attention_mask=mask[:, : width + t + 1].to(device),
                       position_ids=next_position[:, None].to(device), **cache_kwargs(cache),
                       use_cache=True).logits[:, -1]
        logits = logits.float().cpu()
        next_position = next_position + 1

    results = []
    for qi in range(q):
        row_results = []
        for ri in range(r):
            i = qi * r + ri
            trace = traces[i, : trace_count[i]].tolist()
            answer = generated[i][generated[i] >= 0].tolist()
            if answer and answer[-1] == eos:
                answer = answer[:-1]
            row_results.append(RowResult(trace, bool(emitted[i]), [] if kinds[ri].score_answer else answer,
                                         float(answer_logprob[i]) if kinds[ri].score_answer else float("nan"),
                                         bool(forbidden_choice[i])))
        results.append(row_results)
    return results
