"""Attention in float32 on the CPU, for models that otherwise run it in bfloat16 under autocast.

torch's CPU attention kernels are 2-4x slower in bfloat16 than in float32 on this project's
CPUs (AVX512-BF16 speeds up matmuls, not the attention kernel's softmax/conversion work; see
docs/PERFORMANCE.md), while attention is a small share of the FLOPs. So on the CPU, for models
using transformers' "sdpa" attention, `float32_attention(model)` routes attention through the
same sdpa code with query/key/value upcast to float32 (autocast off inside), and casts the
output back. More precise than bfloat16 attention, and faster. A no-op on GPUs, for float32
inputs, and for models that use another attention implementation.

The mask a forward builds for these layers (`float32_sdpa_mask`, transformers' mask interface)
is the additive float mask the kernel takes, made once per forward: given a boolean mask,
torch's `scaled_dot_product_attention` converts it on every call and the CPU flash kernel keeps
its float mask for the backward, so a forward with gradients held one float32 [rows, 1, queries,
keys] copy per layer, memory that grows with the square of the length (at 1024 completion tokens,
8 rows and 30 layers: 1 GB). Converted once, the same way torch does, every layer shares it: the
same attention, bit for bit.
"""

from __future__ import annotations

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
    with torch.autocast("cpu", enabled=False):
        if _grouped_masked(query, key, attention_mask, kwargs):
            out, weights = _grouped_sdpa(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
        else:
            out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                                  **kwargs)
    return out.to(dtype), weights


def _grouped_masked(query, key, attention_mask, kwargs) -> bool:
    """A masked multi-token attention with fewer key/value heads than query heads and nothing else
    (no position bias, soft-capping or returned weights), which `_grouped_sdpa` computes."""
    return (attention_mask is not None and query.shape[2] > 1 and key.shape[1] != query.shape[1]
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions", False))


def _grouped_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' sdpa attention for `_grouped_masked` inputs, with the CPU kernel reading each key/value
    head for its group of query heads (`enable_gqa`). transformers copies them to one per query head
    whenever there is a mask (its kernel choice on CUDA), which costs a copy per layer and keeps
    heads-times more key/value activations for the backward. The same outputs; the key/value gradients
    are summed over the group in another order (float rounding)."""
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float mask torch's sdpa makes of a boolean one: 0 where True, -inf where False."""
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask.logical_not(), float("-inf"))


def float32_sdpa_mask(*args, dtype: torch.dtype = torch.float32, **kwargs) -> torch.Tensor | None:
    """transformers' sdpa mask (None where sdpa may skip it) as the additive float32 mask (float64 for
    a float64 model) that `float32_sdpa_attention` hands to the kernel: made once per forward, here,
    instead of at every layer by torch."""
    mask = sdpa_mask(*args, **kwargs)
    if mask is None or mask.dtype != torch.bool:
        return mask
    return additive_mask(mask, torch.float64 if dtype == torch.float64 else torch.float32)


AttentionInterface.register(NAME, float32_sdpa_attention)
AttentionMaskInterface.register(NAME, float32_sdpa_mask)


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
