"""Quick diagnostics of a gym base model: do NRT's premises hold? (GYM_NOTES 1-4)

For questions of a split, three greedy decodings from the trainer's prompt "{question}\\n":
- direct: `<|response_start|>` appended to the prompt, so the answer comes at once;
- think (forced): `<|response_start|>` (and eos) forbidden as the first generated token,
  so the model writes a trace, then its answer;
- free: the model chooses (greedy), and `think_share_t1`: the probability, at
  temperature 1, that the first sampled token starts a trace (1 - p(<|response_start|>)),
  which is the share of NRT's first rollouts that think.
Plus `reasoning_gain`: mean over questions and K traces sampled at temperature 1 of
log p(answer + eos | question, trace) - log p(answer + eos | question, no trace), in nats
(NRT needs it positive at the start, GYM_NOTES 3), and for multihop the share of forced
traces whose first / both facts are right, and one-hop direct accuracy over everyone.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from nrt.gym import tasks as T
from nrt.gym import world as W
from nrt.gym.tokenizer import RESPONSE_START


@torch.no_grad()
def decode(model, tok, questions: list[str], mode: str, max_new_tokens: int = 160,
           batch_size: int = 64, sample: bool = False) -> list[tuple[str, str | None]]:
    """(trace, answer) per question; answer None when no `<|response_start|>` was written."""
    rs, eos = tok.convert_tokens_to_ids(RESPONSE_START), tok.eos_token_id
    out = []
    for s in range(0, len(questions), batch_size):
        prompts = [tok(q + "\n", add_special_tokens=False)["input_ids"] for q in questions[s:s + batch_size]]
        if mode == "direct":
            prompts = [p + [rs] for p in prompts]
        n = max(map(len, prompts))
        ids = torch.tensor([[eos] * (n - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts])
        kw = dict(begin_suppress_tokens=[rs, eos]) if mode == "think" else {}
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=sample, temperature=1.0 if sample else None, top_p=None, top_k=None,
                             eos_token_id=eos, pad_token_id=eos, **kw)[:, n:].tolist()
        for row in gen:
            row = row[: row.index(eos)] if eos in row else row
            if mode == "direct":
                out.append(("", tok.decode(row)))
            elif rs in row:
                k = row.index(rs)
                out.append((tok.decode(row[:k]), tok.decode(row[k + 1:])))
            else:
                out.append((tok.decode(row), None))
    return out


@torch.no_grad()
def answer_logprob(model, tok, prompts: list[str], answers: list[str], batch_size: int = 64) -> torch.Tensor:
    """log p(answer + eos | prompt + <|response_start|>) per pair, answers tokenized alone."""
    rs, eos = tok.convert_tokens_to_ids(RESPONSE_START), tok.eos_token_id
    res = []
    for s in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for p, a in zip(prompts[s:s + batch_size], answers[s:s + batch_size]):
            p_ids = tok(p, add_special_tokens=False)["input_ids"] + [rs]
            a_ids = tok(a, add_special_tokens=False)["input_ids"] + [eos]
            rows.append(p_ids + a_ids)
            spans.append((len(p_ids), len(a_ids)))
        n = max(map(len, rows))
        ids = torch.tensor([r + [eos] * (n - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for k, (start, length) in enumerate(spans):
            pos = torch.arange(start - 1, start - 1 + length)
            res.append(logp[k, pos, ids[k, pos + 1]].sum().item())
    return torch.tensor(res)


@torch.no_grad()
def think_share_t1(model, tok, questions: list[str]) -> float:
    rs = tok.convert_tokens_to_ids(RESPONSE_START)
    p = [tok(q + "\n", add_special_tokens=False)["input_ids"] for q in questions]
    shares = []
    for ids in p:
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        shares.append(1 - logits.softmax(-1)[rs].item())
    return sum(shares) / len(shares)


def reasoning_gain(model, tok, items: list[T.Item], k: int = 4, max_new_tokens: int = 160) -> float:
    qs = [i.question for i in items for _ in range(k)]
    traces = [t for t, _ in decode(model, tok, qs, "free", max_new_tokens, sample=True)]
    refs = [i.answer for i in items for _ in range(k)]
    with_trace = answer_logprob(model, tok, [q + "\n" + t for q, t in zip(qs, traces)], refs)
    direct = answer_logprob(model, tok, [i.question + "\n" for i in items], [i.answer for i in items])
    return (with_trace - direct.repeat_interleave(k)).mean().item()


def probe_items(model, tok, items: list[T.Item], world: W.World | None = None,
                max_new_tokens: int = 160, gain_questions: int = 32) -> dict:
    qs = [i.question for i in items]
    res = {"n": len(items)}
    for mode in ("direct", "think", "free"):
        got = decode(model, tok, qs, mode, max_new_tokens)
        res[f"{mode}_acc"] = sum(a == i.answer for (_, a), i in zip(got, items)) / len(items)
        if mode == "free":
            res["free_think_share_greedy"] = sum(bool(t) for t, _ in got) / len(items)
        if mode == "think" and world is not None:
            first = [i.trace.split(". ")[0] + "." for i in items]
            res["think_first_fact_ok"] = sum(t.startswith(f) for (t, _), f in zip(got, first)) / len(items)
            res["think_trace_ok"] = sum(t == i.trace for (t, _), i in zip(got, items)) / len(items)
            res["think_answer_follows_trace"] = sum(
                a is not None and t.rstrip(".").endswith(" " + a) for t, a in got) / len(items)
    res["think_share_t1"] = think_share_t1(model, tok, qs)
    if gain_questions:
        sub = random.Random(0).sample(items, min(gain_questions, len(items)))
        res["reasoning_gain"] = reasoning_gain(model, tok, sub, max_new_tokens=max_new_tokens)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}


def one_hop_accuracy(model, tok, world: W.World) -> float:
    triples = [W.one_hop(world, r, p) for p in world.people for r in W.RELATIONS]
    got = decode(model, tok, [q for q, _, _ in triples], "direct", 16)
    return sum(a == ans for (_, a), (_, _, ans) in zip(got, triples)) / len(triples)


def probe(model_dir: str, tasks=T.TASKS, splits=("validation",), seed: int = 0,
          limit: int = 200, gain_questions: int = 32) -> dict:
    """Probe a saved gym model on the named splits (plus the corpus-only pool, for contrast)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    info_path = Path(model_dir) / "gym.json"
    if info_path.exists():
        cfg = json.loads(info_path.read_text())["config"]
        seed = cfg.get("seed", seed)
        tasks = [t for t in tasks if t in cfg.get("tasks", tasks)]
    report = {}
    for task in tasks:
        world = W.make_world(seed) if task == "multihop" else None
        items = T.task_items(task, seed, world=world, pretrain_size=limit)
        max_new = 48 if task == "multihop" else 200
        rep = {}
        for split in tuple(splits) + ("pretrain",):
            sub = items[split][:limit]
            rep[split] = probe_items(model, tok, sub, world, max_new, gain_questions)
        if world is not None:
            rep["one_hop_direct_acc"] = round(one_hop_accuracy(model, tok, world), 4)
        report[task] = rep
    return report
