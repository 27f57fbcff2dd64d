"""A vLLM logits processor that ends a served NRT model's trace the way training does.

    vllm serve RUN_DIR --reasoning-parser nrt --logits-processors nrt.serving.trace_end:TraceEndsAtMarker

In training a trace that ends in eos gets `<|response_start|>` in its place and is answered after
it (nrt.engine.rollouts.split_trace). Here, until a request has written the marker, eos cannot
end it: eos's probability moves to the marker,

    logit'(marker) = log(exp(logit(marker)) + exp(logit(eos))),   logit'(eos) = -inf,

so at temperature 1 the marker comes exactly when the model would have written either, greedy
decoding writes the marker where it would have stopped, and the answer follows. Once the marker is
written, nothing changes: eos ends the answer. Without the option a served model behaves raw (a
trace that ends in eos is the whole output). A trace cut by `max_tokens` is not answered: the
server cannot know the trace budget; give a `max_tokens` that leaves room for the answer. A model
whose tokenizer has no marker is left alone.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from nrt.tokens import RESPONSE_START


def merge_eos_into_marker(logits: torch.Tensor, rows: torch.Tensor, marker: int, eos: int) -> torch.Tensor:
    """In place on `rows` of [B, V] logits: the marker gets logaddexp(marker, eos), eos -inf."""
    merged = torch.logaddexp(logits[rows, marker], logits[rows, eos])
    logits[rows, marker] = merged
    logits[rows, eos] = float("-inf")
    return logits


class TraceEndsAtMarker(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        from transformers import AutoTokenizer

        config = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer, revision=config.tokenizer_revision,
                                                  trust_remote_code=config.trust_remote_code)
        marker = tokenizer.convert_tokens_to_ids(RESPONSE_START)
        self.marker = marker if marker != tokenizer.unk_token_id and tokenizer.eos_token_id is not None else None
        self.eos = tokenizer.eos_token_id
        self.device = device
        self.outputs: dict[int, list[int]] = {}  # batch row -> the request's output ids (vLLM's live list)

    def is_argmax_invariant(self) -> bool:
        return False  # greedy decoding picks the marker where it would pick eos

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self.marker is not None:
            process_dict_updates(self.outputs, batch_update, lambda params, prompt, output: output)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows = [i for i, out in self.outputs.items() if self.marker not in out]
        if rows:
            merge_eos_into_marker(logits, torch.tensor(rows, device=logits.device), self.marker, self.eos)
        return logits
