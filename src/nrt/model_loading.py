"""Loading models and tokenizers: one place, one typed error, no prompts, no surprises.

    source = ModelSource.from_config(config.model)       # or ModelSource("path/to/model.gguf")
    tokenizer = load_tokenizer(source)
    model = load_model(source, dtype=torch.bfloat16)
    check_model_fits(model, tokenizer, config, examples)  # before training (also on load_config(source))

What a source may be:
- a model directory (config.json + weights): safetensors are preferred when present
  (`use_safetensors=True`); a directory with only a pickle `.bin` goes through
  transformers' `torch.load(weights_only=True)`, which refuses anything but tensors;
- a `.gguf` file, or a directory with `gguf_file=NAME` (transformers' argument name):
  read through transformers' GGUF support (needs the `gguf` package, extra `nrt[gguf]`)
  and dequantised to float. The quantizer transformers attaches is dropped at load, so
  the model saves as a plain safetensors directory that reloads without gguf;
- a hub name (`owner/name`), handed to transformers as is.

`trust_remote_code` is always passed explicitly (default False), so transformers never
asks on the terminal whether to run a repository's code: a directory that needs it is an
error unless the option is set. Every failure is a ModelLoadError whose one-line message
starts with the path.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from nrt.errors import ModelLoadError  # noqa: F401  (raised here; callers import it from here too)
from nrt.tokens import RESPONSE_START

# A hub repository id: `name` or `owner/name`, no leading dot or slash (huggingface_hub's rule, simplified).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")



@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `path`: a directory, a .gguf file or a hub name; `gguf_file`:
    a GGUF file name inside the directory `path`; `trust_remote_code`: allow a repository's own
    Python code (transformers' option, never prompted for)."""

    path: str
    gguf_file: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_config(cls, model_config) -> "ModelSource":
        """From a ModelConfig (model.model_name_or_path, model.gguf_file, model.trust_remote_code)."""
        return cls(str(model_config.model_name_or_path), model_config.gguf_file or None,
                   bool(model_config.trust_remote_code))

    @property
    def name(self) -> str:
        """The path as the user knows it (the file, for a GGUF)."""
        return str(Path(self.path) / self.gguf_file) if self.gguf_file else self.path


@dataclass(frozen=True)
class Resolved:
    """What transformers is given: the directory or hub name, and its keyword arguments."""

    location: str
    kwargs: dict
    name: str
    is_gguf: bool


def as_source(source) -> ModelSource:
    if isinstance(source, ModelSource):
        return source
    if isinstance(source, (str, Path)):
        return ModelSource(str(source))
    if hasattr(source, "model_name_or_path"):
        return ModelSource.from_config(source)
    raise TypeError(f"expected a ModelSource, a ModelConfig or a path, got {type(source).__name__}")


def looks_local(path: str) -> bool:
    """True for what can only be a local path: starts with . / ~, ends with .gguf, has a separator
    in a form a hub id cannot have (a hub id is `owner/name`), or is `dir/name` with `dir` an
    existing local directory (a mistyped run directory, not a hub id)."""
    return (path.startswith((".", "/", "~", "\\")) or path.endswith(".gguf") or "\\" in path
            or not HUB_ID.match(path) or ("/" in path and Path(path.split("/")[0]).is_dir()))


