"""Data preparation: the Tulu-3 SFT mixture into the recipe's Q&A splits, and a seeded split of any Q&A file.

Tulu-3 (NRT_SPEC section 7). The official recipe's script
(recipe/nrt/data/scripts/tulu-3-sft-mixture.py of sharkwyf/native-reasoning-models) does, in order:

1. load every parquet file of the mixture (`data/*.parquet`) as one dataset (files in sorted order,
   rows in file order);
2. `train_test_split(test_size=1024, seed=42)` on the *raw* rows: with numpy's
   `default_rng(42).permutation(N)`, test = the first 1,024 indices, train = the rest in permuted order;
3. keep the first 220,000 rows of that train split;
4. convert each chosen row: the turn before the final one must be a user turn (the question), the final
   one an assistant turn (the reference answer); earlier turns stay as chat context, no system prompt
   is added; rows that fail are dropped (with a printed warning), as are empty answers.

`prepare_tulu3` follows the same order (`split_indices` reproduces datasets' `train_test_split`, tested
against it), so for the same files and seed it picks the same rows in the same order. By default it
writes the last user turn as `question` and the final assistant turn as `answer`; `keep_earlier_turns`
writes the whole chat as `messages` instead (the official prompt). Bad rows are an error unless
`skip_bad_records`, which drops and counts them as the official script does. Given fewer rows than
train_size + test_size, both splits shrink in proportion.

`split_qa` splits the records of any file `nrt.data.load_qa_records` reads into test / validation /
train with the same permutation (validation taken after test; with no validation it is exactly
`train_test_split`).

GSM8K (`gsm8k_records`, `prepare_gsm8k`): each solution's final number, the text after its last
"####" with thousands separators dropped ("1,000" -> "1000"), becomes the answer, as the harness's
GSM8K tasks take it; NRT answers are final answers, the worked solution is what the trace is for.

`write_splits` writes `<split>.jsonl` files and `prep.json` so that each is complete or absent: all are
written to temporary files first and renamed into place only when every one is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nrt.data import DataError, QARecord, _check_encodable, _jsonl_records, _type_name, load_qa_records

OFFICIAL_SCRIPT = "sharkwyf/native-reasoning-models: recipe/nrt/data/scripts/tulu-3-sft-mixture.py"
TULU3_EXTENSIONS = (".jsonl", ".parquet")
MAX_LISTED_DROPS = 20  # prep.json lists the places of the first N dropped records


class DataPrepError(DataError):
    """Bad input to data preparation (a record, a file, a size); the message is one line naming it."""


@dataclass(frozen=True)
class Tulu3Options:
    """train_size / test_size: the recipe's 220,000 / 1,024 (scaled down in proportion for fewer rows).
    seed: the split seed (recipe 42). skip_bad_records: drop and count bad rows instead of stopping.
    keep_earlier_turns: write the whole chat as `messages` instead of `question`/`answer`."""

    train_size: int = 220_000
    test_size: int = 1_024
    seed: int = 42
    skip_bad_records: bool = False
    keep_earlier_turns: bool = False


@dataclass(frozen=True)
class Prepared:
    """splits: split name -> output records (dicts, one jsonl line each), in write order.
    provenance: what prep.json records. note: a line to show the user, or None."""

    splits: dict[str, list[dict]]
    provenance: dict
    note: str | None = None


# --------------------------------------------------------------------------- splitting


def split_indices(n: int, n_test: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train [n_train], test [n_test]) row indices, as datasets' `Dataset.train_test_split(seed=seed)`
    picks them: p = numpy default_rng(seed).permutation(n); test = p[:n_test]; train = p[n_test:n_test+n_train]."""
    if n_test < 0 or n_train < 0 or n_test + n_train > n:
        raise DataPrepError(f"cannot take {n_train} train and {n_test} test rows from {n}")
    permutation = np.random.default_rng(seed).permutation(n)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


def proportional_sizes(n: int, train_size: int, test_size: int) -> tuple[int, int, bool]:
    """(n_train, n_test, scaled): the sizes asked for when n >= train_size + test_size, else all n rows
    split in the ratio train_size : test_size (test rounded, at least 1; train the rest, at least 1)."""
    if train_size < 1 or test_size < 1:
        raise DataPrepError(f"train size and test size must be at least 1, got {train_size} and {test_size}")
    if n >= train_size + test_size:
        return train_size, test_size, False
    if n < 2:
        raise DataPrepError(f"{n} record(s): need at least 2 to make a train and a test split")
    n_test = min(n - 1, max(1, round(n * test_size / (train_size + test_size))))
    return n - n_test, n_test, True


