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


def merge_adapter(adapter_dir: str | Path, tokenizer, base_model: str | None = None, dtype=None):
    """A plain transformers model: the base with `<|response_start|>` added as in training and the
    adapter of `adapter_dir` merged into its weights."""
    peft = _require_peft()
    import yaml

    from nrt.model_loading import ModelSource, load_model
    from nrt.tokens import ensure_response_start_token

    if not is_adapter_dir(adapter_dir):
        raise AdapterError(f"{adapter_dir}: no {ADAPTER_CONFIG} (not a LoRA run directory)")
    base_path = base_model or base_model_path(adapter_dir)
    run_config = Path(adapter_dir) / "config.yaml"  # the run's model options: a GGUF base, trust_remote_code
    options = (yaml.safe_load(run_config.read_text()) or {}).get("model", {}) if run_config.is_file() else {}
    source = ModelSource(str(base_path), options.get("gguf_file") if not base_model else None,
                         bool(options.get("trust_remote_code", False)))
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