def resolve(source) -> Resolved:
    """Check the source on disk (before anything heavy runs) and say how to hand it to transformers."""
    src = as_source(source)
    path = src.path
    if not path:
        raise ModelLoadError("model path is empty (model.model_name_or_path)")
    local = Path(path).expanduser()
    kwargs = {"trust_remote_code": src.trust_remote_code}
    if src.gguf_file:
        if not local.is_dir():
            raise ModelLoadError(f"{path}: no such directory (model.gguf_file={src.gguf_file} is looked for in it)")
        gguf = local / src.gguf_file
        if not gguf.is_file():
            raise ModelLoadError(f"{gguf}: no such GGUF file (model.gguf_file)")
        return Resolved(str(local), {**kwargs, "gguf_file": src.gguf_file}, str(gguf), True)
    if path.endswith(".gguf"):
        if not local.is_file():
            raise ModelLoadError(f"{path}: no such GGUF file")
        return Resolved(str(local.parent), {**kwargs, "gguf_file": local.name}, path, True)
    if local.is_file():
        raise ModelLoadError(f"{path}: a file, not a model directory or a .gguf file")
    if local.is_dir():
        if not (local / "config.json").is_file():
            ggufs = sorted(p.name for p in local.glob("*.gguf"))
            hint = f"; it holds {', '.join(ggufs)}: give that file" if ggufs else ""
            raise ModelLoadError(f"{path}: no config.json, not a model directory{hint}")
        check_config_file(local / "config.json", src.trust_remote_code)
        if any(local.glob("*.safetensors")) or (local / "model.safetensors.index.json").is_file():
            kwargs["use_safetensors"] = True
        return Resolved(str(local), kwargs, path, False)
    if looks_local(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    return Resolved(path, kwargs, path, False)  # a hub name


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def describe(e: BaseException, r: Resolved) -> str:
    """A short reason for a failed load."""
    text = str(e)
    if "trust_remote_code" in text:
        return "it needs its own Python code (auto_map); set model.trust_remote_code=true only if you trust it"
    if isinstance(e, ImportError) and "gguf" in text.lower():
        return "reading GGUF needs the gguf package: pip install 'nrt[gguf]' (gguf==0.19.0)"
    if r.is_gguf:
        if "not supported yet" in text:
            return f"unsupported GGUF ({first_line(e)})"
        return f"not a readable GGUF file: corrupt or truncated ({first_line(e)})"
    if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in text:
        names = ", ".join(sorted(p.name for p in Path(r.location).glob("*.bin"))) or "the pickle weights"
        return f"{names}: refused, a pickle holding more than tensors (torch.load weights_only)"
    return first_line(e)


# What transformers, tokenizers, torch.load and gguf raise on bad input. A corrupt GGUF can fail
# anywhere in numpy's or struct's parsing of it, hence the wide net; it is only around the load call.
LOAD_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError,
               NotImplementedError, ImportError, EOFError, AssertionError, MemoryError, struct.error,
               pickle.UnpicklingError)


