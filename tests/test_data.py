"""Tests for nrt.data: loading every format, error messages, prompts and tokens."""

import csv
import json
import re
import string

import datasets
import pytest
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from nrt.data import (
    DataError,
    QARecord,
    check_prompt_template,
    encode_prompts,
    load_qa_records,
    render_prompt,
    tokenize_records,
)

ROWS = [
    {"question": "What is 2+2?", "answer": "4"},
    {"question": "Capital of France?", "answer": "Paris, of course."},
    {"question": "Say \"hi\", then a comma", "answer": "hi,"},
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # Dataset.from_parquet writes an Arrow cache; keep it out of the home directory.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    datasets.disable_progress_bars()


def make_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """A char-level tokenizer (one id per printable ASCII character), built offline."""
    specials = ["<unk>", "<pad>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(string.printable)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>" if bos else None,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def at(path):
    """Regex for a message starting with `path`, matched literally."""
    return "^" + re.escape(str(path))


def pairs(records):
    return [(r.prompt, r.answer) for r in records]


# ---------------------------------------------------------------- formats


def test_every_format_loads_the_same_records(tmp_path):
    expected = [(r["question"], r["answer"]) for r in ROWS]
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    splits = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    splits.save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "bbh.json").write_text(json.dumps({"canary": "x", "examples": ROWS}))
    paths = [
        write_jsonl(tmp_path / "d.jsonl", ROWS),
        write_csv(tmp_path / "d.csv", ROWS),
        tmp_path / "list.json",
        tmp_path / "bbh.json",
        tmp_path / "d.parquet",
        tmp_path / "saved",
        tmp_path / "saved_dict",
    ]
    for p in paths:
        assert pairs(load_qa_records(p)) == expected, p


def test_sources_name_the_place(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n" + json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    assert [r.source for r in load_qa_records(p)] == [f"{p}:2", f"{p}:4"]
    c = write_csv(tmp_path / "d.csv", ROWS[:2])  # header is line 1
    assert [r.source for r in load_qa_records(c)] == [f"{c}:2", f"{c}:3"]
    j = tmp_path / "d.json"
    j.write_text(json.dumps(ROWS[:2]))
    assert [r.source for r in load_qa_records(j)] == [f"{j}: record 0", f"{j}: record 1"]
    pq = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS[:2]).to_parquet(str(pq))
    assert [r.source for r in load_qa_records(pq)] == [f"{pq}: row 0", f"{pq}: row 1"]


@pytest.mark.parametrize("content", [b"PAR1garbagePAR1", b"not parquet at all, no magic bytes"])
def test_a_corrupt_parquet_is_one_error_and_nothing_on_stderr(content, tmp_path, capfd):
    p = tmp_path / "bad.parquet"
    p.write_bytes(content)
    with pytest.raises(DataError, match=at(p) + ": cannot read parquet file: "):
        load_qa_records(p)
    assert capfd.readouterr().err == ""  # datasets' reader logged a line of its own before raising


def test_csv_multiline_value_names_its_first_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('question,answer\n"two\nlines",a\nq,""\n')
    with pytest.raises(DataError, match=at(p) + r":4: field 'answer' is empty$"):
        load_qa_records(p)


def test_custom_field_names_and_bom(tmp_path):
    p = tmp_path / "bbh.csv"
    p.write_bytes("\ufeffinput,target\nq1,a1\n".encode("utf-8"))  # Excel writes a BOM
    records = load_qa_records(p, question_field="input", answer_field="target")
    assert pairs(records) == [("q1", "a1")]


def test_chat_records_split_prompt_and_final_turn(tmp_path):
    p = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT, "id": 7}, ROWS[0]])
    chat, qa = load_qa_records(p)
    assert chat.prompt == CHAT[:2] and chat.answer == "Blue."
    assert qa.prompt == ROWS[0]["question"] and qa.answer == "4"


def test_chat_from_parquet_and_mixed_null_columns(tmp_path):
    # A parquet file mixing chat and Q&A rows has nulls in the columns a row does not use.
    pq = tmp_path / "mixed.parquet"
    datasets.Dataset.from_list(
        [
            {"messages": CHAT, "question": None, "answer": None},
            {"messages": None, "question": "q", "answer": "a"},
        ]
    ).to_parquet(str(pq))
    chat, qa = load_qa_records(pq)
    assert chat.prompt == CHAT[:2] and chat.answer == "Blue."
    assert (qa.prompt, qa.answer) == ("q", "a")


