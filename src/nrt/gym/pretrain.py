"""Pretrain a tiny Llama from scratch: on the gym corpus, or on a user's own corpus.

`pretrain(PretrainConfig(...))` builds a tokenizer (tokenizer.py) and a
`LlamaForCausalLM` (tied embeddings, a few million parameters), trains it with next-token
loss over whole documents, and saves a Hugging Face directory (config, safetensors,
tokenizer, generation config) plus `gym.json` (the config, corpus statistics, wall time,
the loss curve) that `AutoModelForCausalLM` / `AutoTokenizer` load back.

Design:
- Documents are packed into rows of `max_length` tokens, but never see each other:
  position ids restart at 0 for each document, and transformers then masks attention
  block-diagonally. So every document is computed exactly as if alone (a question at
  position 0, as the trainer prompts it), without the cost of hundreds of tiny padded
  rows (on CPU, 640 rows of 12 tokens train ~2x slower than the same tokens packed).
- Loss on every real token (eos included, padding excluded): the model learns when to
  think (the token after the question's "\\n") as well as the skills.
- bf16 autocast on CPU (about 4x faster matmuls than fp32 on the target 2 cores),
  fp32 master weights; AdamW with linear warmup and cosine decay to 10%.
- Deterministic: the corpus, the batch order and the weights follow `seed`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from nrt.gym import corpus as C
from nrt.gym import tasks as T
from nrt.gym.tokenizer import EOS, RESPONSE_START, train_tokenizer


@dataclass
class PretrainConfig:
    output_dir: str = "artifacts/gym/base"
    corpus: str | None = None  # a user's corpus (.txt: one document per line; .jsonl: "text")
    seed: int = 0
    steps: int = 1100
    batch_tokens: int = 8192  # tokens per batch (batch_tokens // max_length packed rows)
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    max_length: int = 256  # tokens per packed row; longer documents are cut into pieces
    # model
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    vocab_size: int = 1024
    # gym corpus (ignored with `corpus`)
    tasks: tuple[str, ...] = T.TASKS
    corpus_options: dict = field(default_factory=dict)  # CorpusConfig fields
    log_every: int = 100
    threads: int | None = None


def load_text_corpus(path: str) -> list[str]:
    """Documents of a user's corpus: one per line; .jsonl lines are objects with "text"."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    docs = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ValueError(f"{path}:{n}: expected an object with a string field 'text'")
            line = rec["text"]
        docs.append(line if line.endswith(EOS) else line + EOS)
    if not docs:
        raise ValueError(f"{path}: no documents")
    return docs


