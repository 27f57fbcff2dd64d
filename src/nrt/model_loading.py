"""Loading a causal LM and its tokenizer; every failure is a one-line `ModelLoadError` naming the path."""

from __future__ import annotations

from nrt.errors import ModelLoadError


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"--model {path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"--model {path}: the tokenizer has no eos token")
    return tokenizer


def load_model(path: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
