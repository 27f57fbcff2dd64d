"""`nrt eval` speed: the three-pass float32 path against the one-pass path (float32 and bf16), one process.

    python benchmarks/eval_speed.py --model DIR --bbh boolean_expressions --limit 40 [--fast-limit 250]

Each variant (three-pass or one-pass, float32 or bf16 autocast) evaluates the same first `--limit`
questions (128-token traces), in the order given by `--variants`; `--fast-limit` then
times the one-pass bf16 path alone on more questions. Prints one JSON line per variant: seconds,
questions per second, accuracy, mean answer log-likelihoods, and against the plain path the share
of identical greedy predictions and the largest |difference| of the per-question log-likelihoods.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nrt.data import load_qa_records, tokenize_records
from nrt.evaluation.evaluate import EvalConfig, default_bbh_dir, evaluate
from nrt.model_loading import load_model, load_tokenizer
from nrt.tokens import ensure_response_start_token


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bbh", default="boolean_expressions")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--fast-limit", type=int, default=0)
    ap.add_argument("--max-trace-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fast-batch-size", type=int, default=32)
    ap.add_argument("--variants", default="plain_fp32,plain_bf16,one_pass_fp32,one_pass_bf16")
    ap.add_argument("--output", default="benchmarks/results/eval_speed.jsonl")
    args = ap.parse_args()

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model).eval()
    rs = ensure_response_start_token(model, tokenizer)
    records = load_qa_records(Path(default_bbh_dir()) / f"{args.bbh}.json", "input", "target", messages_field=None)
    examples, _ = tokenize_records(records, tokenizer, "{question}\n", 10**6, 10**6)
    refs = [r.answer for r in records]
    variants = {
        "plain_fp32": EvalConfig(args.max_trace_tokens, 32, args.batch_size, one_pass=False),
        "plain_bf16": EvalConfig(args.max_trace_tokens, 32, args.batch_size, one_pass=False, bf16=True),
        "one_pass_fp32": EvalConfig(args.max_trace_tokens, 32, args.fast_batch_size, one_pass=True),
        "one_pass_bf16": EvalConfig(args.max_trace_tokens, 32, args.fast_batch_size, one_pass=True, bf16=True),
    }
    runs = [(name, args.limit) for name in args.variants.split(",")]
    if args.fast_limit:
        runs.append(("one_pass_bf16", args.fast_limit))
    base = None
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, limit in runs:
        start = time.perf_counter()
        summary, rows = evaluate(model, tokenizer, examples[:limit], refs[:limit], variants[name], rs)
        seconds = time.perf_counter() - start
        record = {"variant": name, "questions": limit, "seconds": round(seconds, 1),
                  "questions_per_s": round(limit / seconds, 3), "threads": torch.get_num_threads(),
                  "accuracy": summary["accuracy"], "answer_logprob": round(summary["answer_logprob"], 3),
                  "answer_logprob_no_trace": round(summary["answer_logprob_no_trace"], 3),
                  "trace_length_mean": summary["trace_length_mean"], "batch_size": variants[name].batch_size}
        if base is None and name == "plain_fp32":
            base = (rows, seconds)
        elif base is not None:
            m = min(len(rows), len(base[0]))
            pairs = list(zip(base[0][:m], rows[:m]))
            record["speedup_vs_plain_fp32_per_question"] = round((base[1] / len(base[0])) / (seconds / limit), 2)
            record["same_prediction"] = sum(a["prediction"] == b["prediction"] for a, b in pairs) / m
            record["same_trace"] = sum(a["trace"] == b["trace"] for a, b in pairs) / m
            for key in ("answer_logprob", "answer_logprob_no_trace"):
                record[f"max_abs_diff_{key}"] = round(max(abs(a[key] - b[key]) for a, b in pairs), 4)
        print(json.dumps(record), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
