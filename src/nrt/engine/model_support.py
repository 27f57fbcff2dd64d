"""Which models nrt's engine can run, decided from the model's config alone, before any weight loads.

The engine (`sampling`, `sequences`, `answer_rows`, `generation`) calls a model's forward with

    input_ids, attention_mask   left-padded prompts, right-padded completions
    position_ids                counting real tokens only, so a left-padded row sees the positions
                                of an unpadded one
    the key/value cache         a transformers `Cache` under the forward's cache argument
                                (`transformers_compat.CACHE_ARGUMENT`)
    logits_to_keep              only the scored positions reach the output layer

and between forwards repeats a prompt's cache to its K rows and drops the rows that stopped
(`batch_repeat_interleave`, `batch_select_indices`), or writes each new token's keys and values
into preallocated layers. That is the interface of a decoder-only causal LM whose layers attend
over a key/value cache. The rule (a capability check, not a list of families, so a new
transformers architecture of that kind is accepted as it is):

- the config is not an encoder-decoder one, nor an encoder's (a config that has `is_decoder`, as
  BERT's and RoBERTa's do, must set it: their causal-LM head otherwise attends to later tokens);
- transformers has a causal-LM class for its model_type (what AutoModelForCausalLM loads);
- that class's forward names each argument above: taking it through **kwargs is not enough, since
  a model that ignores position_ids would misplace left-padded rows (so ALiBi models such as
  BLOOM and MPT, whose forwards take no position_ids, are refused);
- the class is not stateful (transformers' `_is_stateful`): Mamba, RWKV and the hybrids with
  recurrent or linear-attention layers (Jamba, Zamba, Qwen3-Next, ...) carry a recurrent state
  instead of keys and values, which can be neither repeated per row as above nor extended one
  position at a time into a preallocated buffer.

A model with its own code (config `auto_map`, model.trust_remote_code) is not checked here: its
class exists only once that code runs; it fails, if it does, when the model is called.
"""

from __future__ import annotations

import inspect

from nrt.engine.transformers_compat import CACHE_ARGUMENT
from nrt.errors import ModelLoadError

FORWARD_ARGUMENTS = ("input_ids", "attention_mask", "position_ids", CACHE_ARGUMENT, "logits_to_keep")


def causal_lm_class(model_config):
    """transformers' own causal-LM class for the config (None: it has none, or the model brings its own code)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if "AutoModelForCausalLM" in (getattr(model_config, "auto_map", None) or {}):
        return None
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(model_config, "model_type", None))
    if isinstance(name, (list, tuple)):
        name = name[0]
    return getattr(transformers, name, None) if name else None


def unsupported_reason(model_config) -> str | None:
    """Why nrt's engine cannot run the model of this config (None: it can, or it brings its own code)."""
    if getattr(model_config, "is_encoder_decoder", False):
        return "an encoder-decoder model; nrt runs decoder-only causal LMs"
    if getattr(model_config, "is_decoder", True) is False:
        return "an encoder (config is_decoder=false): its attention sees the tokens after each position"
    cls = causal_lm_class(model_config)
    if cls is None:
        if "AutoModelForCausalLM" in (getattr(model_config, "auto_map", None) or {}):
            return None
        return "transformers has no causal-LM class for it"
    if getattr(cls, "_is_stateful", False):
        return (f"{cls.__name__} keeps a recurrent state, not the key/value cache of attention layers that "
                "nrt's engine shares between a prompt's samples")
    parameters = inspect.signature(cls.forward).parameters
    missing = [name for name in FORWARD_ARGUMENTS if name not in parameters]
    if missing:
        return f"{cls.__name__}.forward takes no {', '.join(missing)}, which nrt's engine passes"
    return None


def check_engine_supports(model_config, where: str) -> None:
    """Refuse, from the config alone, a model nrt's engine cannot run (the rule: the module docstring)."""
    reason = unsupported_reason(model_config)
    if reason:
        raise ModelLoadError(f"{where}: model_type {getattr(model_config, 'model_type', None)!r} cannot be run by "
                             f"nrt: {reason} (decoder-only causal LMs with attention layers: llama, qwen2, "
                             "mistral, gemma, ...)")
