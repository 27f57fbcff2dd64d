"""The `<|response_start|>` token that separates a reasoning trace from the answer.

Sequence layout (NRT_SPEC section 3): [prompt][trace][<|response_start|>][answer][eos].
"""

from __future__ import annotations

import torch

RESPONSE_START = "<|response_start|>"


def pad_token_id(tokenizer) -> int:
    """The id that pads rows: the tokenizer's pad token, else eos (padding is always masked out)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def ensure_response_start_token(model, tokenizer) -> int:
    """Add `<|response_start|>` to the tokenizer when missing and return its id.

    A new token gets its input embedding and its output (lm_head) row copied from the
    eos token's: the model already treats eos as "the text ends here", the closest
    existing meaning to "the answer starts here", so the first rollouts emit it at
    sensible places instead of at random.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; NRT needs one to end answers")
    if RESPONSE_START in tokenizer.get_vocab():
        token_id = tokenizer.convert_tokens_to_ids(RESPONSE_START)
        if token_id < model.get_input_embeddings().weight.shape[0]:
            return token_id
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": [RESPONSE_START]})
        token_id = tokenizer.convert_tokens_to_ids(RESPONSE_START)
    eos_id = tokenizer.eos_token_id
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[token_id] = model.get_input_embeddings().weight[eos_id]
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            output.weight[token_id] = output.weight[eos_id]
            if getattr(output, "bias", None) is not None:
                output.bias[token_id] = output.bias[eos_id]
    return token_id
