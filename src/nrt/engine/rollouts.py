"""A micro-batch of sampled traces with the reference answer spliced in, ready to score and train.

For each trace sampled after a prompt the training sequence is (NRT_SPEC section 3)

    [prompt][trace][<|response_start|>][reference answer][eos]

- the trace ends where the model emitted `<|response_start|>` (kept, trained by the RL term),
  or eos (dropped), or at the length limit; in the last two cases `<|response_start|>` is
  appended and trained by the response-prefix term;
- the sampled answer is never used: the reference answer's token ids are spliced in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nrt.engine.sequences import PackedBatch, gather_columns, pack


@dataclass
class Rollout:
    """B = Q*K rows, group-major; C completion columns."""

    batch: PackedBatch
    trace_mask: torch.Tensor  # [B, C] trace tokens + self-emitted <|response_start|>
    prefix_mask: torch.Tensor  # [B, C] appended <|response_start|>
    answer_start: torch.Tensor  # [B] column of the first answer token
    answer_length: torch.Tensor  # [B] answer tokens, eos included
    trace_length: torch.Tensor  # [B] trace tokens, <|response_start|> excluded
    emitted_response_start: torch.Tensor  # [B] bool
    num_generations: int
    distinct_2: torch.Tensor  # [B] distinct 2-gram ratio within the trace (NaN when shorter than 2)
    distinct_3: torch.Tensor  # [B] distinct 3-gram ratio within the trace (NaN when shorter than 3)
    rollout_logprobs: torch.Tensor | None = None  # [B, C] the sampler's log-probs on trace_mask, 0 elsewhere;
    #                                               None when the trainer's own model sampled

    def answer_columns(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The answer tokens' columns of per-completion-token values [B, C]: ([B, T], mask [B, T])."""
        return gather_columns(values, self.answer_start, self.answer_length)


def split_trace(trace: list[int], response_start_id: int, eos_id: int) -> tuple[list[int], bool]:
    """A sampled trace as (its body, whether the model emitted `<|response_start|>` itself).

    The body drops a final `<|response_start|>` or eos; a trace cut at its length limit is all body."""
    emitted = bool(trace) and trace[-1] == response_start_id
    return (trace[:-1] if trace and trace[-1] in (response_start_id, eos_id) else trace), emitted


def distinct_ratio(tokens: list[int], n: int) -> float:
    """Unique n-grams / n-grams of one trace: 1.0 for no repetition, near 0 for a loop."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def build_rollout(
    prompts: list[list[int]],
    answers: list[list[int]],
    traces: list[list[int]],
    *,
    num_generations: int,
    response_start_id: int,
    eos_id: int,
    pad_id: int,
    device=None,
    trace_logprobs: list[list[float]] | None = None,
) -> Rollout:
    """Splice answers after sampled traces. prompts/answers: one per question; traces: Q*K, group-major;
    trace_logprobs: the sampler's log-prob of each sampled token (`nrt.engine.samplers`), when it has them."""
    k = num_generations
    rows_prompt, completions, trace_len, emitted, bodies = [], [], [], [], []
    for row, trace in enumerate(traces):
        q = row // k
        body, self_emitted = split_trace(trace, response_start_id, eos_id)
        rows_prompt.append(prompts[q])
        completions.append(body + [response_start_id] + answers[q])
        trace_len.append(len(body))
        emitted.append(self_emitted)
        bodies.append(body)
    batch = pack(rows_prompt, completions, pad_id, device)
    c = batch.completion_ids.shape[1]
    columns = torch.arange(c, device=batch.input_ids.device)
    trace_len_t = torch.tensor(trace_len, device=columns.device)
    emitted_t = torch.tensor(emitted, device=columns.device)
    at_marker = columns[None, :] == trace_len_t[:, None]
    trace_mask = (columns[None, :] < trace_len_t[:, None]) | (at_marker & emitted_t[:, None])
    prefix_mask = at_marker & ~emitted_t[:, None]
    answer_length = torch.tensor([len(answers[r // k]) for r in range(len(traces))], device=columns.device)
    distinct = [torch.tensor([distinct_ratio(b, n) for b in bodies], device=columns.device) for n in (2, 3)]
    sampled = None
    if trace_logprobs is not None:  # trace_mask's columns: the body, then a self-emitted marker (an eos is dropped)
        sampled = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        for row, (lp, n, e) in enumerate(zip(trace_logprobs, trace_len, emitted)):
            sampled[row, : n + e] = torch.tensor(lp[: n + e], dtype=torch.float32)
        sampled = sampled.to(columns.device)
    return Rollout(batch, trace_mask, prefix_mask, trace_len_t + 1, answer_length, trace_len_t, emitted_t, k, *distinct,
                   rollout_logprobs=sampled)


def no_trace_batch(prompts: list[list[int]], answers: list[list[int]], response_start_id: int, pad_id: int,
                   device=None):
    """The no-trace baseline: [prompt][<|response_start|>][answer], one row per question.

    Returns (batch, answer_start [Q], answer_length [Q])."""
    batch = pack(prompts, [[response_start_id] + a for a in answers], pad_id, device)
    dev = batch.input_ids.device
    starts = torch.ones(len(prompts), dtype=torch.long, device=dev)
    return batch, starts, torch.tensor([len(a) for a in answers], device=dev)
