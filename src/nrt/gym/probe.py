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

from nrt.data import answer_correct
from nrt.gym import tasks as T
from nrt.gym import world as W
from nrt.gym.tokenizer import RESPONSE_START


def prompt_ids(tok, question: str) -> list[int]:
    return tok(question + "\n", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate_rows(model, tok, prompts: list[list[int]], mode: str, max_new_tokens: int,
                  batch_size: int = 64, sample: bool = False) -> list[list[int]]:
    """Generated ids per prompt (eos and what follows cut). mode "think" forbids
    `<|response_start|>` and eos as the first token; sampling is plain temperature 1."""
    rs, eos = tok.convert_tokens_to_ids(RESPONSE_START), tok.eos_token_id
    kw = {"do_sample": False}
    if mode == "think":
        kw["begin_suppress_tokens"] = [rs, eos]
    if sample:  # as NRT's rollouts (generate's own default would be top_k=50)
        kw.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    out = []
    for s in range(0, len(prompts), batch_size):
        batch = prompts[s:s + batch_size]
        n = max(map(len, batch))
        ids = torch.tensor([[eos] * (n - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in batch])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             eos_token_id=eos, pad_token_id=eos, **kw)[:, n:].tolist()
        out += [row[: row.index(eos)] if eos in row else row for row in gen]
    return out


def decode(model, tok, questions: list[str], mode: str, max_new_tokens: int = 160,
           sample: bool = False) -> list[tuple[str, str | None]]:
    """(trace, answer) per question, greedy unless `sample`; mode "direct" appends
    `<|response_start|>` to the prompt. answer is None when no `<|response_start|>` came."""
    rs = tok.convert_tokens_to_ids(RESPONSE_START)
    prompts = [prompt_ids(tok, q) + ([rs] if mode == "direct" else []) for q in questions]
    out = []
    for row in generate_rows(model, tok, prompts, mode, max_new_tokens, sample=sample):
        if mode == "direct":
            out.append(("", tok.decode(row)))
        elif rs in row:
            out.append((tok.decode(row[: row.index(rs)]), tok.decode(row[row.index(rs) + 1:])))
        else:
            out.append((tok.decode(row), None))
    return out


@torch.no_grad()
def answer_logprob(model, tok, prefixes: list[list[int]], answers: list[str], batch_size: int = 64) -> torch.Tensor:
    """log p(answer + eos | prefix + <|response_start|>) per pair, in nats; the answer is
    tokenized on its own and spliced in at the token level, as the trainer does."""
    rs, eos = tok.convert_tokens_to_ids(RESPONSE_START), tok.eos_token_id
    res = []
    for s in range(0, len(prefixes), batch_size):
        rows, spans = [], []
        for p, a in zip(prefixes[s:s + batch_size], answers[s:s + batch_size]):
            a_ids = tok(a, add_special_tokens=False)["input_ids"] + [eos]
            rows.append(p + [rs] + a_ids)
            spans.append((len(p) + 1, len(a_ids)))
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
    """Mean probability that a temperature-1 sample starts with a trace token."""
    rs = tok.convert_tokens_to_ids(RESPONSE_START)
    shares = []
    for q in questions:
        logits = model(input_ids=torch.tensor([prompt_ids(tok, q)])).logits[0, -1].float()
        shares.append(1 - logits.softmax(-1)[rs].item())
    return sum(shares) / len(shares)


def reasoning_gain(model, tok, items: list[T.Item], k: int = 4, max_new_tokens: int = 160) -> float:
    """Mean log p(ref | q, sampled trace) - log p(ref | q, no trace) over K free samples per
    question (a sample that answers at once has gain 0); the trace ids are kept as sampled."""
    return reasoning_gains(model, tok, items, k, max_new_tokens).mean().item()


def reasoning_gains(model, tok, items: list[T.Item], k: int = 4, max_new_tokens: int = 160,
                    seed: int = 0) -> torch.Tensor:
    """The per-sample gains [len(items) * K] behind `reasoning_gain`, measured as `nrt eval` and the
    trainer do (`nrt.evaluation.evaluate.answer_logprobs`)."""
    from nrt.evaluation.evaluate import answer_logprobs
    from nrt.engine.sampling import question_seed
    from nrt.tokens import pad_token_id

    rs, eos = tok.convert_tokens_to_ids(RESPONSE_START), tok.eos_token_id
    prompts = [prompt_ids(tok, i.question) for i in items]
    answers = [tok(i.answer, add_special_tokens=False)["input_ids"] + [eos] for i in items]
    with_trace, direct = [], []
    for s in range(0, len(items), 64):
        w, d = answer_logprobs(model, prompts[s:s + 64], answers[s:s + 64], num_generations=k,
                               max_trace_tokens=max_new_tokens,
                               seeds=[question_seed(seed, s + j) for j in range(len(prompts[s:s + 64]))],
                               response_start_id=rs, eos_id=eos, pad_id=pad_token_id(tok))
        with_trace.append(w.cpu())
        direct.append(d.cpu())
    return torch.cat(with_trace) - torch.cat(direct).repeat_interleave(k)


def probe_items(model, tok, items: list[T.Item], world: W.World | None = None,
                max_new_tokens: int = 160, gain_questions: int = 32) -> dict:
    qs = [i.question for i in items]
    res = {"n": len(items)}
    for mode in ("direct", "think", "free"):
        got = decode(model, tok, qs, mode, max_new_tokens)
        res[f"{mode}_acc"] = sum(a is not None and answer_correct(a, i.answer, (i.key,) if i.key else ())
                                 for (_, a), i in zip(got, items)) / len(items)
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


def gym_corpus_of(model_dir: str):
    """The gym Corpus (world, splits) a model was pretrained with, from its gym.json."""
    from nrt.gym.corpus import Corpus, CorpusConfig

    path = Path(model_dir) / "gym.json"
    if not path.exists():
        raise ValueError(f"{model_dir}: no gym.json; not a model written by `nrt gym pretrain`")
    info = json.loads(path.read_text())
    if info["config"].get("corpus"):
        raise ValueError(f"{model_dir} was pretrained on a user corpus, not the gym's")
    fields = dict(info["corpus_config"])
    fields["tasks"], fields["groups"] = tuple(fields["tasks"]), tuple(fields["groups"])
    return Corpus(CorpusConfig(**fields))


def bbh_items(bbh_dir: str, task: str) -> list[T.Item]:
    """The BIG-Bench-Hard items of a gym task, for evaluation only (never for choices)."""
    examples = json.loads((Path(bbh_dir) / f"{task}.json").read_text())["examples"]
    return [T.Item(e["input"], e["target"], "") for e in examples]


def probe(model_dir: str, tasks=T.TASKS, splits=("validation",), limit: int = 200,
          gain_questions: int = 32, bbh_dir: str | None = None) -> dict:
    """Probe a saved gym model on the named splits, and on the corpus-only pool for contrast
    (those questions were seen in pretraining); with `bbh_dir`, on the BBH files too."""
    from nrt.model_loading import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=torch.float32).eval()
    corpus = gym_corpus_of(model_dir)
    report = {}
    for task in [t for t in tasks if t in corpus.items]:
        world = corpus.world if task == "multihop" else None
        rep = {}
        for split in tuple(splits) + ("pretrain",):
            sub = random.Random(0).sample(corpus.items[task][split], min(limit, len(corpus.items[task][split])))
            rep[split] = probe_items(model, tok, sub, world, 48 if world else 200, gain_questions)
        if world is not None:
            rep["one_hop_direct_acc"] = round(one_hop_accuracy(model, tok, world), 4)
        elif bbh_dir:
            rep["bbh"] = probe_items(model, tok, bbh_items(bbh_dir, task), None, 200, gain_questions)
        report[task] = rep
    return report
