"""Task generators of the reasoning gym, and their train / validation / test splits.

Three tasks, each yielding `Item`s (question, answer, and a correct step-by-step trace
whose last step is the answer). Splits hold plain question-answer pairs; traces are only
used to write pretraining documents (corpus.py).

- `boolean_expressions` and `multistep_arithmetic_two` follow the input/target format of
  the BIG-Bench-Hard tasks of those names, written from their definitions:
  * boolean: 8 tokens from {True, False, not, and, or, (, )} forming a Python boolean
    expression, then " is"; target "True"/"False". Expressions are drawn uniformly over
    the token strings of an unambiguous precedence grammar (or < and < not < atom), then
    each constant uniformly. Trace: rewrite the expression one operation at a time
    (leftmost reducible node: a parenthesised constant, `not` of a constant, or
    `and`/`or` of two constants), e.g. "= not True and True = False and True = False".
  * arithmetic: "((a o b o c o d) o (e o f o g o h)) =" with a..h in -9..9 and o in
    {+, -, *}; target the Python integer value. Trace: each group restated and reduced one
    binary operation at a time (`*` first, then left to right), then the outer operation,
    written without spaces to halve its length: "-1+2+9*5=-1+2+45=1+45=46. ... 46-22=24."
- `multihop`: composed questions over the world of world.py (answer: a name).
- `multihop_long`: the same composed questions answered in one to several sentences
  (long_answer.py); each item's `key` is the composed fact, the span that decides correctness.

Every split is disjoint from the others and from the `pretrain` pool that only the corpus
uses. The BIG-Bench-Hard questions (evaluation data) are removed from all of them by
fingerprint (bbh_hashes.py), and so is an optional `exclude` set.
"""

from __future__ import annotations

import json
from pathlib import Path

import random
from dataclasses import dataclass
from functools import lru_cache

from nrt.gym import world as W
from nrt.gym.bbh_hashes import is_bbh_question

TASKS = ("multihop", "boolean_expressions", "multistep_arithmetic_two")  # models/gym-bbh's three
LONG_TASKS = ("multihop_long",)  # models/gym-long
ALL_TASKS = TASKS + LONG_TASKS
WORLD_TASKS = ("multihop", "multihop_long")  # tasks over world.py's people
SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {
    "boolean_expressions": {"train": 600, "validation": 150, "test": 300},
    "multistep_arithmetic_two": {"train": 2000, "validation": 200, "test": 500},
}


@dataclass(frozen=True)
class Item:
    question: str
    answer: str
    trace: str
    key: str = ""  # the answer's span that decides correctness (long answers); "" = the whole answer


# --------------------------------------------------------------------------- boolean


@lru_cache(None)
def _count(sym: str, n: int) -> int:
    """Token strings of length n derivable from `sym` in the unambiguous grammar
    or := and | or 'or' and ; and := not | and 'and' not ; not := 'not' not | atom ;
    atom := B | '(' or ')'  (B one constant)."""
    if n <= 0:
        return 0
    if sym == "or":
        return _count("and", n) + sum(_count("or", i) * _count("and", n - 1 - i) for i in range(1, n - 1))
    if sym == "and":
        return _count("not", n) + sum(_count("and", i) * _count("not", n - 1 - i) for i in range(1, n - 1))
    if sym == "not":
        return _count("not", n - 1) + _count("atom", n)
    return (n == 1) + _count("or", n - 2)  # atom


def _sample(sym: str, n: int, rng: random.Random):
    """Uniformly sample a parse tree of `n` tokens: ('B', bool) | ('not', t) | ('and'|'or', l, r) | ('()', t)."""
    r = rng.randrange(_count(sym, n))
    if sym in ("or", "and"):
        sub = "and" if sym == "or" else "not"
        if r < _count(sub, n):
            return _sample(sub, n, rng)
        r -= _count(sub, n)
        for i in range(1, n - 1):
            c = _count(sym, i) * _count(sub, n - 1 - i)
            if r < c:
                return (sym, _sample(sym, i, rng), _sample(sub, n - 1 - i, rng))
            r -= c
    if sym == "not":
        if r < _count("not", n - 1):
            return ("not", _sample("not", n - 1, rng))
        return _sample("atom", n, rng)
    if n == 1:
        return ("B", rng.random() < 0.5)
    return ("()", _sample("or", n - 2, rng))


