"""Gradient (activation) checkpointing: transformers' own, non-reentrant, on the decoder layers.

transformers checkpoints a decoder layer only when the layer is in training mode and gradients
are on. The trainer runs its policy in eval mode (no dropout: the rewards are read off the
update's forward pass), so `enable` sets the training flag of the decoder layers themselves and
of nothing inside them: their dropout and LoRA-dropout submodules stay in eval mode, and the
forward computes exactly what it computed before.

Under checkpointing a layer drops its KV cache (transformers sets `cache=None`: a replayed layer
would write the cache twice). The update forward of `nrt.engine.sequences.completion_logprobs` shares
each prompt's cache across its K traces, which would then silently lose the prompt; it asks
`drops_cache` and runs every row in full instead. Forwards without gradients (sampling, scoring,
the no-trace baseline) are not checkpointed and keep the cache.
"""

from __future__ import annotations

from nrt.engine.transformers_compat import keep_cache_without_grad
from nrt.errors import ConfigError


def _transformers_model(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def checkpointed_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in _transformers_model(model).modules()
            if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


def enable(model) -> int:
    """Checkpoint every decoder layer of `model` in its backward; returns how many layers."""
    inner = _transformers_model(model)
    if not getattr(inner, "supports_gradient_checkpointing", False):
        raise ConfigError(f"trainer.gradient_checkpointing: {type(inner).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # the name since transformers 5.x
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    layers = checkpointed_layers(inner)
    if not layers:
        raise ConfigError(f"trainer.gradient_checkpointing: no checkpointable decoder layers in {type(inner).__name__}")
    for layer in layers:
        layer.training = True  # this module only (not .train(): its submodules keep eval mode)
        keep_cache_without_grad(layer)
    return len(layers)


def drops_cache(model) -> bool:
    """True when a forward with gradients would run checkpointed layers (which ignore a KV cache)."""
    import torch

    if not torch.is_grad_enabled():
        return False
    return any(layer.training for layer in checkpointed_layers(model))