def test_messages_field_none_disables_chat(tmp_path):
    p = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    assert load_qa_records(p)[0].answer == "Blue."
    with pytest.raises(
        DataError, match=at(p) + r":1: missing fields 'question' and 'answer' \(fields present: messages\)$"
    ):
        load_qa_records(p, messages_field=None)


# ---------------------------------------------------------------- bad input

USER = {"role": "user", "content": "q"}
REPLY = {"role": "assistant", "content": "a"}

# (record written as one jsonl line, the problem the message must name)
BAD_RECORDS = [
    ({"question": "q", "answer": 5}, "field 'answer' must be a string, got int"),
    ({"question": "q", "answer": "  \n"}, "field 'answer' is empty"),
    ({"question": "", "answer": "a"}, "field 'question' is empty"),
    ({"question": "q", "answer": None}, "field 'answer' is null"),
    ({"question": "q", "reply": "a"}, "missing field 'answer' (fields present: question, reply)"),
    ({"q": 1}, "missing fields 'question' and 'answer' (or 'messages' for chat data) (fields present: q)"),
    ([1, 2], "record must be an object, got list"),
    ({"messages": "hi"}, "field 'messages' must be a list of messages, got str"),
    ({"messages": [REPLY]}, "field 'messages' needs at least 2 messages"),
    ({"messages": [USER, USER]}, "last message of 'messages' must have role 'assistant', got 'user'"),
    ({"messages": [USER, {**REPLY, "content": " "}]}, "final assistant message of 'messages' is empty"),
    ({"messages": [{"role": "user"}, REPLY]}, "messages[0]: missing 'content'"),
    ({"messages": [{**USER, "content": ["x"]}, REPLY]}, "messages[0]: 'content' must be a string, got list"),
    ({"messages": ["hi", REPLY]}, "messages[0] must be an object with 'role' and 'content', got str"),
]


@pytest.mark.parametrize("record,problem", BAD_RECORDS)
def test_bad_jsonl_records(tmp_path, record, problem):
    # Two good lines and a blank line first, so the reported line number is checked.
    p = tmp_path / "data.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        load_qa_records(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:4: {problem}") and "\n" not in msg, msg


def test_a_lone_surrogate_is_refused_naming_the_line_and_a_pair_is_one_character(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text(json.dumps(ROWS[0]) + '\n{"question": "q \\ud83d\\ude00", "answer": "a"}\n'
                 '{"question": "q", "answer": "x\\ud800"}\n')
    with pytest.raises(DataError, match=at(p) + r":3: field 'answer' holds a lone surrogate '\\ud800' at character 2"):
        load_qa_records(p)
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"messages": [{"role": "user", "content": "\\udfff"}, {"role": "assistant", "content": "a"}]}\n')
    with pytest.raises(DataError, match=at(chat) + r":1: messages\[0\]: 'content' holds a lone surrogate"):
        load_qa_records(chat)
    p.write_text('{"question": "q \\ud83d\\ude00", "answer": "a"}\n')
    assert load_qa_records(p)[0].prompt == "q \U0001f600"


