"""Question-answer data: loading, validation, prompt rendering and tokenisation.

Users bring (question, answer) pairs or chat transcripts. This module turns a file
into `QARecord`s, renders each prompt (the tokenizer's chat template when it has one,
else a plain template; NRT_SPEC section 3) and tokenises prompt and answer separately,
because the reference answer is spliced in at the token level after the sampled
trace and never re-tokenised together with it.

Every problem in the data raises `DataError` with a one-line message that starts
with the place: `path:line: ...` for text files (jsonl, csv, json syntax errors),
`path: record i: ...` for records of a .json file and `path: row i: ...` for
parquet files and `save_to_disk` directories (i is the 0-based index, as in
`data["examples"][i]` or `dataset[i]`).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from nrt.errors import DataError

SUPPORTED = ".jsonl, .json, .csv, .parquet, or a directory written by datasets' save_to_disk"


@dataclass(frozen=True)
class QARecord:
    """One training example.

    prompt: the question text, or for chat data the messages before the final
        assistant turn, as a list of {"role": str, "content": str} dicts.
    answer: the reference answer (the final assistant turn for chat data), verbatim.
    source: the place string used in later error messages, e.g. "data.jsonl:7".
    key: the spans of the answer that decide correctness in evaluation (the optional "key"
        field: a string or a list of strings, each occurring in the answer); empty: the whole
        answer must match. Training ignores it: the reward is the whole answer's likelihood.
    """

    prompt: str | list[dict]
    answer: str
    source: str
    key: tuple[str, ...] = ()


# --------------------------------------------------------------------------- loading


def load_qa_records(
    path: str | os.PathLike,
    question_field: str = "question",
    answer_field: str = "answer",
    messages_field: str | None = "messages",
) -> list[QARecord]:
    """Load and validate every record of a data file; raises DataError on the first problem.

    A record is Q&A (non-empty string fields `question_field` and `answer_field`) or
    chat (`messages_field`: a list of at least 2 {"role", "content"} messages whose
    last one is a non-empty "assistant" turn). A record holding both is read as Q&A.
    `messages_field=None` turns chat detection off. Texts are kept verbatim: the
    non-empty check strips whitespace but the stored strings are not stripped.
    """
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{name}: no such file or directory")
    fields = (question_field, answer_field, messages_field)
    if p.is_dir():
        places = _rows(name, _load_saved_dataset(name))
    else:
        ext = p.suffix.lower()
        if ext == ".jsonl":
            places = _jsonl_records(name, p.read_bytes())
        elif ext == ".json":
            places = _json_records(name, p.read_bytes())
        elif ext == ".csv":
            places = _csv_records(name, p.read_bytes())
        elif ext == ".parquet":
            places = _rows(name, _load_parquet(name))
        else:
            raise DataError(f"{name}: unsupported file type '{p.suffix}' (supported: {SUPPORTED})")
    records = [_to_record(place, rec, *fields) for place, rec in places]
    if not records:
        raise DataError(f"{name}: no records")
    return records


def _decode_utf8(name: str, data: bytes) -> str:
    """Decode the whole file, naming line and column of the first invalid byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        # The bytes before e.start are valid UTF-8, so this counts characters.
        column = len(data[line_start : e.start].decode("utf-8")) + 1
        raise DataError(
            f"{name}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})"
        ) from None
    # Editors on Windows (Excel's "CSV UTF-8" in particular) start files with a BOM,
    # which would otherwise become part of the first header name or break json.loads.
    return text.removeprefix("\ufeff")


