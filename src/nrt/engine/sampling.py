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

import warnings
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, Cache, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from nrt.engine.cpu_attention import NAME as FLOAT32_SDPA
from nrt.engine.cpu_attention import attention_implementation, float32_attention, uses_float32_attention
from nrt.engine.decode_step import (SUPPORTED_MODEL_TYPES, compiled_decode_step, decode_step, decode_weights,
                                    grouped_attention)
from nrt.engine.decode_step import supports as decode_step_supports
from nrt.engine.options import EngineOptions
from nrt.engine.transformers_compat import cache_kwargs
from nrt.engine.sequences import full_attention_only


class _PreallocatedLayer(DynamicLayer):
    """A DynamicLayer that writes into a buffer of `capacity` positions instead of concatenating.

    transformers' DynamicLayer copies the whole cache at every decoding step (torch.cat), so a
    trace of L tokens costs O(L^2) copying; here each step writes one column and attention
    reads a view of the filled part, with the same values.
    """

    def __init__(self, capacity: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.capacity, self.length, self.dtype = capacity, 0, dtype

    def lazy_initialization(self, key_states, value_states) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        dtype = torch.promote_types(self.dtype, key_states.dtype) if self.dtype else key_states.dtype
        self._keys = key_states.new_empty((b, h, self.capacity, d), dtype=dtype)
        self._values = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]), dtype=dtype)
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


def _decoding_cache(model, capacity: int, dtype: torch.dtype | None = None) -> Cache:
    """Preallocated full-attention layers; transformers' own cache for anything else (sliding windows...)."""
    if not full_attention_only(model):
        return DynamicCache(config=model.config)
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[_PreallocatedLayer(capacity, dtype) for _ in range(layers)])


GROUPED = "nrt_grouped_decode"


@dataclass
class SharedPrefix:
    """The prompt keys/values of each group, read by all its rows while decoding.

    keys[l], values[l]: [G, H_kv, P, D] for decoder layer l; mask [G, P] (False at left padding);
    k rows per group, group-major; rows [B]: the original row (q*K + k) of each row still decoding,
    None while every row is (the first step up to the first stop).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor
    k: int
    rows: torch.Tensor | None

    def select(self, rows: torch.Tensor) -> "SharedPrefix":
        return SharedPrefix(self.keys, self.values, self.mask, self.k, rows)


def grouped_decode_attention(module, query, key, value, attention_mask, scaling=None, nrt_shared_prefix=None,
                             **kwargs):
    """transformers' attention interface over `nrt.engine.decode_step.grouped_attention`: one new token
    per row [B, H, 1, D] attending to its group's prompt (the SharedPrefix) and its own trace
    (key/value [B, H_kv, T, D] from this row's cache), in float32 on the CPU."""
    prefix = nrt_shared_prefix
    if prefix is None or query.shape[2] != 1:
        raise ValueError("grouped_decode_attention decodes one token per row with a SharedPrefix")
    layer = module.layer_idx
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.autocast(query.device.type, enabled=False):
        out = grouped_attention(query, key, value, prefix.keys[layer], prefix.values[layer], prefix.mask, prefix.k,
                                prefix.rows, scale)
    return out.transpose(1, 2).to(query.dtype), None


AttentionInterface.register(GROUPED, grouped_decode_attention)
AttentionMaskInterface.register(GROUPED, sdpa_mask)


def _grouped_decoding_supported(model) -> bool:
    """CPU models whose attention is transformers' sdpa over all previous tokens, with plain q/k/v heads.

    (Measured on CPUs only; GPU attention kernels are another trade-off.)"""
    if next(model.parameters()).device.type != "cpu":
        return False
    config = model.config
    return (
        getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES
        and getattr(config, "_attn_implementation", None) in ("sdpa", FLOAT32_SDPA)
        and full_attention_only(model)
    )


def run_eagerly():
    """Within the block every compiled function runs eagerly (`torch.compiler.set_stance`): the
    model's forward here updates a cache through Python-side lengths, which torch.compile would
    specialise on (a recompilation per token) if the trainer compiled the decoder layers
    (`trainer.torch_compile`)."""
    return torch.compiler.set_stance("force_eager")


def question_seed(run_seed: int, position: int) -> int:
    """The sampling seed of one question: its traces depend on the run's seed and the question's
    place in the question stream only (not on batching or the number of processes)."""
    return run_seed * 1_000_003 + position


def _pick(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row [N] from logits [N, V] and uniform numbers u [N]; temperature 0 is greedy.

    Inverse CDF: the first token whose cumulative probability exceeds u * total (`right=True`,
    so a zero-probability token is never drawn, even for u = 0)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float()
    probs = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)
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
    engine: EngineOptions = EngineOptions(),
) -> list[list[int]]:
    """Sample `num_generations` continuations per prompt; rows are group-major (q*K + k).

    A row stops after emitting one of `stop_token_ids` (the stop token is kept) or after
    `max_new_tokens` tokens. `forbid_first` lists tokens that may not be the first one
    (used to force a trace by forbidding an immediate `<|response_start|>`). The switches of
    `engine` (`nrt.engine.options`): `fixed_length` masks the stop tokens until the limit, so
    every trace is exactly `max_new_tokens` long (TRL's `min_new_tokens`, for benchmarks);
    `preallocate_cache=False` uses transformers' DynamicCache, which grows by concatenation;
    on the CPU, attention runs in float32 with a float32 cache (`nrt.engine.cpu_attention`)
    unless `attention_in_float32=False`; with `share_prompt_cache` (and a supported model: see
    `_grouped_decoding_supported`) the K rows of a group read one copy of their prompt's keys
    and values instead of K copies (`grouped_decode_attention`); there, with `lean_step` (the
    default) each token is decoded by `nrt.engine.decode_step.decode_step` from weights prepared
    once per call instead of by the model's forward (the same computation), where the model
    allows it (`nrt.engine.decode_step.supports`), and with `compile_step` by that step under
    torch.compile; where it does not, `compile_step` warns once and decodes through the forward.
    """
    float32_cache = engine.attention_in_float32 and uses_float32_attention(model)
    grouped = (engine.share_prompt_cache and engine.preallocate_cache and num_generations > 1
               and _grouped_decoding_supported(model))
    decoding = _Decoding(num_generations, max_new_tokens, stop_token_ids, pad_token_id, temperature, top_p,
                         forbid_first, max_new_tokens if engine.fixed_length else 0, engine.preallocate_cache,
                         float32_cache, grouped, engine.lean_step, engine.compile_step)
    with float32_attention(model, enabled=engine.attention_in_float32):
        return _sample(model, prompts, seeds, decoding)


