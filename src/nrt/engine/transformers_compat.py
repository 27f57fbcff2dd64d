"""The transformers API differences nrt spans (5.17 on a GPU machine, 5.19 beside vLLM's CPU build,
which needs transformers below 5.20, up to 5.24).

- The models' KV cache argument and output: 5.2x renamed `past_key_values` to `cache` (the old
  name is still accepted, with a warning, until 5.40). Every model of one release uses the same
  name, so it is read once, from Llama.
- `logits_to_keep` as a boolean mask over positions (`slice_logits_to_keep`, newer releases):
  the head then runs on the kept positions only. Older releases take an int or an index vector;
  there the forward returns every position and the mask is applied after it (under
  `nrt.engine.token_logprobs.lm_head_rows` those are hidden states, not vocabulary logits).
- A checkpointed decoder layer in training mode drops its KV cache; newer releases only when
  gradients are on. Older ones drop it in no-grad forwards too, which would lose the prompt's cache
  while sampling: there the layer is told it may keep a cache (`_can_checkpoint_with_cache`), and
  nrt never gives a checkpointed forward with gradients a cache (`gradient_checkpointing.drops_cache`).
"""

from __future__ import annotations

import inspect

import transformers.modeling_utils
from transformers import LlamaModel
from transformers.modeling_layers import GradientCheckpointingLayer

CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_kwargs(cache) -> dict:
    """The forward's keyword for a KV cache: {"cache": cache} or {"past_key_values": cache}."""
    return {CACHE_ARGUMENT: cache}


def output_cache(out):
    """The cache a forward returned (None when it returned none)."""
    return getattr(out, CACHE_ARGUMENT, None)


MASK_LOGITS_TO_KEEP = hasattr(transformers.modeling_utils, "slice_logits_to_keep")


def kept_outputs(model, keep, **inputs):
    """The forward's outputs (`.logits`) at the positions where the bool mask `keep` [B, L] is True: [N, *]."""
    if MASK_LOGITS_TO_KEEP:
        return model(**inputs, logits_to_keep=keep).logits
    return model(**inputs, logits_to_keep=0).logits[keep]


CHECKPOINTING_KEEPS_NO_GRAD_CACHE = "is_grad_enabled" in inspect.getsource(GradientCheckpointingLayer.__call__)


def keep_cache_without_grad(layer) -> None:
    """Let a checkpointed `layer` keep its KV cache in no-grad forwards, on the releases that drop it there."""
    if not CHECKPOINTING_KEEPS_NO_GRAD_CACHE:
        layer._can_checkpoint_with_cache = True