def parse_size(text: str, option: str) -> int | float:
    """'100' -> 100 records; '0.1' -> a fraction in (0, 1). Raises DataPrepError naming `option`."""
    try:
        value = float(text)
    except ValueError:
        raise DataPrepError(f"{option} {text!r}: expected a number of records or a fraction in (0, 1)") from None
    if value.is_integer() and "." not in text and "e" not in text.lower():
        if value < 0:
            raise DataPrepError(f"{option} {text}: must not be negative")
        return int(value)
    if not 0 < value < 1:
        raise DataPrepError(f"{option} {text}: a fraction must be in (0, 1)")
    return value


def split_count(size: int | float, n: int) -> int:
    """Records for a size given as a count or a fraction of n (rounded up, as datasets does for test_size)."""
    return math.ceil(size * n) if isinstance(size, float) else size


def split_qa(path: str | os.PathLike, test_size: int | float, validation_size: int | float = 0, seed: int = 42,
             question_field: str = "question", answer_field: str = "answer",
             messages_field: str | None = "messages") -> Prepared:
    """Split a Q&A file (any format `load_qa_records` reads, validated by it) into train/validation/test.

    p = default_rng(seed).permutation(N); test = p[:n_test], validation = p[n_test:n_test+n_val],
    train = the rest, each in permuted order. Sizes are counts or fractions of N (`parse_size`).
    """
    records = load_qa_records(path, question_field, answer_field, messages_field)
    n = len(records)
    n_test, n_val = split_count(test_size, n), split_count(validation_size, n)
    if n_test < 1:
        raise DataPrepError(f"--test-size: must give at least 1 record, got {n_test}")
    if n_test + n_val >= n:
        raise DataPrepError(
            f"--test-size/--validation-size: {n_test} test + {n_val} validation records leave no training "
            f"records out of {n} in {path}"
        )
    permutation = np.random.default_rng(seed).permutation(n)
    parts = {"train": permutation[n_test + n_val :], "test": permutation[:n_test]}
    if n_val:
        parts["validation"] = permutation[n_test : n_test + n_val]
    splits = {name: [qa_line(records[i]) for i in idx] for name, idx in parts.items()}
    provenance = {
        "command": "split",
        "inputs": [file_entry(Path(path))] if Path(path).is_file() else [{"path": str(path)}],
        "records": n,
        "seed": seed,
        "test_size": test_size,
        "validation_size": validation_size,
        "method": "numpy default_rng(seed).permutation(N): test = first n_test, validation = next n_validation, "
                  "train = the rest (datasets' train_test_split when there is no validation split)",
        "written": {name: len(rows) for name, rows in splits.items()},
    }
    return Prepared(splits, provenance)


def qa_line(record: QARecord) -> dict:
    """The jsonl line of a record: question/answer, or for chat records the messages with the answer last."""
    if isinstance(record.prompt, str):
        return {"question": record.prompt, "answer": record.answer}
    return {"messages": [*record.prompt, {"role": "assistant", "content": record.answer}]}


# --------------------------------------------------------------------------- Tulu-3


def input_files(path: str | os.PathLike) -> list[Path]:
    """A .jsonl/.parquet file, or the .jsonl/.parquet files directly in a directory, sorted by name."""
    p = Path(path)
    if not p.exists():
        raise DataPrepError(f"{path}: no such file or directory")
    if p.is_file():
        if p.suffix.lower() not in TULU3_EXTENSIONS:
            raise DataPrepError(f"{path}: unsupported file type '{p.suffix}' (expected .jsonl or .parquet)")
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in TULU3_EXTENSIONS)
    if not files:
        hint = f"; the Tulu-3 download keeps them in data/: pass {p / 'data'}" if (p / "data").is_dir() else ""
        raise DataPrepError(f"{path}: no .jsonl or .parquet files in this directory{hint}")
    return files


