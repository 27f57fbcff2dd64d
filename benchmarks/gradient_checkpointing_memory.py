"""Peak memory and time of the update's forward + backward with and without gradient checkpointing,
full fine-tuning and LoRA, on a random Llama (CPU).

    .venv/bin/python benchmarks/gradient_checkpointing_memory.py [--hidden 256 --layers 8 --rows 8 --length 512]

Each setting runs in a fresh process (peak RSS is per process): one warm-up forward + backward,
then `--repeats` timed ones (median and spread). Memory: the peak RSS over the process, minus the
RSS before the first forward (the weights, optimizer-free). Output: one JSON line per setting in
benchmarks/results/gradient_checkpointing_memory.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gradient_checkpointing_memory.jsonl"


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nrt.config import ModelConfig
    from nrt.engine.gradient_checkpointing import enable
    from nrt.training.peft_model import wrap_lora
    from nrt.engine.sequences import pack, completion_logprobs

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         max_position_embeddings=args.length * 2)
    model = LlamaForCausalLM(config).eval()
    if args.lora:
        model = wrap_lora(model, ModelConfig(use_peft=True, lora_r=16, lora_alpha=32), [3])
    if args.checkpointing:
        enable(model)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(4, 1024, (32,), generator=generator).tolist()
    rows = [torch.randint(4, 1024, (args.length,), generator=generator).tolist() for _ in range(args.rows)]
    batch = pack([prompt] * args.rows, rows, 0)
    before = rss_mib()
    times = []
    for i in range(args.repeats + 1):
        tick = time.perf_counter()
        logprobs, _ = completion_logprobs(model, batch)
        logprobs.sum().backward()
        if i:
            times.append(time.perf_counter() - tick)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"lora": args.lora, "gradient_checkpointing": args.checkpointing, "hidden": args.hidden,
            "layers": args.layers, "rows": args.rows, "completion_length": args.length,
            "peak_rss_above_weights_mib": round(peak - before, 1), "time_median_s": round(statistics.median(times), 3),
            "time_min_s": round(min(times), 3), "time_max_s": round(max(times), 3), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return
    common = [f"--hidden={args.hidden}", f"--layers={args.layers}", f"--rows={args.rows}", f"--length={args.length}",
              f"--repeats={args.repeats}", "--one"]
    lines = []
    for lora in (False, True):
        for checkpointing in (False, True):
            flags = common + (["--lora"] if lora else []) + (["--checkpointing"] if checkpointing else [])
            out = subprocess.run([sys.executable, __file__, *flags], capture_output=True, text=True, check=True)
            lines.append(out.stdout.strip().splitlines()[-1])
            print(lines[-1], flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