def test_invalid_json_line(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text(json.dumps(ROWS[0]) + '\n{"question": "q" "answer": "a"}\n')
    with pytest.raises(DataError, match=at(p) + r":2: invalid JSON: Expecting ',' delimiter \(column 18\)$"):
        load_qa_records(p)


def test_not_utf8_names_line_and_column(tmp_path):
    for ext in ("jsonl", "json", "csv"):
        p = tmp_path / f"data.{ext}"
        p.write_bytes(b'question,answer\n"q","a"\n"\xc3\xa9t\xc3\xa9 ",\xff\n')
        with pytest.raises(
            DataError, match=at(p) + r":3: not valid UTF-8 \(byte 0xff at column 8\)$"
        ):
            load_qa_records(p)


def test_json_file_errors(tmp_path):
    p = tmp_path / "data.json"
    p.write_text('[\n  {"question": "q", "answer": "a"},\n  {"question": "q" "answer": "a"}\n]')
    with pytest.raises(
        DataError, match=at(p) + r":3: invalid JSON: Expecting ',' delimiter \(column 20\)$"
    ):
        load_qa_records(p)
    p.write_text(json.dumps([ROWS[0], "text", ROWS[1]]))
    with pytest.raises(DataError, match=at(p) + r": record 1: record must be an object, got str$"):
        load_qa_records(p)
    p.write_text(json.dumps({"train": ROWS, "test": ROWS}))
    with pytest.raises(
        DataError, match=at(p) + r": expected a list of records.*lists found: 'train', 'test'"
    ):
        load_qa_records(p)
    p.write_text('"just text"')
    with pytest.raises(DataError, match=at(p) + r": expected a list of records, got str$"):
        load_qa_records(p)


def test_csv_errors(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("question,answer\nq,a\nq,a,extra\n")
    with pytest.raises(
        DataError, match=at(p) + r":3: row has 3 values but the header has 2 columns$"
    ):
        load_qa_records(p)
    p.write_text("question,reply\nq,a\n")
    with pytest.raises(
        DataError, match=at(p) + r":2: missing field 'answer' \(fields present: question, reply\)$"
    ):
        load_qa_records(p)
    p.write_text("question,answer,answer\nq,a,b\n")
    with pytest.raises(DataError, match=at(p) + r":1: duplicate column\(s\) in header: answer$"):
        load_qa_records(p)


@pytest.mark.parametrize(
    "name,content", [("a.jsonl", "\n\n"), ("a.csv", "question,answer\n"), ("a.json", "[]")]
)
def test_empty_dataset(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=at(p) + r": no records$"):
        load_qa_records(p)


def test_missing_file_and_unsupported_extension(tmp_path):
    with pytest.raises(DataError, match=at(tmp_path) + r"/nope.jsonl: no such file or directory$"):
        load_qa_records(tmp_path / "nope.jsonl")
    p = tmp_path / "data.txt"
    p.write_text("q\ta\n")
    with pytest.raises(
        DataError, match=at(p) + r": unsupported file type '.txt' \(supported: .jsonl, .json, .csv, .parquet"
    ):
        load_qa_records(p)


def test_parquet_and_saved_dataset_errors(tmp_path):
    pq = tmp_path / "d.parquet"
    datasets.Dataset.from_list([ROWS[0], {"question": "q", "answer": " "}]).to_parquet(str(pq))
    with pytest.raises(DataError, match=at(pq) + r": row 1: field 'answer' is empty$"):
        load_qa_records(pq)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match=at(bad) + r": cannot read parquet file"):
        load_qa_records(bad)
    d = tmp_path / "splits"
    ds = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"validation": ds, "test": ds}).save_to_disk(str(d))
    with pytest.raises(
        DataError, match=at(d) + r": dataset has no 'train' split \(splits: validation, test\)$"
    ):
        load_qa_records(d)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(
        DataError, match=at(empty_dir) + r": not a dataset directory written by datasets' save_to_disk"
    ):
        load_qa_records(empty_dir)


# ---------------------------------------------------------------- prompts


def test_render_prompt_without_chat_template():
    tok = make_tokenizer()
    assert render_prompt(tok, "Why?", "Q: {question}\nA:") == "Q: Why?\nA:"
    assert render_prompt(tok, "{not a field}") == "{not a field}\n"  # braces in data are text
    assert render_prompt(tok, CHAT[:2]) == "system: Be brief.\nuser: Name a colour.\nassistant: "


def test_render_prompt_with_chat_template():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    assert render_prompt(tok, "Why?", "Q: {question}") == "<s><user>Why?\n<assistant>"
    assert render_prompt(tok, CHAT[:2]) == "<s><system>Be brief.\n<user>Name a colour.\n<assistant>"


@pytest.mark.parametrize("template", ["Question:", "{question} {answer}", "{question} {", "{question}{question.foo}",
                                      "{question}{question[0]}", "{question:>40}", "{question!r}{question}",
                                      "{question}{}"])
def test_bad_prompt_template_names_the_option(template):
    with pytest.raises(ValueError, match="data.prompt_template"):
        check_prompt_template(template)
    with pytest.raises(ValueError, match="data.prompt_template"):
        render_prompt(make_tokenizer(), "q", template)


# ---------------------------------------------------------------- tokens


def test_answer_ids_are_standalone_tokens_plus_eos():
    tok = make_tokenizer()
    recs = [QARecord("What?", "Blue sky.", "x:1"), QARecord(CHAT[:2], "Blue.", "x:2")]
    examples, skipped = tokenize_records(recs, tok, "Q: {question}\n", 100, 100)
    assert skipped == 0
    for rec, ex in zip(recs, examples):
        assert ex.answer_ids[-1] == tok.eos_token_id
        standalone = tok(rec.answer, add_special_tokens=False)["input_ids"]
        assert ex.answer_ids == standalone + [tok.eos_token_id]
        assert ex.source == rec.source
    # Plain template: the tokenizer adds bos exactly once.
    text_ids = tok("Q: What?\n", add_special_tokens=False)["input_ids"]
    assert examples[0].prompt_ids == [tok.bos_token_id] + text_ids