def _render_bool(t) -> list[str]:
    kind = t[0]
    if kind == "B":
        return [str(t[1])]
    if kind == "not":
        return ["not"] + _render_bool(t[1])
    if kind == "()":
        return ["("] + _render_bool(t[1]) + [")"]
    return _render_bool(t[1]) + [kind] + _render_bool(t[2])


def parse_bool(text: str):
    """Parse a boolean expression (tokens separated by spaces) into the tree form of `_sample`."""
    toks = text.split()
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if tok is None or (expected and tok != expected):
            raise ValueError(f"bad boolean expression {text!r} at token {pos}")
        pos += 1
        return tok

    def binary(sym, sub):
        node = sub()
        while peek() == sym:
            take()
            node = (sym, node, sub())
        return node

    def p_or():
        return binary("or", p_and)

    def p_and():
        return binary("and", p_not)

    def p_not():
        if peek() == "not":
            take()
            return ("not", p_not())
        if peek() == "(":
            take()
            node = p_or()
            take(")")
            return ("()", node)
        tok = take()
        if tok not in ("True", "False"):
            raise ValueError(f"bad boolean expression {text!r}: unexpected {tok!r}")
        return ("B", tok == "True")

    tree = p_or()
    if pos != len(toks):
        raise ValueError(f"bad boolean expression {text!r}: trailing tokens")
    return tree


def _reduce_bool(t, flip: bool = False):
    """One rewrite step on the leftmost reducible node; returns (tree, done?)."""
    kind = t[0]
    if kind == "B":
        return t, False
    kids = t[1:]
    if all(k[0] == "B" for k in kids):
        vals = [k[1] for k in kids]
        v = {"not": lambda: not vals[0], "()": lambda: vals[0],
             "and": lambda: vals[0] and vals[1], "or": lambda: vals[0] or vals[1]}[kind]()
        return ("B", v != flip), True
    new = list(t)
    for i in range(1, len(t)):
        sub, done = _reduce_bool(t[i], flip)
        if done:
            new[i] = sub
            return tuple(new), True
    raise AssertionError("unreachable")


def bool_steps(expr: str, error_at: int | None = None) -> list[str]:
    """Successive rewrites of `expr` ("... is" suffix allowed) down to "True"/"False".
    With `error_at=i`, step i gets the wrong truth value and later steps follow it."""
    tree = parse_bool(expr.removesuffix(" is"))
    states, i = [], 0
    while tree[0] != "B":
        tree, _ = _reduce_bool(tree, flip=(i == error_at))
        states.append(" ".join(_render_bool(tree)))
        i += 1
    return states


def bool_item(expr: str) -> Item:
    """`expr` with or without the trailing " is"; the question always has it."""
    expr = expr.removesuffix(" is")
    steps = bool_steps(expr) or [expr]  # a lone constant is its own value
    return Item(f"{expr} is", steps[-1], "= " + " = ".join(steps))


def _all(sym: str, n: int) -> list[list[str]]:
    """Every token string of length n derivable from `sym` (B as a placeholder)."""
    if n <= 0:
        return []
    if sym in ("or", "and"):
        sub = "and" if sym == "or" else "not"
        out = _all(sub, n)
        for i in range(1, n - 1):
            out += [a + [sym] + b for a in _all(sym, i) for b in _all(sub, n - 1 - i)]
        return out
    if sym == "not":
        return [["not"] + t for t in _all("not", n - 1)] + _all("atom", n)
    return ([["B"]] if n == 1 else []) + [["("] + t + [")"] for t in _all("or", n - 2)]


def all_bool_expressions(n_tokens: int = 8) -> list[str]:
    """All boolean expressions of exactly `n_tokens` tokens (2122 for 8), in a fixed order."""
    out = []
    for pattern in _all("or", n_tokens):
        slots = pattern.count("B")
        for bits in range(2 ** slots):
            vals = iter(("True", "False")[(bits >> k) & 1] for k in range(slots))
            out.append(" ".join(next(vals) if t == "B" else t for t in pattern))
    return out


def random_bool_expression(rng: random.Random, n_tokens: int = 8) -> str:
    return " ".join(_render_bool(_sample("or", n_tokens, rng)))


# --------------------------------------------------------------------------- arithmetic


ERRORS = (-10, -2, -1, 1, 2, 10)  # what a wrong arithmetic step adds to the right value


