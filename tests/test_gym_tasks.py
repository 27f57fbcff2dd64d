"""Gym task generators: BBH formats, correct answers, traces, disjoint splits."""

import json
import random
import re

import pytest

from nrt.evaluation.evaluate import default_bbh_dir
from nrt.gym import tasks as T
from nrt.gym import world as W
from nrt.gym.bbh_hashes import BBH_HASHES, fingerprint

BBH = default_bbh_dir()
ARITH = re.compile(r"\(\((-?\d(?: [-+*] -?\d){3})\) [-+*] \((-?\d(?: [-+*] -?\d){3})\)\) =")


def bbh(task):
    if not (BBH / f"{task}.json").exists():
        pytest.skip("BBH files not available")
    return json.loads((BBH / f"{task}.json").read_text())["examples"]


def test_bbh_boolean_items_parse_and_evaluate_to_their_targets():
    for ex in bbh("boolean_expressions"):
        assert T.bool_item(ex["input"]).question == ex["input"]
        assert T.bool_steps(ex["input"])[-1] == ex["target"]


def test_bbh_arithmetic_items_parse_and_evaluate_to_their_targets():
    for ex in bbh("multistep_arithmetic_two"):
        assert ARITH.fullmatch(ex["input"])
        assert T.arith_item(ex["input"]).answer == ex["target"]


def test_generated_questions_have_the_bbh_shapes():
    items = T.task_items("boolean_expressions")
    shapes = {len(ex["input"].split()) for ex in bbh("boolean_expressions")}
    for it in items["train"][:200]:
        toks = it.question.split()
        assert len(toks) in shapes and toks[-1] == "is"
        assert set(toks[:-1]) <= {"True", "False", "not", "and", "or", "(", ")"}
        assert it.answer in ("True", "False")
    for it in T.task_items("multistep_arithmetic_two", pretrain_size=0)["train"][:200]:
        assert ARITH.fullmatch(it.question)
        assert re.fullmatch(r"-?\d+", it.answer)


def test_answers_match_python_evaluation():
    rng = random.Random(3)
    for _ in range(300):
        expr = T.random_bool_expression(rng)
        assert T.bool_item(expr).answer == str(eval(expr))
        q = T.random_arith_expression(rng)
        assert T.arith_item(q).answer == str(eval(q.removesuffix(" =")))


def test_traces_end_in_the_answer_and_wrong_steps_propagate():
    q = "not ( True ) and ( True ) is"
    assert T.bool_item(q).trace == "= not True and ( True ) = False and ( True ) = False and True = False"
    assert T.bool_steps(q, error_at=1) == ["not True and ( True )", "True and ( True )", "True and True", "True"]
    q = "((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) ="
    assert T.arith_item(q).trace == "-1+2+9*5=-1+2+45=1+45=46. -2+-4+-4*-7=-2+-4+28=-6+28=22. 46-22=24."
    trace, v = T.arith_trace(q, error_at=0, rng=random.Random(0))
    first = int(trace.split("=")[1].split("+")[-1])
    assert first != 45 and v == -1 + 2 + first - 22
    assert trace.endswith(f"={v}.")


def test_boolean_space_is_enumerated_exactly():
    exprs = T.all_bool_expressions(8)
    assert len(exprs) == len(set(exprs)) == 2122
    rng = random.Random(0)
    assert {T.random_bool_expression(rng, 5) for _ in range(3000)} == set(T.all_bool_expressions(5))


@pytest.mark.parametrize("task", T.TASKS)
def test_splits_are_disjoint_deterministic_and_free_of_bbh(task):
    a = T.task_items(task, seed=0, pretrain_size=2000)
    b = T.task_items(task, seed=0, pretrain_size=2000)
    assert a == b
    sets = {s: {i.question for i in items} for s, items in a.items()}
    names = list(sets)
    for i, x in enumerate(names):
        assert len(sets[x]) == len(a[x])
        for y in names[i + 1:]:
            assert not sets[x] & sets[y], (x, y)
    assert not any(fingerprint(q) in BBH_HASHES for s in sets.values() for q in s)


def test_bbh_fingerprints_cover_exactly_the_bbh_inputs():
    inputs = [ex["input"] for t in T.TASKS[1:] for ex in bbh(t)]
    assert {fingerprint(q) for q in inputs} == BBH_HASHES


def test_world_composed_answers_chain_two_facts_and_groups_partition_people():
    w = W.make_world(0)
    assert sorted(p for g in w.groups.values() for p in g) == sorted(w.people)
    assert len(set(w.people)) == 240 and W.make_world(0).facts == w.facts
    p = w.groups["test"][0]
    mid = w.facts["mother"][p]
    assert W.composed_chain(w, "mother", "city", p) == (
        f"where does the mother of {p} live?",
        f"the mother of {p} is {mid}. {mid} lives in {w.facts['city'][mid]}.",
        w.facts["city"][mid])
    assert W.composed_chain(w, "father", "mother", p)[0] == f"who is the mother of the father of {p}?"
    items = T.task_items("multihop")
    assert len(items["test"]) == len(w.groups["test"]) * len(w.composed)
    for it in items["test"]:
        # the answer is the object of the trace's second fact, whose subject is the first's object
        first, second = it.trace.split(". ")
        middle = first.split(" is ")[1]
        assert second.startswith((middle + " lives in ", f"the mother of {middle} is ", f"the father of {middle} is "))
        assert second.rstrip(".").split()[-1] == it.answer


def test_group_trace_is_the_group_part_of_the_full_trace():
    rng = random.Random(3)
    for _ in range(200):
        expr = T.random_arith_expression(rng)
        left, _, right = T.parse_arith(expr)
        parts = T.arith_item(expr).trace.split(" ")
        assert parts[:2] == [T.group_trace(left), T.group_trace(right)]


def test_random_operations_cover_every_one_digit_operation_and_the_multi_digit_ranges():
    rng = random.Random(0)
    ops = [T.random_operation(rng) for _ in range(100_000)]
    one_digit = {(a, o, b) for a, o, b in ops if abs(a) <= 9 and abs(b) <= 9}
    assert len(one_digit) == 19 * 19 * 3  # every one-digit operation, each sign, each operator
    magnitudes = {len(str(abs(x))) for a, _, b in ops for x in (a, b)}
    assert magnitudes == {1, 2, 3}
    two_digit = {x for a, _, b in ops for x in (a, b) if 10 <= abs(x) <= 99}
    assert len(two_digit) == 180  # every two-digit operand, both signs
    products = [(a, b) for a, o, b in ops if o == "*"]
    both_multi = sum(abs(a) > 9 and abs(b) > 9 for a, b in products) / len(products)
    assert 0.03 < both_multi < 0.08  # rare, as in traces
