"""Traces sampled by vLLM inside the training process (`trainer.use_vllm`, TRL's "colocate" mode).

    sampler = VLLMSampler(policy, VLLMOptions(...))   # an engine built from the policy's current weights
    sampler.sync(policy)                               # after optimizer updates: weights reloaded in place
    traces = sampler.sample(request)                   # nrt.engine.samplers.TraceRequest -> SampledTraces

- The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`); under `accelerate launch`
  every process has its own engine (tensor parallel size 1) on its own questions, as TRL's
  colocate mode does (vLLM's "external_launcher" backend joins the launch's process group).
- Weights: the policy's (`nrt.engine.weights.checkpoint_weights`, LoRA merged: vLLM's own LoRA
  adapters cannot carry the trained `<|response_start|>` embedding rows) go to a temporary
  checkpoint once, for the engine to start from; afterwards `sync` streams them into the model
  runner's `reload_weights` (vLLM's CPU backend repacks its linear weights, so the model's
  per-parameter `load_weights` cannot be used there), then resets the prefix cache, whose
  keys and values belong to the old weights.
- Same semantics as nrt's engine: prompts in as token ids; a trace stops after
  `<|response_start|>` or eos by token id (`stop_token_ids`, with `ignore_eos` so that no other
  id of the model's generation config stops it; the official recipe stops at the string "<|",
  which needs detokenising every step and also stops at any other special token), the stop
  token kept, or at `max_tokens`; the same temperature and top_p. Seeds: question q's K
  traces are vLLM's n=K children of one request with seed `seeds[q] * K`, i.e. seeds
  seeds[q]*K + k (vLLM's parallel sampling adds the child's index), so a question's traces
  depend on its seed and the weights only.
- Log-probs: vLLM's "raw_logprobs" mode gives log pi of each sampled token under the model's
  unscaled distribution, the same quantity as the trainer's forward, for the off-policy
  correction (`nrt.rollout_correction`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from nrt.engine.samplers import SampledTraces, TraceRequest
from nrt.engine.token_logprobs import unwrap
from nrt.engine.weights import checkpoint_weights

@dataclass(frozen=True)
class VLLMOptions:
    dtype: str = "bfloat16"  # the engine's weights and compute
    gpu_memory_utilization: float = 0.3  # share of the GPU's memory the engine takes; on a CPU, of RAM for its KV cache
    tensor_parallel_size: int = 1
    max_model_length: int = 1024  # longest prompt + trace the engine serves
    enable_sleep_mode: bool = False  # release the engine's memory between sampling calls (CUDA only)
    seed: int = 0
    fixed_length: bool = False  # every trace exactly max_new_tokens long (min_tokens; benchmarks: equal work)


def _in_process_vllm():
    """vLLM, set up to run its engine in this process, logging its errors only (nrt reports progress
    itself; VLLM_LOGGING_LEVEL set by the user wins). Both settings are read when vLLM is imported."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    # some of vLLM's import-time warnings are logged before its own logging is configured
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
    import vllm

    return vllm


def supported_architectures() -> set[str]:
    """The model classes (config.json `architectures`) this vLLM build can run."""
    return set(_in_process_vllm().ModelRegistry.get_supported_archs())


def check_architecture(model_config, where: str) -> None:
    """Refuse, before any weight loads, a model whose class this vLLM build cannot run."""
    from nrt.errors import ModelLoadError

    archs = list(getattr(model_config, "architectures", None) or [])
    if not archs or not set(archs) & supported_architectures():
        raise ModelLoadError(f"{where}: vLLM cannot run {', '.join(archs) or 'a model without `architectures`'} "
                             f"(model_type {getattr(model_config, 'model_type', '?')!r}); train it without "
                             "trainer.use_vllm")


