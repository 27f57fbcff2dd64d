"""Pretrain a tiny Llama from scratch: on the gym corpus, or on a user's own corpus.

`pretrain(PretrainConfig(...))` builds a tokenizer (tokenizer.py) and a
`LlamaForCausalLM` (tied embeddings, a few million parameters), trains it with next-token
loss over whole documents, and saves a Hugging Face directory (config, safetensors,
tokenizer, generation config) plus `gym.json` (the config, corpus statistics, wall time,
the loss curve) that `AutoModelForCausalLM` / `AutoTokenizer` load back.

Design:
- Documents never share a sequence: each is one row of a right-padded batch, so the
  model always sees a question at position 0, exactly as the trainer prompts it. Rows are
  bucketed by length under a token budget per batch (`batch_tokens`), which keeps padding
  small while short fact documents and long arithmetic traces mix.
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
    steps: int = 3000
    batch_tokens: int = 8192  # padded tokens per batch (rows x longest row)
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    max_length: int = 512  # longer documents are cut into pieces
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


def gym_documents(cfg: PretrainConfig, sample_tokens) -> list[str]:
    """Enough gym documents for `steps` batches: the mean tokens per document is measured
    on a sample (after the tokenizer is trained) and padding is allowed for."""
    corpus = C.Corpus(C.CorpusConfig(seed=cfg.seed, tasks=tuple(cfg.tasks), **cfg.corpus_options))
    docs = corpus.documents(20000)
    tok = sample_tokens(docs)
    mean = sum(len(x) for x in tok(docs[:4000], add_special_tokens=False)["input_ids"]) / 4000
    need = int(cfg.steps * cfg.batch_tokens / mean * 0.97) + 1
    return docs + corpus.documents(max(0, need - len(docs))), tok


def make_batches(ids: list[list[int]], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices of documents per batch: shuffle, sort chunks by length, cut under the budget."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    batches, chunk = [], 8192
    for s in range(0, len(order), chunk):
        part = sorted(order[s:s + chunk], key=lambda i: len(ids[i]))
        cur, longest = [], 0
        for i in part:
            longest2 = max(longest, len(ids[i]))
            if cur and longest2 * (len(cur) + 1) > batch_tokens:
                batches.append(cur)
                cur, longest2 = [], len(ids[i])
            cur.append(i)
            longest = longest2
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(rows: list[list[int]], pad_id: int):
    n = max(len(r) for r in rows)
    x = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for k, r in enumerate(rows):
        x[k, : len(r)] = torch.tensor(r)
        mask[k, : len(r)] = 1
    labels = x.masked_fill(mask == 0, -100)
    return x, mask, labels


def build_model(cfg: PretrainConfig, tok) -> LlamaForCausalLM:
    eos = tok.convert_tokens_to_ids(EOS)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_length,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos, pad_token_id=eos,
    )
    return LlamaForCausalLM(config)


def pretrain(cfg: PretrainConfig, log=print) -> Path:
    """Train tokenizer + model as configured and save them to `cfg.output_dir`."""
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(f"pretrain-{cfg.seed}")

    def fit_tokenizer(docs):
        return train_tokenizer(docs[:50000], vocab_size=cfg.vocab_size)

    if cfg.corpus:
        docs = load_text_corpus(cfg.corpus)
        tok = fit_tokenizer(docs)
    else:
        docs, tok = gym_documents(cfg, fit_tokenizer)
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

    batches, curve, seen_tokens = [], [], 0
    model.train()
    t_train = time.time()
    for step in range(cfg.steps):
        if not batches:
            batches = make_batches(ids, cfg.batch_tokens, rng)
        x, mask, labels = collate([ids[i] for i in batches.pop()], pad)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen_tokens += int(mask.sum())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            el = time.time() - t_train
            curve.append({"step": step + 1, "loss": round(loss.item(), 4), "elapsed_s": round(el, 1)})
            log(f"step {step + 1}/{cfg.steps} loss {loss.item():.4f} lr {lr_at(step):.2e} "
                f"{seen_tokens / el:.0f} tok/s {el:.0f}s")

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                               bos_token_id=None, do_sample=False)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"config": asdict(cfg), "documents": len(docs), "tokens_seen": seen_tokens,
            "parameters": n_params, "vocab_size": len(tok), "wall_s": round(time.time() - t0, 1),
            "response_start_id": tok.convert_tokens_to_ids(RESPONSE_START), "loss_curve": curve}
    (out / "gym.json").write_text(json.dumps(info, indent=1))
    log(f"saved {out} ({info['wall_s']}s)")
    return out
