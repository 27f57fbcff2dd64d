"""Tiny models built from a config, for tests, benchmarks and trying the trainer offline.

No download: a character-level tokenizer made with `tokenizers` and a randomly
initialised Llama. Real work needs a real model; these only exercise the machinery.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from nrt.tokens import RESPONSE_START

SPECIAL = ["<|pad|>", "<|endoftext|>"]
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"


def char_tokenizer(alphabet: str = ALPHABET, with_response_start: bool = True) -> PreTrainedTokenizerFast:
    """One token per character; `<|endoftext|>` is eos, `<|pad|>` is pad."""
    specials = SPECIAL + ([RESPONSE_START] if with_response_start else [])
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(alphabet)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|pad|>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>")


def tiny_llama(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
               max_positions: int = 1024) -> LlamaForCausalLM:
    import torch

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=1, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(directory: str, hidden: int = 64, layers: int = 2, seed: int = 0) -> str:
    """Write a random tiny Llama and its char tokenizer to `directory` (from_pretrained-loadable)."""
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), hidden=hidden, layers=layers, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
