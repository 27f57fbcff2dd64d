"""No command replaces its own input: a report or a split written over the file it reads is refused, in one
line, before any work, with --overwrite too, however the paths are spelled; the input is left as it was."""

import os

import pytest

from nrt.commands.cli import USAGE_ERROR, main


def one_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("command", ["eval", "probe"])
def test_a_report_over_its_own_data_is_refused(command, tiny_model_dir, sums_file, tmp_path, capsys, monkeypatch):
    before = open(sums_file).read()
    monkeypatch.chdir(os.path.dirname(sums_file))
    spelled = os.path.join(".", "sub", "..", os.path.basename(sums_file))  # the same file, another spelling
    os.makedirs("sub", exist_ok=True)
    assert main([command, "--model", tiny_model_dir, "--data", sums_file, "--output", spelled]) == USAGE_ERROR
    assert "the report would replace it" in one_line(capsys)
    assert open(sums_file).read() == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_split_into_its_inputs_directory_is_refused(tmp_path, capsys, overwrite):
    data = tmp_path / "data"
    data.mkdir()
    source = data / "train.jsonl"
    source.write_text("".join(f'{{"question": "q{i}", "answer": "a{i}"}}\n' for i in range(20)))
    before = source.read_text()
    args = ["data", "split", "--input", str(source), "--output-dir", str(data), "--test-size", "5"]
    assert main(args + (["--overwrite"] if overwrite else [])) == USAGE_ERROR
    assert "would replace the input" in one_line(capsys)
    assert source.read_text() == before and sorted(p.name for p in data.iterdir()) == ["train.jsonl"]


def test_tulu3_into_the_directory_it_reads_is_refused(tmp_path, capsys):
    source = tmp_path / "mix"
    source.mkdir()
    (source / "part.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, '
                                       '{"role": "assistant", "content": "a"}]}\n')
    assert main(["data", "tulu3", "--input", str(source), "--output-dir", str(source), "--train-size", "1",
                 "--test-size", "1"]) == USAGE_ERROR
    assert f"is the input {source}" in one_line(capsys)
    assert sorted(p.name for p in source.iterdir()) == ["part.jsonl"]


# --------------------------------------------------------------------------- the rule, once per command
# Each command that writes a directory, with the place its output goes (OUT) and the name of a file it would
# write there (what a user's file of that name would lose). Every refusal comes before any work: no model
# loads, nothing is pretrained, so these run in a moment.

GYM_BBH = "models/gym-bbh"


def chat_file(path):
    path.write_text("".join('{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", '
                            '"content": "a%d"}]}\n' % (i, i) for i in range(6)))
    return str(path)


def dir_commands(tiny, data, chat, adapter):
    return {  # name -> (argv with OUT, the file it writes in OUT, its input directory)
        "train": (["train", "--model", tiny, "--data", data, "--output-dir", "OUT", "trainer.max_steps=1"],
                  "model.safetensors", tiny),
        "compare": (["compare", "--model", tiny, "--data", data, "--eval", f"e={data}", "--methods", "sft",
                     "--seeds", "0", "--output-dir", "OUT"], "report.md", tiny),
        "export": (["export", "--model", adapter, "--merge", "--output-dir", "OUT"], "model.safetensors", adapter),
        "gym pretrain": (["gym", "pretrain", "--steps", "1", "--output-dir", "OUT"], "config.json", None),
        "gym data": (["gym", "data", "--model", GYM_BBH, "--output-dir", "OUT", "--tasks", "multihop"], "multihop",
                     GYM_BBH),
        "data split": (["data", "split", "--input", data, "--test-size", "2", "--output-dir", "OUT"], "train.jsonl",
                       None),
        "data tulu3": (["data", "tulu3", "--input", chat, "--train-size", "2", "--test-size", "2", "--output-dir",
                        "OUT"], "test.jsonl", None),
        "demo": (["demo", "--base", GYM_BBH, "--output-dir", "OUT"], "report.md", GYM_BBH),
    }


def tree(directory) -> dict:
    from pathlib import Path

    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture
def command_inputs(tiny_model_dir, sums_file, tmp_path):
    adapter = tmp_path / "lora_run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "%s"}' % tiny_model_dir)
    return tiny_model_dir, sums_file, chat_file(tmp_path / "chat.jsonl"), str(adapter)


def refused(capsys, argv, out) -> str:
    assert main([str(out) if a == "OUT" else a for a in argv]) == USAGE_ERROR
    return one_line(capsys)


@pytest.mark.parametrize("command", list(dir_commands("m", "d", "c", "a")))
def test_no_command_writes_into_a_model_directory_or_a_users_files(command, command_inputs, tmp_path, capsys):
    import shutil

    argv, written, _ = dir_commands(*command_inputs)[command]
    model = tmp_path / "someone_elses_model"
    shutil.copytree(command_inputs[0], model)
    before = tree(model)
    assert "is a model directory" in refused(capsys, argv, model)
    assert tree(model) == before

    users = tmp_path / "users_files"
    users.mkdir()
    (users / written).write_text("the user's own file")
    assert "not empty and not an nrt" in refused(capsys, argv, users)
    assert tree(users) == {written: b"the user's own file"}


