"""The long-answer task `multihop_long`: composed questions of world.py answered in sentences.

A real long-form answer (Tulu-3's assistant turns, the paper's data) is mostly text that follows
from the question, a few tokens that only reasoning gets right, and wording no reasoning can
predict. This task has all three, in four lengths set by the question's last sentence:

    where does the mother of kuna live? answer in a few sentences.
    -> "good question. the mother of kuna lives in oslo. i hope that helps."

- key span (reasoning-dependent): the composed fact, "oslo". A trace that recalls both facts
  ("the mother of kuna is vera. vera lives in oslo.") makes it a copy; without one it is the
  two-hop curse's guess (GYM_NOTES 4). It is the record's `key`: `nrt eval` scores a record
  with a key by whether the key occurs in the prediction, as a whole word.
- predictable: the restated question ("the mother of kuna lives in"), fixed phrasing.
- irreducibly uncertain: the opener, the fillers and the closer, drawn uniformly per answer
  from small phrase lists; in pretraining they are drawn afresh for every document, so the
  model learns the uniform choice and no trace can predict it.

Styles and their answer lengths in models/gym-long's tokenizer (eos excluded): `briefly` about 5
tokens, `in a sentence` 13-20, `in a few sentences` 20-35, `in detail` 40-60.
"""

from __future__ import annotations

import random

from nrt.gym import world as W

STYLES = ("briefly", "in a sentence", "in a few sentences", "in detail")
OPENERS = ("sure.", "good question.", "let me see.", "happy to help.", "okay.", "here is what i know.",
           "right.", "of course.")
FILLERS = ("i read it in the town records.", "many people there know it.", "it was easy to find out.",
           "a friend told me about it once.", "the old notes agree on it.", "i checked it twice.",
           "it is well known.", "nobody argues about it.")
CLOSERS = ("i hope that helps.", "ask me if you need more.", "that is all i know.", "glad to help.",
           "have a nice day.", "thanks for asking.", "let me know if anything is unclear.", "take care.")


def question(first: str, second: str, subject: str, style: str) -> str:
    return f"{W.composed_question(first, second, subject)} answer {style}."


def one_hop_question(relation: str, subject: str, style: str) -> str:
    return f"{W.one_hop_question(relation, subject)} answer {style}."


def statement(relation: str, about: str, obj: str) -> str:
    """The answer's sentence: `about` is the restated entity ("the mother of kuna" or "kuna")."""
    return f"{about} lives in {obj}." if relation == "city" else f"the {relation} of {about} is {obj}."


def answer_text(relation: str, about: str, key: str, style: str, rng: random.Random) -> str:
    """An answer in `style` whose key span is `key`; the free wording is drawn from `rng`."""
    sentence = statement(relation, about, key)
    if style == "briefly":
        return f"it is {key}."
    if style == "in a sentence":
        return sentence
    if style == "in a few sentences":
        return f"{rng.choice(OPENERS)} {sentence} {rng.choice(CLOSERS)}"
    if style == "in detail":
        fillers = rng.sample(FILLERS, 2)
        return f"{rng.choice(OPENERS)} {sentence} {fillers[0]} {fillers[1]} so it is {key}. {rng.choice(CLOSERS)}"
    raise ValueError(f"unknown style {style!r}; choose from {STYLES}")


def composed_item(world: W.World, first: str, second: str, subject: str, style: str, rng: random.Random,
                  middle: str | None = None, answer: str | None = None) -> tuple[str, str, str, str]:
    """(question, trace, answer, key) of a composed question in `style`; `middle` / `answer`
    build a wrong trace as `world.composed_chain` does, and the answer follows the trace."""
    _, trace, key = W.composed_chain(world, first, second, subject, middle, answer)
    about = f"the {first} of {subject}"
    return question(first, second, subject, style), trace, answer_text(second, about, key, style, rng), key


def one_hop_item(world: W.World, relation: str, subject: str, style: str, rng: random.Random,
                 wrong: str | None = None) -> tuple[str, str, str, str]:
    """(question, one-fact trace, answer, key) of a one-hop question in `style`."""
    key = wrong if wrong is not None else world.facts[relation][subject]
    trace = W.fact_sentence(relation, subject, key)
    return one_hop_question(relation, subject, style), trace, answer_text(relation, subject, key, style, rng), key


def split_items(world: W.World, group: str, seed: int) -> list[tuple[str, str, str, str]]:
    """The composed questions of `group`'s people, one style each (drawn per question, so every
    style appears in every split), with their reference answers' free wording drawn once."""
    rng = random.Random(f"multihop_long-{seed}-{group}")
    return [composed_item(world, a, b, p, rng.choice(STYLES), rng) for p in world.groups[group]
            for a, b in world.composed]
