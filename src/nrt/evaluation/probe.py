"""A premise probe for any causal LM and any Q&A data: can this model's own traces help it here?

NRT rewards a trace by how much it raises the reference answer's likelihood, so it can only
start where a model's traces already help a little (GYM_NOTES section 3). For each question,
from the prompt the trainer uses (`nrt.data.render_prompt`: the chat template when the tokenizer
has one), optionally with a "think prompt" appended to the question:

- direct: `<|response_start|>` right after the prompt, then a greedy answer;
- think (forced): greedy, but the first token may not be `<|response_start|>` or eos, so the
  model writes a trace (up to `max_trace_tokens`), then `<|response_start|>` and a greedy answer;
- free: greedy; the model may answer at once (`free_think_share`: how often it did not). Not
  decoded on its own: greedy decoding is the think row's unless the model's own first choice is
  `<|response_start|>` or eos, and then it is the direct row's (`RowResult.first_choice_forbidden`),
  so the free mode costs nothing (tests/test_probe.py checks it against a decoded free row);
- reasoning gain: for K traces sampled at temperature 1, log p(answer + eos | prompt, trace,
  `<|response_start|>`) minus log p(answer + eos | prompt, `<|response_start|>`), in nats: the
  quantity of `nrt.evaluation.evaluate.answer_logprobs` (the trainer's own), computed in the same
  decoding pass as the rest (`nrt.engine.answer_rows`; tests/test_probe.py checks the two agree).

Accuracy is exact match after normalising whitespace and case, or the key spans for records that
have them (`nrt.data.answer_correct`), as `nrt eval`.
Every summary value comes with its standard error over questions: the sample standard deviation
(n - 1) of the per-question values (for the gain, each question's mean over its K traces) divided
by sqrt(n); NaN for fewer than two questions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nrt.data import TokenizedExample, answer_correct
from nrt.engine.answer_rows import RowKind, RowResult, decode_rows
from nrt.engine.sampling import question_seed
from nrt.errors import ConfigError
from nrt.evaluation.one_pass import autocast_bf16
from nrt.tokens import pad_token_id

MODES = ("direct", "think", "free")


@dataclass(frozen=True)
class ProbeConfig:
    samples: int = 4  # K traces per question for the reasoning gain (temperature 1)
    max_trace_tokens: int = 128  # trace limit for the think, free and sampled rows
    max_answer_tokens: int = 32  # greedy answer limit
    batch_size: int = 16  # questions per decoding pass (each question has 2 + K + 1 rows)
    seed: int = 0  # sampling seed (per question: nrt.engine.sampling.question_seed)
    bf16: bool = False  # bfloat16 autocast
    think_prompt: str = ""  # appended to each question on a new line, e.g. "Think step by step, then give the answer."

    def __post_init__(self):
        for name in ("samples", "max_trace_tokens", "max_answer_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


def mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """(mean, sample std / sqrt(n)); the standard error is NaN for fewer than two values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def probe_row_kinds(cfg: ProbeConfig, response_start_id: int, eos_id: int) -> list[RowKind]:
    """direct, think (forced), K sampled traces with the answer scored, the answer scored without a trace
    (the free mode is one of the first two: `free_result`)."""
    t = cfg.max_trace_tokens
    return ([RowKind(0), RowKind(t, 0.0, (response_start_id, eos_id))]
            + [RowKind(t, 1.0, score_answer=True)] * cfg.samples + [RowKind(0, score_answer=True)])


def free_result(direct: RowResult, think: RowResult) -> RowResult:
    """What free greedy decoding writes: the forced trace, unless the model's own first choice was to
    stop (`<|response_start|>` or eos), which leaves the direct answer after an empty trace."""
    if think.first_choice_forbidden:
        return RowResult([], False, direct.answer_ids, float("nan"))
    return think


@torch.no_grad()
def probe(model, tokenizer, examples: list[TokenizedExample], references: list[str], cfg: ProbeConfig,
          response_start_id: int) -> tuple[dict, list[dict]]:
    """Returns (summary, one row per question); see the module docstring."""
    eos, pad = tokenizer.eos_token_id, pad_token_id(tokenizer)
    kinds = probe_row_kinds(cfg, response_start_id, eos)
    k = cfg.samples
    rows = []
    with autocast_bf16(model, cfg.bf16):
        for first in range(0, len(examples), cfg.batch_size):
            batch = examples[first : first + cfg.batch_size]
            results = decode_rows(
                model, [ex.prompt_ids for ex in batch], kinds, answers=[ex.answer_ids for ex in batch],
                seeds=[question_seed(cfg.seed, first + i) for i in range(len(batch))],
                response_start_id=response_start_id, eos_id=eos, pad_id=pad, max_answer_tokens=cfg.max_answer_tokens)
            for i, (ex, res) in enumerate(zip(batch, results)):
                reference = references[first + i]
                row = {"source": ex.source, "reference": reference}
                for mode, r in zip(MODES, [res[0], res[1], free_result(res[0], res[1])]):
                    prediction = tokenizer.decode(r.answer_ids, skip_special_tokens=True)
                    row[f"{mode}_prediction"] = prediction
                    row[f"{mode}_correct"] = answer_correct(prediction, reference, ex.key)
                    if mode != "direct":
                        row[f"{mode}_trace"] = tokenizer.decode(r.trace_ids)
                        row[f"{mode}_trace_length"] = len(r.trace_ids)
                with_trace = [r.answer_logprob for r in res[2 : 2 + k]]
                without = res[2 + k].answer_logprob
                row["answer_logprob_per_trace"] = with_trace
                row["sampled_trace_lengths"] = [len(r.trace_ids) for r in res[2 : 2 + k]]
                row["answer_logprob"] = sum(with_trace) / k
                row["answer_logprob_no_trace"] = without
                row["reasoning_gain"] = row["answer_logprob"] - without
                rows.append(row)
    return summarize(rows), rows


def summarize(rows: list[dict]) -> dict:
    """Means over questions and their standard errors (`<key>_se`)."""
    summary = {"n": len(rows)}
    columns = {
        "direct_accuracy": [float(r["direct_correct"]) for r in rows],
        "think_accuracy": [float(r["think_correct"]) for r in rows],
        "free_accuracy": [float(r["free_correct"]) for r in rows],
        "free_think_share": [float(r["free_trace_length"] > 0) for r in rows],
        "think_trace_length": [float(r["think_trace_length"]) for r in rows],
        "sampled_trace_length": [sum(r["sampled_trace_lengths"]) / len(r["sampled_trace_lengths"]) for r in rows],
        "answer_logprob": [r["answer_logprob"] for r in rows],
        "answer_logprob_no_trace": [r["answer_logprob_no_trace"] for r in rows],
        "reasoning_gain": [r["reasoning_gain"] for r in rows],
    }
    for key, values in columns.items():
        summary[key], summary[f"{key}_se"] = mean_and_standard_error(values)
    return summary