@dataclass(frozen=True)
class _Decoding:
    """What `_sample` needs besides the model, the prompts and their seeds."""

    num_generations: int
    max_new_tokens: int
    stop_token_ids: list[int]
    pad_token_id: int
    temperature: float
    top_p: float
    forbid_first: list[int] | None
    min_new_tokens: int
    preallocate_cache: bool
    float32_cache: bool
    grouped: bool
    lean_step: bool
    compile_step: bool


@dataclass
class _Prefilled:
    """The state after the prompt prefill, rows repeated K times (group-major)."""

    logits: torch.Tensor  # [Q*K, V] next-token logits
    cache: Cache  # the trace tokens' cache (grouped: per row; else prompt + trace)
    extra: dict  # extra forward arguments (the SharedPrefix when grouped)
    mask: torch.Tensor  # [Q*K, P + steps] attention mask, prompt columns left-padded
    next_position: torch.Tensor  # [Q*K, 1]
    width: int  # P: prompt columns


def _prefill(model, prompts: list[list[int]], d: _Decoding, steps: int) -> _Prefilled:
    """One forward over the left-padded prompts [Q, P] filling the cache, then K rows per prompt."""
    k, device = d.num_generations, next(model.parameters()).device
    q, width = len(prompts), max(len(p) for p in prompts)
    # one attention mask for the whole run: prompt columns (left-padded), then one column per step
    full_mask = torch.zeros((q, width + steps), dtype=torch.long)
    ids = torch.full((q, width), d.pad_token_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        full_mask[row, width - len(prompt) :] = 1
    positions = (full_mask[:, :width].cumsum(-1) - 1).clamp_min(0)
    cache_dtype = torch.float32 if d.float32_cache else None
    if d.grouped:  # the prompt cache stays one per group; the trace tokens get a cache per row
        cache = _decoding_cache(model, width, cache_dtype)
    elif d.preallocate_cache:
        cache = _decoding_cache(model, width + steps, cache_dtype)
    else:
        cache = DynamicCache(config=model.config)
    full_mask = full_mask.to(device)
    with run_eagerly():
        out = model(input_ids=ids.to(device), attention_mask=full_mask[:, :width], position_ids=positions.to(device),
                    **cache_kwargs(cache), use_cache=True, logits_to_keep=1)
    extra = {}
    if d.grouped:
        prefix = SharedPrefix([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
                              full_mask[:, :width].bool(), k, None)
        cache, extra = _decoding_cache(model, steps, cache_dtype), {"nrt_shared_prefix": prefix}
    else:
        cache.batch_repeat_interleave(k)
    return _Prefilled(out.logits[:, -1].float().repeat_interleave(k, 0), cache, extra,
                      full_mask.repeat_interleave(k, 0), positions[:, -1:].to(device).repeat_interleave(k, 0) + 1,
                      width)


def _sample(model, prompts: list[list[int]], seeds: list[int], d: _Decoding) -> list[list[int]]:
    """Prefill, then one token per row per step; stopped rows leave the batch and the cache."""
    k, n, device = d.num_generations, len(prompts) * d.num_generations, next(model.parameters()).device
    steps = max(d.max_new_tokens, 1)
    uniforms = torch.stack(
        [torch.rand(k, steps, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    ).flatten(0, 1).to(device)  # [Q*K, steps]
    state = _prefill(model, prompts, d, steps)
    logits, cache, extra, full_mask, next_position, width = (
        state.logits, state.cache, state.extra, state.mask, state.next_position, state.width)

    lean = d.grouped and (d.lean_step or d.compile_step) and decode_step_supports(model)
    if d.compile_step and not lean:
        warnings.warn("sample_traces(compile_step=True): this model decodes through its forward, uncompiled "
                      "(nrt.engine.decode_step needs transformers' own Llama/Mistral/Qwen2/Qwen3 class on the CPU, "
                      "without hooks, and num_generations > 1)", stacklevel=3)
    if lean:  # each row's trace keys/values in fixed buffers (`nrt.engine.decode_step`)
        prefix = extra["nrt_shared_prefix"]
        trace_keys = [x.new_empty((n, x.shape[1], steps, x.shape[3])) for x in prefix.keys]
        trace_values = [x.new_empty((n, x.shape[1], steps, x.shape[3])) for x in prefix.values]
        step = compiled_decode_step() if d.compile_step else decode_step
        weights = decode_weights(model, prepare=not d.compile_step, rows=n)
    sampled = torch.full((n, steps), -1, dtype=torch.long, device=device)  # -1 after a row stopped
    active = torch.arange(n, device=device)  # original row of each row still decoding
    stop = torch.tensor(d.stop_token_ids, device=device)
    for t in range(d.max_new_tokens):
        if t == 0 and d.forbid_first:
            logits[:, d.forbid_first] = -float("inf")
        if t < d.min_new_tokens:
            logits[:, stop] = -float("inf")
        tokens = _pick(logits, uniforms[active, t], d.temperature, d.top_p)
        sampled[active, t] = tokens
        if t == d.max_new_tokens - 1:
            break
        running = ~torch.isin(tokens, stop)
        if not running.all():  # drop stopped rows from the cache and the batch
            if not running.any():
                break
            keep = running.nonzero().squeeze(-1)
            if lean:
                trace_keys, trace_values = [x[keep] for x in trace_keys], [x[keep] for x in trace_values]
            else:
                cache.batch_select_indices(keep)
            active, tokens, full_mask, next_position = active[keep], tokens[keep], full_mask[keep], next_position[keep]
            if d.grouped:
                extra["nrt_shared_prefix"] = extra["nrt_shared_prefix"].select(active)
        full_mask[:, width + t] = 1
        if lean:
            prefix = extra["nrt_shared_prefix"]
            logits = step(model, weights, tokens, next_position, torch.tensor([t], device=device), t + 1, prefix.keys,
                          prefix.values, prefix.mask, k, prefix.rows, trace_keys, trace_values)
        else:
            with attention_implementation(model, GROUPED, d.grouped), run_eagerly():
                logits = model(
                    input_ids=tokens[:, None],
                    attention_mask=None if d.grouped else full_mask[:, : width + t + 1],  # grouped: masks its prompt
                    position_ids=next_position,
                    **cache_kwargs(cache),
                    use_cache=True,
                    **extra,
                ).logits[:, -1].float()
        next_position = next_position + 1
    return [row[row >= 0].tolist() for row in sampled.cpu()]