def gym_documents(cfg: PretrainConfig, sample_tokens):
    """(documents, tokenizer, corpus): enough gym documents for `steps` batches; the
    tokenizer is trained on a first sample, which also measures the tokens per document."""
    corpus = C.Corpus(C.CorpusConfig(seed=cfg.seed, tasks=tuple(cfg.tasks), **cfg.corpus_options))
    docs = corpus.documents(min(20000, max(2000, cfg.steps * cfg.batch_tokens // 20)))
    tok = sample_tokens(docs)
    sample = docs[:4000]
    mean = sum(len(x) for x in tok(sample, add_special_tokens=False)["input_ids"]) / len(sample)
    need = int(cfg.steps * cfg.batch_tokens / mean * 0.97) + 1
    return docs + corpus.documents(max(0, need - len(docs))), tok, corpus


def pack_rows(ids: list[list[int]], row_length: int, rng: random.Random, open_rows: int = 8) -> list[list[list[int]]]:
    """Shuffle documents and pack them into rows of at most `row_length` tokens
    (first fit over a few open rows, so little is left as padding)."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    rows, current = [], []  # current: [free, docs]
    for i in order:
        doc = ids[i]
        for slot in current:
            if len(doc) <= slot[0]:
                slot[0] -= len(doc)
                slot[1].append(doc)
                break
        else:
            if len(current) == open_rows:
                current.sort(key=lambda r: r[0])
                rows.append(current.pop(0)[1])
            current.append([row_length - len(doc), [doc]])
    rows += [r[1] for r in current]
    rng.shuffle(rows)
    return rows


def collate(rows: list[list[list[int]]], pad_id: int):
    """[B, T] input ids, position ids that restart at 0 for every document (transformers
    then masks attention block-diagonally: documents never see each other, exactly as if
    each were alone), and labels with padding and each document's first token ignored
    (nothing before a document predicts it)."""
    n = max(sum(map(len, r)) for r in rows)
    x = torch.full((len(rows), n), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), n), dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for k, docs in enumerate(rows):
        at = 0
        for d in docs:
            x[k, at:at + len(d)] = torch.tensor(d)
            pos[k, at:at + len(d)] = torch.arange(len(d))
            labels[k, at + 1:at + len(d)] = x[k, at + 1:at + len(d)]
            at += len(d)
        pos[k, at:] = torch.arange(n - at)  # padding: one more "document", unlabelled
    return x, pos, labels


def build_model(cfg: PretrainConfig, tok) -> LlamaForCausalLM:
    eos = tok.convert_tokens_to_ids(EOS)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_length,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos, pad_token_id=eos,
    )
    return LlamaForCausalLM(config)


def pretrain(cfg: PretrainConfig, log=print, overwrite: bool = False) -> Path:
    """Train tokenizer + model as configured and save them to `cfg.output_dir`: written whole, once
    trained; the directory must be absent, empty or an earlier gym model (replaced if `overwrite`)."""
    from nrt.outputs import check_output_dir, written_whole

    check_output_dir(cfg.output_dir, "gym model", inputs=[cfg.corpus], overwrite=overwrite)
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(f"pretrain-{cfg.seed}")

    def fit_tokenizer(docs):
        return train_tokenizer(docs[:50000], vocab_size=cfg.vocab_size)

    corpus = None
    if cfg.corpus:
        docs = load_text_corpus(cfg.corpus)
        tok = fit_tokenizer(docs)
    else:
        docs, tok, corpus = gym_documents(cfg, fit_tokenizer)
    ids = []
    for row in tok(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(row[s:s + cfg.max_length] for s in range(0, len(row), cfg.max_length))
    pad = tok.pad_token_id
    model = build_model(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{len(docs)} documents, {sum(map(len, ids))} tokens, vocab {len(tok)}, {n_params / 1e6:.2f}M parameters")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    rows_per_batch = max(1, cfg.batch_tokens // cfg.max_length)
    rows, curve, seen_tokens = [], [], 0
    model.train()
    t_train, cpu0 = time.time(), time.process_time()
    for step in range(cfg.steps):
        if len(rows) < rows_per_batch:
            rows += pack_rows(ids, cfg.max_length, rng)
        batch, rows = rows[:rows_per_batch], rows[rows_per_batch:]
        x, pos, labels = collate(batch, pad)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, position_ids=pos, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen_tokens += int((labels != -100).sum())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el, cpu = time.time() - t_train, time.process_time() - cpu0
            curve.append({"step": step + 1, "loss": round(loss.item(), 4), "elapsed_s": round(el, 1)})
            log(f"step {step + 1}/{cfg.steps} loss {loss.item():.4f} lr {lr_at(step):.2e} "
                f"{seen_tokens / el:.0f} tok/s {el:.0f}s (cpu {cpu:.0f}s)")

    out = Path(cfg.output_dir)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                               bos_token_id=None, do_sample=False)
    info = {"config": asdict(cfg), "corpus_config": asdict(corpus.cfg) if corpus else None, "documents": len(docs),
            "tokens_seen": seen_tokens,
            "parameters": n_params, "vocab_size": len(tok), "wall_s": round(time.time() - t0, 1),
            "response_start_id": tok.convert_tokens_to_ids(RESPONSE_START), "loss_curve": curve}
    if corpus is not None:
        info["reasoning_gain_train"] = train_reasoning_gain(model, tok, corpus.items, cfg.seed, log)
    with written_whole(out, "gym model") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "gym.json").write_text(json.dumps(info, indent=1))
    log(f"saved {out} ({info['wall_s']}s)")
    return out


GAIN_TRACES = 4  # sampled traces per question for the premise check
ANSWER_TOKENS = {"multihop_long": 64}  # the longest greedy answer the premise check decodes (else 16)
# the longest trace a task needs; arithmetic (not listed): 96
TRACE_TOKENS = {"multihop": 48, "multihop_long": 48, "boolean_expressions": 48}


def train_reasoning_gain(model, tok, items: dict, seed: int, log=print, questions: int = 512) -> dict:
    """NRT's premise, checked before any RL run, per task of `items` (a Corpus's task -> split ->
    items) on the task's *training* questions (at most `questions`): greedy accuracy answering
    directly, after a forced trace and when free to choose, and the reasoning gain (answer
    log-likelihood after a sampled trace minus without one, nats, GAIN_TRACES traces per question),
    each with its standard error over questions (`nrt.evaluation.probe`, the probe of `nrt probe`).
    The per-trace gains are heavy-tailed (a wrong trace costs many nats), so a few dozen questions
    do not fix the sign. A negative gain predicted collapse where right traces were rare (GYM_NOTES
    3); models/gym-bbh has a negative mean gain on two tasks with forced-think accuracy far above
    direct, and NRT learnt to think there (docs/RESULTS.md): the mean is carried by the wrong
    traces, while the trainer ranks a question's samples against each other. Under two standard
    errors from 0 the verdict is "inconclusive"."""
    from nrt.data import QARecord, tokenize_records
    from nrt.evaluation.probe import ProbeConfig, probe

    model.eval()
    rs = tok.convert_tokens_to_ids(RESPONSE_START)
    report = {}
    for task in items:
        train = items[task]["train"]
        sample = random.Random(seed).sample(train, min(questions, len(train)))
        records = [QARecord(i.question, i.answer, f"{task} train", (i.key,) if i.key else ()) for i in sample]
        examples, _ = tokenize_records(records, tok, "{question}\n", max_prompt_length=256, max_answer_length=80)
        cfg = ProbeConfig(samples=GAIN_TRACES, max_trace_tokens=TRACE_TOKENS.get(task, 96),
                          max_answer_tokens=ANSWER_TOKENS.get(task, 16),
                          batch_size=64, seed=seed)
        s, _ = probe(model, tok, examples, [i.answer for i in sample], cfg, rs)
        mean, stderr = s["reasoning_gain"], s["reasoning_gain_se"]
        report[task] = {"mean": round(mean, 4), "stderr": round(stderr, 4), "questions": len(sample),
                        "traces_per_question": GAIN_TRACES,
                        **{k: round(s[k], 4) for k in ("direct_accuracy", "think_accuracy", "free_accuracy",
                                                        "free_think_share")}}
        if mean > 2 * stderr:
            verdict = "positive: the premise holds"
        elif mean < -2 * stderr:
            verdict = ("NEGATIVE: on average a sampled trace lowers the answer's likelihood; NRT may learn to "
                       "stop thinking here unless right traces are common (compare forced-think and direct)")
        else:
            verdict = "inconclusive: within two standard errors of 0"
        log(f"{task} training questions: direct {s['direct_accuracy']:.1%}, forced think {s['think_accuracy']:.1%}, "
            f"free {s['free_accuracy']:.1%} (thinks {s['free_think_share']:.0%}); reasoning gain {mean:+.3f} ± "
            f"{stderr:.3f} nats ({len(sample)} questions x {GAIN_TRACES} traces; {verdict})")
    return report


BASE_PRETRAIN = {"tasks": ("multihop",), "steps": 600}  # models/gym-base: the multi-hop world only
BBH_BASE_PRETRAIN = {"tasks": T.TASKS, "steps": 2300}  # models/gym-bbh, the demo's base: all three tasks
LONG_BASE_PRETRAIN = {"tasks": ("multihop", "multihop_long"), "steps": 1200}  # models/gym-long: long answers
SECONDS_PER_STEP = 0.65  # measured on 2 CPU cores with nothing else running (8192 tokens per step)


def ensure_base(base: Path, log=print, **pretrain_options) -> Path:
    """`base` when it holds a model, else pretrain one there (BASE_PRETRAIN unless options are given)."""
    if (base / "model.safetensors").is_file():
        return base
    options = pretrain_options or BASE_PRETRAIN
    log(f"no base model in {base}: pretraining it once ({options['steps']} steps, about "
        f"{options['steps'] * SECONDS_PER_STEP / 60:.0f} minutes on 2 CPU cores)")
    pretrain(PretrainConfig(output_dir=str(base), **options))
    return base


def pretrain_command(options: dict = BASE_PRETRAIN) -> str:
    return f"nrt gym pretrain --tasks {','.join(options['tasks'])} --steps {options['steps']}"