def _jsonl_records(name: str, data: bytes) -> Iterator[tuple[str, Any]]:
    # Lines are split by hand (not via a JSON-lines reader) so errors name the line.
    for i, line in enumerate(_decode_utf8(name, data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{i}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{i}: invalid JSON: {e.msg} (column {e.colno})") from None


def _json_records(name: str, data: bytes) -> Iterator[tuple[str, Any]]:
    text = _decode_utf8(name, data)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(doc, dict):
        # e.g. BIG-Bench Hard files: {"canary": "...", "examples": [...]}.
        lists = [key for key, value in doc.items() if isinstance(value, list)]
        if len(lists) != 1:
            found = ", ".join(repr(k) for k in lists) if lists else "none"
            raise DataError(
                f"{name}: expected a list of records, or an object holding exactly one "
                f"list of records (lists found: {found})"
            )
        doc = doc[lists[0]]
    elif not isinstance(doc, list):
        raise DataError(f"{name}: expected a list of records, got {_type_name(doc)}")
    for i, rec in enumerate(doc):
        yield f"{name}: record {i}", rec


def _csv_records(name: str, data: bytes) -> Iterator[tuple[str, Any]]:
    # The csv module keeps every value a string; the first row is the header.
    text = _decode_utf8(name, data)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    start = 1  # a quoted value may span lines: name the line the row starts on
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{name}:{start}: invalid CSV: {e}") from None
        place, start = f"{name}:{start}", reader.line_num + 1
        if not row:  # blank line
            continue
        if header is None:
            header = row
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise DataError(f"{place}: duplicate column(s) in header: {', '.join(duplicates)}")
            continue
        if len(row) != len(header):
            raise DataError(
                f"{place}: row has {len(row)} values but the header has {len(header)} columns"
            )
        yield place, dict(zip(header, row))


def _load_parquet(name: str) -> list[dict]:
    # pyarrow directly: datasets' from_parquet logs its own line for a bad file before raising,
    # and copies the file into its cache
    import pyarrow.parquet as pq

    try:
        return pq.read_table(name).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{name}: cannot read parquet file: {_one_line(e)}") from None


def _load_saved_dataset(name: str):
    import datasets

    try:
        ds = datasets.load_from_disk(name)
    except Exception as e:
        raise DataError(
            f"{name}: not a dataset directory written by datasets' save_to_disk ({_one_line(e)})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"{name}: dataset has no 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    return ds


def _rows(name: str, rows) -> Iterator[tuple[str, Any]]:
    """`rows`: a list of dicts, or a datasets Dataset (to_list() converts in one Arrow call, much
    faster than indexing row by row)."""
    for i, rec in enumerate(rows if isinstance(rows, list) else rows.to_list()):
        yield f"{name}: row {i}", rec


def _to_record(
    place: str,
    rec: Any,
    question_field: str,
    answer_field: str,
    messages_field: str | None,
) -> QARecord:
    """Validate one raw record and build a QARecord, or raise DataError at `place`."""
    if not isinstance(rec, dict):
        raise DataError(f"{place}: record must be an object, got {_type_name(rec)}")
    # A null value counts as absent: parquet files holding both Q&A and chat rows
    # have null in the columns a row does not use.
    present = [k for k, v in rec.items() if v is not None]
    has_q, has_a = rec.get(question_field) is not None, rec.get(answer_field) is not None
    has_chat = messages_field is not None and rec.get(messages_field) is not None
    if has_q and has_a:
        question, answer = _text_field(place, rec, question_field), _text_field(place, rec, answer_field)
        return QARecord(question, answer, place, _key_field(place, rec.get(KEY_FIELD), answer))
    if has_chat:
        return _chat_record(place, rec[messages_field], messages_field)
    listed = ", ".join(present) if present else "none"
    if has_q or has_a:
        missing = answer_field if has_q else question_field
        if missing in rec:
            raise DataError(f"{place}: field '{missing}' is null")
        raise DataError(f"{place}: missing field '{missing}' (fields present: {listed})")
    chat_hint = f" (or '{messages_field}' for chat data)" if messages_field is not None else ""
    raise DataError(
        f"{place}: missing fields '{question_field}' and '{answer_field}'{chat_hint} "
        f"(fields present: {listed})"
    )


def _text_field(place: str, rec: dict, field: str) -> str:
    value = rec[field]
    if not isinstance(value, str):
        raise DataError(f"{place}: field '{field}' must be a string, got {_type_name(value)}")
    if not value.strip():
        raise DataError(f"{place}: field '{field}' is empty")
    _check_encodable(place, f"field '{field}'", value)
    return value


KEY_FIELD = "key"


def _key_field(place: str, value: Any, answer: str) -> tuple[str, ...]:
    """The optional key spans of a Q&A record: a string or a list of strings, each non-empty and
    occurring in the answer as whole words (`key_matches`), so a key can never be unreachable."""
    if value is None:
        return ()
    spans = [value] if isinstance(value, str) else value
    if not isinstance(spans, list) or not spans or not all(isinstance(v, str) for v in spans):
        raise DataError(f"{place}: field '{KEY_FIELD}' must be a string or a non-empty list of strings, "
                        f"got {_type_name(value)}")
    for span in spans:
        if not span.strip():
            raise DataError(f"{place}: field '{KEY_FIELD}' holds an empty span")
        _check_encodable(place, f"field '{KEY_FIELD}'", span)
        if not key_matches(answer, (span,)):
            raise DataError(f"{place}: key span {span!r} does not occur in the answer as whole words")
    return tuple(spans)


def normalize_answer(text: str) -> str:
    """Whitespace runs to one space, stripped, lower case: the form exact match compares."""
    return re.sub(r"\s+", " ", text).strip().lower()


def key_matches(prediction: str, key: tuple[str, ...]) -> bool:
    """Whether every key span occurs in the prediction as whole words, after `normalize_answer`
    ("oslo" in "she lives in oslo." but not in "oslovia")."""
    text = normalize_answer(prediction)
    return all(re.search(r"(?<!\w)" + re.escape(normalize_answer(span)) + r"(?!\w)", text) for span in key)


def answer_correct(prediction: str, reference: str, key: tuple[str, ...] = ()) -> bool:
    """Evaluation's correctness: the key spans when the record has them, else exact match of the
    normalised whole answer."""
    if key:
        return key_matches(prediction, key)
    return normalize_answer(prediction) == normalize_answer(reference)


def _check_encodable(place: str, what: str, text: str) -> None:
    """JSON can spell a lone UTF-16 surrogate (`"\\ud800"`), which is no character: tokenizers fail
    on it mid-run. A surrogate pair (an emoji written as two escapes) decodes to one character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{place}: {what} holds a lone surrogate {text[e.start]!r} at character {e.start + 1}, "
                        "not a character (a broken \\uXXXX escape?)") from None


CHAT_ROLES = ("system", "user", "assistant", "tool")  # the roles chat templates render


def _chat_record(place: str, messages: Any, field: str) -> QARecord:
    """All turns before the final assistant turn form the prompt (NRT_SPEC section 3)."""
    if not isinstance(messages, list):
        raise DataError(
            f"{place}: field '{field}' must be a list of messages, got {_type_name(messages)}"
        )
    if len(messages) < 2:
        raise DataError(
            f"{place}: field '{field}' needs at least 2 messages (the prompt and the "
            f"final assistant turn), got {len(messages)}"
        )
    clean = []
    for j, m in enumerate(messages):
        where = f"{place}: {field}[{j}]"
        if not isinstance(m, dict):
            raise DataError(
                f"{where} must be an object with 'role' and 'content', got {_type_name(m)}"
            )
        for key in ("role", "content"):
            if m.get(key) is None:
                raise DataError(f"{where}: missing '{key}'")
            if not isinstance(m[key], str):
                raise DataError(f"{where}: '{key}' must be a string, got {_type_name(m[key])}")
        if not m["role"].strip():
            raise DataError(f"{where}: 'role' is empty")
        _check_encodable(where, "'content'", m["content"])
        if m["role"] not in CHAT_ROLES:
            hint = difflib.get_close_matches(m["role"], CHAT_ROLES, n=1)
            raise DataError(f"{where}: unknown role {m['role']!r} (one of {', '.join(CHAT_ROLES)})"
                            + (f"; did you mean {hint[0]!r}?" if hint else ""))
        # Only role and content are kept: that is all the prompt renderers use.
        clean.append({"role": m["role"], "content": m["content"]})
    last = clean[-1]
    if last["role"] != "assistant":
        raise DataError(
            f"{place}: last message of '{field}' must have role 'assistant', got '{last['role']}'"
        )
    if not last["content"].strip():
        raise DataError(f"{place}: final assistant message of '{field}' is empty")
    if not any(m["role"] == "user" for m in clean[:-1]):
        raise DataError(f"{place}: '{field}' has no user turn before the final assistant turn (the question)")
    return QARecord(clean[:-1], last["content"], place)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --------------------------------------------------------------------------- prompts


def check_prompt_template(template: str) -> None:
    """Raise ValueError (naming the option `data.prompt_template`) unless `template` is a
    str.format string whose every placeholder is a plain `{question}`: no other field, no
    attribute or index (`{question.foo}`), no conversion or format spec, which would fail or
    change the question's text per record instead of at the start."""
    import string

    if not isinstance(template, str) or "{question}" not in template:
        raise ValueError(f"data.prompt_template must contain '{{question}}', got {template!r}")
    try:
        fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"data.prompt_template {template!r} is not a valid template ({e}); "
                         "write literal braces as {{ }}") from None
    for f, conv, spec in fields:
        if f != "question" or conv or spec:
            shown = "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"data.prompt_template {template!r}: {shown} is not allowed, the only placeholder is "
                             "a plain {question}; write literal braces as {{ }}")


def render_prompt(tokenizer, prompt: str | list[dict], template: str = "{question}\n") -> str:
    """Render a record's prompt as text, ending where the model should start writing.

    With a chat template on the tokenizer it is applied with a generation prompt
    (a plain question becomes one user turn) and `template` is not used. Without
    one, a plain question is `template.format(question=...)` and chat messages are
    joined as "role: content\\n" lines followed by "assistant: ".
    """
    check_prompt_template(template)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return template.format(question=prompt)
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant: "


def with_think_prompt(records: list[QARecord], think_prompt: str) -> list[QARecord]:
    """The records with `think_prompt` appended to the question (to the last user turn of chat
    records) on a new line; unchanged when it is empty."""
    if not think_prompt:
        return list(records)
    out = []
    for rec in records:
        if isinstance(rec.prompt, str):
            prompt = f"{rec.prompt}\n{think_prompt}"
        else:
            messages = [dict(m) for m in rec.prompt]
            last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
            messages[last_user]["content"] = f"{messages[last_user]['content']}\n{think_prompt}"
            prompt = messages
        out.append(replace(rec, prompt=prompt))
    return out


# --------------------------------------------------------------------------- tokens


@dataclass
class TokenizedExample:
    """Token ids of one example, ready for the layout of NRT_SPEC section 3.

    prompt_ids: the rendered prompt, bos included when the tokenizer has one.
    answer_ids: the reference answer tokens followed by eos (len >= 2).
    source: the record's place string, for error messages.
    key: the record's key spans (QARecord.key), for evaluation.
    """

    prompt_ids: list[int]
    answer_ids: list[int]
    source: str
    key: tuple[str, ...] = ()


def special_token_texts(tokenizer) -> list[str]:
    """The texts a tokenizer reads as control tokens: its special tokens, the added tokens marked
    special, and `<|response_start|>` (added at training time when missing). Longest first."""
    from nrt.tokens import RESPONSE_START

    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            texts.add(str(added))
    texts.add(RESPONSE_START)
    return sorted((t for t in texts if t), key=len, reverse=True)


def _special_text_in(rec: QARecord, specials: list[str]) -> tuple[str, str] | None:
    """(where, token) of the first special-token text in a record's question, messages or answer."""
    parts = ([("question", rec.prompt)] if isinstance(rec.prompt, str)
             else [(f"message {j} ({m['role']})", m["content"]) for j, m in enumerate(rec.prompt)])
    for where, text in [*parts, ("answer", rec.answer)]:
        for token in specials:
            if token in text:
                return where, token
    return None


def tokenize_records(
    records: Iterable[QARecord],
    tokenizer,
    template: str,
    max_prompt_length: int,
    max_answer_length: int,
    skip_overlong: bool = False,
    split_special_tokens: bool = False,
) -> tuple[list[TokenizedExample], int]:
    """Tokenise prompts and answers separately; returns (examples, number skipped).

    A prompt longer than `max_prompt_length` tokens, or an answer longer than
    `max_answer_length` tokens (eos included), raises DataError at the record's
    source, or is counted and dropped when `skip_overlong`. Dropping every record
    raises DataError. Text that spells one of the tokenizer's special tokens (`special_token_texts`:
    eos, `<|response_start|>`, a chat template's markers) in a question, message or answer raises
    DataError naming the record and the token: it would be read as that control token. With
    `split_special_tokens` such text is tokenized as plain text instead (answers and plain-template
    prompts; a chat template's prompt keeps its own markers, so there it stays an error).
    """
    records = list(records)
    check_prompt_template(template)
    limits = {"max_prompt_length": max_prompt_length, "max_answer_length": max_answer_length}
    for option, value in limits.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"data.{option} must be a positive integer, got {value!r}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos token; set tokenizer.eos_token before training")
    if not records:
        raise DataError("no records to tokenize")

    specials = special_token_texts(tokenizer)
    chat = bool(getattr(tokenizer, "chat_template", None))
    for rec in records:
        found = _special_text_in(rec, specials)
        if found is None:
            continue
        where, token = found
        if split_special_tokens and (where == "answer" or not chat):  # tokenized as plain text below
            continue
        if where == "answer" and token == tokenizer.eos_token:
            raise DataError(f"{rec.source}: answer contains the end-of-sequence token {token!r} as text")
        hint = ("a chat template's prompt cannot hold it as plain text" if split_special_tokens else
                "data.split_special_tokens=true (nrt eval, probe: --split-special-tokens) reads it as plain text")
        raise DataError(f"{rec.source}: the {where} contains the special token {token!r} as text, which would "
                        f"be read as that control token ({hint})")
    prompt_ids = _encode_naming_the_record(tokenizer, records, template, split_special_tokens)
    # The answer is tokenised on its own, never together with a trace (NRT_SPEC section 3).
    answer_ids = _batch_ids(tokenizer, [r.answer for r in records], add_special_tokens=False,
                            split_special_tokens=split_special_tokens)

    examples, skipped, first_skip = [], 0, None
    for rec, p_ids, a_ids in zip(records, prompt_ids, answer_ids):
        a_ids = a_ids + [eos_id]
        problem = None
        if len(p_ids) > max_prompt_length:
            problem = (
                f"prompt is {len(p_ids)} tokens, longer than "
                f"data.max_prompt_length={max_prompt_length}"
            )
        elif len(a_ids) > max_answer_length:
            problem = (
                f"answer is {len(a_ids)} tokens (eos included), longer than "
                f"data.max_answer_length={max_answer_length}"
            )
        if problem is None:
            examples.append(TokenizedExample(p_ids, a_ids, rec.source, rec.key))
        elif skip_overlong:
            skipped += 1
            first_skip = first_skip or f"{rec.source}: {problem}"
        else:
            raise DataError(f"{rec.source}: {problem}")
    if not examples:
        raise DataError(
            f"all {skipped} records are too long and were skipped (first: {first_skip})"
        )
    return examples, skipped


