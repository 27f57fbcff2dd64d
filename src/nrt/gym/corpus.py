"""Pretraining documents that give a tiny model the premises of NRT (GYM_NOTES).

Document format, the contract with the trainer (one document = one training sequence):

    "{question}\\n" + trace + "<|response_start|>" + answer + "<|endoftext|>"

with an empty trace for a direct answer. Plain text documents (facts, single operations)
are "{text}<|endoftext|>".

What the corpus holds, per task, and why:
- Elementary skills over the whole population / operand range: every fact of the world
  (multihop), one-hop questions about every person answered directly or after a one-fact
  trace in the very sentence form a composed trace uses (so copying the person from the
  question and recalling one fact in trace form is practised for everyone); single
  arithmetic operations over the operand range trace steps meet (one to three digits,
  signed; `tasks.random_operation`) and whole groups "a o b o c o d" reduced step by step
  as a trace writes them (every group is practised; a question has two of them); boolean
  expressions of other lengths than the task's 8 tokens, mostly after their rewrite steps
  (`rewrite_think_share`). Arithmetic operations are the slowest skill to learn, so
  arithmetic gets over half of the tokens.
- Composed questions of the corpus-only `pretrain` pool only, mostly answered directly
  and a minority (`think_share`) after a full trace. The model thus learns the format and
  the habit of sometimes thinking, and direct answers of unseen composed questions stay
  hard. No question of the train / validation / test splits, and no real BIG-Bench-Hard
  question, ever appears (tests/test_gym_corpus.py).
- `multihop_long` (long_answer.py): one-hop questions about everyone and composed questions of
  the `pretrain` pool, each in a random answer style, answered at once or after the trace the
  short form uses, with the free wording (opener, fillers, closer) drawn afresh per document.
- A fraction (`trace_error`) of the traces contains one wrong step; later steps and the
  answer follow the wrong value. Answers must follow their own traces (GYM_NOTES 2), else
  the model learns that answers ignore traces and thinking cannot help.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from nrt.gym import long_answer as L
from nrt.gym import tasks as T
from nrt.gym import world as W
from nrt.gym.bbh_hashes import is_bbh_question
from nrt.gym.tokenizer import EOS, RESPONSE_START


def qa_document(question: str, answer: str, trace: str = "") -> str:
    """The one document format shared with the trainer (empty trace = direct answer)."""
    return f"{question}\n{trace}{RESPONSE_START}{answer}{EOS}"


@dataclass
class CorpusConfig:
    seed: int = 0
    tasks: tuple[str, ...] = T.TASKS
    # share of documents per task (normalised over `tasks`). Tokens: arithmetic about 56%
    # (its operations take the longest to learn), multihop 25%, boolean 19%
    task_weights: dict = field(default_factory=lambda: {
        "multihop": 0.3, "boolean_expressions": 0.2, "multistep_arithmetic_two": 0.5, "multihop_long": 0.5})
    think_share: float = 0.35  # composed questions answered after a trace
    one_hop_think_share: float = 0.5  # one-hop questions answered after a one-fact trace
    # boolean expressions of other lengths than the task's answered after their rewrite steps:
    # practice of the steps a trace takes, which sampled traces must get right
    rewrite_think_share: float = 0.7
    trace_error: float = 0.1  # traces with one wrong step (the answer follows the trace)
    # arithmetic documents: single operations / one group reduced / composed questions
    arithmetic_mix: tuple[float, float, float] = (0.5, 0.3, 0.2)
    n_people: int = 240
    # people by the group of their composed questions: pretrain (in the corpus) / train /
    # validation / test (models/gym-base: 96 / 72 / 24 / 48 people). Held-out traces were
    # right more often when their middle person was also the middle of a pretrain-group trace.
    groups: tuple[float, float, float, float] = W.DEFAULT_FRACTIONS


class Corpus:
    """Draws documents from a seeded mixture. `world` is the multihop world, `items[task]`
    the task's splits and corpus-only pool, `held_out` every split question (never drawn)."""

    def __init__(self, cfg: CorpusConfig):
        self.cfg = cfg
        self.rng = random.Random(f"corpus-{cfg.seed}")
        self.world = W.make_world(cfg.seed, n_people=cfg.n_people, fractions=tuple(cfg.groups))
        self.items = {t: T.task_items(t, cfg.seed, world=self.world) for t in cfg.tasks}
        self.held_out = {i.question for t in self.items.values() for s in T.SPLITS for i in t[s]}
        self.tasks = list(cfg.tasks)
        self.weights = [cfg.task_weights.get(t, 0.0) for t in self.tasks]
        self.makers = {"multihop": self._multihop, "boolean_expressions": self._boolean,
                       "multistep_arithmetic_two": self._arithmetic, "multihop_long": self._multihop_long}

    def documents(self, n: int) -> list[str]:
        return [self.document() for _ in range(n)]

    def document(self) -> str:
        task = self.rng.choices(self.tasks, self.weights)[0]
        return self.makers[task]()

    def _think(self, share: float) -> bool:
        return self.rng.random() < share

    # ------------------------------------------------------------------ multihop

    def _multihop(self) -> str:
        r, w = self.rng, self.world
        kind = r.random()
        if kind < 0.25:  # a few facts about random people, in random order
            sents = []
            for _ in range(r.randint(1, 4)):
                rel, p = r.choice(W.RELATIONS), r.choice(w.people)
                sents.append(W.fact_sentence(rel, p, w.facts[rel][p]))
            return " ".join(sents) + EOS
        if kind < 0.6:  # one-hop question about anyone
            rel, p = r.choice(W.RELATIONS), r.choice(w.people)
            q, trace, a = W.one_hop(w, rel, p)
            if not self._think(self.cfg.one_hop_think_share):
                return qa_document(q, a)
            if self._think(self.cfg.trace_error):
                a = r.choice(w.cities if rel == "city" else w.people)
                trace = W.fact_sentence(rel, p, a)
            return qa_document(q, a, trace)
        p = r.choice(w.groups["pretrain"])
        first, second = r.choice(w.composed)
        q, trace, a = W.composed_chain(w, first, second, p)
        if not self._think(self.cfg.think_share):
            return qa_document(q, a)
        if self._think(self.cfg.trace_error):
            if r.random() < 0.5:  # wrong middle person, then that person's true fact
                q, trace, a = W.composed_chain(w, first, second, p, middle=r.choice(w.people))
            else:  # right middle person, wrong final fact
                bad = r.choice(w.cities if second == "city" else w.people)
                q, trace, a = W.composed_chain(w, first, second, p, answer=bad)
        return qa_document(q, a, trace)

    def _multihop_long(self) -> str:
        r, w = self.rng, self.world
        style = r.choice(L.STYLES)
        if r.random() < 0.5:  # one-hop question about anyone: the answer styles on every person
            rel, p = r.choice(W.RELATIONS), r.choice(w.people)
            think = self._think(self.cfg.one_hop_think_share)
            wrong = r.choice(w.cities if rel == "city" else w.people) if think and self._think(
                self.cfg.trace_error) else None
            q, trace, a, _ = L.one_hop_item(w, rel, p, style, r, wrong)
            return qa_document(q, a, trace if think else "")
        p = r.choice(w.groups["pretrain"])
        first, second = r.choice(w.composed)
        if not self._think(self.cfg.think_share):
            q, _, a, _ = L.composed_item(w, first, second, p, style, r)
            return qa_document(q, a)
        middle = answer = None
        if self._think(self.cfg.trace_error):
            if r.random() < 0.5:
                middle = r.choice(w.people)
            else:
                answer = r.choice(w.cities if second == "city" else w.people)
        q, trace, a, _ = L.composed_item(w, first, second, p, style, r, middle, answer)
        return qa_document(q, a, trace)

    # ------------------------------------------------------------------ boolean

    def _boolean(self) -> str:
        r = self.rng
        while True:
            n = r.choice([2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 8, 8, 9, 9, 10])
            if n == 8:  # the task's length: a composed question of the corpus-only pool
                item, share = r.choice(self.items["boolean_expressions"]["pretrain"]), self.cfg.think_share
            else:  # other lengths: practice of the rewrite steps
                item, share = T.bool_item(T.random_bool_expression(r, n)), self.cfg.rewrite_think_share
            if not self._think(share):
                item = T.Item(item.question, item.answer, "")
            elif self._think(self.cfg.trace_error):
                steps = T.bool_steps(item.question, error_at=r.randrange(len(T.bool_steps(item.question))))
                item = T.Item(item.question, steps[-1], "= " + " = ".join(steps))
            if not self._contains_held_out(item):
                return qa_document(item.question, item.answer, item.trace)

    def _contains_held_out(self, item: T.Item) -> bool:
        """Whether a held-out or BBH expression is an 8-token window of a longer question or
        of one of its trace's states (e.g. "not ( ... )" around it, or a 9-token expression
        whose first rewrite is it): such a document would hold, even evaluate, that question.
        (An 8-token question of the pretrain pool is none of them, and its states are shorter.)"""
        for text in [item.question.removesuffix(" is")] + item.trace.removeprefix("= ").split(" = "):
            toks = text.split()
            for s in range(len(toks) - 7):
                q = " ".join(toks[s:s + 8]) + " is"
                if q in self.held_out or is_bbh_question(q):
                    return True
        return False

    # ------------------------------------------------------------------ arithmetic

    def _arithmetic(self) -> str:
        r, (operations, groups, _) = self.rng, self.cfg.arithmetic_mix
        kind = r.random()
        if kind < operations:  # single operations over the operand range traces meet
            picks = [T.random_operation(r) for _ in range(r.randint(1, 4))]
            return " ".join(T.op_text(x, o, y, T.apply_op(x, o, y)) + "." for x, o, y in picks) + EOS
        if kind < operations + groups:  # one group reduced step by step, as inside a trace
            return T.group_trace(T.random_arith_group(r)) + EOS
        item = r.choice(self.items["multistep_arithmetic_two"]["pretrain"])
        if not self._think(self.cfg.think_share):
            return qa_document(item.question, item.answer)
        if self._think(self.cfg.trace_error):
            trace, v = T.arith_trace(item.question, error_at=r.randrange(7), rng=r)
            return qa_document(item.question, str(v), trace)
        return qa_document(item.question, item.answer, item.trace)


def build_documents(cfg: CorpusConfig, n: int) -> list[str]:
    return Corpus(cfg).documents(n)