def _refresh_tied_output_layer(model) -> None:
    """A tied output layer shares the input embedding's weight, which the reload updates, but vLLM's
    CPU backend multiplies by a oneDNN copy of it made when it was loaded, and the reload skips the
    tied layer (its checkpoint has no weight of its own): the copy is made again from the new weight."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    method = getattr(head, "quant_method", None)
    if head is not None and embed is not None and head.weight is embed.weight and method is not None:
        method.process_weights_after_loading(head)


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _write_checkpoint(policy, directory: Path, dtype: torch.dtype) -> None:
    """config.json and one safetensors file of the policy's plain weights: what vLLM starts from."""
    from safetensors.torch import save_file

    model = unwrap(policy)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    config.save_pretrained(directory)
    weights = {name: t.contiguous() for name, t in checkpoint_weights(policy, dtype)}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})


class VLLMSampler:
    def __init__(self, policy, options: VLLMOptions, multi_process: bool = False):
        LLM = _in_process_vllm().LLM

        self.options = options
        self.dtype = getattr(torch, options.dtype)
        # vLLM's CPU worker sets torch to 1 thread for serving and replaces torch.set_num_threads by a no-op
        # (its OpenMP threads are bound to cores): the trainer shares this process and needs its threads back
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        # vLLM's CPU backend sizes its KV cache as utilization x RAM minus this process's resident memory,
        # which in a training process holds the trainer's model and optimizer: the KV size is given instead
        on_cpu = not torch.cuda.is_available()
        kv_bytes = int(options.gpu_memory_utilization * _physical_memory()) if on_cpu else None
        directory = Path(tempfile.mkdtemp(prefix="nrt-vllm-"))
        try:
            _write_checkpoint(policy, directory, self.dtype)
            self.llm = LLM(
                model=str(directory), skip_tokenizer_init=True, dtype=options.dtype, seed=options.seed,
                enforce_eager=True, gpu_memory_utilization=options.gpu_memory_utilization,
                tensor_parallel_size=options.tensor_parallel_size, max_model_len=options.max_model_length,
                enable_sleep_mode=options.enable_sleep_mode, logprobs_mode="raw_logprobs",
                enable_prefix_caching=True, kv_cache_memory_bytes=kv_bytes,
                distributed_executor_backend="external_launcher" if multi_process else None,
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)  # the engine holds its own copy now
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)
        self.sleeping = False

    def sync(self, policy) -> None:
        """Reload the policy's current weights into the engine in place; drop cached prefixes."""
        self._wake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": checkpoint_weights(policy, self.dtype)})
        self.llm.apply_model(_refresh_tied_output_layer)
        self.llm.reset_prefix_cache()

    def sample(self, request: TraceRequest) -> SampledTraces:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        k = request.num_generations
        params = [
            SamplingParams(
                n=k, seed=int(seed) * k, max_tokens=request.max_new_tokens, temperature=request.temperature,
                top_p=request.top_p, stop_token_ids=list(request.stop_token_ids), ignore_eos=True,
                min_tokens=request.max_new_tokens if self.options.fixed_length else 0,
                logprobs=0, detokenize=False, skip_special_tokens=False,
            )
            for seed in request.seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in request.prompts], params,
                                    use_tqdm=False)
        token_ids, logprobs = [], []
        for out in outputs:
            for child in sorted(out.outputs, key=lambda c: c.index):
                ids = list(child.token_ids)
                token_ids.append(ids)
                logprobs.append([step[t].logprob for step, t in zip(child.logprobs, ids)])
        self._sleep()
        return SampledTraces(token_ids, logprobs)

    def sequence_logprobs(self, token_ids: list[int]) -> list[float]:
        """The engine's log-prob of each token of `token_ids` after the ones before it ([len - 1] values)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._wake()
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(token_ids))],
                                SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False), use_tqdm=False)[0]
        self._sleep()
        return [step[t].logprob for step, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    def _wake(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def _sleep(self) -> None:
        if self.options.enable_sleep_mode:
            self.llm.sleep(level=1)  # level 1: weights to host memory, KV cache dropped; sync wakes it
            self.sleeping = True