def _fmt(tokens: list) -> str:
    return " ".join(str(x) for x in tokens)


def compact(tokens: list) -> str:
    """A trace state without spaces ("-1+2+45"): half the tokens of the question's form."""
    return "".join(str(x) for x in tokens)


def op_text(a: int, op: str, b: int, value: int) -> str:
    """One operation as traces and elementary documents write it: "46-22=24"."""
    return f"{a}{op}{b}={value}"


def apply_op(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def group_steps(tokens: list, error_at: int | None = None, rng: random.Random | None = None,
                operations: list | None = None) -> list[list]:
    """Reduce a flat [n, op, n, op, ...] list one operation at a time (`*` first, then
    left to right, as Python does). Returns the states after each step; appends each
    (a, op, b) applied to `operations` when given."""
    states, i = [], 0
    while len(tokens) > 1:
        ops = tokens[1::2]
        j = 2 * ops.index("*") + 1 if "*" in ops else 1
        if operations is not None:
            operations.append((tokens[j - 1], tokens[j], tokens[j + 1]))
        v = apply_op(tokens[j - 1], tokens[j], tokens[j + 1])
        if i == error_at:
            v += (rng or random.Random(0)).choice(ERRORS)
        tokens = tokens[: j - 1] + [v] + tokens[j + 2:]
        states.append(tokens)
        i += 1
    return states


def parse_arith(text: str) -> tuple[list, str, list]:
    """'((a o b o c o d) o (e ...)) =' -> (left group tokens, outer op, right group tokens)."""
    body = text.removesuffix(" =").strip()
    if not (body.startswith("((") and body.endswith("))") and ") " in body):
        raise ValueError(f"bad arithmetic expression {text!r}")
    left, rest = body[2:].split(") ", 1)
    op, right = rest.split(" (", 1)
    right = right[:-2]

    def toks(s):
        parts = s.split(" ")
        return [int(p) if k % 2 == 0 else p for k, p in enumerate(parts)]

    return toks(left), op, toks(right)


def arith_trace(expr: str, error_at: int | None = None, rng: random.Random | None = None) -> tuple[str, int]:
    """Trace text and its final value; `error_at` puts an off-by-some error in that step
    (counted over the whole trace), and later steps follow the wrong value."""
    left, op, right = parse_arith(expr)
    parts, values, k = [], [], 0
    for group in (left, right):
        e = None if error_at is None else error_at - k
        states = group_steps(group, e, rng)
        k += len(states)
        parts.append("=".join(compact(s) for s in [group] + states) + ".")
        values.append(states[-1][0] if states else group[0])
    v = apply_op(values[0], op, values[1])
    if error_at == k:
        v += (rng or random.Random(0)).choice(ERRORS)
    parts.append(op_text(values[0], op, values[1], v) + ".")
    return " ".join(parts), v


def arith_operations(expr: str) -> list[tuple[int, str, int]]:
    """Every binary operation (a, op, b) that the trace of `expr` performs, in order."""
    left, op, right = parse_arith(expr)
    out: list = []
    values = [(group_steps(g, operations=out) or [g])[-1][0] for g in (left, right)]
    return out + [(values[0], op, values[1])]


def arith_item(expr: str) -> Item:
    trace, v = arith_trace(expr)
    return Item(expr, str(v), trace)


def random_arith_group(rng: random.Random) -> list:
    """One group of the task's expressions: [a, op, b, op, c, op, d], a..d in -9..9."""
    out: list = []
    for k in range(4):
        if k:
            out.append(rng.choice("+-*"))
        out.append(rng.randint(-9, 9))
    return out


def random_arith_expression(rng: random.Random) -> str:
    left = _fmt(random_arith_group(rng))
    op = rng.choice("+-*")
    right = _fmt(random_arith_group(rng))
    return f"(({left}) {op} ({right})) ="


def group_trace(group: list) -> str:
    """A group's part of an arithmetic trace: "-1+2+9*5=-1+2+45=1+45=46."."""
    return "=".join(compact(s) for s in [group] + group_steps(group)) + "."


def random_operation(rng: random.Random) -> tuple[int, str, int]:
    """One operation (a, op, b) as trace steps meet them: a one-digit operand with a one- or
    two-digit one mostly, three digits or two multi-digit operands less often (a product of
    two multi-digit numbers is rare in traces: about 2% of steps)."""
    op = rng.choice("+-*")

    def operand(multi_digit_share: float) -> int:
        digits = 1 if rng.random() >= multi_digit_share else rng.choices((2, 3), (0.9, 0.1))[0]
        return rng.randint(-(10 ** digits - 1), 10 ** digits - 1)

    a, b = operand(0.55), operand(0.5 if op != "*" else 0.1)
    return (a, op, b) if rng.random() < 0.5 else (b, op, a)


# --------------------------------------------------------------------------- splits


def multihop_items(world: W.World, group: str) -> list[Item]:
    return [Item(q, a, t) for q, t, a in W.composed_questions(world, group)]


def multihop_long_items(world: W.World, group: str, seed: int) -> list[Item]:
    from nrt.gym import long_answer

    return [Item(q, a, t, key) for q, t, a, key in long_answer.split_items(world, group, seed)]


def task_items(task: str, seed: int = 0, sizes: dict | None = None, exclude: set[str] = frozenset(),
               pretrain_size: int = 20000, world: W.World | None = None) -> dict[str, list[Item]]:
    """Items of `task` for the splits train / validation / test and the corpus-only pool
    `pretrain`, pairwise disjoint by question, none of them a BBH question or in `exclude`.

    For `multihop` the splits are the composed questions of the world's person groups and
    `sizes` is unused. The boolean task has only 2122 distinct 8-token questions (250 of
    them BBH's), so its pretrain pool is what the splits leave (about 800); corpus.py adds
    expressions of other lengths."""
    if task in WORLD_TASKS:
        world = world or W.make_world(seed)
        make = multihop_items if task == "multihop" else lambda w, g: multihop_long_items(w, g, seed)
        return {g: [i for i in make(world, g) if i.question not in exclude] for g in W.GROUPS}
    if task not in DEFAULT_SIZES:
        raise ValueError(f"unknown task {task!r}; choose from {ALL_TASKS}")
    sizes = {**DEFAULT_SIZES[task], **(sizes or {})}
    rng = random.Random(f"{task}-{seed}")
    seen = set(exclude)
    if task == "boolean_expressions":  # a finite space: shuffle all of it, deal out splits
        pool = [e + " is" for e in all_bool_expressions(8)]
        rng.shuffle(pool)
        pool = [q for q in pool if q not in seen and not is_bbh_question(q)]
        out, start = {}, 0
        for split in SPLITS:
            out[split] = [bool_item(q) for q in pool[start:start + sizes[split]]]
            start += sizes[split]
            if len(out[split]) < sizes[split]:
                raise ValueError(f"{task}: only {len(out[split])} unique questions left for {split}")
        out["pretrain"] = [bool_item(q) for q in pool[start:start + pretrain_size]]
        return out
    out: dict[str, list[Item]] = {}
    for split in SPLITS + ("pretrain",):
        want = pretrain_size if split == "pretrain" else sizes[split]
        items = []
        while len(items) < want:
            it = new_item(task, rng)
            if it.question in seen or is_bbh_question(it.question):
                continue
            seen.add(it.question)
            items.append(it)
        out[split] = items
    return out


def new_item(task: str, rng: random.Random) -> Item:
    """A random item of a BBH-format task (may repeat; task_items dedupes)."""
    if task == "boolean_expressions":
        return bool_item(random_bool_expression(rng))
    if task == "multistep_arithmetic_two":
        return arith_item(random_arith_expression(rng))
    raise ValueError(f"unknown task {task!r}")


def record(item: Item) -> dict:
    """The Q&A record of an item (`nrt train` / `nrt eval` read "key" as the span to match)."""
    return {"question": item.question, "answer": item.answer, **({"key": item.key} if item.key else {})}


def write_splits(output_dir: str, items: dict) -> dict[str, dict[str, int]]:
    """DIR/<task>/<split>.jsonl for the train/validation/test splits, each file written whole
    (a temporary file renamed), with a "key" field for items that have one; returns the counts."""
    from nrt.training.run_record import atomic_write_text

    counts = {}
    for task, splits in items.items():
        folder = Path(output_dir) / task
        folder.mkdir(parents=True, exist_ok=True)
        counts[task] = {}
        for split in SPLITS:
            atomic_write_text(folder / f"{split}.jsonl", "".join(
                json.dumps(record(it)) + "\n" for it in splits[split]))
            counts[task][split] = len(splits[split])
    return counts
