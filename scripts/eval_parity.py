"""docs/EVALUATION.md: `nrt eval` and lm-evaluation-harness (`--model nrt`) on the same models and items.

    python scripts/eval_parity.py [--smollm2 artifacts/models/smollm2-135m-instruct/hf] [--limit-real 50]

For each model and data set, both commands run as a user runs them (subprocesses), with the same
trace and answer budgets: `nrt eval --bbh TASK` / `nrt eval --data gsm8k/test.jsonl` (after `nrt
data gsm8k`) against `nrt lm-eval run --tasks nrt_bbh_TASK` / `nrt_gsm8k`. The page shows both
accuracies and how many predictions differ (the wall times go to stdout only: the commands share the
machine with whatever else runs, so they are no benchmark). models/gym-bbh runs on
every item; SmolLM2-135M-Instruct (`make real-model`) on the first --limit-real items of each set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NRT = [sys.executable, "-m", "nrt"]
TASKS = ("boolean_expressions", "multistep_arithmetic_two", "gsm8k")


def run(cmd: list[str]) -> float:
    tick = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return time.perf_counter() - tick


def commands(model: str, task: str, limit: int | None, trace: int, answer: int, work: Path, gsm8k: Path
             ) -> tuple[list[str], list[str]]:
    """(nrt eval's argv, nrt lm-eval's argv) after `nrt`, with their outputs under `work`."""
    limit_args = ["--limit", str(limit)] if limit else []
    source = ["--data", str(gsm8k)] if task == "gsm8k" else ["--bbh", task]
    eval_cmd = ["eval", "--model", model, *source, *limit_args, "--max-trace-tokens", str(trace),
                "--max-answer-tokens", str(answer), "--batch-size", "32",
                "--output", str(work / f"{Path(model).name}_{task}.json")]
    harness_cmd = ["lm-eval", "run", "--model", "nrt", "--model_args",
                   f"pretrained={model},max_trace_tokens={trace},max_answer_tokens={answer}",
                   "--tasks", f"nrt_{task}" if task == "gsm8k" else f"nrt_bbh_{task}", *limit_args,
                   "--batch_size", "32", "--output_path", str(work / f"{Path(model).name}_{task}_harness"),
                   "--log_samples"]
    return eval_cmd, harness_cmd


def compare(model: str, task: str, limit: int | None, trace: int, answer: int, work: Path, gsm8k: Path) -> dict:
    eval_cmd, harness_cmd = commands(model, task, limit, trace, answer, work, gsm8k)
    report, harness_dir = Path(eval_cmd[-1]), Path(harness_cmd[-2])
    eval_s, harness_s = run([*NRT, *eval_cmd]), run([*NRT, *harness_cmd])
    rows = json.loads(report.read_text())
    name = f"nrt_{task}" if task == "gsm8k" else f"nrt_bbh_{task}"
    results = json.loads(next(harness_dir.rglob("results_*.json")).read_text())["results"][name]
    samples = {s["doc_id"]: s for s in map(json.loads, next(harness_dir.rglob(f"samples_{name}_*.jsonl"))
                                           .read_text().splitlines())}
    differ = sum(samples[i]["filtered_resps"][0] != r["prediction"] for i, r in enumerate(rows["examples"]))
    return {"model": model, "task": task, "n": rows["summary"]["n"], "nrt_eval": rows["summary"]["accuracy"],
            "lm_eval": results["exact_match,none"], "differ": differ, "eval_s": eval_s, "harness_s": harness_s,
            "commands": [" ".join(c) for c in commands(model, task, limit, trace, answer, OUT,
                                                       OUT / "gsm8k" / "test.jsonl")]}


def write_doc(path: Path, results: list[dict], command: str) -> None:
    lines = [
        "# Evaluation: `nrt eval` and lm-evaluation-harness side by side", "",
        f"Produced by `{command}` on the 2-core CPU machine (scripts/eval_parity.py). The harness runs",
        "through `nrt lm-eval`, its own command line with nrt's backend registered (`--model nrt`,",
        "src/nrt/evaluation/lm_eval_backend.py) and nrt's local tasks on its include path",
        "(src/nrt/evaluation/lm_eval_tasks: BIG-Bench-Hard zero-shot from ../shared/data/bbh, GSM8K's test",
        "split from ../shared/data/gsm8k, its answers the solutions' final numbers as `nrt data gsm8k` writes",
        "them). Both think, then answer greedily, and score the answer alone as `nrt.data.answer_correct`.",
        "",
        "| model | data | n | `nrt eval` accuracy % | lm-eval exact_match % | predictions that differ |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['task']} | {r['n']} | {100 * r['nrt_eval']:.1f} | {100 * r['lm_eval']:.1f} "
                     f"| {r['differ']} |")
    lines += ["", "Where both columns read 0.0 the model gets none right (SmolLM2-135M-Instruct, as in `make real`;",
              "the gym model on GSM8K, whose words it never saw); the last column says the two paths still wrote",
              "the same text for every item.", "",
              "Commands (run from the repository root; OUT is a scratch directory, OUT/gsm8k written first by",
              "`nrt data gsm8k --input ../shared/data/gsm8k/test.jsonl --output-dir OUT/gsm8k`):", ""]
    for r in results:
        lines += [f"- {r['model']}, {r['task']}:", f"  - `nrt {r['commands'][0]}`", f"  - `nrt {r['commands'][1]}`"]
    lines += ["", """## The backend