def read_chat_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(place, record) of each row: `path:line` for jsonl, `path: row i` (0-based) for parquet,
    the places `nrt.data` uses. Parquet: only the columns messages, id and source are read."""
    name = str(path)
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_records(name, path.read_bytes())
        return
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(name)
        columns = [c for c in ("messages", "id", "source") if c in parquet.schema_arrow.names]
        if "messages" not in columns:
            raise DataPrepError(f"{name}: no 'messages' column (columns: {', '.join(parquet.schema_arrow.names)})")
        rows = parquet.read(columns=columns).to_pylist()
    except DataPrepError:
        raise
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise DataPrepError(f"{name}: cannot read parquet file: {' '.join(str(e).split())}") from None
    for i, row in enumerate(rows):
        yield f"{name}: row {i}", row


def tulu3_line(place: str, record: Any, keep_earlier_turns: bool = False) -> dict:
    """One Tulu-3 row -> its output line, or DataPrepError naming `place`.

    The final message must be an assistant turn (the reference answer) and the one before it a user
    turn (the question), both non-empty strings (as the official script checks messages[-1] and
    messages[-2]). Every message needs string role and content. `id` and `source` are kept when present.
    """
    if not isinstance(record, dict):
        raise DataPrepError(f"{place}: record must be an object, got {_type_name(record)}")
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise DataPrepError(f"{place}: 'messages' must be a list of messages, got {_type_name(messages)}")
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataPrepError(f"{place}: messages[{j}] must be an object with 'role' and 'content', "
                                f"got {_type_name(m)}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise DataPrepError(f"{place}: messages[{j}]: '{key}' must be a string, got {_type_name(m.get(key))}")
        try:
            _check_encodable(place, f"messages[{j}] 'content'", m["content"])
        except DataError as e:
            raise DataPrepError(str(e)) from None
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise DataPrepError(f"{place}: no assistant turn (roles: {', '.join(roles) or 'none'})")
    if "user" not in roles:
        raise DataPrepError(f"{place}: no user turn (roles: {', '.join(roles)})")
    if roles[-1] != "assistant":
        raise DataPrepError(f"{place}: the final turn must be the assistant's, got '{roles[-1]}'")
    if len(roles) < 2 or roles[-2] != "user":
        before = roles[-2] if len(roles) >= 2 else "nothing"
        raise DataPrepError(f"{place}: the turn before the final assistant turn must be the user's, got '{before}'")
    question, answer = messages[-2]["content"], messages[-1]["content"]
    for what, text in (("user", question), ("assistant", answer)):
        if not text.strip():
            raise DataPrepError(f"{place}: the last {what} turn is empty")
    if keep_earlier_turns:
        line = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
    else:
        line = {"question": question, "answer": answer}
    for key in ("id", "source"):
        if isinstance(record.get(key), str):
            line[key] = record[key]
    return line


def prepare_tulu3(path: str | os.PathLike, options: Tulu3Options = Tulu3Options()) -> Prepared:
    """Read, split and convert Tulu-3 rows in the official script's order (module docstring).

    Every row is checked (a bad row anywhere is an error unless `skip_bad_records`); the split is
    taken over all rows, bad ones included, so the rows chosen are the official script's.
    """
    files = input_files(path)
    lines: list[dict | None] = []  # None: a bad row (only kept with skip_bad_records)
    problems: dict[int, str] = {}
    per_file = []
    for f in files:
        start = len(lines)
        for place, record in read_chat_rows(f):
            try:
                lines.append(tulu3_line(place, record, options.keep_earlier_turns))
            except DataPrepError as e:
                if not options.skip_bad_records:
                    raise DataPrepError(f"{e} (--skip-bad-records drops and counts such records)") from None
                problems[len(lines)] = str(e)
                lines.append(None)
        per_file.append(file_entry(f) | {"records": len(lines) - start})
    n = len(lines)
    if n == 0:
        raise DataPrepError(f"{path}: no records")
    n_train, n_test, scaled = proportional_sizes(n, options.train_size, options.test_size)
    train_idx, test_idx = split_indices(n, n_test, n_train, options.seed)
    splits = {name: [lines[i] for i in idx if lines[i] is not None]
              for name, idx in (("train", train_idx), ("test", test_idx))}
    chosen = {int(i) for i in train_idx} | {int(i) for i in test_idx}
    dropped = {
        "count": len(problems),
        "train": sum(1 for i in train_idx if int(i) in problems),
        "test": sum(1 for i in test_idx if int(i) in problems),
        "unselected": sum(1 for i in problems if i not in chosen),
        "first": [problems[i] for i in sorted(problems)[:MAX_LISTED_DROPS]],
    }
    note = None
    if scaled:
        note = (f"{n} records, fewer than {options.train_size} train + {options.test_size} test: split in the same "
                f"proportion into {n_train} train / {n_test} test")
    provenance = {
        "command": "tulu3",
        "inputs": per_file,
        "records": n,
        "seed": options.seed,
        "train_size": options.train_size,
        "test_size": options.test_size,
        "proportional": scaled,
        "selected": {"train": n_train, "test": n_test},
        "written": {name: len(rows) for name, rows in splits.items()},
        "dropped": dropped,
        "fields": "messages (whole chat)" if options.keep_earlier_turns else
                  "question = last user turn, answer = final assistant turn, no system prompt",
        "method": "numpy default_rng(seed).permutation(N) over all rows: test = first n_test, train = next "
                  f"n_train (datasets' train_test_split then select(range(train_size)), as {OFFICIAL_SCRIPT})",
    }
    return Prepared(splits, provenance, note)


# --------------------------------------------------------------------------- GSM8K


def gsm8k_final_answer(place: str, solution: Any) -> str:
    """The final number of a GSM8K solution: after its last "####", commas dropped."""
    if not isinstance(solution, str) or "####" not in solution:
        raise DataPrepError(f"{place}: field 'answer' must be a GSM8K solution ending in '#### <number>', "
                            f"got {_type_name(solution) if not isinstance(solution, str) else repr(solution[-40:])}")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise DataPrepError(f"{place}: nothing after '####' in field 'answer'")
    return final


def gsm8k_records(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(question, final answer) per line of a GSM8K jsonl file (fields question, answer)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataPrepError(f"{path}: cannot read ({e.strerror or e})") from None
    out = []
    for place, record in _jsonl_records(str(path), data):
        if not isinstance(record, dict) or not isinstance(record.get("question"), str):
            raise DataPrepError(f"{place}: expected an object with a text field 'question'")
        _check_encodable(place, "field 'question'", record["question"])
        out.append((record["question"], gsm8k_final_answer(place, record.get("answer"))))
    if not out:
        raise DataPrepError(f"{path}: no records")
    return out


def prepare_gsm8k(path: str | os.PathLike) -> Prepared:
    """GSM8K's test file -> test.jsonl of question / final-number answer, every record kept in order."""
    rows = [{"question": q, "answer": a} for q, a in gsm8k_records(path)]
    provenance = {"command": "gsm8k", "inputs": [file_entry(Path(path))], "records": len(rows),
                  "written": {"test": len(rows)},
                  "fields": "question; answer = the solution's final number (after '####', commas dropped)"}
    return Prepared({"test": rows}, provenance)


