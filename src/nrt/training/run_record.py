"""Who owns an output directory, and what a resume may change.

    output_dir/nrt_run.json   the run record: marks the directory as an nrt run; the digest of
                              the training data; one entry per resume with the options it changed
    output_dir/.nrt.lock      locked (flock) while a run writes into the directory

A run writes only into a directory that is absent, empty, or an nrt run (it holds
nrt_run.json): the output rule of nrt.outputs refuses a directory of the user's own files, or the
base model's. A second run into a locked directory is refused. `--resume` may change only the options in
RESUMABLE (how long to train, how often to log, save and evaluate); any other change is
refused with the option names, since the checkpoint's optimizer, scheduler and data order
were made with the old values.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from pathlib import Path

from nrt.errors import RunDirectoryError  # noqa: F401  (raised here; also imported from here by callers)
# check_writable and atomic_write_text: also imported from here by callers
from nrt.outputs import LEFTOVERS, atomic_write_text, check_output_dir as check_dir, check_writable  # noqa: F401

RECORD = "nrt_run.json"
LOCK = ".nrt.lock"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

RESUMABLE = {
    "trainer.output_dir", "trainer.max_steps", "trainer.num_train_epochs", "trainer.logging_steps",
    "trainer.save_steps", "trainer.save_total_limit", "trainer.report_to", "trainer.eval_steps",
    "trainer.eval_batch_size", "trainer.on_collapse", "trainer.max_nonfinite_steps", "trainer.torch_compile",
    # how much memory the vLLM engine takes, not what it samples
    "trainer.vllm_gpu_memory_utilization", "trainer.vllm_enable_sleep_mode",
}



def complete_checkpoints(path: Path) -> list[int]:
    """Steps of the finished checkpoint-N directories (an interrupted save is checkpoint-N.tmp)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(int(m.group(1)) for p in path.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir())


def is_run(path: Path) -> bool:
    return (Path(path) / RECORD).is_file()


def read_record(path: Path) -> dict:
    try:
        return json.loads((Path(path) / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_output_dir(path: str | Path, resume: bool, model_path: str | None = None, inputs=()) -> None:
    """Refuse an output directory a run may not write into (read-only: creates nothing): the output rule
    (nrt.outputs: not an input, not a model directory, not another program's files), then a run's own."""
    path = Path(path)
    flag = "--output-dir"
    check_dir(path, "run", flag, inputs=[model_path, *inputs], resumable=True)
    if is_locked(path):
        raise RunDirectoryError(f"{flag} {path}: another nrt run is writing into it (pid {lock_owner(path)})")
    if complete_checkpoints(path) and not resume:
        raise RunDirectoryError(f"{flag} {path}: holds an earlier run; pass --resume to continue it "
                                "or choose another directory")
    if resume and not is_run(path):
        raise RunDirectoryError(f"{flag} {path}: no run to resume from")


class RunLock:
    """An exclusive flock on output_dir/.nrt.lock, released on release() or when the process ends."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None

    def acquire(self) -> "RunLock":
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RunDirectoryError(f"--output-dir {self.path}: another nrt run is writing into it "
                                    f"(pid {lock_owner(self.path)})") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def is_locked(path: Path) -> bool:
    lock = Path(path) / LOCK
    if not lock.is_file():
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def lock_owner(path: Path) -> str:
    try:
        return (Path(path) / LOCK).read_text().strip() or "?"
    except OSError:
        return "?"


def flatten(config: dict) -> dict:
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


def option_changes(old: dict, new: dict) -> dict[str, tuple]:
    """Options (section.name) whose value differs between two nested config dicts: name -> (old, new).
    An option missing from either (a config saved before the option existed) counts at its default, which
    is the behaviour that run had."""
    from nrt.config import Config

    defaults = flatten(Config().to_dict())
    a, b = {**defaults, **flatten(old)}, {**defaults, **flatten(new)}
    return {name: (a.get(name), b.get(name)) for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)}


def resume_changes(path: str | Path, config) -> dict[str, tuple]:
    """The option changes a resume of the run in `path` would apply; raises RunDirectoryError naming
    those it may not (anything outside RESUMABLE) and a changed training data file."""
    import yaml

    path = Path(path)
    saved = path / "config.yaml"
    if not saved.is_file():
        return {}
    try:
        old = yaml.safe_load(saved.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RunDirectoryError(f"--resume: {saved} is unreadable ({str(e).splitlines()[0]})") from None
    changes = option_changes(old, config.to_dict())
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if refused:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in refused.items())
        raise RunDirectoryError(f"--resume: options differ from the run's config.yaml: {listed}; a resume may "
                                f"change only {', '.join(sorted(n.split('.', 1)[1] for n in RESUMABLE))}; "
                                "start a new run (a checkpoint can be its --model) to change the others")
    digest = read_record(path).get("data_digest")
    if digest and config.data.path and Path(config.data.path).exists() and file_digest(config.data.path) != digest:
        raise RunDirectoryError(f"--resume: {config.data.path} changed since the run started "
                                "(the checkpoint's data order would not match); start a new run")
    return changes


def write_record(path: Path, config) -> None:
    """Mark `path` as an nrt run (a fresh start)."""
    data = config.data.path
    record = {"nrt_run": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data_digest": file_digest(data) if data and Path(data).exists() else None, "resumes": []}
    atomic_write_text(Path(path) / RECORD, json.dumps(record, indent=1))


def record_resume(path: Path, step: int, changes: dict) -> None:
    record = read_record(path) or {"nrt_run": 1, "resumes": []}
    record.setdefault("resumes", []).append({
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": step,
        "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
    })
    atomic_write_text(Path(path) / RECORD, json.dumps(record, indent=1))