`--model_args`: `pretrained` (a model or run directory), `think` (true; false: the answer, or the
choice's score, right after `<|response_start|>`), `max_trace_tokens` (128), `max_answer_tokens`
(32; a task's `max_gen_toks` overrides it), `temperature` (0: greedy traces), `samples` (1; with
temperature > 0, a multiple-choice score is the log of the mean probability over that many traces),
`force_trace`, `bf16`, `batch_size` (the harness's `--batch_size` sets it; its default is 1),
`seed`, `prompt_template` (default: the run's `data.prompt_template`; a chat template wins),
`engine` (nrt; `vllm`: traces and answers sampled by vLLM with the sampler `trainer.use_vllm` trains
with, choices still scored by the model; tests/test_lm_eval.py checks that its greedy traces and
answers are nrt's on models/gym-bbh) and `gpu_memory_utilization` (0.3, vLLM's share of memory).

- Generation tasks: the trace runs to `<|response_start|>` (a trace ending in eos or at its limit
  gets the marker appended, as in training), then the greedy answer, cut at the task's stop
  strings; only the answer is returned, so only the answer is scored.
- Multiple-choice tasks (`loglikelihood`): one trace per question (greedy, or `samples` sampled),
  then each choice scored after it, tokenized on its own without the harness's leading space and
  without eos (tests/test_lm_eval.py checks the scores against a token-by-token computation).
- Perplexity tasks (`loglikelihood_rolling`) are refused: they have no question to think about.

The harness's own hub tasks run the same way on a machine that reaches the hub, e.g.
`nrt lm-eval run --model nrt --model_args pretrained=RUN_DIR --tasks bbh_zeroshot,gsm8k --batch_size 32`
(their prompts add "Q: ... A:" and their metrics are the harness's regex matches, so their numbers
are not `nrt eval`'s). pyproject.toml declares the backend under the `lm_eval.models` entry-point
group for harness versions that load backends from it; lm-eval 0.4.13 (the lock's) does not, so
`lm-eval run --model nrt` itself says the name is unknown there, and `nrt lm-eval` is the way in.
"""]
    path.write_text("\n".join(lines))


RESULTS = ROOT / "results" / "eval_parity.json"
OUT = Path("OUT")  # the commands as the page shows them: OUT is the run's scratch directory
MODELS = (("models/gym-bbh", None, 96, 16), ("SMOLLM2", "LIMIT", 128, 32))  # model, limit, trace, answer budgets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smollm2", default="artifacts/models/smollm2-135m-instruct/hf")
    p.add_argument("--limit-real", type=int, default=50)
    p.add_argument("--doc", default="docs/EVALUATION.md")
    p.add_argument("--doc-only", action="store_true", help=f"write the page from {RESULTS.relative_to(ROOT)}")
    args = p.parse_args(argv)
    command = "python scripts/eval_parity.py " + " ".join(a for a in (argv or sys.argv[1:]) if a != "--doc-only")
    if args.doc_only:
        write_doc(ROOT / args.doc, json.loads(RESULTS.read_text()), command.strip())
        print(f"wrote {args.doc}")
        return
    if not (ROOT / args.smollm2 / "config.json").is_file():
        raise SystemExit(f"--smollm2 {args.smollm2}: no model there (make real-model)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run([*NRT, "data", "gsm8k", "--input", "../shared/data/gsm8k/test.jsonl", "--output-dir", str(work / "gsm8k")])
        gsm8k = work / "gsm8k" / "test.jsonl"
        for model, limit, trace, answer in MODELS:
            model, limit = (args.smollm2, args.limit_real) if model == "SMOLLM2" else (model, limit)
            for task in TASKS:
                results.append(compare(model, task, limit, trace, answer, work, gsm8k))
                print(json.dumps(results[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    write_doc(ROOT / args.doc, results, command.strip())
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
