"""The policy's weights under the names of a plain transformers checkpoint, LoRA merged.

An inference engine with its own copy of the weights (vLLM) loads them as it would load the
model's safetensors files. For a LoRA policy (peft) every adapted linear layer is given as

    W' = W + B @ A * lora_alpha / lora_r          (peft's `get_delta_weight`)

and an embedding with trained token rows (peft's `trainable_token_indices`) as the base matrix
with those rows replaced, computed aside: the trainer's own weights are never merged in place
(merging and unmerging would round the frozen base weights a little at every step).
"""

from __future__ import annotations

from typing import Iterator

import torch

from nrt.engine.token_logprobs import unwrap


def _peft_layers():
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.trainable_tokens import TrainableTokensLayer
    except ImportError:
        return ()
    return LoraLayer, TrainableTokensLayer


def checkpoint_weights(model, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs as `save_pretrained` of the plain model would write them, detached and
    cast to `dtype` when given; a tied matrix once, under its first name (the input embedding)."""
    model = unwrap(model)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    layers = _peft_layers()
    merged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # plain name -> (effective weight, base weight)
    if layers:
        lora_layer, token_layer = layers
        for name, module in inner.named_modules():
            if isinstance(module, token_layer):  # "<X>.token_adapter" stands for X's weight
                base = module.get_base_layer().weight
                merged[name.removesuffix(".token_adapter") + ".weight"] = (
                    module.get_merged_weights(module.active_adapters), base)
            elif isinstance(module, lora_layer):
                base = module.get_base_layer().weight
                weight = base
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight = weight + module.get_delta_weight(adapter)
                merged[name + ".weight"] = (weight, base)
    seen: set[int] = set()
    with torch.no_grad():
        for name, (weight, base) in merged.items():
            if id(base) not in seen:
                seen.add(id(base))
                yield name, weight.detach().to(dtype or weight.dtype)
        for name, param in inner.named_parameters():
            plain = name.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")
            if id(param) in seen or ".lora_" in name or ".trainable_tokens_" in name or plain in merged:
                continue
            seen.add(id(param))
            yield plain, param.detach().to(dtype or param.dtype)