def load_tokenizer(source):
    """The source's tokenizer (from a GGUF's metadata for GGUF sources); it must have an eos token."""
    from transformers import AutoTokenizer

    r = resolve(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(r.location, **{k: v for k, v in r.kwargs.items()
                                                                 if k != "use_safetensors"})
    except LOAD_ERRORS as e:
        raise ModelLoadError(f"{r.name}: cannot load a tokenizer ({describe(e, r)})") from None
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{r.name}: the tokenizer has no eos token")
    return tokenizer


def load_model(source, dtype=None):
    """The source's causal LM, in `dtype` (a torch dtype; None keeps transformers' default).

    A GGUF is dequantised and its quantizer dropped, so `save_pretrained` writes plain
    safetensors. Raises ModelLoadError (one line naming the path) for a missing, corrupt or
    unsupported model, one that needs remote code without model.trust_remote_code, or a
    pickle that is more than tensors, or weight files that lack a tensor of the model or hold one it
    does not have (`check_loading_info`)."""
    from transformers import AutoModelForCausalLM

    r = resolve(source)
    if r.kwargs.get("use_safetensors"):
        check_safetensors(Path(r.location))
    kwargs = dict(r.kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model, info = AutoModelForCausalLM.from_pretrained(r.location, output_loading_info=True, **kwargs)
    except LOAD_ERRORS as e:
        raise ModelLoadError(f"{r.name}: cannot load the model ({describe(e, r)})") from None
    check_loading_info(info, r.name)
    if r.is_gguf:
        drop_gguf_quantizer(model)
    return model


def check_loading_info(info: dict, name: str, shown: int = 3) -> None:
    """Refuse weight files that are not this model's: a tensor they lack (transformers would give it
    random values and a run would train on them) or one the model has no parameter for (another
    architecture's, or a renamed tensor, silently dropped). `info` is from_pretrained's loading info;
    transformers leaves tied weights (an output layer sharing the embedding) and non-persistent buffers
    out of it, so those are never refused. The message names the first `shown` of each kind."""
    problems = []
    for kind in ("missing", "unexpected"):
        keys = sorted(info.get(f"{kind}_keys") or ())
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > shown else ""
            plural = "s" if len(keys) > 1 else ""
            problems.append(f"{len(keys)} {kind} weight{plural} ({', '.join(keys[:shown])}{more})")
    if problems:
        raise ModelLoadError(f"{name}: the weight files do not match the model's config: {'; '.join(problems)}")


def load_config(source):
    """The source's model config alone (a GGUF's metadata, no tensors read): for checks before the weights load."""
    from transformers import AutoConfig

    r = resolve(source)
    try:
        return AutoConfig.from_pretrained(r.location, **{k: v for k, v in r.kwargs.items() if k != "use_safetensors"})
    except LOAD_ERRORS as e:
        raise ModelLoadError(f"{r.name}: cannot load the model config ({describe(e, r)})") from None


def check_config_file(path: Path, trust_remote_code: bool) -> None:
    """Refuse before transformers sees it: an unreadable config.json, or one that asks for its own code."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: not a readable JSON config ({first_line(e)})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: not a JSON object")
    if "auto_map" in raw and not trust_remote_code:
        from transformers import CONFIG_MAPPING

        if raw.get("model_type") not in CONFIG_MAPPING:
            raise ModelLoadError(
                f"{path.parent}: model_type {raw.get('model_type')!r} needs the directory's own Python code "
                "(auto_map); set model.trust_remote_code=true only if you trust it"
            )


def check_safetensors(directory: Path) -> None:
    """Read every safetensors header (cheap: the tensors are not read), so a truncated or corrupt
    file is named before transformers fails somewhere inside its loading."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{path}: corrupt or truncated safetensors file ({first_line(e)})") from None


def drop_gguf_quantizer(model) -> None:
    """transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    already dequantised floats, so the marker is dropped from the model and its config."""
    model.hf_quantizer = None
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if hasattr(config, "quantization_config"):
            del config.quantization_config
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property computed from hf_quantizer
            pass


def embedding_rows(model) -> int:
    """The input embedding's rows of a loaded model, or the vocab_size of a model's config."""
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings().weight.shape[0]
    return model.get_text_config().vocab_size


def check_vocabulary(model, tokenizer, name: str, hint: str = "the model and its tokenizer do not match") -> None:
    """Refuse a model (loaded, or its config before loading) with fewer embedding rows than the tokenizer
    has ids: the first such token looked up would be an IndexError. `<|response_start|>` is left out:
    nrt adds its row itself (`nrt.tokens.ensure_response_start_token`)."""
    rows = embedding_rows(model)
    vocab = tokenizer.get_vocab()
    rs = vocab.get(RESPONSE_START)
    beyond = sorted(i for t, i in vocab.items() if i >= rows and i != rs)
    if beyond:
        raise ModelLoadError(f"{name}: the model has {rows} embedding rows but the tokenizer has ids up to "
                             f"{beyond[-1]} ({len(beyond)} tokens without a row); {hint}")


def check_model_fits(model, tokenizer, config, examples=None) -> None:
    """Refuse, before training, a model the run would crash on or run past its positions mid-way.
    `model` is the loaded model (embedding rows counted) or, before loading, its config (vocab_size).

    Vocabulary: fewer embedding rows than the tokenizer has ids (`<|response_start|>` aside: the
    trainer adds its row). Positions: max_position_embeddings shorter than the longest sequence,
    prompt + trainer.max_completion_length + 1 (`<|response_start|>`) + answer, where prompt and
    answer are data.max_prompt_length and data.max_answer_length, or, given the tokenized
    `examples` (TokenizedExample: prompt_ids, answer_ids), the longest ones in the data (never
    longer than those options: longer records were refused or skipped)."""
    name = config.model.model_name_or_path
    check_vocabulary(model, tokenizer, name, "model.model_name_or_path and its tokenizer do not match")
    model_config = (model.config if hasattr(model, "get_input_embeddings") else model).get_text_config()
    d, t = config.data, config.trainer
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None:
        return
    if examples:
        prompt = max(len(ex.prompt_ids) for ex in examples)
        answer = max(len(ex.answer_ids) for ex in examples)
        parts = (f"the longest prompt ({prompt} tokens, data.max_prompt_length={d.max_prompt_length})",
                 f"the longest answer ({answer}, data.max_answer_length={d.max_answer_length})")
    else:
        prompt, answer = d.max_prompt_length, d.max_answer_length
        parts = (f"data.max_prompt_length ({prompt})", f"data.max_answer_length ({answer})")
    longest = prompt + t.max_completion_length + 1 + answer
    if limit < longest:
        raise ModelLoadError(
            f"{name}: max_position_embeddings={limit} is shorter than {parts[0]} + trainer.max_completion_length "
            f"({t.max_completion_length}) + 1 + {parts[1]} = {longest}; lower those options"
        )
