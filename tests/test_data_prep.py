"""Tests for nrt.data_prep and `nrt data`: the recipe's Tulu-3 splits and the generic seeded split.

The expected splits are computed independently with datasets' own `Dataset.train_test_split`, the call
the official recipe's data script makes, over the raw rows."""

import errno
import hashlib
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nrt.commands.cli import main
from nrt.data import load_qa_records
from nrt.data_prep import (
    DataPrepError,
    Tulu3Options,
    prepare_tulu3,
    proportional_sizes,
    split_indices,
    write_splits,
)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def tulu_rows(n, start=0):
    """Rows in Tulu-3's schema; every 3rd has a system prompt, every 4th earlier turns."""
    rows = []
    for i in range(start, start + n):
        messages = [{"role": "system", "content": "Be helpful."}] if i % 3 == 0 else []
        if i % 4 == 0:
            messages += [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": f"hi {i}"}]
        messages += [{"role": "user", "content": f"question {i}?"}, {"role": "assistant", "content": f"answer {i}."}]
        rows.append({"id": f"row-{i}", "messages": messages, "source": "test"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)  # messages: list<struct<role, content>>, as Tulu-3's
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def official_split(rows, n_train, n_test, seed):
    """The official script's selection, by datasets itself: train_test_split, then the first n_train."""
    parts = datasets.Dataset.from_list(rows).train_test_split(test_size=n_test, seed=seed)
    return parts["train"].select(range(n_train)).to_list(), parts["test"].to_list()


def qa(row):
    return {"question": row["messages"][-2]["content"], "answer": row["messages"][-1]["content"],
            "id": row["id"], "source": row["source"]}


def run_tulu3(capsys, *args):
    code = main(["data", "tulu3", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- the split itself


@pytest.mark.parametrize("n,n_test,n_train", [(50, 7, 43), (50, 7, 30), (9, 1, 8)])
def test_split_indices_are_datasets_train_test_split(n, n_test, n_train):
    parts = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=n_test, seed=42)
    train, test = split_indices(n, n_test, n_train, seed=42)
    assert test.tolist() == parts["test"]["i"]
    assert train.tolist() == parts["train"]["i"][:n_train]


def test_proportional_sizes_keep_the_recipe_ratio():
    assert proportional_sizes(939_343, 220_000, 1_024) == (220_000, 1_024, False)
    assert proportional_sizes(221_024, 220_000, 1_024) == (220_000, 1_024, False)
    # 80 rows at 300:100 -> test 80 * 100 / 400 = 20
    assert proportional_sizes(80, 300, 100) == (60, 20, True)
    # 110,512 rows (half the recipe's total) -> test round(110512 * 1024 / 221024) = 512
    assert proportional_sizes(110_512, 220_000, 1_024) == (110_000, 512, True)
    assert proportional_sizes(50, 220_000, 1_024) == (49, 1, True)  # at least one test row
    with pytest.raises(DataPrepError):
        proportional_sizes(1, 220_000, 1_024)


# --------------------------------------------------------------------------- nrt data tulu3


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_tulu3_writes_the_official_rows_as_question_answer(fmt, tmp_path, capsys):
    rows = tulu_rows(60)
    source = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"mix.{fmt}", rows)
    code, out, err = run_tulu3(capsys, "--input", source, "--output-dir", tmp_path / "out",
                               "--train-size", 40, "--test-size", 10)
    assert code == 0, err
    train, test = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/test.jsonl")
    want_train, want_test = official_split(rows, 40, 10, seed=42)
    assert train == [qa(r) for r in want_train] and test == [qa(r) for r in want_test]
    assert "proportion" not in out and "wrote train 40, test 10" in out
    # the files are what nrt train reads: plain questions, no system prompt, no earlier turns
    records = load_qa_records(tmp_path / "out/train.jsonl")
    assert [r.prompt for r in records] == [r["messages"][-2]["content"] for r in want_train]
    prep = json.loads((tmp_path / "out/prep.json").read_text())
    assert prep["inputs"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert (prep["records"], prep["seed"], prep["written"], prep["dropped"]["count"]) == (
        60, 42, {"train": 40, "test": 10}, 0)


def test_tulu3_jsonl_and_parquet_give_the_same_splits(tmp_path):
    rows = tulu_rows(30)
    options = Tulu3Options(train_size=20, test_size=5)
    a = prepare_tulu3(write_jsonl(tmp_path / "a.jsonl", rows), options)
    b = prepare_tulu3(write_parquet(tmp_path / "b.parquet", rows), options)
    assert a.splits == b.splits and len(a.splits["train"]) == 20


def test_tulu3_directory_reads_its_files_in_sorted_order(tmp_path, capsys):
    first, second = tulu_rows(25), tulu_rows(20, start=25)
    folder = tmp_path / "mix"
    (folder / "data").mkdir(parents=True)
    write_parquet(folder / "data/train-00001-of-00002.parquet", second)  # written first, sorts second
    write_jsonl(folder / "data/train-00000-of-00002.jsonl", first)
    (folder / "data/README.md").write_text("not data")
    got = prepare_tulu3(folder / "data", Tulu3Options(train_size=30, test_size=8))
    want_train, want_test = official_split(first + second, 30, 8, seed=42)
    assert got.splits == {"train": [qa(r) for r in want_train], "test": [qa(r) for r in want_test]}
    assert [f["records"] for f in got.provenance["inputs"]] == [25, 20]
    # the download's top folder holds no data files itself: one line says where they are
    code, _, err = run_tulu3(capsys, "--input", folder, "--output-dir", tmp_path / "out")
    assert code == 2 and err.strip() == (f"nrt data: error: {folder}: no .jsonl or .parquet files in this "
                                         f"directory; the Tulu-3 download keeps them in data/: pass {folder / 'data'}")


def test_tulu3_fewer_rows_split_in_proportion_and_say_so(tmp_path, capsys):
    rows = tulu_rows(80)
    source = write_jsonl(tmp_path / "mix.jsonl", rows)
    code, out, _ = run_tulu3(capsys, "--input", source, "--output-dir", tmp_path / "out",
                             "--train-size", 300, "--test-size", 100)
    assert code == 0
    notes = [line for line in out.splitlines() if "proportion" in line]
    assert notes == ["80 records, fewer than 300 train + 100 test: "
                     "split in the same proportion into 60 train / 20 test"]
    want_train, want_test = official_split(rows, 60, 20, seed=42)
    assert read_jsonl(tmp_path / "out/test.jsonl") == [qa(r) for r in want_test]
    assert read_jsonl(tmp_path / "out/train.jsonl") == [qa(r) for r in want_train]
    # the recipe's own sizes on 80 rows: test round(80 * 1024 / 221024) = 0 -> at least 1
    code, out, _ = run_tulu3(capsys, "--input", source, "--output-dir", tmp_path / "recipe")
    assert code == 0 and "into 79 train / 1 test" in out


def test_tulu3_is_deterministic_by_seed(tmp_path, capsys):
    source = write_jsonl(tmp_path / "mix.jsonl", tulu_rows(40))
    outputs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        code, _, _ = run_tulu3(capsys, "--input", source, "--output-dir", tmp_path / name, "--seed", seed,
                               "--train-size", 30, "--test-size", 10)
        assert code == 0
        outputs[name] = [(tmp_path / name / f).read_bytes() for f in ("train.jsonl", "test.jsonl")]
    assert outputs["a"] == outputs["b"]
    assert outputs["a"][1] != outputs["c"][1] and outputs["a"][0] != outputs["c"][0]


def test_keep_earlier_turns_writes_the_whole_chat(tmp_path):
    rows = tulu_rows(12)
    got = prepare_tulu3(write_jsonl(tmp_path / "mix.jsonl", rows),
                        Tulu3Options(train_size=8, test_size=4, keep_earlier_turns=True))
    by_id = {r["id"]: r for r in rows}
    for line in got.splits["train"] + got.splits["test"]:
        assert line["messages"] == by_id[line["id"]]["messages"]
    write_splits(tmp_path / "out", got)
    record = load_qa_records(tmp_path / "out/test.jsonl")[0]
    assert record.prompt == by_id[got.splits["test"][0]["id"]]["messages"][:-1]


BAD = [
    ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn (roles: user)"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
     "no user turn (roles: system, assistant)"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
     "messages[0]: 'content' must be a string, got int"),
    ({"messages": "user: q\nassistant: a"}, "'messages' must be a list of messages, got str"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
     "the final turn must be the assistant's, got 'user'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
     "the last assistant turn is empty"),
    ({"messages": [{"role": "user", "content": "q\ud800"}, {"role": "assistant", "content": "a"}]},
     "messages[0] 'content' holds a lone surrogate '\\ud800' at character 2, not a character "
     "(a broken \\uXXXX escape?)"),
]


@pytest.mark.parametrize("bad,reason", BAD)
def test_a_bad_record_is_one_line_exit_2_and_nothing_written(bad, reason, tmp_path, capsys):
    rows = tulu_rows(10)
    source = write_jsonl(tmp_path / "mix.jsonl", rows[:6] + [bad] + rows[6:])
    code, out, err = run_tulu3(capsys, "--input", source, "--output-dir", tmp_path / "out")
    assert code == 2
    assert err.strip().splitlines() == [
        f"nrt data: error: {source}:7: {reason} (--skip-bad-records drops and counts such records)"]
    assert not (tmp_path / "out").exists()


def test_a_bad_parquet_row_names_its_row_and_leaves_an_earlier_preparation_intact(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", tulu_rows(20))
    assert run_tulu3(capsys, "--input", good, "--output-dir", tmp_path / "out")[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    rows = tulu_rows(6)
    rows[4]["messages"] = rows[4]["messages"][:-1]  # ends with the user's question (earlier turns: hello, hi)
    bad = write_parquet(tmp_path / "bad.parquet", rows)
    code, _, err = run_tulu3(capsys, "--input", bad, "--output-dir", tmp_path / "out", "--overwrite")
    assert code == 2 and f"{bad}: row 4: the final turn must be the assistant's, got 'user'" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    # and without --overwrite a good input does not replace an earlier preparation either
    code, _, err = run_tulu3(capsys, "--input", good, "--output-dir", tmp_path / "out", "--seed", 1)
    assert code == 2 and ("holds an earlier nrt data preparation (train.jsonl, test.jsonl, prep.json); "
                          "pass --overwrite") in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_skip_bad_records_drops_and_counts_them_after_the_official_split(tmp_path, capsys):
    rows = tulu_rows(40)
    bad_ids = {5, 17, 33}
    for i in bad_ids:
        rows[i]["messages"] = [m for m in rows[i]["messages"] if m["role"] != "assistant"]
    source = write_jsonl(tmp_path / "mix.jsonl", rows)
    code, out, _ = run_tulu3(capsys, "--input", source, "--output-dir", tmp_path / "out", "--skip-bad-records",
                             "--train-size", 25, "--test-size", 10)
    assert code == 0
    want_train, want_test = official_split(rows, 25, 10, seed=42)
    keep = ([r for r in want_train if int(r["id"][4:]) not in bad_ids],
            [r for r in want_test if int(r["id"][4:]) not in bad_ids])
    assert read_jsonl(tmp_path / "out/train.jsonl") == [qa(r) for r in keep[0]]
    assert read_jsonl(tmp_path / "out/test.jsonl") == [qa(r) for r in keep[1]]
    dropped = json.loads((tmp_path / "out/prep.json").read_text())["dropped"]
    assert dropped["count"] == 3
    assert (dropped["train"], dropped["test"]) == (25 - len(keep[0]), 10 - len(keep[1]))
    assert dropped["train"] + dropped["test"] + dropped["unselected"] == 3
    assert dropped["first"][0] == f"{source}:6: no assistant turn (roles: user)"
    assert "(3 bad records dropped)" in out


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    prepared = prepare_tulu3(write_jsonl(tmp_path / "mix.jsonl", tulu_rows(12)), Tulu3Options(8, 4))
    write_splits(tmp_path / "out", prepared)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    calls = []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 2:  # train.jsonl is written, test.jsonl is not
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("nrt.data_prep.os.fsync", full_disk)
    other = prepare_tulu3(tmp_path / "mix.jsonl", Tulu3Options(8, 4, seed=3))
    with pytest.raises(OSError):
        write_splits(tmp_path / "out", other, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


# --------------------------------------------------------------------------- nrt data split


def test_split_partitions_any_qa_file_with_the_same_permutation(tmp_path, capsys):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)]
    source = write_jsonl(tmp_path / "qa.jsonl", rows)
    code = main(["data", "split", "--input", str(source), "--output-dir", str(tmp_path / "out"),
                 "--test-size", "5", "--validation-size", "0.2", "--seed", "3"])
    assert code == 0
    got = {s: read_jsonl(tmp_path / f"out/{s}.jsonl") for s in ("train", "validation", "test")}
    assert [len(v) for v in got.values()] == [19, 6, 5]  # validation ceil(0.2 * 30) = 6
    assert sorted(r["question"] for v in got.values() for r in v) == sorted(r["question"] for r in rows)
    # the test split is datasets' train_test_split's; validation is the head of its train split
    parts = datasets.Dataset.from_list(rows).train_test_split(test_size=5, seed=3)
    assert got["test"] == parts["test"].to_list()
    assert got["validation"] + got["train"] == parts["train"].to_list()


@pytest.mark.parametrize("args,message", [
    (["--test-size", "30"], "--test-size/--validation-size: 30 test + 0 validation records leave no training records"),
    (["--test-size", "1.5"], "--test-size 1.5: a fraction must be in (0, 1)"),
    (["--test-size", "ten"], "--test-size 'ten': expected a number of records or a fraction in (0, 1)"),
    (["--test-size", "0"], "--test-size: must give at least 1 record, got 0"),
])
def test_split_bad_sizes_exit_2_naming_the_option(args, message, tmp_path, capsys):
    source = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)])
    code = main(["data", "split", "--input", str(source), "--output-dir", str(tmp_path / "out"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_split_refuses_a_lone_surrogate_naming_its_line(tmp_path, capsys):
    source = tmp_path / "qa.jsonl"
    source.write_text('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": "a\\ud800"}\n')
    code = main(["data", "split", "--input", str(source), "--output-dir", str(tmp_path / "out"), "--test-size", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{source}:2: field 'answer' holds a lone surrogate" in err, err
    assert not (tmp_path / "out").exists()


def test_split_names_the_bad_line_of_its_input(tmp_path, capsys):
    source = tmp_path / "qa.jsonl"
    source.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
    code = main(["data", "split", "--input", str(source), "--output-dir", str(tmp_path / "out"), "--test-size", "1"])
    assert code == 2
    want = f"nrt data: error: {source}:2: missing field 'answer' (fields present: question)"
    assert capsys.readouterr().err.strip() == want


# --------------------------------------------------------------------------- GSM8K


def test_gsm8k_answers_are_the_final_numbers(tmp_path):
    src = tmp_path / "gsm8k.jsonl"
    src.write_text(json.dumps({"question": "How many?", "answer": "2 * 500 = <<2*500=1000>>1000\n#### 1,000"}) + "\n"
                   + json.dumps({"question": "And now?", "answer": "It is 9 - 3 = 6.\n####  -6 "}) + "\n")
    out = tmp_path / "out"
    assert main(["data", "gsm8k", "--input", str(src), "--output-dir", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert rows == [{"question": "How many?", "answer": "1000"}, {"question": "And now?", "answer": "-6"}]
    prep = json.loads((out / "prep.json").read_text())
    assert prep["inputs"][0]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and prep["records"] == 2


def test_a_gsm8k_record_without_a_final_number_is_one_line_naming_it(tmp_path, capsys):
    src = tmp_path / "gsm8k.jsonl"
    src.write_text(json.dumps({"question": "q", "answer": "#### 3"}) + "\n"
                   + json.dumps({"question": "q2", "answer": "no marker here"}) + "\n")
    out = tmp_path / "out"
    assert main(["data", "gsm8k", "--input", str(src), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{src}:2" in err and "#### <number>" in err
    assert not out.exists()
