"""Fault injection: kill `nrt train` runs at random moments, fill the disk, resume, and check
that every run ends identical to an uninterrupted one.

    python scripts/fault_injection.py --trials 60 --seed 0

Each trial starts a fresh run of a tiny model (hidden 32, 2 layers; 6 steps, a checkpoint
every step, the two newest kept) and injects one fault:

- kill-at-time:  SIGKILL at a uniformly random moment of the run;
- kill-in-write: SIGKILL inside a write, at the n-th call (n random) of one of the calls
                 that make up a save: os.replace / Path.rename (atomic renames), shutil.rmtree
                 (pruning), os.write (a metrics append: half the line written, then killed),
                 safetensors' save_file and torch.save (model and optimizer files), before or
                 after the real call;
- full-disk:     RLIMIT_FSIZE set to a random size below the largest file of a run, with
                 SIGXFSZ ignored, so writes past it fail with EFBIG as on a full disk; that
                 run must exit 6 in one line and leave no `.tmp` file or directory.

Then the run is continued as a user would: `--resume` when the directory holds a run
(nrt_run.json), else the same command without it; with probability 0.3 the first
continuation is itself killed at a random moment. A trial passes when the run finally exits
0 with metrics.jsonl (its time_* timings aside) and the final model equal to the reference run's, and
no file holding a non-finite tensor or a torn metrics line.

Runs are forked from this process after torch, transformers and nrt are imported (no
import cost per run; each child runs `nrt.commands.cli.main(["train", ...])` with one thread), so
50+ trials take a few minutes on 2 cores. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
from collections import Counter
from pathlib import Path

import torch  # noqa: F401  imported before forking: children start warm
import transformers  # noqa: F401

import nrt.training.trainer  # noqa: F401
from nrt.commands.cli import main, quiet_libraries

quiet_libraries()  # children inherit it; main() sets it again

OPTIONS = ["trainer.max_completion_length=8", "trainer.num_generations=4", "trainer.per_device_train_batch_size=8",
           "trainer.learning_rate=1e-3", "trainer.warmup_ratio=0.3", "trainer.max_steps=6", "trainer.save_steps=1",
           "trainer.save_total_limit=2"]
WRITE_CALLS = ("os.replace", "Path.rename", "shutil.rmtree", "os.write", "save_file", "torch.save")


def install_write_fault(call: str, n: int, when: str, counts: dict | None = None) -> None:
    """In the child: SIGKILL this process at the n-th `call` (before / after it, or halfway for
    os.write). With `counts`, only count the calls (for the reference run)."""
    import pathlib

    import safetensors.torch
    import transformers.modeling_utils as modeling_utils

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name, real):
        def wrapper(*args, **kwargs):
            if counts is not None:
                counts[name] = counts.get(name, 0) + 1
                return real(*args, **kwargs)
            state["n"] += 1 if name == call else 0
            hit = name == call and state["n"] == n
            if hit and when == "before":
                die()
            if hit and name == "os.write" and when == "half":
                data = bytes(args[1])
                real(args[0], data[: max(1, len(data) // 2)])
                die()
            result = real(*args, **kwargs)
            if hit:
                die()
            return result
        return wrapper

    state = {"n": 0}
    import nrt.training.metrics

    os.replace = wrap("os.replace", os.replace)
    pathlib.Path.rename = wrap("Path.rename", pathlib.Path.rename)
    shutil.rmtree = wrap("shutil.rmtree", shutil.rmtree)
    # only the metrics appends call os.write directly: give nrt.training.metrics an os of its own
    metrics_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    metrics_os.write = wrap("os.write", os.write)
    nrt.training.metrics.os = metrics_os
    save_file = wrap("save_file", safetensors.torch.save_file)
    safetensors.torch.save_file = save_file
    import accelerate.utils.other as accelerate_other

    modeling_utils.safe_save_file = save_file  # the model files of save_pretrained
    accelerate_other.safe_save_file = save_file  # the model in accelerate's save_state
    torch.save = wrap("torch.save", torch.save)


def child(argv: list[str], log: Path, fault: dict) -> None:
    """Runs in the forked process; never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        torch.set_num_threads(1)
        kind = fault.get("kind")
        if kind == "kill-in-write":
            install_write_fault(fault["call"], fault["n"], fault["when"])
        elif kind == "count":
            counts: dict = {}
            install_write_fault("", 0, "", counts)
        elif kind == "full-disk":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fault["limit"], fault["limit"]))
        code = main(argv)
        if kind == "count":
            Path(fault["counts_path"]).write_text(json.dumps(counts))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def run(argv: list[str], log: Path, fault: dict | None = None, kill_after: float | None = None) -> tuple[int, float]:
    """Fork a child running `nrt train`; SIGKILL it after `kill_after` seconds. Returns (exit status, seconds);
    a status of -9 means killed."""
    fault = fault or {}
    tick = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        child(argv, log, fault)
    if kill_after is not None:
        deadline = tick + kill_after
        while time.perf_counter() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    else:
        _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, time.perf_counter() - tick


def metrics_of(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().split("\n") if line]
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in rows]  # timings differ


