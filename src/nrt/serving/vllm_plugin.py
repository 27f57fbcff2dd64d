"""nrt's vLLM plugin (entry point group `vllm.general_plugins`, pyproject.toml): vLLM calls `register`
in each of its processes before it parses `vllm serve`'s options, so `--reasoning-parser nrt` is known.
The registration is lazy: vLLM imports nrt.serving.reasoning_parser only when a server asks for it."""

from __future__ import annotations


def register() -> None:
    from vllm.reasoning import ReasoningParserManager

    ReasoningParserManager.register_lazy_module("nrt", "nrt.serving.reasoning_parser", "NRTReasoningParser")
