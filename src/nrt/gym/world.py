"""A synthetic world of people, their parents and their cities, for multi-hop questions.

Design (GYM_NOTES section 4, where this setting showed NRT's effect):

- Every person has a mother, a father (other people) and a city. These elementary facts
  are stated in pretraining for everyone, and one-hop questions about them are asked for
  everyone, answered directly or after a one-fact trace ("the mother of kuna is vera.").
- A composed question chains two relations ("where does the mother of kuna live?"). No
  single fact states its answer; a trace that recalls both facts does
  ("the mother of kuna is vera. vera lives in oslo.").
- People are split by the subject of the composed question into four groups: `pretrain`
  (their composed questions appear in the corpus, so the model practises writing two-fact
  traces and learns the document format), `train` (the composed Q&A pairs NRT and SFT train
  on), `validation` and `test`. Only composed questions of non-pretrain people are kept
  out of the corpus; every elementary skill a trace uses is practised on the whole
  population, because a skill practised on a part of it does not carry over (the notes'
  first corpus wrote traces about the wrong person).

The world is a pure function of its seed: same seed, same names, facts and groups.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
CITIES = (
    "paris rome oslo lima cairo delhi tokyo quito dakar hanoi sofia riga "
    "minsk kyiv baku doha accra lagos perth dubai seoul milan porto tunis"
).split()
PERSON_RELATIONS = ("mother", "father")
RELATIONS = PERSON_RELATIONS + ("city",)
GROUPS = ("pretrain", "train", "validation", "test")
DEFAULT_FRACTIONS = (0.4, 0.3, 0.1, 0.2)


@dataclass
class World:
    """people: names; facts[relation][person] -> name (a person, or a city for "city");
    groups[group] -> the people whose composed questions belong to that group."""

    people: list[str]
    cities: list[str]
    facts: dict[str, dict[str, str]]
    groups: dict[str, list[str]] = field(default_factory=dict)
    composed: tuple[tuple[str, str], ...] = ()

    def group_of(self, person: str) -> str:
        for g, members in self.groups.items():
            if person in members:
                return g
        raise KeyError(person)


def make_world(
    seed: int = 0,
    n_people: int = 240,
    n_cities: int = 24,
    fractions: tuple[float, float, float, float] = DEFAULT_FRACTIONS,
    composed: tuple[tuple[str, str], ...] | None = None,
) -> World:
    """Draw names, facts and person groups (fractions for pretrain/train/validation/test).

    `composed` lists the (first, second) relation pairs asked as composed questions; the
    default is every person relation followed by any relation (6 question types).
    """
    if n_cities > len(CITIES):
        raise ValueError(f"at most {len(CITIES)} cities, got {n_cities}")
    rng = random.Random(f"world-{seed}")
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    names: set[str] = set()
    while len(names) < n_people:
        names.add(rng.choice(syllables) + rng.choice(syllables))
    people = sorted(names)
    rng.shuffle(people)
    cities = list(CITIES[:n_cities])
    facts: dict[str, dict[str, str]] = {r: {} for r in RELATIONS}
    for p in people:
        others = [q for q in people if q != p]
        for r in PERSON_RELATIONS:
            facts[r][p] = rng.choice(others)
        facts["city"][p] = rng.choice(cities)
    bounds, start, groups = _cumulative(fractions, n_people), 0, {}
    for g, end in zip(GROUPS, bounds):
        groups[g] = people[start:end]
        start = end
    if composed is None:
        composed = tuple((a, b) for a in PERSON_RELATIONS for b in RELATIONS)
    return World(people, cities, facts, groups, tuple(composed))


def _cumulative(fractions, n):
    if len(fractions) != len(GROUPS) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"need {len(GROUPS)} group fractions summing to 1, got {fractions}")
    acc, out = 0.0, []
    for f in fractions:
        acc += f
        out.append(round(acc * n))
    return out


# --------------------------------------------------------------------------- text forms


def fact_sentence(relation: str, subject: str, obj: str) -> str:
    """The one sentence form of a fact, used alike in fact documents and in traces."""
    if relation == "city":
        return f"{subject} lives in {obj}."
    return f"the {relation} of {subject} is {obj}."


def one_hop_question(relation: str, subject: str) -> str:
    if relation == "city":
        return f"where does {subject} live?"
    return f"who is the {relation} of {subject}?"


def composed_question(first: str, second: str, subject: str) -> str:
    inner = f"the {first} of {subject}"
    if second == "city":
        return f"where does {inner} live?"
    return f"who is the {second} of {inner}?"


def one_hop(world: World, relation: str, subject: str) -> tuple[str, str, str]:
    """(question, trace, answer) of a one-hop question; the trace states the one fact."""
    obj = world.facts[relation][subject]
    return one_hop_question(relation, subject), fact_sentence(relation, subject, obj), obj


def composed_chain(world: World, first: str, second: str, subject: str,
                   middle: str | None = None, answer: str | None = None) -> tuple[str, str, str]:
    """(question, trace, answer) of a composed question.

    `middle` / `answer` override the recalled facts to build a wrong trace; the answer
    always follows the trace (GYM_NOTES section 2), so a wrong middle person leads to that
    person's true fact unless `answer` is given too.
    """
    mid = middle if middle is not None else world.facts[first][subject]
    ans = answer if answer is not None else world.facts[second][mid]
    trace = fact_sentence(first, subject, mid) + " " + fact_sentence(second, mid, ans)
    return composed_question(first, second, subject), trace, ans


def composed_questions(world: World, group: str) -> list[tuple[str, str, str]]:
    """All composed (question, trace, answer) triples whose subject is in `group`."""
    return [composed_chain(world, a, b, p) for p in world.groups[group] for a, b in world.composed]