# --------------------------------------------------------------------------- writing


def file_entry(path: Path) -> dict:
    """{"path", "sha256", "bytes"} of an input file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def output_names(split_names) -> list[str]:
    return [f"{name}.jsonl" for name in split_names] + ["prep.json"]


def write_splits(output_dir: str | os.PathLike, prepared: Prepared, overwrite: bool = False) -> list[Path]:
    """Write <split>.jsonl for each split and prep.json; each file ends complete or not at all.

    Everything is written to temporary files in `output_dir` first, then renamed into place; an error
    while writing removes the temporary files and leaves what was there before untouched.
    """
    from nrt.outputs import check_output_dir

    out = Path(output_dir)
    names = output_names(prepared.splits)
    check_output_dir(out, "data preparation", files=names, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    texts = {f"{name}.jsonl": rows for name, rows in prepared.splits.items()}
    temporary: dict[str, str] = {}
    try:
        for name in names:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            temporary[name] = tmp
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                if name == "prep.json":
                    f.write(json.dumps(prepared.provenance, indent=1, ensure_ascii=False) + "\n")
                else:
                    for row in texts[name]:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        for name in names:  # prep.json last: its presence says the splits beside it are complete
            os.replace(temporary.pop(name), out / name)
    finally:
        for tmp in temporary.values():
            Path(tmp).unlink(missing_ok=True)
    return [out / name for name in names]