def temporaries(out: Path) -> list[str]:
    """Temporary files and directories anywhere in a run directory (an interrupted write's leftovers)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp"))


def compare(reference: Path, out: Path) -> tuple[bool, bool, str]:
    """(equal within 1e-6 relative, bit-identical, what differed)."""
    from safetensors.torch import load_file

    try:
        want, got = metrics_of(reference), metrics_of(out)
    except (OSError, ValueError) as e:
        return False, False, f"metrics unreadable: {e}"
    if [r["step"] for r in got] != [r["step"] for r in want]:
        return False, False, f"steps {[r['step'] for r in got]}"
    identical = want == got
    for a, b in zip(want, got):
        if a.keys() != b.keys():
            return False, False, f"keys differ at step {a['step']}"
        for k in a:
            x, y = a[k], b[k]
            if isinstance(x, float) or isinstance(y, float):
                if x is None or y is None or abs(x - y) > 1e-6 * max(1.0, abs(x)):
                    return False, False, f"step {a['step']} {k}: {x} != {y}"
            elif x != y:
                return False, False, f"step {a['step']} {k}: {x} != {y}"
    if not (out / "model.safetensors").is_file():
        return False, False, "no final model"
    ref_model, model = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    for name, tensor in ref_model.items():
        if not torch.isfinite(model[name]).all():
            return False, False, f"non-finite {name}"
        if not torch.allclose(model[name], tensor, rtol=1e-6, atol=1e-7):
            return False, False, f"final weights differ: {name}"
        identical = identical and torch.equal(model[name], tensor)
    leftovers = temporaries(out)
    if leftovers:
        return False, False, f"left over: {leftovers}"
    return True, identical, ""


def main_script() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="nrt-faults-"))
    # the model and data are written by a child too, so this process never starts torch's threads
    setup = os.fork()
    if setup == 0:
        try:
            from nrt.tiny import save_tiny_model

            save_tiny_model(str(work / "model"), hidden=32, layers=2, seed=0)
            r = random.Random(0)
            with open(work / "data.jsonl", "w") as f:
                for _ in range(24):
                    a, b = r.randint(0, 9), r.randint(0, 9)
                    f.write(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
        finally:
            os._exit(0)
    os.waitpid(setup, 0)

    def argv(out: Path, resume: bool) -> list[str]:
        return ["train", "--model", str(work / "model"), "--data", str(work / "data.jsonl"), "--output-dir", str(out),
                *OPTIONS, *(["--resume"] if resume else [])]

    reference = work / "reference"
    counts_path = work / "counts.json"
    code, seconds = run(argv(reference, False), work / "reference.log", {"kind": "count", "counts_path": counts_path})
    assert code == 0, (work / "reference.log").read_text()
    counts = json.loads(counts_path.read_text())
    largest = max(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    print(f"reference run: {seconds:.1f} s, write calls {counts}, largest file {largest} bytes", flush=True)

    kinds = ["kill-at-time", "kill-in-write", "full-disk"]
    tally, outcomes, failures = Counter(), Counter(), []
    exact = identical = one_line = 0
    started = time.perf_counter()
    for trial in range(args.trials):
        kind = kinds[trial % len(kinds)]
        out = work / f"trial{trial}"
        log = work / f"trial{trial}.log"
        fault: dict = {"kind": kind}
        kill_after = None
        if kind == "kill-at-time":
            kill_after = rng.uniform(0.0, seconds)
            fault = {}
            label = f"kill at {kill_after:.2f}s"
        elif kind == "kill-in-write":
            call = rng.choice([c for c in WRITE_CALLS if counts.get(c)])
            when = rng.choice(["before", "after", "half"] if call == "os.write" else ["before", "after"])
            fault.update(call=call, n=rng.randint(1, counts[call]), when=when)
            label = f"kill {when} {call} #{fault['n']}"
        else:
            fault["limit"] = rng.randint(256, largest)
            label = f"file size limit {fault['limit']} B"
        code, _ = run(argv(out, False), log, fault, kill_after)
        tally[(kind, code)] += 1
        if kind == "full-disk":  # a failed write is one line and exit 6, never a traceback, and leaves no .tmp
            text = log.read_text()
            clean = code in (0, 6) and "Traceback" not in text and not (out.exists() and temporaries(out))
            one_line += clean
            if not clean:
                left = temporaries(out) if out.exists() else []
                failures.append(f"trial {trial} ({label}): exit {code}, left {left}, output {text[-300:]!r}")
        history = [code]
        for attempt in range(4):
            if code == 0:
                break
            resume = (out / "nrt_run.json").is_file()
            again = rng.uniform(0.0, seconds) if attempt == 0 and rng.random() < 0.3 else None
            code, _ = run(argv(out, resume), log, None, again)
            history.append(code)
        ok, same, why = compare(reference, out) if code == 0 else (False, False, f"exit codes {history}")
        exact += ok
        identical += same
        outcomes[ok] += 1
        if not ok:
            failures.append(f"trial {trial} ({label}): {why}")
        print(f"trial {trial:3d} {kind:13s} {label:34s} exit codes {history}: "
              f"{'resumed exactly' if ok else 'FAILED: ' + why}{' (bit-identical)' if same else ''}", flush=True)
        if ok and not args.keep:
            shutil.rmtree(out)
    elapsed = time.perf_counter() - started
    print(f"\n{exact}/{args.trials} trials ended with a run equal to the uninterrupted one "
          f"({identical} bit-identical); {elapsed:.0f} s")
    disk_trials = sum(n for (k, _), n in tally.items() if k == "full-disk")
    print(f"full-disk runs that failed in one line with exit 6 (or finished), leaving no .tmp: "
          f"{one_line}/{disk_trials}")
    print("first exit codes by fault: " + ", ".join(f"{k} -> {c}: {n}" for (k, c), n in sorted(tally.items())))
    for line in failures:
        print(line)
    if not args.keep and not failures:
        shutil.rmtree(work)
    else:
        print(f"work directory: {work}")
    sys.exit(0 if exact == args.trials and not failures else 1)


if __name__ == "__main__":
    main_script()
