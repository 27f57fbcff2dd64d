"""`nrt demo`: the embedded default job.

Until the reasoning gym's base model exists this runs a short real NRT training of a tiny
randomly initialised Llama on generated single-digit sums, writing a normal run directory.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the embedded default job (no downloads)")
    p.add_argument("--output-dir", default="artifacts/demo", help="where the demo writes its run")
    p.add_argument("--steps", type=int, default=20)
    p.set_defaults(func=run_demo)


def run_demo(args) -> None:
    from nrt.cli import main as nrt_main
    from nrt.tiny import save_tiny_model

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = save_tiny_model(str(out / "base"), hidden=64, layers=2, seed=0)
    data = out / "sums.jsonl"
    rng = random.Random(0)
    with open(data, "w") as f:
        for _ in range(256):
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            f.write(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    run = out / "run"
    resume = ["--resume"] if any(run.glob("checkpoint-*")) else []
    code = nrt_main(["train", "--model", model_dir, "--data", str(data), "--output-dir", str(run), *resume,
                     f"trainer.max_steps={args.steps}", "trainer.max_completion_length=16",
                     "trainer.learning_rate=1e-3", "trainer.bf16=true", "trainer.save_steps=10"])
    if code:
        raise SystemExit(code)
