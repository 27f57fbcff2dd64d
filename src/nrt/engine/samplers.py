"""The one boundary between the trainer and whatever samples its traces.

    sampler.sync(policy)            # the trainer's current weights into the sampler (a no-op for nrt's engine)
    traces = sampler.sample(TraceRequest(prompts, K, limit, stop ids, per-question seeds, temperature, top_p))
    traces.token_ids                # [Q*K] lists of token ids, group-major (question q: rows q*K .. q*K+K-1)
    traces.logprobs                 # [Q*K] the sampler's own log-prob of each sampled token, or None

Prompts go in as token ids and traces come back as token ids: nothing is re-tokenised. Both samplers
stop a trace after `<|response_start|>` or eos *by token id* (the stop token is kept), or at the trace
limit, at the given temperature and top_p; a question's traces depend only on its seed and the
weights, never on which other questions share the batch.

- `NativeSampler`: nrt's own engine (`nrt.engine.sampling`), running the trainer's model itself.
  Its traces come from the policy being trained, so it returns no log-probs of its own
  (`logprobs` is None): the trainer's forward pass is the sampling policy, up to float rounding.
- `nrt.engine.vllm_sampler.VLLMSampler`: a vLLM engine in this process (`trainer.use_vllm`), with
  its own copy of the weights, synced in place; its log-probs feed the off-policy correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nrt.engine.options import EngineOptions
from nrt.engine.sampling import sample_traces


@dataclass(frozen=True)
class TraceRequest:
    prompts: list[list[int]]  # [Q] prompt token ids
    num_generations: int  # K traces per prompt
    max_new_tokens: int  # the trace limit, the stop token included
    stop_token_ids: list[int]  # <|response_start|> and eos
    seeds: list[int]  # [Q] one sampling seed per question (nrt.engine.sampling.question_seed)
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class SampledTraces:
    token_ids: list[list[int]]  # [Q*K], group-major; a trace ends with its stop token when it emitted one
    logprobs: list[list[float]] | None  # [Q*K] the sampler's log pi_rollout of each token (temperature 1), or None


class Sampler(Protocol):
    def sync(self, policy) -> None:
        """Make the sampler draw from `policy`'s current weights."""

    def sample(self, request: TraceRequest) -> SampledTraces:
        """K traces per prompt (see the module docstring)."""


class NativeSampler:
    """nrt's engine: decodes with the policy itself, so a sync has nothing to copy."""

    def __init__(self, policy, pad_token_id: int, engine: EngineOptions = EngineOptions()):
        self.policy, self.pad_token_id, self.engine = policy, pad_token_id, engine

    def sync(self, policy) -> None:
        self.policy = policy

    def sample(self, request: TraceRequest) -> SampledTraces:
        ids = sample_traces(
            self.policy, request.prompts, num_generations=request.num_generations,
            max_new_tokens=request.max_new_tokens, stop_token_ids=request.stop_token_ids,
            pad_token_id=self.pad_token_id, seeds=request.seeds, temperature=request.temperature,
            top_p=request.top_p, engine=self.engine,
        )
        return SampledTraces(ids, None)
