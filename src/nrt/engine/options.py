"""The engine's switches as one value, passed down from the trainer, a benchmark or a test.

Every switch but `fixed_length` and `compile_step` only changes speed: with any combination
the engine computes the same traces and log-probabilities up to float rounding
(tests/test_speed_equivalence.py checks each). A benchmark or an ablation sets a field; it
never replaces a function.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineOptions:
    # sampling (nrt.engine.sampling)
    preallocate_cache: bool = True  # fixed KV buffers instead of transformers' DynamicCache (grows by torch.cat)
    share_prompt_cache: bool = True  # the K rows of a group read one copy of their prompt's keys/values
    compile_step: bool = False  # decode with nrt.engine.decode_step under torch.compile (trainer.torch_compile)
    lean_step: bool = True  # decode with nrt.engine.decode_step run eagerly (prepared weights), where the model allows
    fixed_length: bool = False  # no trace stops before its limit: stop tokens masked (benchmarks: equal work)
    sample_step_at_once: bool = True  # one decoding batch for all of a step's micro-batches (NRTTrainer)
    # scoring and training forward passes (nrt.engine.sequences)
    fused_logprobs: bool = True  # log-softmax fused with the gather, chunked; off: full logits -> logsumexp
    fuse_head: bool = True  # the output layer runs chunk by chunk inside that pass (no [N, V] logits)
    share_prompts: bool = True  # a group's K rows run their common prompt once (shared KV cache)
    # both
    attention_in_float32: bool = True  # float32 attention on the CPU (nrt.engine.cpu_attention)


# every speed switch off: the reference path
PLAIN = EngineOptions(preallocate_cache=False, share_prompt_cache=False, lean_step=False, sample_step_at_once=False,
                      fused_logprobs=False, fuse_head=False, share_prompts=False, attention_in_float32=False)