def test_prompt_bos_not_doubled_by_chat_template():
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE  # the template writes "<s>" itself
    (ex,), _ = tokenize_records([QARecord("Hi", "Yo", "x:1")], tok, "{question}\n", 100, 100)
    assert ex.prompt_ids.count(tok.bos_token_id) == 1
    assert ex.prompt_ids == tok("<s><user>Hi\n<assistant>", add_special_tokens=False)["input_ids"]
    # Generation encodes prompts with the same function, so it sees the same tokens.
    assert encode_prompts(tok, ["Hi"]) == [ex.prompt_ids]


def test_tokenizer_without_bos_adds_nothing():
    tok = make_tokenizer(bos=False)
    (ex,), _ = tokenize_records([QARecord("Hi", "Yo", "x:1")], tok, "{question}\n", 100, 100)
    assert ex.prompt_ids == tok("Hi\n", add_special_tokens=False)["input_ids"]


def test_overlong_raises_or_is_skipped():
    tok = make_tokenizer()
    recs = [
        QARecord("short", "ok", "d.jsonl:1"),
        QARecord("x" * 50, "ok", "d.jsonl:2"),  # prompt: bos + 50 + "\n" = 52 tokens
        QARecord("short", "y" * 30, "d.jsonl:3"),  # answer: 30 + eos = 31 tokens
    ]
    with pytest.raises(
        DataError, match=r"^d.jsonl:2: prompt is 52 tokens, longer than data.max_prompt_length=20$"
    ):
        tokenize_records(recs, tok, "{question}\n", 20, 20)
    with pytest.raises(
        DataError, match=r"^d.jsonl:3: answer is 31 tokens \(eos included\), longer than data.max_answer_length=20$"
    ):
        tokenize_records(recs[::2], tok, "{question}\n", 20, 20)
    examples, skipped = tokenize_records(recs, tok, "{question}\n", 20, 20, skip_overlong=True)
    assert skipped == 2 and [e.source for e in examples] == ["d.jsonl:1"]
    # Limits are inclusive: exactly 52 prompt tokens and 31 answer tokens fit.
    assert tokenize_records(recs, tok, "{question}\n", 52, 31) [1] == 0
    with pytest.raises(
        DataError, match=r"^all 2 records are too long and were skipped \(first: d.jsonl:2: prompt is 52"
    ):
        tokenize_records(recs[1:], tok, "{question}\n", 20, 20, skip_overlong=True)


def test_eos_text_inside_answer_is_rejected():
    tok = make_tokenizer()
    with pytest.raises(
        DataError, match=r"^d.jsonl:4: answer contains the end-of-sequence token '</s>'"
    ):
        tokenize_records([QARecord("q", "a</s>b", "d.jsonl:4")], tok, "{question}\n", 50, 50)


def test_key_field_is_read_and_checked(tmp_path):
    """The optional "key" of a record (a span, or a list of spans, that only reasoning gets right)
    is kept, and a key that could never be matched is refused with its place."""
    from nrt.data import answer_correct, key_matches

    p = tmp_path / "k.jsonl"
    p.write_text(json.dumps({"question": "q1", "answer": "She lives in Oslo.", "key": "oslo"}) + "\n"
                 + json.dumps({"question": "q2", "answer": "It is 12 and 3.", "key": ["12", "3"]}) + "\n"
                 + json.dumps({"question": "q3", "answer": "plain"}) + "\n")
    records = load_qa_records(str(p))
    assert [r.key for r in records] == [("oslo",), ("12", "3"), ()]
    for bad, message in ((5, "must be a string or a non-empty list of strings, got int"),
                         ([], "must be a string or a non-empty list of strings"),
                         (" ", "holds an empty span"),
                         ("osl", "key span 'osl' does not occur in the answer as whole words")):
        p.write_text(json.dumps({"question": "q", "answer": "ok"}) + "\n"
                     + json.dumps({"question": "q", "answer": "She lives in Oslo.", "key": bad}) + "\n")
        with pytest.raises(DataError, match=at(p) + ":2: " + re.escape(f"field 'key' {message}")
                           if "span '" not in message else at(p) + ":2: " + re.escape(message)):
            load_qa_records(str(p))
    # whole words after normalisation; every span must occur; without a key, exact match
    assert key_matches("she lives in  OSLO.", ("oslo",)) and not key_matches("oslovia", ("oslo",))
    assert key_matches("12 then 3", ("12", "3")) and not key_matches("12 then 4", ("12", "3"))
    assert answer_correct("so it is oslo.", "She lives in Oslo.", ("oslo",))
    assert not answer_correct("so it is oslo.", "She lives in Oslo.")
    assert answer_correct(" she lives in oslo. ", "She lives in Oslo.")
