"""A LoRA policy into vLLM two ways, side by side: merged weights reloaded in place (what nrt does) against
vLLM's own LoRA adapters (the adapter saved, then loaded as a new LoRARequest each step).

    .venv/bin/python benchmarks/lora_sync.py --model artifacts/models/smollm2-135m-instruct/hf --rounds 3

SmolLM2-135M's architecture with random weights (only its config is read), LoRA r=16 on every linear
layer as `model.use_peft` makes it, bf16 engine. Per round and way: seconds to hand the new weights to
the engine, and seconds to sample 8 prompts x 8 traces x 64 tokens with them. vLLM's adapters carry
no trained embedding rows (peft's `trainable_token_indices`, which nrt uses for `<|response_start|>`):
vLLM 0.32 refuses to load such an adapter ("...trainable_tokens_delta is unsupported LoRA weight"), so
here the adapter is saved without those rows (`vllm_lora` below samples with the base's rows for the new
token): the path is timed, not usable for NRT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def without_token_rows(adapter_dir: Path) -> None:
    """Drop peft's trained token rows from a saved adapter: vLLM's LoRA loader refuses them."""
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter_dir / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if "trainable_tokens" not in k},
              str(adapter_dir / "adapter_model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["trainable_token_indices"] = None
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--memory", type=float, default=0.05, help="vLLM's share of RAM for its KV cache")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from nrt.config import ModelConfig
    from nrt.engine.samplers import TraceRequest
    from nrt.engine.vllm_sampler import VLLMOptions, VLLMSampler
    from nrt.tokens import ensure_response_start_token
    from nrt.training.peft_model import wrap_lora

    def base_model():  # the same random weights at every call
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=torch.float32)
        return model, ensure_response_start_token(model, tokenizer)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model, rs = base_model()
    policy = wrap_lora(model, ModelConfig(use_peft=True), [rs])
    request = TraceRequest([list(range(100, 132))] * 8, 8, 64, [rs, tokenizer.eos_token_id], list(range(8)))
    options = VLLMOptions(dtype="bfloat16", gpu_memory_utilization=args.memory, max_model_length=256)

    def nudge():
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.add_(torch.randn_like(param) * 1e-3)

    results = {"merged": {"sync": [], "sample": []}, "vllm_lora": {"sync": [], "sample": []}}
    merged = VLLMSampler(policy, options)
    for _ in range(args.rounds):
        nudge()
        tick = time.perf_counter()
        merged.sync(policy)
        results["merged"]["sync"].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        merged.sample(request)
        results["merged"]["sample"].append(time.perf_counter() - tick)
    del merged

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from nrt.engine.vllm_sampler import _write_checkpoint

    with tempfile.TemporaryDirectory() as base_dir:
        _write_checkpoint(base_model()[0], Path(base_dir), torch.bfloat16)  # the frozen base vLLM serves
        threads = torch.get_num_threads()
        set_threads = torch.set_num_threads
        llm = LLM(model=base_dir, skip_tokenizer_init=True, dtype="bfloat16", enforce_eager=True,
                  enable_lora=True, max_lora_rank=16, max_loras=1, max_model_len=256,
                  kv_cache_memory_bytes=int(args.memory * 24 * 2**30))
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)
        params = [SamplingParams(n=8, seed=s * 8, max_tokens=64, stop_token_ids=[rs, tokenizer.eos_token_id],
                                 ignore_eos=True, logprobs=0, detokenize=False) for s in range(8)]
        prompts = [TokensPrompt(prompt_token_ids=p) for p in request.prompts]
        for r in range(args.rounds):
            nudge()
            with tempfile.TemporaryDirectory() as adapter_dir:
                tick = time.perf_counter()
                policy.save_pretrained(adapter_dir, save_embedding_layers=False)
                without_token_rows(Path(adapter_dir))
                lora = LoRARequest(f"step{r}", r + 1, adapter_dir)
                llm.llm_engine.add_lora(lora)
                results["vllm_lora"]["sync"].append(time.perf_counter() - tick)
                tick = time.perf_counter()
                llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
                results["vllm_lora"]["sample"].append(time.perf_counter() - tick)
                llm.llm_engine.remove_lora(r + 1)
    summary = {way: {k: statistics.median(v) for k, v in phases.items()} for way, phases in results.items()}
    out = {"rounds": args.rounds, "median": summary, "all": results}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
