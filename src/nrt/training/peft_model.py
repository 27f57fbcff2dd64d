"""LoRA adapters through peft: wrapping a model, the adapter-disabled reference, saving, merging.

With `model.use_peft` the policy is the base model with LoRA adapters on its linear layers
(TRL's option names: lora_r, lora_alpha, lora_dropout, lora_target_modules) plus, through
peft's `trainable_token_indices`, trainable copies of the `<|response_start|>` rows of the
input embedding and of the output layer (one shared row when the two are tied): the token is
new to the base model and its rows must learn their meaning. Nothing else trains.

    logits = head'(layers_with W + B@A * lora_alpha/lora_r (embed'(x)))
    embed', head': the base matrices with the response-start row replaced by a trained row

The reference policy of the KL term (trainer.beta > 0) is the same model with the adapters
disabled (`AdaptersDisabled`): no second copy of the weights.

A run directory stores the adapter in peft's format (adapter_config.json +
adapter_model.safetensors); `merge_adapter` loads the base model, adds the response-start
token as training did, applies the adapter and returns a plain transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nrt.errors import ConfigError

ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(ConfigError):
    """A LoRA option or an adapter directory that cannot be used; the message names it."""


def _require_peft():
    try:
        import peft
    except ImportError:
        raise AdapterError("model.use_peft needs the peft package: pip install 'nrt[lora]'") from None
    return peft


def embedding_module_names(model) -> tuple[str, str | None, bool]:
    """(input embedding name, output layer name or None, tied) in `model.named_modules()`."""
    inner = model
    embed, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    names = {id(module): name for name, module in inner.named_modules(remove_duplicate=False)}
    if id(embed) not in names:
        raise AdapterError(f"{type(model).__name__}: cannot find its input embedding among its modules")
    tied = head is not None and head.weight is embed.weight
    head_name = None if head is None or id(head) not in names else names[id(head)]
    return names[id(embed)], head_name, tied


def lora_config(model_config, model, token_ids: list[int]):
    """peft's LoraConfig for `model` from the run's ModelConfig; `token_ids` rows train in full."""
    peft = _require_peft()
    embed_name, head_name, tied = embedding_module_names(model)
    # tied: peft ties an adapter on the output layer to the embedding's (one trained row);
    # untied: the output layer's row is its own trainable row
    tokens = {embed_name: list(token_ids)}
    if head_name is not None and not tied:
        tokens[head_name] = list(token_ids)
    targets = model_config.lora_target_modules
    target_modules = targets if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()]
    return peft.LoraConfig(
        r=model_config.lora_r, lora_alpha=model_config.lora_alpha, lora_dropout=model_config.lora_dropout,
        target_modules=target_modules, trainable_token_indices=tokens, task_type="CAUSAL_LM", bias="none",
    )


def check_lora_targets(model, option: str, target_modules) -> None:
    """Refuse, naming `model.lora_target_modules`, a target that matches no module, the input
    embedding or the output layer (nrt trains their `<|response_start|>` rows itself, and a
    LoRA on them would fight those rows), or a module that is not a linear layer (a block such
    as `layers` or `mlp`: peft would fail inside with a traceback). "all-linear" is peft's own rule."""
    if target_modules == "all-linear":
        return
    import torch

    from transformers.pytorch_utils import Conv1D

    embed_name, head_name, _ = embedding_module_names(model)
    modules = dict(model.named_modules())
    prefix = f"model.lora_target_modules={option!r}"
    for target in target_modules:
        matched = {n: m for n, m in modules.items() if n == target or n.endswith("." + target)}
        if not matched:
            raise AdapterError(f"{prefix}: {type(model).__name__} has no module named {target}")
        for name, module in matched.items():
            if name in (embed_name, head_name):
                role = "input embedding" if name == embed_name else "output layer"
                raise AdapterError(f"{prefix}: {target} is the model's {role} ({name}), not a LoRA target: "
                                   "nrt trains its <|response_start|> row itself")
            if not isinstance(module, (torch.nn.Linear, Conv1D)):
                raise AdapterError(f"{prefix}: {target} matches {name}, a {type(module).__name__}, not a linear layer; "
                                   "name linear layers (e.g. q_proj,v_proj) or give all-linear")


