"""The workload behind `nrt bench`: time the real NRT step on a random Llama or a real model.

    nrt bench --hidden 256 --layers 4 --prompts 16 --generations 8 --think 48 --fixed-length
    nrt bench --model DIR_OR_GGUF [--config-only] --prompts 8 --generations 8 --think 128 --fixed-length

Prints one JSON line: the median seconds per step over the timed steps (after warm-up), the
spread, the median seconds of each phase (generate, score, update), tokens per second, the
work counted (sampled and trained tokens, matmul parameters, FLOPs), the FLOP floor of the
step at the measured matmul rate, and memory (peak RSS; peak CUDA memory on a GPU; with
`--step-memory`, each timed step's own peak above the resident set before it).

The workload is fixed and reproducible from the options alone: a `LlamaForCausalLM` built
from a `LlamaConfig` (head size 64, MLP 4x hidden, tied embeddings, like Llama-3.2-1B's
shape), a word-level tokenizer of `--vocab` tokens ("w3".."wN" plus pad, eos and
`<|response_start|>`), and questions/answers of fixed lengths drawn at random from it.
With `--model` the model and its tokenizer come from a directory or a GGUF file
(`nrt.model_loading`), weights in float32 (bf16 autocast as for the random model); with
`--config-only` only its config is read and the same architecture is built with random
weights from `--seed` (the same speed, no weights needed). Questions and answers are random
ids from the model's vocabulary (`vocabulary_examples`: no special tokens; word tokens whose
text re-encodes to the same ids, so a text-prompt implementation gets the same token count).
`--hidden`, `--layers` and `--vocab` are ignored then.

With `--fixed-length` no trace stops early: the stop tokens are masked until the trace
limit, so every trace has exactly `--think` tokens (TRL's `min_new_tokens`), and two
implementations compared on it do identical work.

FLOP accounting (docs/PERFORMANCE.md): N = parameters of all matmuls, lm_head included
(embedding lookups and norms excluded); sampled tokens S = the trace tokens decoded; trained
tokens T = the tokens the update's forward-backward processes: every completion
[trace][<|response_start|>][answer][eos] plus each question's prompt once (the K traces of a
group share one prompt forward, `nrt.engine.sequences`); forward-only tokens F = the prompt prefill
before sampling and the no-trace baseline rows. Floor = (2 N S + 6 N T + 2 N F) / the matmul
rate measured in the same run (an n=2048 square matmul in the dtype used). Attention-score
FLOPs are left out (small at these lengths).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from nrt.engine.cpu_runtime import keep_freed_memory, return_freed_memory
from nrt.option_types import COUNT, NON_NEGATIVE, SEED, bounded

# torch, transformers and the trainer are imported inside the functions: `nrt --help` stays fast.

SPECIALS = ["<|pad|>", "<|endoftext|>", "<|response_start|>"]


# --------------------------------------------------------------------------- the workload
def synthetic_tokenizer(vocab_size: int):
    """A word-level tokenizer of exactly `vocab_size` tokens: pad, eos, <|response_start|>, w3 .. w{V-1}.

    Text is words separated by spaces, so a prompt decodes to text and encodes back to the same
    ids (TRL's side of the comparison takes text prompts).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>")


def synthetic_examples(n: int, prompt_tokens: int, answer_tokens: int, vocab_size: int, seed: int,
                       eos_id: int = 1) -> list:
    """n TokenizedExamples: `prompt_tokens` random words; answers of `answer_tokens` tokens, the eos included."""
    import torch

    from nrt.data import TokenizedExample

    g = torch.Generator().manual_seed(seed)
    first = len(SPECIALS)
    prompts = torch.randint(first, vocab_size, (n, prompt_tokens), generator=g).tolist()
    answers = torch.randint(first, vocab_size, (n, answer_tokens - 1), generator=g).tolist()
    return [TokenizedExample(p, a + [eos_id], f"synthetic:{i}") for i, (p, a) in enumerate(zip(prompts, answers))]


def vocabulary_examples(tokenizer, n: int, prompt_tokens: int, answer_tokens: int, seed: int) -> list:
    """n TokenizedExamples of random ids from a real tokenizer's vocabulary, answers ending in eos.

    Drawn from the tokens that are not special and whose text encodes back to the token alone;
    where at least 256 of them are words after a space (" the", byte-level BPE's "Ġthe"), only
    those: such text splits back at the spaces, so a prompt's text re-encodes to its ids. Each
    prompt is checked (decode -> encode) and redrawn until it does; ValueError after 100 tries.
    """
    import torch

    from nrt.data import TokenizedExample

    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = [tokenizer.decode([i]) for i in ids]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    single = [(i, t) for i, t, e in zip(ids, texts, encoded) if e == [i]]
    words = [i for i, t in single if len(t) > 1 and t[0] == " " and t[1:].isalpha()]
    pool = torch.tensor(words if len(words) >= 256 else [i for i, _ in single])
    if len(pool) < 2:
        raise ValueError("the tokenizer has fewer than 2 ordinary tokens that re-encode to themselves")
    g = torch.Generator().manual_seed(seed)

    def draw(length: int) -> list[int]:
        return pool[torch.randint(len(pool), (length,), generator=g)].tolist()

    examples = []
    for index in range(n):
        for _ in range(100):
            prompt = draw(prompt_tokens)
            if tokenizer(tokenizer.decode(prompt), add_special_tokens=False)["input_ids"] == prompt:
                break
        else:
            raise ValueError(f"no prompt of {prompt_tokens} tokens whose text re-encodes to the same ids in 100 draws")
        examples.append(TokenizedExample(prompt, draw(answer_tokens - 1) + [tokenizer.eos_token_id], f"vocab:{index}"))
    return examples


def bench_model(vocab_size: int, hidden: int, layers: int, seed: int, max_positions: int = 2048):
    """A random Llama: head size 64, MLP 4 x hidden, tied embeddings (Llama-3.2-1B's proportions)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=1, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def bf16_supported() -> bool:
    """True where bfloat16 matmuls are native: a CUDA GPU with bf16, or a CPU with AVX512-BF16 / AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bench_config(args):
    from nrt.config import Config

    check_arguments(args)
    config = Config()
    t = config.trainer
    t.output_dir = os.devnull  # the bench never saves
    t.seed = args.seed
    t.num_generations = args.generations
    t.per_device_train_batch_size = args.generations * (args.micro_prompts or args.prompts)
    t.gradient_accumulation_steps = args.prompts // (args.micro_prompts or args.prompts)
    t.max_completion_length = args.think
    t.max_steps = args.warmup + args.steps
    t.learning_rate = 1e-5
    t.warmup_ratio = 0.0
    t.bf16 = args.dtype == "bfloat16"
    t.torch_compile = args.compile
    t.use_vllm = getattr(args, "engine", "nrt") == "vllm"  # vLLM in this process samples, synced every step
    t.vllm_gpu_memory_utilization = getattr(args, "vllm_memory", t.vllm_gpu_memory_utilization)
    if t.use_vllm:
        from nrt.config import validate_vllm

        validate_vllm(config)
    return config


def engine_options(args, **switches):
    """The engine options of a bench run: `--compile` and `--fixed-length`, plus any speed switches
    (`nrt.engine.options.EngineOptions` fields, for ablations)."""
    from nrt.engine.options import EngineOptions

    return EngineOptions(**{"compile_step": args.compile, "fixed_length": args.fixed_length, **switches})


def workload(args, n: int):
    """(model, tokenizer, n examples) of the options: the random Llama and its word-level tokenizer,
    or `--model` (its weights, or with `--config-only` random weights from `--seed`). The same
    options give the same weights and data (the TRL side of the comparison builds it here too).
    Raises nrt.model_loading.ModelLoadError for a model that cannot be loaded."""
    import torch

    if not getattr(args, "model", None):
        tokenizer = synthetic_tokenizer(args.vocab)
        examples = synthetic_examples(n, args.prompt_tokens, args.answer_tokens, args.vocab, args.seed,
                                      tokenizer.eos_token_id)
        return bench_model(args.vocab, args.hidden, args.layers, args.seed), tokenizer, examples
    from nrt.model_loading import ModelLoadError, ModelSource, load_config, load_model, load_tokenizer

    source = ModelSource(args.model)
    tokenizer = load_tokenizer(source)
    if args.config_only:
        from transformers import AutoModelForCausalLM

        config = load_config(source)
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = load_model(source, dtype=torch.float32)
    try:
        examples = vocabulary_examples(tokenizer, n, args.prompt_tokens, args.answer_tokens, args.seed)
    except ValueError as e:
        raise ModelLoadError(f"{source.name}: {e}") from None
    return model, tokenizer, examples


def build_trainer(args, **switches):
    """(trainer, tokenizer, examples) for the options; the same seed gives the same weights and data."""
    from nrt.training.trainer import NRTTrainer

    model, tokenizer, examples = workload(args, args.prompts * max(1, min(args.warmup + args.steps, 64)))
    trainer = NRTTrainer(bench_config(args), model, tokenizer, examples, engine=engine_options(args, **switches))
    return trainer, tokenizer, examples


# --------------------------------------------------------------------------- counting
def parameter_counts(model) -> dict:
    import torch

    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return {"params_total": total, "params_non_embedding": total - embedding, "params_matmul": matmul}


def matmul_rate(dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matmul in `dtype` (a torch dtype) on this process's threads (median of repeats)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tick)
    return 2 * n**3 / statistics.median(times) / 1e9


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_since_reset_mb() -> float:
    """The resident set's high-water mark (VmHWM) since the process started or `reset_peak_rss()`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("/proc/self/status has no VmHWM line")


def step_memory_supported() -> bool:
    import platform

    return os.path.exists("/proc/self/clear_refs") and platform.libc_ver()[0] == "glibc"


def reset_peak_rss() -> None:
    """Reset the high-water mark to the current resident set (Linux: /proc/self/clear_refs, "5")."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# --------------------------------------------------------------------------- the run
def step_work(trainer, questions, trace_length_mean: float) -> dict:
    """Tokens of one step's work on this process (see the module docstring)."""
    from nrt.engine.sequences import full_attention_only

    k = trainer.k
    prompts = [len(q.example.prompt_ids) for q in questions]
    answers = [len(q.example.answer_ids) for q in questions]
    sampled = trace_length_mean * k * len(questions)
    completions = sampled + k * sum(a + 1 for a in answers)  # trace, <|response_start|>, answer
    shared = full_attention_only(trainer.model)  # completion_logprobs runs a group's prompt once
    return {
        "sampled_tokens": sampled,
        "prefill_tokens": sum(prompts),
        "trained_tokens": completions + (sum(prompts) if shared else k * sum(prompts)),
        "trained_tokens_unshared": completions + k * sum(prompts),
        "baseline_tokens": sum(p + 1 + a for p, a in zip(prompts, answers)),
    }


def run_bench(args) -> dict:
    import torch

    if args.step_memory:
        return_freed_memory()  # the resident set follows what is allocated (slower: pages fault anew)
    else:
        keep_freed_memory()
    if args.dtype == "auto":
        args.dtype = "bfloat16" if bf16_supported() else "float32"
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer, _, _ = build_trainer(args)
    rss_loaded = rss_mb()  # model, optimizer (states still empty) and data built, no step run
    counts = parameter_counts(trainer.accelerator.unwrap_model(trainer.model))

    step_times, phases, rss, work = [], {"weight_sync": [], "generate": [], "score": [], "update": []}, [], []
    peak_after_warmup = None
    step_peaks, rss_before_steps, process_peak = [], [], 0.0  # --step-memory
    for step in range(args.warmup + args.steps):
        questions = trainer.step_questions(trainer.step)
        timed = step >= args.warmup
        if timed and args.step_memory:
            process_peak = max(process_peak, peak_rss_since_reset_mb())
            rss_before_steps.append(rss_mb())
            reset_peak_rss()
        tick = time.perf_counter()
        metrics = trainer.train_step()
        elapsed = time.perf_counter() - tick
        if not timed:
            continue
        if args.step_memory:
            step_peaks.append(peak_rss_since_reset_mb() - rss_before_steps[-1])
        if peak_after_warmup is None:
            peak_after_warmup = max(process_peak, peak_rss_since_reset_mb()) if args.step_memory else peak_rss_mb()
        step_times.append(elapsed)
        for name in phases:
            phases[name].append(metrics[f"time_{name}"])
        rss.append(rss_mb())
        work.append(step_work(trainer, questions, metrics["trace_length_mean"]))

    procs = trainer.accelerator.num_processes
    tokens = {key: statistics.median(w[key] for w in work) * procs for key in work[0]}
    rate = matmul_rate(getattr(torch, args.dtype)) * 1e9
    n = counts["params_matmul"]
    med = statistics.median(step_times)
    phase = {name: statistics.median(v) for name, v in phases.items()}
    flops_sample = 2 * n * tokens["sampled_tokens"]
    flops_update = 6 * n * tokens["trained_tokens"]
    flops_forward_only = 2 * n * (tokens["prefill_tokens"] + tokens["baseline_tokens"])
    floor = (flops_sample + flops_update + flops_forward_only) / rate
    result = {
        "sec_per_step": med,
        "sec_per_step_min": min(step_times),
        "sec_per_step_max": max(step_times),
        "sec_per_step_iqr": _iqr(step_times),
        "steps": args.steps,
        "warmup": args.warmup,
        **{f"sec_{name}": v for name, v in phase.items()},
        "score_share": phase["score"] / med,
        **tokens,
        "tokens_per_sec": tokens["sampled_tokens"] / med,
        "trained_tokens_per_sec": tokens["trained_tokens"] / med,
        **counts,
        "flops_sample": flops_sample,
        "flops_update": flops_update,
        "flops_forward_only": flops_forward_only,
        "matmul_gflops": rate / 1e9,
        "floor_sec": floor,
        "step_over_floor": med / floor,
        "generate_over_floor": phase["generate"] / ((flops_sample + 2 * n * tokens["prefill_tokens"]) / rate),
        "update_matmul_fraction": flops_update / phase["update"] / rate,
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_after_warmup": peak_after_warmup,
        "rss_mb_loaded": rss_loaded,
        "rss_mb_first": rss[0],
        "rss_mb_last": rss[-1],
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "overrides")},
    }
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if args.trace_rss:
        result["rss_mb_by_step"] = [round(x, 1) for x in rss]
    if args.step_memory:  # ru_maxrss follows the resets: the process's peak is the largest mark read
        result["peak_rss_mb"] = max(process_peak, peak_rss_since_reset_mb())
        result["step_peak_mb"] = statistics.median(step_peaks)
        result["step_peak_mb_by_step"] = [round(x, 1) for x in step_peaks]
        result["rss_mb_before_step"] = [round(x, 1) for x in rss_before_steps]
    return result


