"""docs/ANSWER_TERM.md: what nrt's fixed answer term does to a run, measured over its checkpoints.

    python scripts/answer_term.py [--testbeds long,bbh] [--questions 48] [--doc docs/ANSWER_TERM.md]

The fixed answer term (NRT_SPEC section 6) is the plain NLL of the reference answer after every
sampled trace, the wrong ones too. For `nrt` (fixed term) and `nrt answer=off`, seed 0 at the
learning rate `make methods` chose (scripts/methods.py; its runs are read from its --output-dir
and trained there if absent), the base and the checkpoints every 25 steps are probed on the
testbed's validation questions (never its test split):

(a) the answer term's gradient by kind of trace. K traces per question are sampled at
    temperature 1 as in training (a trace that never emits `<|response_start|>` gets it
    appended), each answered greedily. A non-empty trace is *right* when that answer is correct,
    *wrong* otherwise; an *empty* trace (the marker first) is counted apart, since its answer
    term is exactly *direct*'s: the reference after no trace (what SFT trains). For a group G,
    g_G = mean over its rows of grad_theta sum_i -log p(y*_i | x, z, y*_<i), the answer term's
    per-sequence gradient before its constant normaliser. Reported: each group's share of the
    traces, ||g_G||, and cos(g_wrong, g_right), cos(g_wrong, g_direct), cos(g_right, g_direct);
    with `key` tokens only where records have a key (the long-answer task).
(b) accuracy after a trace against after none: greedy direct (`<|response_start|>` appended to
    the prompt), forced think (the marker forbidden as the first token) and free (the model
    chooses), with the free share that thinks (nrt.gym.probe).

Results are kept in RESULTS/<testbed>.json (tracked) and read back; `--doc-only` writes the page.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import methods as M  # noqa: E402  (scripts/methods.py: testbeds, recipe, chosen rates)

RESULTS = M.ROOT / "results" / "answer_term"
LABELS = ("nrt", "nrt answer=off")
STEPS = (0, 25, 50, 75, 100)
K = 8


def validation_records(path: Path, n: int) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return random.Random(0).sample(records, min(n, len(records)))


def key_of(record: dict) -> tuple[str, ...]:
    key = record.get("key") or ()
    return (key,) if isinstance(key, str) else tuple(key)


def sublist_positions(seq: list[int], sub: list[int]) -> list[int]:
    """Indices in seq covered by any occurrence of sub."""
    hits = set()
    for s in range(len(seq) - len(sub) + 1):
        if sub and seq[s:s + len(sub)] == sub:
            hits.update(range(s, s + len(sub)))
    return sorted(hits)


def key_token_mask(tok, answer_ids: list[int], key: tuple[str, ...]) -> list[bool]:
    """The answer tokens that spell a key span (tokenized alone or after a space)."""
    hits: set[int] = set()
    for span in key:
        for text in (span, " " + span):
            hits.update(sublist_positions(answer_ids, tok(text, add_special_tokens=False)["input_ids"]))
    return [i in hits for i in range(len(answer_ids))]


def answer_gradient(model, rows: list[tuple[list[int], list[int], list[bool]]], key_only: bool) -> torch.Tensor | None:
    """Mean over rows (prefix ending in <|response_start|>, answer ids, key mask) of the gradient of
    the answer's summed NLL (key tokens only if asked), flattened over every parameter."""
    rows = [r for r in rows if not key_only or any(r[2])]
    if not rows:
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    for s in range(0, len(rows), 64):
        batch = rows[s:s + 64]
        seqs = [p + a for p, a, _ in batch]
        n = max(map(len, seqs))
        ids = torch.tensor([q + [0] * (n - len(q)) for q in seqs])
        attn = torch.tensor([[1] * len(q) + [0] * (n - len(q)) for q in seqs])
        weight = torch.zeros(len(batch), n)
        for k, (p, a, m) in enumerate(batch):
            for i in range(len(a)):
                if not key_only or m[i]:
                    weight[k, len(p) + i - 1] = 1.0  # the logit at position t predicts token t + 1
        logp = model(input_ids=ids, attention_mask=attn).logits.float().log_softmax(-1)
        nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        ((nll * weight[:, :-1]).sum() / len(rows)).backward()
    return torch.cat([p.grad.flatten() for p in params if p.grad is not None]).double()


