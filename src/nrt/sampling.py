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
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer


class _PreallocatedLayer(DynamicLayer):
    """A DynamicLayer that writes into a buffer of `capacity` positions instead of concatenating.

    transformers' DynamicLayer copies the whole cache at every decoding step (torch.cat), so a
    trace of L tokens costs O(L^2) copying; here each step writes one column and attention
    reads a view of the filled part, with the same values.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states, value_states) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self._keys = key_states.new_empty((b, h, self.capacity, d))
        self._values = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.length + new > self.capacity:
            raise ValueError(f"cache capacity {self.capacity} exceeded")
        self._keys[:, :, self.length : self.length + new] = key_states
        self._values[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._views()


def _decoding_cache(model, capacity: int) -> Cache:
    """Preallocated full-attention layers; transformers' own cache for anything else (sliding windows...)."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    if getattr(config, "sliding_window", None) or any(t != "full_attention" for t in layer_types):
        return DynamicCache(config=model.config)
    return Cache(layers=[_PreallocatedLayer(capacity) for _ in layer_types])


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
    preallocate_cache: bool = True,
) -> list[list[int]]:
    """Sample `num_generations` continuations per prompt; rows are group-major (q*K + k).

    A row stops after emitting one of `stop_token_ids` (the stop token is kept) or after
    `max_new_tokens` tokens. `forbid_first` lists tokens that may not be the first one
    (used to force a trace by forbidding an immediate `<|response_start|>`). The stop tokens
    cannot be drawn before `min_new_tokens` tokens (TRL's `min_new_tokens`; benchmarks use it
    to make every trace exactly `max_new_tokens` long). `preallocate_cache=False` uses
    transformers' DynamicCache, which grows by concatenation (slower; kept for tests).
    """
    k = num_generations
    device = next(model.parameters()).device
    q, n = len(prompts), len(prompts) * num_generations
    width = max(len(p) for p in prompts)
    steps = max(max_new_tokens, 1)
    # one attention mask for the whole run: prompt columns (left-padded), then one column per step
    full_mask = torch.zeros((q, width + steps), dtype=torch.long)
    ids = torch.full((q, width), pad_token_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        full_mask[row, width - len(prompt) :] = 1
    positions = (full_mask[:, :width].cumsum(-1) - 1).clamp_min(0)
    uniforms = torch.stack(
        [torch.rand(k, steps, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    ).flatten(0, 1).to(device)  # [Q*K, max_new]

    cache = _decoding_cache(model, width + steps) if preallocate_cache else DynamicCache(config=model.config)
    full_mask = full_mask.to(device)
    out = model(
        input_ids=ids.to(device),
        attention_mask=full_mask[:, :width],
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(k)
    logits = out.logits[:, -1].float().repeat_interleave(k, 0)
    full_mask = full_mask.repeat_interleave(k, 0)
    next_position = positions[:, -1:].to(device).repeat_interleave(k, 0) + 1

    sampled = torch.full((n, steps), -1, dtype=torch.long, device=device)  # -1 after a row stopped
    active = torch.arange(n, device=device)  # original row of each row still decoding
    stop = torch.tensor(stop_token_ids, device=device)
    for t in range(max_new_tokens):
        if t == 0 and forbid_first:
            logits[:, forbid_first] = -float("inf")
        if t < min_new_tokens:
            logits[:, stop] = -float("inf")
        tokens = _pick(logits, uniforms[active, t], temperature, top_p)
        sampled[active, t] = tokens
        if t == max_new_tokens - 1:
            break
        running = ~torch.isin(tokens, stop)
        if not running.all():  # drop stopped rows from the cache and the batch
            if not running.any():
                break
            keep = running.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, tokens, full_mask, next_position = active[keep], tokens[keep], full_mask[keep], next_position[keep]
        full_mask[:, width + t] = 1
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=full_mask[:, : width + t + 1],
            position_ids=next_position,
            cache=cache,
            use_cache=True,
        ).logits[:, -1].float()
        next_position = next_position + 1
    return [row[row >= 0].tolist() for row in sampled.cpu()]
