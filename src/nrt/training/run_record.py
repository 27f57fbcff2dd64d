"""Who owns an output directory, and what a resume may change.

    output_dir/nrt_run.json   the run record: marks the directory as an nrt run; the digests of
                              the training and validation data; one entry per resume with the
                              options it changed; "finished": the step of the final model in the directory
    output_dir/.nrt.lock      locked (flock) while a run writes into the directory

A run writes only into a directory that is absent, empty, or an nrt run (it holds
nrt_run.json): the output rule of nrt.outputs refuses a directory of the user's own files, or the
base model's. A second run into a locked directory is refused. `--resume` may change only the options in
RESUMABLE (how long to train, how often to log, save and evaluate); any other change is
refused with the option names, since the checkpoint's optimizer, scheduler and data order
were made with the old values. A data file is known by its contents (sha256), not by how its path
is spelled. A resume reads the run's record and config.yaml and refuses, naming it, one that is
missing or is not what nrt wrote; it never writes a new one in its place.

A finished run (its final model written, "finished" in the record) whose checkpoints are gone
cannot go on: a new run into it is refused, and `--resume` has nothing to do.
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
    """The run record, or {} when it is missing or unreadable (load_record refuses those, for a resume)."""
    try:
        record = json.loads((Path(path) / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def load_record(path: Path) -> dict:
    """The run record of the run a resume continues; RunDirectoryError naming nrt_run.json when it is
    missing or not a run record (a resume needs its data digests, and never writes a new one)."""
    file = Path(path) / RECORD
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        raise RunDirectoryError(f"--resume: {file} is missing (the run's record of its data and resumes); "
                                "restore it, or start a new run (a checkpoint can be its --model)") from None
    except (OSError, ValueError) as e:
        raise RunDirectoryError(f"--resume: {file} is not a run record ({str(e).splitlines()[0]}); restore it, "
                                "or start a new run (a checkpoint can be its --model)") from None
    if not isinstance(record, dict) or record.get("nrt_run") != 1:
        raise RunDirectoryError(f"--resume: {file} is not a run record (no \"nrt_run\": 1); restore it, "
                                "or start a new run (a checkpoint can be its --model)")
    return record


def load_saved_config(path: Path) -> dict:
    """The options the run's checkpoints were made with (output_dir/config.yaml); RunDirectoryError naming
    the file when it is missing or not a run's config (a resume could not tell what it changes)."""
    import yaml

    file = Path(path) / "config.yaml"
    hint = "restore it, or start a new run (a checkpoint can be its --model)"
    try:
        saved = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise RunDirectoryError(f"--resume: {file} is missing (the options the run's checkpoints were made "
                                f"with); {hint}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunDirectoryError(f"--resume: {file} is not readable ({str(e).splitlines()[0]}); {hint}") from None
    if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
        raise RunDirectoryError(f"--resume: {file} is not a run's config (not sections of options); {hint}")
    return saved


def last_logged_step(path: Path) -> int | None:
    """The step of the last readable metrics record, or None."""
    try:
        lines = (Path(path) / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def finished_run(path: Path) -> dict | None:
    """{"step": N or None} when the run in `path` finished: its record says so, or (a run of an earlier
    nrt, or one stopped by the collapse detector) it holds its final model and no checkpoint to go on
    from. None otherwise."""
    from nrt.outputs import is_model_dir, output_kind

    path = Path(path)
    finished = read_record(path).get("finished")
    if isinstance(finished, dict):
        return {"step": finished.get("step")}
    if output_kind(path) == "run" and not complete_checkpoints(path) and (
            is_model_dir(path) or (path / "adapter_model.safetensors").is_file()):
        return {"step": last_logged_step(path)}
    return None


def a_finished_run(finished: dict) -> str:
    return "a finished run" + (f" (step {finished['step']})" if finished.get("step") is not None else "")


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
    checkpoints = complete_checkpoints(path)
    if resume and checkpoints and not is_run(path):  # a run whose record was deleted: say which file
        load_record(path)
    check_dir(path, "run", flag, inputs=[model_path, *inputs], resumable=True)
    if is_locked(path):
        raise RunDirectoryError(f"{flag} {path}: another nrt run is writing into it (pid {lock_owner(path)})")
    finished = finished_run(path)
    if finished is not None and not resume:
        raise RunDirectoryError(f"{flag} {path}: holds {a_finished_run(finished)}; " + (
            "pass --resume to continue it or choose another directory" if checkpoints else
            "its checkpoints are gone, so it cannot go on; choose another directory (its model can be --model)"))
    if checkpoints and not resume:
        raise RunDirectoryError(f"{flag} {path}: holds an earlier run; pass --resume to continue it "
                                "or choose another directory")
    if resume and not is_run(path):
        raise RunDirectoryError(f"{flag} {path}: no run to resume from")
    if resume and (checkpoints or finished is not None):  # something to resume: its record and config
        load_record(path)
        load_saved_config(path)


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


# data options -> the key of their file's sha256 in the run record
DATA_DIGESTS = {"data.path": "data_digest", "data.eval_path": "eval_digest"}


def data_file(config, option: str) -> str:
    return getattr(config.data, option.split(".", 1)[1])


def data_changes(record: dict, config) -> tuple[set[str], list[str]]:
    """(data options whose file has the recorded contents, however its path is now spelled; the files
    whose contents changed since the run started). A file that is gone, or has no recorded digest (a run
    of an earlier nrt), is in neither: its path is compared as written."""
    same, changed = set(), []
    for option, key in DATA_DIGESTS.items():
        given, digest = data_file(config, option), record.get(key)
        if not (digest and given and Path(given).exists()):
            continue
        if file_digest(given) == digest:
            same.add(option)
        else:
            changed.append(given)
    return same, changed


def resume_changes(path: str | Path, config) -> dict[str, tuple]:
    """The option changes a resume of the run in `path` would apply; raises RunDirectoryError naming
    those it may not (anything outside RESUMABLE), a changed data file, and a missing or broken
    config.yaml or nrt_run.json."""
    path = Path(path)
    record, old = load_record(path), load_saved_config(path)
    same_data, changed_data = data_changes(record, config)
    if changed_data:
        raise RunDirectoryError(f"--resume: {changed_data[0]} changed since the run started (its sha256 is not the "
                                f"one in {path / RECORD}; the checkpoint's data order would not match); "
                                "start a new run")
    changes = {k: v for k, v in option_changes(old, config.to_dict()).items() if k not in same_data}
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE}
    if refused:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in refused.items())
        raise RunDirectoryError(f"--resume: options differ from the run's config.yaml: {listed}; a resume may "
                                f"change only {', '.join(sorted(n.split('.', 1)[1] for n in RESUMABLE))}; "
                                "start a new run (a checkpoint can be its --model) to change the others")
    return changes


