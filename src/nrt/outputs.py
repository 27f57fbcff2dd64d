"""The output rule: a command never replaces or deletes a file it did not write.

Every command that writes claims its output here before any work, and the claim only reads:

    check_output_dir(path, kind, ...)    a directory the command fills (a run, a comparison, an export,
                                          a gym model, data splits)
    check_output_file(path, kind, ...)   one report file (`nrt eval --output`, `nrt probe --output`, ...)

A claim is refused (OutputError: one line naming the option and the path, nothing written) when the output
- is one of the command's inputs or lies inside an input directory, however either is spelled;
- is a model directory (config.json beside weights) that is not an nrt output of the same kind;
- is an existing directory of another kind: another nrt output, or the user's own files. A command that
  writes a few named files beside the user's (`nrt data split`) may use such a directory as long as none
  of its files are there;
- already holds the command's own earlier output, unless `overwrite` (the command's `--overwrite`) or
  `resumable` (a run or a comparison continues what is there).

An nrt output says what it is: a directory by its marker file (MARKERS), a JSON report by its
"nrt_report" field, a markdown page by its title, a model card (README.md) by CARD_MARK after its front
matter, a PNG by an "nrt_report" text chunk. A run directory's README.md (its model card) and
report.md / report.png (`nrt report`) are the run's own files: the directory stays an nrt run.
`mark_dir` writes a directory's marker before anything else, so a command killed half-way leaves a
directory it may reuse; a command that writes a model (`nrt export`, `nrt gym pretrain`) writes it whole,
aside, with `written_whole`. A run adds one rule of its own (nrt.training.run_record): a finished run is
complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from nrt.errors import OutputError, WriteFailed

# directory kind -> the file that marks a directory as that kind of nrt output
MARKERS = {
    "run": "nrt_run.json",
    "comparison": "nrt_compare.json",
    "export": "nrt_export.json",
    "gym model": "gym.json",
    "gym data": "nrt_gym_data.json",
    "data preparation": "prep.json",  # written last: the splits beside it are complete
}
# what a command killed before its marker was complete leaves: the directory still counts as empty
LEFTOVERS = {".nrt.lock"} | {f".{marker}.tmp" for marker in MARKERS.values()}
# markdown page kind -> its first line
PAGE_TITLES = {"demo results": "# Results on the reasoning gym", "run report": "# Training run report"}
# the line after a model card's front matter (nrt.training.model_card): a README.md nrt may replace
CARD_MARK = "<!-- nrt model card: written by nrt from the files of this directory -->"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_config.json")


def output_kind(path: Path) -> str | None:
    """The kind of nrt output directory `path` is, by its marker, else None."""
    return next((kind for kind, marker in MARKERS.items() if (Path(path) / marker).is_file()), None)


def is_model_dir(path: Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (
        any((path / name).is_file() for name in WEIGHT_FILES) or any(path.glob("*.gguf")))


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name in the same directory, flush to disk, rename over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def mark_dir(path: Path, kind: str) -> None:
    """Create `path` and its marker (kept if present: a run's record holds more than the mark)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKERS[kind]).is_file():
        atomic_write_text(path / MARKERS[kind], json.dumps({"nrt_output": kind}) + "\n")


def png_text(head: bytes) -> dict[str, str]:
    """The tEXt chunks (keyword -> text) of a PNG's first bytes; {} when it is not a PNG."""
    if not head.startswith(PNG_SIGNATURE):
        return {}
    found, at = {}, len(PNG_SIGNATURE)
    while at + 8 <= len(head):
        length, kind = int.from_bytes(head[at:at + 4], "big"), head[at + 4:at + 8]
        if kind == b"IDAT":  # the metadata comes before the image data
            break
        if kind == b"tEXt":
            key, _, text = head[at + 8:at + 8 + length].partition(b"\0")
            found[key.decode("latin-1")] = text.decode("latin-1")
        at += 12 + length  # length, type, data, crc
    return found


def report_kind(path: Path) -> str | None:
    """The kind of nrt report file `path` is ("nrt_report" field or text chunk, page title, model card
    mark), else None."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
    except OSError:
        return None
    if raw.startswith(PNG_SIGNATURE):
        return png_text(raw).get("nrt_report")
    try:
        head = raw.decode("utf-8")
    except UnicodeDecodeError:
        if len(raw) < 1 << 16:
            return None
        head = raw.decode("utf-8", errors="ignore")  # cut inside a character at the end
    first = head.split("\n", 1)[0].strip()
    for kind, title in PAGE_TITLES.items():
        if first == title:
            return kind
    if first == "---" and CARD_MARK in head.split("\n"):
        return "model card"
    if not head.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value.get("nrt_report") if isinstance(value, dict) else None


def _input_clash(path: Path, inputs) -> Path | None:
    """The input that writing at `path` would replace or write inside, else None (paths resolved)."""
    target = Path(path).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source or (source.is_dir() and source in target.parents):
            return Path(given)
    return None


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def check_writable(path: Path, flag: str) -> None:
    """Refuse unless `path` is, or can be created as, a writable directory."""
    path = Path(path)
    for ancestor in [path, *path.parents]:
        if ancestor.exists():
            break
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {ancestor} is not writable")


def check_output_dir(path: str | Path, kind: str, flag: str = "--output-dir", inputs=(),
                     files: list[str] | None = None, overwrite: bool = False, resumable: bool = False) -> None:
    """Refuse a directory the command may not write (see the module docstring); reads only.

    files: the names the command writes directly in `path`, for a command that may write beside the
    user's own files; None for one that owns the whole directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file, not a directory")
    for target in [path, *(path / name for name in files or ())]:
        clash = _input_clash(target, inputs)
        if clash is not None:
            where = (f"writing {target.name} there would replace the input {clash}" if target != path
                     else f"is the input {clash}" if target.resolve() == clash.resolve()
                     else f"lies inside the input {clash}")
            raise OutputError(f"{flag} {path}: {where} (--overwrite replaces a command's own earlier outputs only); "
                              "choose another directory")
    check_writable(path, flag)
    held = sorted(p.name for p in path.iterdir() if p.name not in LEFTOVERS) if path.is_dir() else []
    if not held:
        return
    found = output_kind(path)
    if found == kind:
        earlier = [n for n in files if (path / n).exists()] if files is not None else held
        if earlier and not (overwrite or resumable):
            raise OutputError(f"{flag} {path}: holds an earlier nrt {kind} ({_shown(earlier)}); pass --overwrite "
                              "to replace it, or choose another directory")
        return
    if found is not None:
        raise OutputError(f"{flag} {path}: is an nrt {found}, not an nrt {kind}; choose another directory")
    if is_model_dir(path):
        raise OutputError(f"{flag} {path}: is a model directory (holds config.json and its weights); "
                          "choose another directory")
    present = held if files is None else [n for n in files if (path / n).exists()]
    if present:
        raise OutputError(f"{flag} {path}: not empty and not an nrt {kind} (holds {_shown(present)}); "
                          "choose an empty or new directory")


def check_output_file(path: str | Path, kind: str, flag: str = "--output", inputs=()) -> None:
    """Refuse a report path the command may not write: a directory, one of `inputs`, or an existing file
    that is not an nrt report of the same `kind` (an earlier one is replaced); reads only."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a directory; give a file name")
    clash = _input_clash(path, inputs)
    if clash is not None:
        raise OutputError(f"{flag} {path}: is the input {clash}; the report would replace it")
    if path.exists() and report_kind(path) != kind:
        raise OutputError(f"{flag} {path}: exists and is not an nrt {kind}; choose another path")
    check_writable(path.parent, flag)


@contextmanager
def written_whole(final: str | Path, kind: str):
    """A fresh temporary directory beside `final`, marked as `kind`, to write into; when the block ends
    it takes `final`'s place (which the output rule allowed: absent, empty, or an earlier output of the
    same kind). On any failure it is removed and `final` is untouched; a failed write (a full disk) is
    WriteFailed, naming `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        mark_dir(tmp, kind)
        yield tmp
        if final.exists():
            old = tmp.with_name(tmp.name + ".old")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteFailed(f"writing {final} failed ({e.strerror or e}); nothing was written there") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