def wrap_lora(model, model_config, token_ids: list[int]):
    """The peft model: LoRA on the target modules, the `token_ids` rows trainable, all else frozen."""
    peft = _require_peft()
    config = lora_config(model_config, model, token_ids)
    check_lora_targets(model, model_config.lora_target_modules, config.target_modules)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:  # a rule of peft's own not checked above
        raise AdapterError(f"model.lora_target_modules={model_config.lora_target_modules!r}: "
                           f"{str(e).splitlines()[0]}") from None


def unwrap_all(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(unwrap_all(model), PeftModel)


class AdaptersDisabled:
    """The reference policy: calling it runs `model` (a peft model, possibly wrapped by accelerate)
    with its adapters and trained token rows switched off, i.e. the base model as loaded.

    `.module` is the wrapped model, so code that unwraps models (the config, the output layer,
    the attention implementation) reaches the same peft model."""

    def __init__(self, model):
        self.module = model

    def __call__(self, *args, **kwargs):
        with unwrap_all(self.module).disable_adapter():
            return self.module(*args, **kwargs)


def save_adapter(model, directory: Path, state_dict: dict | None) -> None:
    """adapter_config.json + adapter_model.safetensors of `model` (a peft model) into `directory`.

    `state_dict` is the full state dict gathered by accelerate (FSDP / DeepSpeed) or None; peft
    keeps the adapter's entries. Embedding matrices are not saved whole: the trained token rows
    are part of the adapter, and loading re-creates the resized base as training did."""
    unwrap_all(model).save_pretrained(directory, state_dict=state_dict, safe_serialization=True,
                                      save_embedding_layers=False)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def base_model_path(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on (adapter_config.json's base_model_name_or_path)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise AdapterError(f"{path}: cannot read it ({e})") from None
    if not base:
        raise AdapterError(f"{path}: has no base_model_name_or_path")
    return base


# The config fields that fix an adapter's tensor shapes and the meaning of its token rows.
SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")


def shape_fields(model_config) -> dict:
    """The SHAPE_FIELDS of a transformers config (its text config's, for a multimodal one)."""
    text = model_config.get_text_config()
    return {name: getattr(text, name, None) for name in SHAPE_FIELDS}


def config_differences(recorded: dict, given: dict) -> list[str]:
    """`name given (recorded)` for each shape field where two configs' values differ."""
    return [f"{name} {given.get(name)!r} (trained on {recorded.get(name)!r})" for name in SHAPE_FIELDS
            if given.get(name) != recorded.get(name)]


ADAPTER_SUFFIXES = {".lora_A.weight": 1, ".lora_B.weight": 0, ".token_adapter.trainable_tokens_delta": 1}


def adapter_shape_problems(shapes: dict[str, list[int]], model) -> list[str]:
    """The adapter tensors (name -> shape, from adapter_model.safetensors) that do not fit `model`'s
    modules: a LoRA A's columns are its layer's inputs, a LoRA B's rows its outputs, a token row's width
    the embedding's. `model` may be on the meta device: only module sizes are read."""
    modules = dict(model.named_modules())
    problems = []
    for key, shape in sorted(shapes.items()):
        name = key.removeprefix("base_model.model.")
        suffix = next((s for s in ADAPTER_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            continue
        module_name, axis = name[: -len(suffix)], ADAPTER_SUFFIXES[suffix]
        module = modules.get(module_name)
        if module is None:
            problems.append(f"the base has no {module_name}")
            continue
        if isinstance(module, torch.nn.Embedding):
            size, what = module.embedding_dim, "width"
        elif suffix.startswith(".lora_B"):
            size, what = getattr(module, "out_features", None), "outputs"
        else:
            size, what = getattr(module, "in_features", None), "inputs"
        if size is not None and size != shape[axis]:
            problems.append(f"{module_name} has {size} {what}, the adapter {shape[axis]}")
    return problems


def adapter_shapes(adapter_dir: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of the adapter's weights (the header only; no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise AdapterError(f"{adapter_dir}: no adapter_model.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{path}: corrupt or truncated safetensors file ({str(e).splitlines()[0]})") from None


def check_base(adapter_dir: Path, given, recorded, tokenizer, where: str) -> None:
    """Refuse, from configs and the adapter's header before any weight loads, a base model the adapter
    was not trained on. `given` and `recorded` are ModelSources: the base to merge into and the one
    the run trained on. Compared are the contents of the configs (SHAPE_FIELDS), not the paths, so a
    copy of the base elsewhere is accepted; the recorded base only where it is still on disk (a hub
    name is not looked up). Always checked: the run's tokenizer against the base's vocabulary (the
    token rows the adapter trained must exist) and the adapter's tensor shapes against the base's
    modules (built on the meta device, no memory)."""
    from transformers import AutoModelForCausalLM

    from nrt.model_loading import LOAD_ERRORS, ModelLoadError, check_vocabulary, load_config

    config = load_config(given)
    if recorded is not None and recorded != given and Path(recorded.path).expanduser().exists():
        try:
            trained = load_config(recorded)
        except ModelLoadError:
            trained = None  # moved or broken: the shape checks below still apply
        differences = config_differences(shape_fields(trained), shape_fields(config)) if trained else []
        if differences:
            raise AdapterError(f"{where}: not the model the adapter was trained on ({recorded.name}): "
                               f"{', '.join(differences)}")
    check_vocabulary(config, tokenizer, where, "the tokenizer is the run's: not the model the adapter was trained on")
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=given.trust_remote_code)
    except LOAD_ERRORS:
        return  # a class that cannot be built from its config alone: the load below says why
    problems = adapter_shape_problems(adapter_shapes(adapter_dir), skeleton)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise AdapterError(f"{where}: the adapter does not fit this model: {problems[0]}{more}")


def recorded_base(adapter_dir: Path, options: dict):
    """The base the run trained on: the run's config.yaml model options when it has them, else
    adapter_config.json's base_model_name_or_path (a checkpoint-N folder has no config.yaml)."""
    from nrt.model_loading import ModelSource

    path = options.get("model_name_or_path") or base_model_path(adapter_dir)
    return ModelSource(str(path), options.get("gguf_file") or None, bool(options.get("trust_remote_code", False)))


def merge_adapter(adapter_dir: str | Path, tokenizer, base_model: str | None = None, dtype=None):
    """A plain transformers model: the base with `<|response_start|>` added as in training and the
    adapter of `adapter_dir` merged into its weights. A base the adapter was not trained on
    (`check_base`) is refused before its weights load."""
    peft = _require_peft()
    import yaml

    from nrt.model_loading import ModelSource, load_model
    from nrt.tokens import ensure_response_start_token

    if not is_adapter_dir(adapter_dir):
        raise AdapterError(f"{adapter_dir}: no {ADAPTER_CONFIG} (not a LoRA run directory)")
    adapter_dir = Path(adapter_dir)
    run_config = adapter_dir / "config.yaml"  # the run's model options: a GGUF base, trust_remote_code
    options = (yaml.safe_load(run_config.read_text()) or {}).get("model", {}) if run_config.is_file() else {}
    recorded = recorded_base(adapter_dir, options)
    source = ModelSource(str(base_model), None, recorded.trust_remote_code) if base_model else recorded
    check_base(adapter_dir, source, recorded, tokenizer, f"--base-model {base_model}" if base_model else
               f"{recorded.name} (the adapter's base model)")
    model = load_model(source, dtype=dtype)  # the same loading (and refusals) as training: ModelLoadError
    ensure_response_start_token(model, tokenizer)
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir))
    return model.merge_and_unload()


def keeps_whole_state(accelerator) -> bool:
    """True where accelerate's save_state writes the model's state dict itself (no FSDP / DeepSpeed /
    Megatron sharded checkpoint), so that `register_trainable_only_state` applies."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                                DistributedType.MEGATRON_LM)


def register_trainable_only_state(accelerator, model) -> None:
    """Make accelerator.save_state keep only the trainable entries of `model`'s state dict (a LoRA
    run's adapter and token rows, not a copy of the frozen base model in every checkpoint); resuming
    then loads with strict=False (the frozen weights come from the base model as loaded)."""
    inner = unwrap_all(model)
    trainable = {name for name, p in inner.named_parameters() if p.requires_grad}

    def keep_trainable(models, weights, output_dir):
        for i, m in enumerate(models):  # accelerate may hold the wrapped or the unwrapped model
            if unwrap_all(m) is inner:
                weights[i] = {k: v for k, v in weights[i].items() if k.removeprefix("module.") in trainable}

    accelerator.register_save_state_pre_hook(keep_trainable)
