"""`nrt eval`: think-then-answer accuracy and answer likelihood with and without a trace.

For each question:
- greedy think-then-answer: the model writes a trace (or none: it may emit
  `<|response_start|>` at once), then an answer; exact match against the reference after
  normalising whitespace and case, or, for a record with key spans (its "key" field: long
  answers), whether every key span occurs in the answer (`nrt.data.answer_correct`);
  `exact_match` is the whole-answer match either way;
- answer log-likelihood after one sampled trace (temperature 1) and without a trace, and
  their difference, the reasoning gain (nats, summed over answer tokens, eos included).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nrt.data import TokenizedExample, answer_correct, normalize_answer  # noqa: F401 (normalize_answer: re-export)
from nrt.engine.generation import think_then_answer
from nrt.engine.options import EngineOptions
from nrt.engine.rollouts import build_rollout, no_trace_batch
from nrt.engine.sampling import question_seed, sample_traces
from nrt.engine.sequences import completion_logprobs, gather_columns
from nrt.evaluation.one_pass import autocast_bf16, one_pass_batch
from nrt.tokens import pad_token_id


def default_shared_data(name: str, env: str) -> Path:
    """An evaluation set's directory: $env, else ../shared/data/<name> beside the working dir or the repo."""
    if os.environ.get(env):
        return Path(os.environ[env])
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base.parent / "shared" / "data" / name
        if candidate.is_dir():
            return candidate
    return Path("../shared/data") / name


def default_bbh_dir() -> Path:
    """BIG-Bench-Hard files: $NRT_BBH_DIR, else ../shared/data/bbh beside the working dir or the repo."""
    return default_shared_data("bbh", "NRT_BBH_DIR")


@dataclass
class EvalConfig:
    max_trace_tokens: int = 128
    max_answer_tokens: int = 32
    batch_size: int = 32
    seed: int = 0
    force_trace: bool = False  # forbid an immediate <|response_start|> (measures the forced-think ceiling)
    bf16: bool = False  # bfloat16 autocast (nrt.evaluation.one_pass.autocast_bf16)
    # the three measurements in one decoding pass (nrt.evaluation.one_pass: equal in float32 up to rounding,
    # several times faster); `nrt eval` uses it. Off here: validation during training and `nrt compare` keep
    # the three-pass path that docs/RESULTS.md and docs/METHODS.md were measured with.
    one_pass: bool = False


@torch.no_grad()
def answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], *, num_generations: int,
                    max_trace_tokens: int, seeds: list[int], response_start_id: int, eos_id: int, pad_id: int,
                    engine: EngineOptions = EngineOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """The two terms of the reasoning gain, in nats, summed over answer tokens (eos included):

        log p(answer | prompt, sampled trace)   [Q*K]  K traces per prompt (temperature 1, group-major)
        log p(answer | prompt, no trace)        [Q]

    The reasoning gain of a trace is the first minus its question's second. Sampling, splicing
    and scoring are the trainer's own (`sample_traces`, `build_rollout`, `completion_logprobs`).
    """
    traces = sample_traces(model, prompts, num_generations=num_generations, max_new_tokens=max_trace_tokens,
                           stop_token_ids=[response_start_id, eos_id], pad_token_id=pad_id, seeds=seeds,
                           engine=engine)
    device = next(model.parameters()).device
    rollout = build_rollout(prompts, answers, traces, num_generations=num_generations,
                            response_start_id=response_start_id, eos_id=eos_id, pad_id=pad_id, device=device)
    lp, _ = completion_logprobs(model, rollout.batch, engine=engine)
    with_trace = rollout.answer_columns(lp)[0].sum(-1)
    base_batch, start, length = no_trace_batch(prompts, answers, response_start_id, pad_id, device)
    base_lp, _ = completion_logprobs(model, base_batch, engine=engine)
    return with_trace, gather_columns(base_lp, start, length)[0].sum(-1)


@torch.no_grad()
def evaluate(model, tokenizer, examples: list[TokenizedExample], references: list[str], cfg: EvalConfig,
             response_start_id: int) -> tuple[dict, list[dict]]:
    """Returns (summary metrics, one row per question)."""
    eos, pad = tokenizer.eos_token_id, pad_token_id(tokenizer)
    rows = []
    with autocast_bf16(model, cfg.bf16):
        for first in range(0, len(examples), cfg.batch_size):
            rows += _evaluate_batch(model, tokenizer, examples, references, cfg, response_start_id, first, eos, pad)
    n = len(rows)

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / n

    summary = {
        "n": n,
        "accuracy": mean("correct"),
        "exact_match": mean("exact_match"),
        "think_share": mean("thought"),
        "trace_length_mean": mean("trace_length"),
        "answer_logprob": mean("answer_logprob"),
        "answer_logprob_no_trace": mean("answer_logprob_no_trace"),
    }
    summary["reasoning_gain"] = summary["answer_logprob"] - summary["answer_logprob_no_trace"]
    return summary, rows


def _evaluate_batch(model, tokenizer, examples, references, cfg: EvalConfig, response_start_id: int, first: int,
                    eos: int, pad: int) -> list[dict]:
    batch = examples[first : first + cfg.batch_size]
    prompts = [ex.prompt_ids for ex in batch]
    answers = [ex.answer_ids for ex in batch]
    seeds = [question_seed(cfg.seed, first + i) for i in range(len(batch))]
    if cfg.one_pass:
        greedy, with_trace, without = one_pass_batch(
            model, prompts, answers, seeds, max_trace_tokens=cfg.max_trace_tokens,
            max_answer_tokens=cfg.max_answer_tokens, force_trace=cfg.force_trace, response_start_id=response_start_id,
            eos_id=eos, pad_id=pad)
    else:
        greedy = think_then_answer(
            model, prompts, response_start_id=response_start_id, eos_id=eos, pad_id=pad,
            max_trace_tokens=cfg.max_trace_tokens, max_answer_tokens=cfg.max_answer_tokens,
            temperature=0.0, force_trace=cfg.force_trace,
        )
        with_trace, without = answer_logprobs(
            model, prompts, answers, num_generations=1, max_trace_tokens=cfg.max_trace_tokens, seeds=seeds,
            response_start_id=response_start_id, eos_id=eos, pad_id=pad,
        )
    rows = []
    for i, (ex, g) in enumerate(zip(batch, greedy)):
        prediction = tokenizer.decode(g.answer_ids, skip_special_tokens=True)
        reference = references[first + i]
        rows.append({
            "source": ex.source,
            "reference": reference,
            "prediction": prediction,
            "trace": tokenizer.decode(g.trace_ids),
            "correct": answer_correct(prediction, reference, ex.key),
            "exact_match": answer_correct(prediction, reference),
            "thought": len(g.trace_ids) > 0,
            "trace_length": len(g.trace_ids),
            "answer_logprob": float(with_trace[i]),
            "answer_logprob_no_trace": float(without[i]),
        })
    return rows


def write_report(path: Path, summary: dict, rows: list[dict], meta: dict) -> None:
    """JSON report, written to a temporary name and renamed, so a failure leaves nothing half-written;
    its "nrt_report" field lets a later `nrt eval` replace it (nrt.outputs)."""
    from nrt.outputs import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"nrt_report": "eval report", **meta, "summary": summary, "examples": rows},
                                       indent=1))