def _encode_naming_the_record(tokenizer, records: list[QARecord], template: str, split_special_tokens: bool):
    """encode_prompts over the records; a chat template that refuses one (a `raise_exception` on
    roles it does not accept, a missing field) is a DataError naming that record's file and line."""
    from jinja2 import TemplateError

    try:
        return encode_prompts(tokenizer, [r.prompt for r in records], template, split_special_tokens)
    except TemplateError as error:
        for rec in records:  # the batch failed: find the record, rendering one at a time
            try:
                render_prompt(tokenizer, rec.prompt, template)
            except TemplateError as e:
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise DataError(f"{rec.source}: the chat template cannot render this record ({message})") from None
        raise error


def encode_prompts(
    tokenizer, prompts: list[str | list[dict]], template: str = "{question}\n", split_special_tokens: bool = False
) -> list[list[int]]:
    """Render and batch-tokenise prompts: one list of token ids per prompt.

    Training and generation must both go through this so a model sees the same
    prompt tokens at both times. bos is added only where it is not already there:
    chat templates usually write the bos text themselves (e.g. Llama 3's
    "<|begin_of_text|>"), so letting the tokenizer add special tokens as well would
    double it; plain-template prompts need the tokenizer to add it. Tokenizers
    without a bos token get no special tokens at all (some would append eos).
    """
    texts = [render_prompt(tokenizer, p, template) for p in prompts]
    bos = getattr(tokenizer, "bos_token", None)
    add = [bool(bos) and not t.startswith(bos) for t in texts]
    out: list[list[int] | None] = [None] * len(texts)
    for flag in (True, False):
        idx = [i for i, a in enumerate(add) if a == flag]
        if idx:
            plain = not getattr(tokenizer, "chat_template", None)  # a chat template's markers stay tokens
            ids = _batch_ids(tokenizer, [texts[i] for i in idx], add_special_tokens=flag,
                             split_special_tokens=split_special_tokens and plain)
            for i, row in zip(idx, ids):
                out[i] = row
    return out


