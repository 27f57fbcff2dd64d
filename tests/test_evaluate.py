"""`nrt eval`: exact match after normalisation, likelihoods against an independent forward."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nrt.commands.cli import main
from nrt.data import load_qa_records, tokenize_records
from nrt.evaluation.evaluate import EvalConfig, evaluate, normalize_answer
from nrt.tokens import RESPONSE_START


def test_normalize_answer_ignores_case_and_whitespace():
    assert normalize_answer("  True\n") == normalize_answer("true") == "true"
    assert normalize_answer("Kuna  Lo") == "kuna lo" != normalize_answer("kunalo")


@pytest.mark.parametrize("one_pass", [False, True], ids=["three-pass", "one-pass"])
def test_accuracy_counts_exact_matches_and_likelihoods_match_a_plain_forward(tiny_model_dir, sums_file, one_pass):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rs = tokenizer.convert_tokens_to_ids(RESPONSE_START)
    records = load_qa_records(sums_file)[:6]
    examples, _ = tokenize_records(records, tokenizer, "{question}\n", 64, 16)
    cfg = EvalConfig(max_trace_tokens=6, max_answer_tokens=4, batch_size=4, one_pass=one_pass)
    _, rows = evaluate(model, tokenizer, examples, [r.answer for r in records], cfg, rs)
    # make the references of the first three questions the model's own answers, restyled
    references = [f"  {row['prediction'].upper()} " if i < 3 else "no such answer" for i, row in enumerate(rows)]
    summary, rows = evaluate(model, tokenizer, examples, references, cfg, rs)
    assert [row["correct"] for row in rows] == [True] * 3 + [False] * 3
    assert summary["accuracy"] == pytest.approx(0.5)
    assert summary["reasoning_gain"] == pytest.approx(summary["answer_logprob"] - summary["answer_logprob_no_trace"])
    with torch.no_grad():  # no-trace likelihood of question 0 by a plain forward over the whole sequence
        ex = examples[0]
        ids = ex.prompt_ids + [rs] + ex.answer_ids
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        start = len(ex.prompt_ids) + 1
        expected = sum(logp[start - 1 + i, t].item() for i, t in enumerate(ex.answer_ids))
    assert rows[0]["answer_logprob_no_trace"] == pytest.approx(expected, abs=1e-4)


def test_eval_cli_writes_a_json_report_and_rejects_unknown_tasks(tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["eval", "--model", tiny_model_dir, "--data", sums_file, "--limit", "3",
                 "--max-trace-tokens", "4", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["summary"]["n"] == 3 and len(report["examples"]) == 3
    bbh = tmp_path / "bbh"
    bbh.mkdir()
    (bbh / "boolean_expressions.json").write_text(json.dumps({"examples": [{"input": "True is", "target": "True"}]}))
    assert main(["eval", "--model", tiny_model_dir, "--bbh", "boolean_expresions", "--bbh-dir", str(bbh)]) == 2
    assert "did you mean 'boolean_expressions'" in capsys.readouterr().err
    assert main(["eval", "--model", tiny_model_dir, "--bbh", "boolean_expressions", "--bbh-dir", str(bbh),
                 "--max-trace-tokens", "2", "--output", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["summary"]["n"] == 1


@pytest.mark.parametrize("command", ["eval", "probe"])
def test_eval_and_probe_read_chat_records_as_train_does(command, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    chat = {"messages": [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+2="},
                         {"role": "assistant", "content": "3"}]}
    data.write_text(json.dumps(chat) + "\n" + json.dumps({"question": "2+2=", "answer": "4"}) + "\n")
    out = tmp_path / "report.json"
    assert main([command, "--model", tiny_model_dir, "--data", str(data), "--max-trace-tokens", "2",
                 "--output", str(out)] + (["--samples", "2"] if command == "probe" else [])) == 0, capsys.readouterr()
    report = json.loads(out.read_text())
    rows = report["examples"] if command == "eval" else next(iter(report["tasks"].values()))["examples"]
    assert len(rows) == 2
    assert main([command, "--model", tiny_model_dir, "--data", str(data), "--messages-field", "",
                 "--output", str(tmp_path / "r2.json")]) == 2
    assert "missing fields 'question' and 'answer'" in capsys.readouterr().err
