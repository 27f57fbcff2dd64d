"""The TRL side of the comparison: GRPOTrainer on the same work as `nrt bench --fixed-length`.

    .venv/bin/python benchmarks/trl_grpo.py --hidden 256 --layers 4 --prompts 16 --generations 8 --think 48
    .venv/bin/python benchmarks/trl_grpo.py --model DIR_OR_GGUF [--config-only] --prompts 8 --think 128

Same model (nrt.experiments.bench.workload: the random Llama, or --model's weights, or with
--config-only its architecture with random weights from the same seed: identical initial weights),
tokenizer, questions and answers, `<|response_start|>` added as the nrt trainer adds it, K, and
completion length: `min_new_tokens` = `max_new_tokens`
= --think, so every completion has exactly --think tokens as in `nrt bench --fixed-length`.
beta 0 (no reference model), one optimizer step per generation batch of prompts x K completions.
The reward is NRT's signal computed the way a TRL user would: a custom reward function that
runs a second forward of the policy over [prompt][completion][<|response_start|>][answer]
(no grad, one batched call, logits only at the answer positions) and returns the reference
answer's log-likelihood.

TRL's fastest working setting on a CPU (see docs/PERFORMANCE.md): use_cpu=True, bf16=True
(accelerate's bfloat16 autocast), transformers `generate` with its dynamic cache.

Prints one JSON line with the same keys as `nrt bench` where they apply: sec_per_step (median
over the timed steps), the spread, sec_generate (TRL's generate call), sec_score (the reward
function), sec_update (the rest of the step: TRL's bookkeeping, the loss forward-backward and
the optimizer step), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from nrt.engine.cpu_runtime import keep_freed_memory  # noqa: E402

keep_freed_memory()

import torch  # noqa: E402

from nrt.experiments.bench import bf16_supported, matmul_rate, peak_rss_mb, rss_mb, workload  # noqa: E402
from nrt.tokens import ensure_response_start_token  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model directory or .gguf file (nrt bench --model)")
    p.add_argument("--config-only", action="store_true", help="--model's architecture with random weights (--seed)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--micro-prompts", type=int, default=0,
                   help="questions per micro-batch (gradient accumulation; TRL still generates the step at once)")
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--think", type=int, default=48)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--answer-tokens", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off is faster")
    p.add_argument("--cache-implementation", default=None, help="TRL/transformers generation cache (None: dynamic)")
    p.add_argument("--continuous-batching", action="store_true",
                   help="TRL's use_transformers_continuous_batching (casts the model to bf16 for good)")
    args = p.parse_args(argv)
    if args.dtype == "auto":
        args.dtype = "bfloat16" if bf16_supported() else "float32"
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging

    import datasets
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("accelerate").setLevel(logging.ERROR)

    model, tokenizer, examples = workload(args, args.prompts * (args.warmup + args.steps))
    response_start = ensure_response_start_token(model, tokenizer)  # as NRTTrainer does: same rows on both sides
    prompts = [tokenizer.decode(ex.prompt_ids) for ex in examples]
    # TRL tokenizes the text prompts: they must give the same ids (the same work) as nrt's
    assert all(tokenizer(p, add_special_tokens=False)["input_ids"] == ex.prompt_ids for p, ex in zip(prompts, examples))
    dataset = datasets.Dataset.from_dict({"prompt": prompts, "answer_ids": [ex.answer_ids for ex in examples]})

    timer = {"generate": 0.0, "score": 0.0}
    holder = {}

    def answer_loglik(prompts, completions, completion_ids, answer_ids, **kwargs):
        """log pi(answer | prompt, completion, <|response_start|>): one batched no-grad forward."""
        tick = time.perf_counter()
        policy = holder["trainer"].model
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows = [p + c + [response_start] + a for p, c, a in zip(prompt_ids, completion_ids, answer_ids)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left-padded, so every answer ends at the last column
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        t = max(map(len, answer_ids))
        answers = ids[:, -t:]
        with torch.no_grad():
            logits = policy(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                            logits_to_keep=t + 1).logits[:, :-1].float()
            logp = logits.log_softmax(-1).gather(-1, answers[..., None]).squeeze(-1)
            valid = torch.arange(t)[None, :] >= (t - torch.tensor([len(a) for a in answer_ids]))[:, None]
            rewards = (logp * valid).sum(-1)
        timer["score"] += time.perf_counter() - tick
        return rewards.tolist()

    step_times, phases = [], {"generate": [], "score": [], "update": []}
    rss = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            timer.update(generate=0.0, score=0.0, start=time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            elapsed = time.perf_counter() - timer["start"]
            if state.global_step > args.warmup:
                step_times.append(elapsed)
                phases["generate"].append(timer["generate"])
                phases["score"].append(timer["score"])
                phases["update"].append(elapsed - timer["generate"] - timer["score"])
                rss.append(rss_mb())

    micro = args.micro_prompts or args.prompts  # one generation batch of prompts x K per optimizer step
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=args.dtype == "bfloat16", seed=args.seed,
            beta=0.0, num_generations=args.generations,
            per_device_train_batch_size=micro * args.generations, gradient_accumulation_steps=args.prompts // micro,
            max_completion_length=args.think, generation_kwargs={"min_new_tokens": args.think},
            cache_implementation=args.cache_implementation,
            temperature=1.0, top_p=1.0, learning_rate=1e-5, lr_scheduler_type="constant",
            max_steps=args.warmup + args.steps, logging_steps=10**9, save_strategy="no", report_to="none",
            dataloader_num_workers=0, disable_tqdm=True, log_completions=False, shuffle_dataset=False,
            gradient_checkpointing=args.gradient_checkpointing,
            use_transformers_continuous_batching=args.continuous_batching,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=[answer_loglik], args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Timer()])
        holder["trainer"] = trainer
        generate = trainer._generate_single_turn  # both generation paths (generate / generate_batch) run inside

        def timed_generate(*a, **kw):
            tick = time.perf_counter()
            out_ = generate(*a, **kw)
            timer["generate"] += time.perf_counter() - tick
            return out_

        trainer._generate_single_turn = timed_generate
        trainer.train()

    med = statistics.median(step_times)
    sampled = args.prompts * args.generations * args.think
    result = {
        "sec_per_step": med,
        "sec_per_step_min": min(step_times),
        "sec_per_step_max": max(step_times),
        "steps": len(step_times),
        "warmup": args.warmup,
        **{f"sec_{k}": statistics.median(v) for k, v in phases.items()},
        "score_share": statistics.median(phases["score"]) / med,
        "sampled_tokens": sampled,
        "tokens_per_sec": sampled / med,
        "matmul_gflops": matmul_rate(getattr(torch, args.dtype)),
        "peak_rss_mb": peak_rss_mb(),
        "rss_mb_first": rss[0],
        "rss_mb_last": rss[-1],
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
        "trl_version": __import__("trl").__version__,
        "config": vars(args),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
