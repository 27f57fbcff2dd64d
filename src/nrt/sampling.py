"""Sampling traces: one prompt prefill per group, the KV cache shared by its K samples.

A lean decoding loop instead of `model.generate`: prompts are prefilled once per question,
the cache is repeated K times, and rows that have stopped are dropped from the cache so
the remaining ones decode at their own batch size.

Sampling draws token t of row (q, k) by inverse CDF from a uniform number u[q, k, t] made
by a generator seeded with `seeds[q]`. A question's traces therefore depend only on its
seed and the model, not on which other questions share the batch or on how many processes
run: 1-process and 2-process runs sample the same traces, and resuming resamples exactly.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def _pick(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row [N] from logits [N, V] and uniform numbers u [N]; temperature 0 is greedy.

    Inverse CDF: the first token whose cumulative probability exceeds u * total (`right=True`,
    so a zero-probability token is never drawn, even for u = 0)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        cdf = sorted_probs.cumsum(-1)
        choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp_max(probs.shape[-1] - 1)
        return order.gather(-1, choice).squeeze(-1)
    cdf = probs.cumsum(-1)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp_max(probs.shape[-1] - 1)
    return choice.squeeze(-1)


@torch.no_grad()
def sample_traces(
    model,
    prompts: list[list[int]],
    *,
    num_generations: int,
    max_new_tokens: int,
    stop_token_ids: list[int],
    pad_token_id: int,
    seeds: list[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    forbid_first: list[int] | None = None,
    min_new_tokens: int = 0,
) -> list[list[int]]:
    """Sample `num_generations` continuations per prompt; rows are group-major (q*K + k).

    A row stops after emitting one of `stop_token_ids` (the stop token is kept) or after
    `max_new_tokens` tokens. `forbid_first` lists tokens that may not be the first one
    (used to force a trace by forbidding an immediate `<|response_start|>`). The stop tokens
    cannot be drawn before `min_new_tokens` tokens (TRL's `min_new_tokens`; benchmarks use it
    to make every trace exactly `max_new_tokens` long).
    """
    k = num_generations
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    uniforms = torch.stack(
        [torch.rand(k, max(max_new_tokens, 1), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    ).flatten(0, 1)  # [Q*K, max_new]

    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(k)
    logits = out.logits[:, -1].float().repeat_interleave(k, 0)
    mask = mask.to(device).repeat_interleave(k, 0)
    next_position = positions[:, -1:].to(device).repeat_interleave(k, 0) + 1

    n = len(prompts) * k
    traces: list[list[int]] = [[] for _ in range(n)]
    active = torch.arange(n, device=device)  # original row of each row still decoding
    stop = torch.tensor(stop_token_ids, device=device)
    for t in range(max_new_tokens):
        if t == 0 and forbid_first:
            logits[:, forbid_first] = -float("inf")
        if t < min_new_tokens:
            logits[:, stop] = -float("inf")
        tokens = _pick(logits, uniforms[active.cpu(), t].to(device), temperature, top_p)
        for row, token in zip(active.tolist(), tokens.tolist()):
            traces[row].append(token)
        running = ~torch.isin(tokens, stop)
        if t == max_new_tokens - 1 or not running.any():
            break
        if not running.all():  # drop stopped rows from the cache and the batch
            keep = running.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, tokens, mask, next_position = active[keep], tokens[keep], mask[keep], next_position[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=next_position,
            cache=cache,
            use_cache=True,
        ).logits[:, -1].float()
        next_position = next_position + 1
    return traces