def cos(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def measure(model_dir: Path, records: list[dict], bed: M.Testbed, seed: int = 0) -> dict:
    from nrt.data import answer_correct
    from nrt.gym import tasks as T
    from nrt.gym.probe import generate_rows, probe_items, prompt_ids
    from nrt.gym.tokenizer import RESPONSE_START
    from nrt.model_loading import load_model, load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), dtype=torch.float32).eval()
    rs, eos = tok.convert_tokens_to_ids(RESPONSE_START), tok.eos_token_id
    items = [T.Item(r["question"], r["answer"], "", key=key_of(r)[0] if key_of(r) else "") for r in records]
    out = {"probe": probe_items(model, tok, items, None, bed.trace_tokens + bed.answer_tokens, gain_questions=0)}

    torch.manual_seed(seed)
    prompts = [prompt_ids(tok, r["question"]) for r in records]
    sampled = generate_rows(model, tok, [p for p in prompts for _ in range(K)], "free", bed.trace_tokens, sample=True)
    traces = [row[: row.index(rs)] if rs in row else row for row in sampled]  # eos or the limit: marker appended
    prefixes = [prompts[j // K] + t + [rs] for j, t in enumerate(traces)]
    greedy = generate_rows(model, tok, prefixes, "answer", bed.answer_tokens)
    groups: dict[str, list] = {"right": [], "wrong": [], "empty": [], "direct": []}
    for j, (trace, prefix, ans) in enumerate(zip(traces, prefixes, greedy)):
        r = records[j // K]
        a_ids = tok(r["answer"], add_special_tokens=False)["input_ids"] + [eos]
        row = (prefix, a_ids, key_token_mask(tok, a_ids, key_of(r)))
        if not trace:  # its answer term is the direct one (same prefix): counted, not a group of its own
            groups["empty"].append(row)
        else:
            groups["right" if answer_correct(tok.decode(ans), r["answer"], key_of(r)) else "wrong"].append(row)
    for p, r in zip(prompts, records):
        a_ids = tok(r["answer"], add_special_tokens=False)["input_ids"] + [eos]
        groups["direct"].append((p + [rs], a_ids, key_token_mask(tok, a_ids, key_of(r))))
    out["shares"] = {g: len(groups[g]) / len(traces) for g in ("right", "wrong", "empty")}
    out["trace_length"] = sum(map(len, traces)) / len(traces)
    scopes = ("all", "key") if any(key_of(r) for r in records) else ("all",)
    for scope in scopes:
        g = {name: answer_gradient(model, groups[name], scope == "key") for name in ("right", "wrong", "direct")}
        out[scope] = {
            **{f"norm_{name}": None if v is None else float(v.norm()) for name, v in g.items()},
            "cos_wrong_right": cos(g["wrong"], g["right"]), "cos_wrong_direct": cos(g["wrong"], g["direct"]),
            "cos_right_direct": cos(g["right"], g["direct"]),
        }
    return out


def checkpoint_dir(run_dir: Path, step: int, base: str) -> Path | None:
    if step == 0:
        return Path(base)
    for d in (run_dir / f"checkpoint-{step}", run_dir if step == M.STEPS else None):
        if d is not None and (d / "model.safetensors").is_file():
            return d
    return None


def run_testbed(bed: M.Testbed, out: Path, n_questions: int, log=print) -> dict:
    from nrt.experiments.compare import run_directory, train

    path = RESULTS / f"{bed.name}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    data = M.testbed_data(bed, out)
    records = validation_records(Path(data[1]), n_questions)
    for label in LABELS:
        lr = M.chosen_rate(bed.name, label) or M.LEARNING_RATES[0]
        exp = M.experiment(bed, label, lr, 0, out, data)
        preset = M.METHODS[label][0]
        run_dir = run_directory(exp, preset, 0)
        for step in STEPS:
            name = f"{label} lr{lr} step{step}"
            if name in done and done[name].get("questions") == n_questions:
                continue
            model_dir = checkpoint_dir(run_dir, step, bed.base)
            if model_dir is None:
                log(f"[{bed.name}] {label} lr={lr}: training seed 0 for its checkpoints")
                train(exp, preset, 0)
                model_dir = checkpoint_dir(run_dir, step, bed.base)
            if model_dir is None:
                raise SystemExit(f"{run_dir}: no checkpoint of step {step} (trainer.save_steps must divide it)")
            log(f"[{bed.name}] {name}: measuring {model_dir}")
            done[name] = {"label": label, "lr": lr, "step": step, "questions": n_questions,
                          **measure(model_dir, records, bed)}
            path.parent.mkdir(parents=True, exist_ok=True)
            from nrt.training.run_record import atomic_write_text

            atomic_write_text(path, json.dumps(done, indent=1))
    return done


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(done: dict, scope: str) -> list[str]:
    lines = ["| run | step | right / wrong / empty traces | trace len | direct / forced think / free acc % "
             "| free thinks | ‖g_right‖ | ‖g_wrong‖ | ‖g_direct‖ | cos(wrong, right) | cos(wrong, direct) "
             "| cos(right, direct) |", "|" + "---|" * 12]
    for name, r in done.items():
        if scope not in r:
            continue
        s, p, g = r["shares"], r["probe"], r[scope]
        lines.append(
            f"| `{r['label']}` lr {r['lr']} | {r['step']} | {100 * s['right']:.0f} / {100 * s['wrong']:.0f} / "
            f"{100 * s['empty']:.0f} % | {r['trace_length']:.1f} | {100 * p['direct_acc']:.1f} / "
            f"{100 * p['think_acc']:.1f} / {100 * p['free_acc']:.1f} | {100 * p['free_think_share_greedy']:.0f}% | "
            f"{fmt(g['norm_right'])} | {fmt(g['norm_wrong'])} | {fmt(g['norm_direct'])} | "
            f"{fmt(g['cos_wrong_right'])} | {fmt(g['cos_wrong_direct'])} | {fmt(g['cos_right_direct'])} |")
    return lines


def findings(done: dict) -> str:
    """The numbers the page's reading rests on, per run: base -> last checkpoint."""
    out = []
    for label in LABELS:
        runs = sorted((r for r in done.values() if r["label"] == label), key=lambda r: r["step"])
        if len(runs) < 2:
            continue
        a, b = runs[0], runs[-1]
        later = [r["all"]["cos_wrong_direct"] for r in runs[1:] if r["all"]["cos_wrong_direct"] is not None]
        def move(get, digits=1) -> str:
            return f"{get(a):.{digits}f} -> {get(b):.{digits}f}"

        acc = {k: move(lambda r, k=k: 100 * r["probe"][k]) for k in ("think_acc", "direct_acc", "free_acc")}
        mean_later = sum(later) / len(later) if later else None
        out.append(
            f"- `{label}` (lr {a['lr']}), step {a['step']} -> {b['step']}: empty traces "
            f"{move(lambda r: 100 * r['shares']['empty'], 0)}% of the samples; forced-think accuracy "
            f"{acc['think_acc']}% (direct {acc['direct_acc']}%, free {acc['free_acc']}%); ‖g_direct‖ "
            f"{move(lambda r: r['all']['norm_direct'])}; cos(wrong, direct) {fmt(a['all']['cos_wrong_direct'])} "
            f"at the base, mean {fmt(mean_later)} over the later checkpoints.")
    return "\n".join(out) + "\n"


def write_doc(path: Path, beds: list[M.Testbed], command: str) -> None:
    parts = [f"# The fixed answer term, measured\n\nProduced by `{command}` on the 2-core CPU machine, "
             f"from the runs of `make methods` (docs/METHODS.md). {__doc__.split(chr(10) + chr(10), 1)[1]}"]
    for bed in beds:
        path_b = RESULTS / f"{bed.name}.json"
        if not path_b.is_file():
            parts.append(f"## Testbed `{bed.name}`\n\nNot measured yet.\n")
            continue
        done = json.loads(path_b.read_text())
        n = next(iter(done.values()))["questions"]
        parts.append(f"## Testbed `{bed.name}`: {bed.title}\n\n{n} validation questions, K = {K} traces each.\n\n"
                     + findings(done) + "\nGradients over every answer token:\n\n" + "\n".join(table(done, "all"))
                     + "\n")
        if any("key" in r for r in done.values()):
            parts.append("Key tokens only:\n\n" + "\n".join(table(done, "key")) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    from nrt.training.run_record import atomic_write_text

    atomic_write_text(path, "\n".join(parts))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--testbeds", default="long,bbh")
    p.add_argument("--questions", type=int, default=48)
    p.add_argument("--output-dir", default="artifacts/methods", help="make methods' run directory")
    p.add_argument("--doc", default="docs/ANSWER_TERM.md")
    p.add_argument("--doc-only", action="store_true")
    args = p.parse_args(argv)
    beds = M.testbeds()
    unknown = [b for b in args.testbeds.split(",") if b not in beds]
    if unknown:
        p.error(f"--testbeds: unknown testbed {unknown[0]!r} (valid: {', '.join(beds)})")
    if args.questions < 1:
        p.error(f"--questions {args.questions}: must be at least 1")
    chosen = [beds[b] for b in args.testbeds.split(",")]
    if not args.doc_only:
        for bed in chosen:
            run_testbed(bed, Path(args.output_dir), args.questions)
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--doc-only"]
    write_doc(Path(args.doc), chosen, ("python scripts/answer_term.py " + " ".join(given)).strip())
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