@pytest.mark.parametrize("command", list(dir_commands("m", "d", "c", "a")))
def test_no_command_writes_into_another_kind_of_nrt_output(command, command_inputs, tmp_path, capsys):
    from nrt.outputs import MARKERS

    argv, written, _ = dir_commands(*command_inputs)[command]
    own = {"train": "run", "compare": "comparison", "demo": "comparison", "export": "export",
           "gym pretrain": "gym model", "gym data": "gym data"}.get(command, "data preparation")
    other = "run" if own != "run" else "comparison"
    out = tmp_path / "other"
    out.mkdir()
    (out / MARKERS[other]).write_text("{}")
    (out / written).write_text("theirs")
    before = tree(out)
    assert f"is an nrt {other}, not an nrt {own}" in refused(capsys, argv, out)
    assert tree(out) == before


@pytest.mark.parametrize("command", [c for c, (_, _, i) in dir_commands("m", "d", "c", "a").items() if i])
def test_no_command_writes_into_its_own_input_directory(command, command_inputs, capsys):
    argv, _, source = dir_commands(*command_inputs)[command]
    before = tree(source)
    assert f"is the input {source}" in refused(capsys, argv, source)
    assert tree(source) == before


@pytest.mark.parametrize("command", ["gym data", "data split"])
def test_an_earlier_output_is_replaced_only_with_overwrite(command, command_inputs, tmp_path, capsys):
    argv, written, _ = dir_commands(*command_inputs)[command]
    out = tmp_path / "out"
    argv = [str(out) if a == "OUT" else a for a in argv]
    assert main(argv) == 0
    capsys.readouterr()
    before = tree(out)
    assert "holds an earlier nrt" in refused(capsys, argv, out)
    assert tree(out) == before
    assert main(argv + ["--overwrite"]) == 0 and (out / written).exists()


# --------------------------------------------------------------------------- reports (one file)

def file_commands(tiny, data):
    return {
        "eval": ["eval", "--model", tiny, "--data", data, "--limit", "2", "--output", "OUT"],
        "probe": ["probe", "--model", tiny, "--data", data, "--limit", "2", "--samples", "1", "--output", "OUT"],
        "gym probe": ["gym", "probe", "--model", GYM_BBH, "--limit", "1", "--tasks", "multihop", "--output", "OUT"],
        "demo --results": ["demo", "--base", GYM_BBH, "--output-dir", "OUT_DIR", "--results", "OUT"],
    }


@pytest.mark.parametrize("command", list(file_commands("m", "d")))
def test_no_report_replaces_a_file_nrt_did_not_write(command, tiny_model_dir, sums_file, tmp_path, capsys):
    argv = [str(tmp_path / "demo") if a == "OUT_DIR" else a for a in file_commands(tiny_model_dir, sums_file)[command]]
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    assert f"{notes}: exists and is not an nrt" in refused(capsys, argv, notes)
    assert notes.read_text() == '{"mine": true}' and not (tmp_path / "demo").exists()
    assert "is a directory" in refused(capsys, argv, tmp_path)


def test_a_report_replaces_its_own_earlier_report(tiny_model_dir, sums_file, tmp_path, capsys):
    import json

    out = tmp_path / "report.json"
    argv = file_commands(tiny_model_dir, sums_file)["eval"]
    for limit in ("2", "3"):
        argv = [str(out) if a == "OUT" else a for a in argv]
        argv[argv.index("--limit") + 1] = limit
        assert main(argv) == 0
        assert json.loads(out.read_text())["summary"]["n"] == int(limit)


# --------------------------------------------------------------------------- the pieces

def test_leftovers_of_a_killed_command_count_as_empty_and_markers_name_the_kind(tmp_path):
    from nrt.errors import OutputError
    from nrt.outputs import check_output_dir, mark_dir, output_kind

    out = tmp_path / "run"
    out.mkdir()
    (out / ".nrt.lock").write_text("123")
    (out / ".nrt_compare.json.tmp").write_text("{")
    check_output_dir(out, "export")  # only leftovers: empty
    mark_dir(out, "comparison")
    assert output_kind(out) == "comparison"
    check_output_dir(out, "comparison", resumable=True)
    with pytest.raises(OutputError, match="holds an earlier nrt comparison"):
        check_output_dir(out, "comparison")


def test_written_whole_leaves_the_old_output_on_failure_and_no_temporary(tmp_path):
    import errno

    from nrt.errors import WriteFailed
    from nrt.outputs import output_kind, written_whole

    final = tmp_path / "model"
    with written_whole(final, "export") as tmp:
        (tmp / "weights").write_text("v1")
    assert (final / "weights").read_text() == "v1" and output_kind(final) == "export"
    with pytest.raises(WriteFailed, match=f"writing {final} failed"):
        with written_whole(final, "export") as tmp:
            (tmp / "weights").write_text("v2, half")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(RuntimeError):
        with written_whole(final, "export") as tmp:
            raise RuntimeError("a bug, not a write failure")
    assert (final / "weights").read_text() == "v1"
    with written_whole(final, "export") as tmp:
        (tmp / "weights").write_text("v2")
    assert (final / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary, no old copy