def _batch_ids(tokenizer, texts: list[str], add_special_tokens: bool, split_special_tokens: bool = False
               ) -> list[list[int]]:
    # One batched call (parallel in a fast tokenizer); skipping the masks we do not
    # use saves about a third of the time on large datasets.
    enc = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        return_attention_mask=False,
        return_token_type_ids=False,
        **({"split_special_tokens": True} if split_special_tokens else {}),
    )
    return enc["input_ids"]


def read_examples(
    path,
    tokenizer,
    question_field: str = "question",
    answer_field: str = "answer",
    messages_field: str | None = None,
    template: str = "{question}\n",
    max_prompt_length: int = 10**6,
    max_answer_length: int = 10**6,
    skip_overlong: bool = False,
    limit: int | None = None,
    prepare=None,
    split_special_tokens: bool = False,
) -> tuple[list[QARecord], list[TokenizedExample], int]:
    """`load_qa_records` then `tokenize_records` (the first `limit` records; `prepare` may change
    them in between): (records, examples, skipped). Every problem is a one-line DataError: a bad
    record, a prompt or chat template that cannot render one, a file that cannot be read."""
    from jinja2 import TemplateError

    try:
        records = load_qa_records(path, question_field, answer_field, messages_field)[:limit]
        if prepare is not None:
            records = prepare(records)
        examples, skipped = tokenize_records(records, tokenizer, template, max_prompt_length, max_answer_length,
                                             skip_overlong, split_special_tokens)
    except DataError:
        raise
    except (ValueError, TemplateError) as e:
        raise DataError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return records, examples, skipped