def _iqr(values: list[float]) -> float:
    if len(values) < 4:
        return max(values) - min(values)
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


# --------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="a model directory or .gguf file to time instead of the random Llama (its tokenizer too)")
    p.add_argument("--config-only", action="store_true",
                   help="with --model: its architecture with random weights (--seed); only the config is read")
    p.add_argument("--hidden", type=COUNT, default=256, help="model width (head size 64, MLP 4x)")
    p.add_argument("--layers", type=COUNT, default=4, help="decoder layers")
    p.add_argument("--vocab", type=bounded(int, 4), default=8192, help="vocabulary size of the synthetic tokenizer")
    p.add_argument("--prompts", type=COUNT, default=16, help="questions per step")
    p.add_argument("--micro-prompts", type=NON_NEGATIVE, default=0,
                   help="questions per micro-batch (0: all of a step's questions in one micro-batch)")
    p.add_argument("--generations", type=bounded(int, 2), default=8, help="K: traces per question")
    p.add_argument("--think", type=COUNT, default=48, help="trace tokens (the limit; exact with --fixed-length)")
    p.add_argument("--prompt-tokens", type=COUNT, default=32, help="tokens per question")
    p.add_argument("--answer-tokens", type=COUNT, default=16, help="tokens per reference answer, eos included")
    p.add_argument("--steps", type=COUNT, default=5, help="timed steps")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=2, help="untimed steps first")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--fixed-length", action="store_true", help="every trace runs to --think tokens")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="autocast dtype; auto picks bfloat16 where the CPU/GPU supports it natively")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--compile", action="store_true",
                   help="trainer.torch_compile: compiled decoder layers and decoding step (compiled in the warm-up)")
    p.add_argument("--engine", choices=["nrt", "vllm"], default="nrt",
                   help="what samples the traces: nrt's engine, or vLLM in this process (trainer.use_vllm; its "
                        "weights synced every step, sec_weight_sync)")
    p.add_argument("--vllm-memory", type=bounded(float, 0.0, 1.0, low_open=True), default=0.1,
                   help="--engine vllm: trainer.vllm_gpu_memory_utilization (on a CPU: the share of RAM for its "
                        "KV cache)")
    p.add_argument("--trace-rss", action="store_true", help="also list the RSS (MB) after every timed step")
    p.add_argument("--step-memory", action="store_true",
                   help="measure each timed step's own peak memory (step_peak_mb: the resident set's peak during "
                        "the step minus the resident set before it), with freed memory handed back to the system "
                        "so that the resident set follows what is allocated (Linux; slower steps)")


