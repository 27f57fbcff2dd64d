"""Expected GPU memory per process of an `nrt train` recipe, from the model's architecture.

    python scripts/memory_estimate.py recipes/llama-3.1-8b-tulu3.yaml [--model-config config.json]
        [--gpus N] [--prompt-tokens P] [--trace-tokens T] [--answer-tokens A] [--markdown]

The architecture comes from --model-config, else MODEL/config.json when model.model_name_or_path is a
local directory, else recipes/model_configs/<last part of the hub name>.json. The number of processes
comes from --gpus, else `--num_processes N` in the recipe's launch line (its first comment), else 1;
FSDP (full shard) is assumed when the launch line names configs/accelerate/fsdp.yaml.

Parameters (a Llama-style decoder: LlamaForCausalLM, MistralForCausalLM, Qwen2-like with biases):
    embeddings V*h; per layer q,o h*(a*d) each, k,v h*(kv*d) each (+ biases if attention_bias),
    gate,up,down 3*h*I (+ biases if mlp_bias), two RMSNorm weights 2h; final norm h; lm_head V*h
    unless tie_word_embeddings. (d = head_dim, default h/a.) `<|response_start|>` adds one row (not counted).
LoRA (model.use_peft): r*(in + out) per adapted linear; 'all-linear' = the seven projections of
    every decoder layer (not lm_head).

Memory per process, in bytes (G processes; FSDP divides the sharded states by G):
- full fine-tuning, model.dtype float32 + trainer.bf16 (mixed precision, fp32 master weights):
  weights 4P/G, gradients 4P/G, AdamW moments 8P/G; plus the all-gathered bf16 working copies under
  FSDP2 (reshard after forward): the root unit (embeddings, final norm, lm_head) for the whole
  forward/backward and two decoder layers (the one running and the one prefetched), 2 bytes each.
  Without FSDP nothing is divided and there are no working copies (autocast casts per op).
- LoRA: frozen base weights 2P (bf16, model.dtype bfloat16; 4P for float32), adapter weights,
  gradients and AdamW moments 4+4+8 bytes per adapter parameter.
- activations of one micro-batch of B = per_device_train_batch_size sequences, at the worst case
  P = data.max_prompt_length, C = trainer.max_completion_length + 1 + data.max_answer_length
  (trace, <|response_start|>, answer; the trainer pads a micro-batch to its longest row):
  tokens through the decoder T = B*(P + C) with gradient checkpointing (each trace runs its own
  prompt), else (B/K)*P + B*C (the K traces share one prompt forward) plus the prompt's KV cache
  repeated to the B rows, 2*kv*d*L*B*P elements.
  Per token and layer the backward keeps (flash/SDPA attention, no [s, s] matrix; Korthikanti et al.
  2022's count adapted to SwiGLU and grouped-query attention), in bf16 (2 bytes):
      attention: norm input h, q/k/v input h, q h, k and v 2*kv*d, attention output h   -> 4h + 2kv*d
      MLP: norm input h, gate/up input h, gate I, silu(gate) I, up I, down input I       -> 2h + 4I
  i.e. A = 6h + 2*kv*d + 4I elements (q uses a*d for h when they differ), plus 2r per LoRA-adapted
  linear. Not counted: RMSNorm's float32 upcasts, RoPE tables, softmax statistics, temporaries.
  Without checkpointing: L*T*A*2. With checkpointing: each layer keeps its input (L*T*h*2) and one
  layer is recomputed at a time (T*A*2).
- logits of the N = B*C completion positions (only they reach the output layer): with a whole
  lm_head on the process (no FSDP) the fused head keeps each chunk's logits in bf16: 2*N*V; with an
  FSDP-sharded head the logits come back in float32 and are kept for the backward, which makes their
  float32 gradient too: 8*N*V.
- sampling (before the update, not at the same time): the KV cache of B rows of P + trace tokens,
  2*kv*d*L*B*(P + max_completion_length)*2 bytes; the peak is the larger of the two phases.
Not counted: the CUDA context and allocator fragmentation (budget 2-4 GB), NCCL buffers, the no-grad
scoring pass (smaller than the update's), the rollouts' token ids.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = ROOT / "recipes" / "model_configs"
GIB = 2**30
LORA_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, c: dict) -> "Architecture":
        """From a transformers config.json dict (Llama/Mistral/Qwen2 key names)."""
        heads = c["num_attention_heads"]
        return cls(
            vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
            num_heads=heads, num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            intermediate_size=c["intermediate_size"], tied_embeddings=bool(c.get("tie_word_embeddings", False)),
            attention_bias=bool(c.get("attention_bias", False)), mlp_bias=bool(c.get("mlp_bias", False)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each projection of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def layer_parameters(a: Architecture) -> int:
    """Parameters of one decoder layer: the seven projections (+ biases), two RMSNorm weights."""
    total = 2 * a.hidden_size
    for name, (n_in, n_out) in a.linears().items():
        bias = a.attention_bias if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else a.mlp_bias
        # Llama's attention_bias covers q, k, v and o; Qwen2 (bias on q, k, v only) reads as a small overcount.
        total += n_in * n_out + (n_out if bias else 0)
    return total


def root_parameters(a: Architecture) -> int:
    """Parameters outside the decoder layers: embeddings, final norm, and lm_head unless tied."""
    return a.vocab_size * a.hidden_size * (1 if a.tied_embeddings else 2) + a.hidden_size


def parameter_count(a: Architecture) -> int:
    return a.num_layers * layer_parameters(a) + root_parameters(a)


def lora_targets(spec: str) -> tuple[str, ...]:
    """'all-linear' or comma-separated projection names (model.lora_target_modules)."""
    if spec == "all-linear":
        return LORA_ALL_LINEAR
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in LORA_ALL_LINEAR]
    if unknown or not names:
        raise ValueError(f"model.lora_target_modules: unknown module(s) {unknown} "
                         f"(known: {', '.join(LORA_ALL_LINEAR)})")
    return names


def lora_parameter_count(a: Architecture, r: int, targets: tuple[str, ...]) -> int:
    """r*(in + out) per adapted projection (lora_A [r, in], lora_B [out, r]), in every decoder layer."""
    shapes = a.linears()
    return a.num_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


def activation_elements_per_token_layer(a: Architecture, lora_r: int = 0, lora_modules: int = 0) -> int:
    """A: elements one decoder layer keeps for the backward per token (module docstring), + 2r per adapter."""
    h, q, kv = a.hidden_size, a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    attention = h + h + q + 2 * kv + q  # norm input, q/k/v input, q, k and v, attention output
    mlp = h + h + 4 * a.intermediate_size  # norm input, gate/up input, gate, silu(gate), up, down input
    return attention + mlp + 2 * lora_r * lora_modules


@dataclass(frozen=True)
class Run:
    """What a recipe (and its launch) fixes that memory depends on."""

    processes: int = 1
    fsdp: bool = False
    micro_batch: int = 8  # sequences per process per micro-batch (B)
    num_generations: int = 8  # K
    prompt_tokens: int = 512  # P
    trace_tokens: int = 256  # max_completion_length
    answer_tokens: int = 512  # max_answer_length, eos included
    gradient_checkpointing: bool = False
    weight_bytes: int = 4  # model.dtype: 4 float32, 2 bfloat16
    use_peft: bool = False
    lora_r: int = 0
    lora_targets: tuple[str, ...] = ()

    @property
    def completion_tokens(self) -> int:
        return self.trace_tokens + 1 + self.answer_tokens


def estimate(a: Architecture, run: Run) -> dict[str, int]:
    """Bytes per process of each part (module docstring); "peak" = states + the larger phase."""
    p, g = parameter_count(a), run.processes
    shard = g if run.fsdp else 1
    b, k, prompt, completion = run.micro_batch, run.num_generations, run.prompt_tokens, run.completion_tokens
    kv, h, layers = a.num_kv_heads * a.head_dim, a.hidden_size, a.num_layers
    out: dict[str, int] = {"parameters": p}
    if run.use_peft:
        n_lora = lora_parameter_count(a, run.lora_r, run.lora_targets)
        out |= {"lora_parameters": n_lora, "weights": run.weight_bytes * p + 4 * n_lora,
                "gradients": 4 * n_lora, "optimizer": 8 * n_lora}
    else:
        out |= {"weights": 4 * p // shard, "gradients": 4 * p // shard, "optimizer": 8 * p // shard}
    out["fsdp_working_copies"] = 2 * (root_parameters(a) + 2 * layer_parameters(a)) if run.fsdp else 0
    per_token = activation_elements_per_token_layer(a, run.lora_r, len(run.lora_targets) if run.use_peft else 0)
    if run.gradient_checkpointing:
        tokens = b * (prompt + completion)
        out["activations"] = 2 * (layers * tokens * h + tokens * per_token)
    else:
        tokens = (b // k) * prompt + b * completion
        out["activations"] = 2 * (layers * tokens * per_token + 2 * kv * layers * b * prompt)
    n_head = b * completion
    out["logits"] = (8 if run.fsdp else 2) * n_head * a.vocab_size
    out["sampling_kv_cache"] = 2 * 2 * kv * layers * b * (prompt + run.trace_tokens)
    states = out["weights"] + out["gradients"] + out["optimizer"] + out["fsdp_working_copies"]
    out["update_peak"] = states + out["activations"] + out["logits"]
    out["sampling_peak"] = states + out["sampling_kv_cache"]
    out["peak"] = max(out["update_peak"], out["sampling_peak"])
    return out


# --------------------------------------------------------------------------- recipes


def launch_line(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    return first.lstrip("# ").strip() if first.lstrip().startswith("#") else ""


def run_from_recipe(path: Path, gpus: int | None = None, prompt_tokens: int | None = None,
                    trace_tokens: int | None = None, answer_tokens: int | None = None) -> tuple[Run, dict]:
    """The Run of a recipe YAML (read as plain YAML: options not yet in nrt.config are fine)."""
    text = path.read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    model, data, trainer = raw.get("model", {}), raw.get("data", {}), raw.get("trainer", {})
    launch = launch_line(text)
    found = re.search(r"--num_processes[ =](\d+)", launch)
    processes = gpus or (int(found.group(1)) if found else 1)
    run = Run(
        processes=processes, fsdp="fsdp" in launch, micro_batch=trainer.get("per_device_train_batch_size", 8),
        num_generations=trainer.get("num_generations", 8),
        prompt_tokens=prompt_tokens or data.get("max_prompt_length", 512),
        trace_tokens=trace_tokens or trainer.get("max_completion_length", 256),
        answer_tokens=answer_tokens or data.get("max_answer_length", 512),
        gradient_checkpointing=bool(trainer.get("gradient_checkpointing", False)),
        weight_bytes=2 if model.get("dtype") == "bfloat16" else 4,
        use_peft=bool(model.get("use_peft", False)), lora_r=model.get("lora_r", 16) if model.get("use_peft") else 0,
        lora_targets=lora_targets(model.get("lora_target_modules", "all-linear")) if model.get("use_peft") else (),
    )
    return run, model


def model_config_for(model: dict, override: str | None) -> tuple[Path, dict]:
    name = model.get("model_name_or_path") or ""
    if override:
        path = Path(override)
    elif name and (Path(name) / "config.json").is_file():
        path = Path(name) / "config.json"
    else:
        path = MODEL_CONFIGS / f"{name.rstrip('/').split('/')[-1]}.json"
    if not path.is_file():
        raise SystemExit(f"memory_estimate: no model config for {name!r} (looked for {path}); pass --model-config")
    return path, json.loads(path.read_text())


def table(title: str, a: Architecture, run: Run, parts: dict[str, int], markdown: bool) -> str:
    checkpointing = "on" if run.gradient_checkpointing else "off"
    other = estimate(a, Run(**{**run.__dict__, "gradient_checkpointing": not run.gradient_checkpointing}))
    rows = [
        ("parameters", f"{parts['parameters'] / 1e9:.3f} B"
         + (f" (+ LoRA {parts['lora_parameters'] / 1e6:.1f} M, r={run.lora_r})" if run.use_peft else "")),
        ("weights" + (" (bf16 base + fp32 adapters)" if run.use_peft else " (fp32 master)"), gib(parts["weights"])),
        ("gradients (fp32)", gib(parts["gradients"])),
        ("AdamW moments (fp32)", gib(parts["optimizer"])),
        ("FSDP all-gathered bf16 units", gib(parts["fsdp_working_copies"])),
        (f"activations, checkpointing {checkpointing}", gib(parts["activations"])),
        (f"activations, checkpointing {'off' if checkpointing == 'on' else 'on'} (for comparison)",
         gib(other["activations"])),
        ("logits of the completion positions", gib(parts["logits"])),
        ("update peak", gib(parts["update_peak"])),
        ("sampling KV cache", gib(parts["sampling_kv_cache"])),
        ("sampling peak", gib(parts["sampling_peak"])),
        ("**peak per GPU**" if markdown else "PEAK PER GPU", gib(parts["peak"])),
    ]
    setup = (f"{run.processes} GPU(s){', FSDP full shard' if run.fsdp else ''}; micro-batch {run.micro_batch} "
             f"sequences of prompt {run.prompt_tokens} + completion {run.completion_tokens} tokens")
    if markdown:
        lines = [f"**{title}**: {setup}", "", "| part | per GPU |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
    else:
        width = max(len(k) for k, _ in rows)
        lines = [f"{title}: {setup}"] + [f"  {k:<{width}}  {v:>12}" for k, v in rows]
    return "\n".join(lines)


def gib(n: int) -> str:
    return f"{n / GIB:,.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", help="recipe YAML files")
    parser.add_argument("--model-config", help="a config.json to use instead of the recipe model's")
    parser.add_argument("--gpus", type=int, help="processes (default: --num_processes of the launch line, else 1)")
    parser.add_argument("--prompt-tokens", type=int, help="prompt length (default data.max_prompt_length)")
    parser.add_argument("--trace-tokens", type=int, help="trace length (default trainer.max_completion_length)")
    parser.add_argument("--answer-tokens", type=int,
                        help="answer length, eos included (default data.max_answer_length)")
    parser.add_argument("--markdown", action="store_true", help="markdown tables (recipes/README.md)")
    args = parser.parse_args(argv)
    blocks = []
    for recipe in args.recipes:
        path = Path(recipe)
        if not path.is_file():
            raise SystemExit(f"memory_estimate: {recipe}: no such file")
        run, model = run_from_recipe(path, args.gpus, args.prompt_tokens, args.trace_tokens, args.answer_tokens)
        config_path, config = model_config_for(model, args.model_config)
        a = Architecture.from_config(config)
        blocks.append(table(path.name, a, run, estimate(a, run), args.markdown))
    print("\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
