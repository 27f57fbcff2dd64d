"""Gym corpus: the document contract, no held-out question, answers that follow traces."""

import json
import re

import pytest

from nrt.evaluation.evaluate import default_bbh_dir
from nrt.gym import tasks as T
from nrt.gym import world as W
from nrt.gym.corpus import Corpus, CorpusConfig, qa_document
from nrt.gym.tokenizer import EOS, RESPONSE_START

QA = re.compile(r"(?s)([^\n]*)\n(.*)" + re.escape(RESPONSE_START) + r"(.*)" + re.escape(EOS))


@pytest.fixture(scope="module")
def corpus():
    c = Corpus(CorpusConfig(seed=0))
    return c, c.documents(30000)


def test_document_format_is_the_trainer_contract():
    assert qa_document("who is the mother of kuna?", "vera") == \
        "who is the mother of kuna?\n<|response_start|>vera<|endoftext|>"
    assert qa_document("q", "a", "t.") == "q\nt.<|response_start|>a<|endoftext|>"


def test_every_document_is_well_formed(corpus):
    _, docs = corpus
    for d in docs:
        assert d.endswith(EOS) and d.count(EOS) == 1 and d.count(RESPONSE_START) <= 1
        if RESPONSE_START in d:
            m = QA.fullmatch(d)
            assert m and m.group(3) and "\n" not in m.group(2) + m.group(3)


def test_corpus_has_no_question_of_any_split(corpus):
    c, docs = corpus
    held = set()
    for task in T.TASKS:
        items = T.task_items(task, 0, world=c.world)
        held |= {i.question for s in T.SPLITS for i in items[s]}
    assert len(held) > 3000
    questions = {QA.fullmatch(d).group(1) for d in docs if RESPONSE_START in d}
    assert not questions & held
    text = "\n".join(docs)
    for q in list(held)[:: max(1, len(held) // 500)]:  # nor inside any text (a longer expression)
        assert q.removesuffix(" is") not in text


def test_corpus_holds_no_real_bbh_question(corpus):
    """The real BIG-Bench-Hard inputs (read from their files, not through the fingerprints the
    generators use) appear nowhere in the corpus: not as a question, not inside a longer
    expression, not as a trace state."""
    _, docs = corpus
    # one line of space-separated tokens per document; trace states and questions are then
    # token runs bounded by spaces
    text = " ".join(" " + d.replace(RESPONSE_START, " | ").replace(EOS, " |").replace("\n", " | ") + " "
                    for d in docs)
    found = 0
    for task, suffix in (("boolean_expressions", " is"), ("multistep_arithmetic_two", " =")):
        path = default_bbh_dir() / f"{task}.json"
        if not path.exists():
            pytest.skip("BBH files not available")
        for ex in json.loads(path.read_text())["examples"]:
            expression = ex["input"].removesuffix(suffix)
            assert f" {expression} " not in text, f"{task}: {ex['input']!r} is in the corpus"
            found += 1
    assert found == 500
    # the check can fail: a document holding a BBH expression is found
    planted = " " + qa_document(ex["input"], ex["target"]).replace("\n", " | ") + " "
    assert f" {expression} " in planted


def test_think_share_and_answers_follow_their_traces(corpus):
    _, docs = corpus
    qa = [QA.fullmatch(d) for d in docs if RESPONSE_START in d]
    composed = [m for m in qa if " of the " in m.group(1)]
    share = sum(bool(m.group(2)) for m in composed) / len(composed)
    assert 0.3 < share < 0.4
    wrong = 0
    for m in qa:
        q, trace, ans = m.groups()
        if not trace:
            continue
        if q.endswith(" is"):  # boolean: the trace's last state is the answer
            assert trace.endswith("= " + ans)
            wrong += T.bool_item(q).answer != ans
        elif q.endswith(" ="):  # arithmetic: the trace's last result is the answer
            assert trace.endswith(f"={ans}.")
            wrong += T.arith_item(q).answer != ans
        else:  # multihop: the last fact's object
            assert trace.rstrip(".").split()[-1] == ans
    assert wrong > 0  # some traces are wrong, and their answers still follow them


def test_one_hop_traces_cover_every_person(corpus):
    c, docs = corpus
    subjects = set()
    for d in docs:
        m = QA.fullmatch(d) if RESPONSE_START in d else None
        if m and m.group(2) and " of the " not in m.group(1) and m.group(1).startswith(("who", "where")):
            subjects.add(m.group(2).split(" of ")[-1].split(" is ")[0] if "the " in m.group(2)[:4]
                         else m.group(2).split(" lives in ")[0])
    assert set(c.world.people) <= subjects


def test_composed_questions_only_for_the_pretrain_group(corpus):
    c, docs = corpus
    pre = set(c.world.groups["pretrain"])
    for d in docs:
        if RESPONSE_START in d and " of the " in d.split("\n")[0]:
            subject = d.split("\n")[0].rstrip("?").removesuffix(" live").split(" of ")[-1]
            assert subject in pre
    assert W.GROUPS[0] == "pretrain"


@pytest.fixture(scope="module")
def long_corpus():
    c = Corpus(CorpusConfig(seed=0, tasks=("multihop", "multihop_long")))
    return c, c.documents(20000)


def test_long_corpus_has_no_composed_question_of_any_split(long_corpus):
    """models/gym-long's corpus: no train/validation/test question of multihop_long, in any answer
    style, nor its composed part inside any text (one-hop long forms are for everyone)."""
    c, docs = long_corpus
    split_items = [i for s in T.SPLITS for i in c.items["multihop_long"][s]]
    assert len(split_items) == 432 + 144 + 288
    text = "\n".join(docs)
    composed = {i.question.rsplit(" answer ", 1)[0] for i in split_items}
    assert all(" of " in q for q in composed)
    leaked = [q for q in composed if q in text]
    assert not leaked, leaked[:3]
    long_docs = [d for d in docs if " answer " in d.split("\n")[0]]
    assert len(long_docs) > 2000
    # the check can fail: the pretrain pool's composed questions are in the corpus
    pool = {i.question.rsplit(" answer ", 1)[0] for i in c.items["multihop_long"]["pretrain"]}
    assert any(q in text for q in pool)


def test_long_answers_hold_their_key_and_follow_their_traces(long_corpus):
    from nrt.data import key_matches
    from nrt.gym import long_answer as L

    c, docs = long_corpus
    for split in T.SPLITS:
        for item in c.items["multihop_long"][split]:
            assert item.key and key_matches(item.answer, (item.key,))
            assert item.question.endswith(tuple(f" answer {s}." for s in L.STYLES))
    # every style occurs in the splits, and longer styles give longer answers
    by_style = {s: [len(i.answer.split()) for i in c.items["multihop_long"]["test"]
                    if i.question.endswith(f" answer {s}.")] for s in L.STYLES}
    means = [sum(v) / len(v) for v in by_style.values()]
    assert all(by_style.values()) and means == sorted(means)
    # in the corpus, an answer after a trace names the trace's last fact (a wrong trace included)
    traced = [QA.fullmatch(d) for d in docs if " answer " in d.split("\n")[0] and "\n<|response_start|>" not in d]
    assert len(traced) > 200
    for m in traced:
        last = m.group(2).rstrip(".").split(" ")[-1]
        assert key_matches(m.group(3), (last,)), (m.group(2), m.group(3))
