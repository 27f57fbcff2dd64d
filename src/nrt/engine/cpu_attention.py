"""Attention in float32 on the CPU, for models that otherwise run it in bfloat16 under autocast.

torch's CPU attention kernels are 2-4x slower in bfloat16 than in float32 on this project's
CPUs (AVX512-BF16 speeds up matmuls, not the attention kernel's softmax/conversion work; see
docs/PERFORMANCE.md), while attention is a small share of the FLOPs. So on the CPU, for models
using transformers' "sdpa" attention, `float32_attention(model)` routes attention through the
same sdpa code with query/key/value upcast to float32 (autocast off inside), and casts the
output back. More precise than bfloat16 attention, and faster. A no-op on GPUs, for float32
inputs, and for models that use another attention implementation.

A boolean padding mask is turned into the additive float mask the kernel takes once per forward,
not once per layer: torch's `scaled_dot_product_attention` converts a boolean mask on every call
and the CPU flash kernel keeps its float mask for the backward, so a forward with gradients held
one float32 [rows, 1, queries, keys] copy per layer, memory that grows with the square of the
length (at 1024 completion tokens, 8 rows and 30 layers: 1 GB). The same float mask, made the
same way, is now shared by every layer: the same attention, bit for bit.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "nrt_float32_sdpa"


def float32_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention computed in float32 (autocast off) for CPU inputs of at most
    float32 precision; the output keeps the query's dtype. (Under autocast a Llama's query and
    key are already float32 after the rotary embedding, and autocast would cast them down.)"""
    dtype = query.dtype
    if query.device.type != "cpu" or torch.float64 in (dtype, key.dtype, value.dtype):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = additive_mask(attention_mask)
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(dtype), weights


_last_mask: tuple[weakref.ref, torch.Tensor] | None = None  # (a boolean mask, its float32 form)


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """The float32 mask torch's sdpa makes of a boolean one (0 where True, -inf where False), made
    once for a mask object that every layer of a forward receives. The float mask is kept while the
    boolean one lives (the forward), then dropped with it."""
    global _last_mask
    if _last_mask is not None and _last_mask[0]() is mask:
        return _last_mask[1]
    converted = torch.zeros_like(mask, dtype=torch.float32).masked_fill_(mask.logical_not(), float("-inf"))
    _last_mask = (weakref.ref(mask, _forget), converted)
    return converted


def _forget(dead: weakref.ref) -> None:
    global _last_mask
    if _last_mask is not None and _last_mask[0] is dead:
        _last_mask = None


AttentionInterface.register(NAME, float32_sdpa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def _config(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return getattr(model, "config", None), model


def uses_float32_attention(model) -> bool:
    """True when `float32_attention(model)` changes anything: an sdpa model on the CPU."""
    config, inner = _config(model)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    parameter = next(inner.parameters(), None)
    return parameter is not None and parameter.device.type == "cpu"


@contextmanager
def float32_attention(model, enabled: bool = True):
    """Within the block, `model` (an sdpa transformers model on the CPU) computes attention in float32."""
    with attention_implementation(model, NAME, enabled and uses_float32_attention(model)):
        yield


@contextmanager
def attention_implementation(model, name: str, enabled: bool = True):
    """Within the block, the model's attention is the registered function `name` (restored after)."""
    config, _ = _config(model)
    if not enabled or config is None or config._attn_implementation == name:
        yield
        return
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