# how long a run trains: a finished run without checkpoints cannot be made longer or shorter
LENGTH = ("trainer.max_steps", "trainer.num_train_epochs")


def finished_resume(path: str | Path, config) -> dict | None:
    """For `--resume` of a finished run that holds no checkpoint: {"step": N or None} (nothing to do), after
    refusing what such a resume cannot do (a changed option, or a change of its length). None when
    there is a checkpoint to resume from or the run did not finish. Reads only."""
    path = Path(path)
    finished = finished_run(path)
    if finished is None or complete_checkpoints(path):
        return None
    length = {k: v for k, v in resume_changes(path, config).items() if k in LENGTH}
    if length:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in length.items())
        raise RunDirectoryError(f"--resume: {path} holds {a_finished_run(finished)} and no checkpoint to go on "
                                f"from, so {listed} cannot apply; start a new run (its model can be --model)")
    return finished


def write_record(path: Path, config, command: str | None = None) -> None:
    """Mark `path` as an nrt run (a fresh start), with the command line that started it when known."""
    digests = {}
    for option, key in DATA_DIGESTS.items():
        given = data_file(config, option)
        digests[key] = file_digest(given) if given and Path(given).exists() else None
    record = {"nrt_run": 1, "started": now(), **digests, "resumes": []}
    if command:
        record["command"] = command
    atomic_write_text(Path(path) / RECORD, json.dumps(record, indent=1))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_resume(path: Path, step: int, changes: dict, command: str | None = None) -> None:
    """Add a resume to the record (checked by load_record before the resume). A finished run that goes
    on keeps "finished" (the step of the final model in the directory) until its new one is written."""
    record = read_record(path) or {"nrt_run": 1, "resumes": []}
    record.setdefault("resumes", []).append({
        "at": now(), "step": step,
        "changed": {k: {"from": a, "to": b} for k, (a, b) in changes.items()},
        **({"command": command} if command else {}),
    })
    atomic_write_text(Path(path) / RECORD, json.dumps(record, indent=1))


def record_finished(path: Path, step: int) -> None:
    """Mark the run finished at `step` (after its final model is in place)."""
    record = read_record(path) or {"nrt_run": 1, "resumes": []}
    record["finished"] = {"at": now(), "step": step}
    atomic_write_text(Path(path) / RECORD, json.dumps(record, indent=1))
