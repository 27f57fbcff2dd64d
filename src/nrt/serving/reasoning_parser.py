"""vLLM reasoning parser for NRT models: the trace is what comes before `<|response_start|>`, the
answer what follows it.

    vllm serve RUN_DIR --reasoning-parser nrt

An NRT model writes its trace right after the prompt, with no opening marker, and starts its
answer with `<|response_start|>` (NRT_SPEC section 3). Through the OpenAI API the trace comes back
as `reasoning_content` (vLLM's `reasoning`) and the answer as `content`. The marker is a special
token, which vLLM drops from the text by default; `adjust_request` keeps special tokens in the
decoded text so the text can be split at it. Output that never reaches the marker is all trace
(content None), as a trace cut by `max_tokens` is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.reasoning.abs_reasoning_parsers import ReasoningParser

from nrt.tokens import RESPONSE_START


class NRTReasoningParser(ReasoningParser):
    def __init__(self, tokenizer, *args, **kwargs):
        super().__init__(tokenizer, *args, **kwargs)
        marker_id = self.vocab.get(RESPONSE_START)
        if marker_id is None:
            raise RuntimeError(f"--reasoning-parser nrt: the tokenizer has no {RESPONSE_START} token; "
                               "is this a model trained with nrt?")
        self.marker_id: int = marker_id

    @property
    def reasoning_end_str(self) -> str:
        return RESPONSE_START

    def adjust_request(self, request):
        request.skip_special_tokens = False  # keep <|response_start|> in the text the parser splits
        if hasattr(request, "spaces_between_special_tokens"):
            request.spaces_between_special_tokens = False
        return request

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        return self.marker_id in input_ids

    def is_reasoning_end_streaming(self, input_ids: Sequence[int], delta_ids: Iterable[int]) -> bool:
        return self.marker_id in delta_ids

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        return input_ids[input_ids.index(self.marker_id) + 1:] if self.marker_id in input_ids else []

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        ids = list(token_ids)
        return ids.index(self.marker_id) if self.marker_id in ids else len(ids)

    def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
        reasoning, marker, content = model_output.partition(RESPONSE_START)
        if not marker:
            return model_output or None, None
        return reasoning or None, content or None

    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                    previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                    delta_token_ids: Sequence[int]) -> DeltaMessage | None:
        if self.marker_id in previous_token_ids:
            return DeltaMessage(content=delta_text)
        if self.marker_id in delta_token_ids:
            reasoning, _, content = delta_text.partition(RESPONSE_START)
            if not reasoning and not content:
                return None  # the marker alone
            return DeltaMessage(reasoning=reasoning or None, content=content or None)
        return DeltaMessage(reasoning=delta_text)