POSITIVE = ("hidden", "layers", "vocab", "prompts", "generations", "think", "prompt_tokens", "answer_tokens", "steps")


def check_arguments(args) -> None:
    """Bad options as one-line ValueErrors naming the option, before anything is built."""
    for name in POSITIVE:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("warmup", "micro_prompts", "threads"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(args, name)}")
    if getattr(args, "step_memory", False) and not step_memory_supported():
        raise ValueError("--step-memory needs Linux with glibc (/proc/self/clear_refs and malloc's thresholds)")
    if not 0 < getattr(args, "vllm_memory", 0.1) <= 1:
        raise ValueError(f"--vllm-memory must be in (0, 1], got {args.vllm_memory}")
    if args.vocab < 4:
        raise ValueError(f"--vocab {args.vocab}: needs at least 4 tokens (3 special tokens and one word)")
    if args.micro_prompts and args.prompts % args.micro_prompts:
        raise ValueError(f"--prompts {args.prompts} is not a multiple of --micro-prompts {args.micro_prompts}")
    if getattr(args, "config_only", False) and not getattr(args, "model", None):
        raise ValueError("--config-only needs --model (whose config to build)")
    if getattr(args, "model", None):
        from nrt.model_loading import resolve

        resolve(args.model)  # a missing file or directory: ModelLoadError naming it, before anything loads
