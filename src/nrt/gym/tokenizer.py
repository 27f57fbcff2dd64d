"""A small byte-level BPE tokenizer trained with `tokenizers`, saved as a transformers
`PreTrainedTokenizerFast`.

Design:
- Pre-tokenization isolates every whitespace character, every digit and every
  punctuation character; BPE merges happen only inside runs of letters. So a word is the
  same token(s) wherever it stands: "vera" after `<|response_start|>` (the answer
  position), at the start of a line, or after a space inside a trace. The reference answer
  is tokenized on its own by the trainer (`tok(answer, add_special_tokens=False)`) and
  must equal the ids the corpus put after `<|response_start|>`; a GPT-2-style leading-space
  merge ("Ġvera") would break that. It also makes `tok("{question}\n")` an exact prefix of
  the tokenization of any document that continues the line ("\n" never merges forward).
- Digits are single tokens, so arithmetic is done digit by digit.
- Byte-level alphabet: any UTF-8 text (a user's corpus) encodes without unknown tokens.
- Special tokens: `<|endoftext|>` (eos, also pad) and `<|response_start|>` (separates the
  trace from the answer). No bos token and no chat template: the trainer's prompt is the
  plain "{question}\n".
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
RESPONSE_START = "<|response_start|>"
SPECIAL_TOKENS = (EOS, RESPONSE_START)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2):
    """Train the BPE on `texts` (documents may contain the special tokens verbatim)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s|\d|[^\w\s]|_"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.train_from_iterator(_without_specials(texts), trainer=trainer)
    return wrap(tok)


def _without_specials(texts: Iterable[str]):
    # The special tokens are atomic; their characters must not shape the merges.
    for t in texts:
        for s in SPECIAL_TOKENS:
            t = t.replace(s, "\n")
        yield t


def wrap(tok: Tokenizer):
    """The transformers fast tokenizer around `tok` (saved with `save_pretrained`)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        extra_special_tokens=[RESPONSE_START],
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
