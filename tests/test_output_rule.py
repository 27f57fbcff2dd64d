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
