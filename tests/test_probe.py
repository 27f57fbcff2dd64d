"""The premise probe (nrt.evaluation.probe, `nrt probe`) on a tiny model: hand-computed standard
errors, the forced mode never answering at once, the gain as answer_logprobs defines it."""

import json
import math
import statistics

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nrt.commands.cli import main
from nrt.data import QARecord, tokenize_records
from nrt.engine.sampling import question_seed
from nrt.evaluation.evaluate import answer_logprobs
from nrt.data import with_think_prompt
from nrt.engine.answer_rows import RowKind, decode_rows
from nrt.evaluation.probe import ProbeConfig, free_result, mean_and_standard_error, probe

from conftest import tiny_sums_setup  # the tests folder is on the path (pytest rootdir conftest)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    return tiny_sums_setup(tiny_model_dir, tmp_path_factory.mktemp("d") / "s.jsonl", n=8)


def test_standard_error_is_sample_std_over_root_n():
    mean, se = mean_and_standard_error([1.0, 0.0, 0.0, 1.0])
    assert mean == 0.5 and se == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))  # 0.288675
    assert mean_and_standard_error([2.0, 4.0, 9.0]) == pytest.approx((5.0, math.sqrt(13.0 / 3)))
    assert math.isnan(mean_and_standard_error([3.0])[1])


def test_summary_means_and_standard_errors_follow_the_rows_and_the_gain_is_answer_logprobs(setup):
    model, tok, records, examples, rs = setup
    cfg = ProbeConfig(samples=3, max_trace_tokens=6, max_answer_tokens=4, batch_size=3, seed=7)
    _, rows = probe(model, tok, examples, [r.answer for r in records], cfg, rs)
    # references = the direct answers of questions 0-2, restyled: direct accuracy 3/8
    refs = [f" {row['direct_prediction'].upper()}" if i < 3 else "nothing" for i, row in enumerate(rows)]
    summary, rows = probe(model, tok, examples, refs, cfg, rs)
    assert [r["direct_correct"] for r in rows] == [True] * 3 + [False] * 5
    assert summary["direct_accuracy"] == 3 / 8
    assert summary["direct_accuracy_se"] == pytest.approx(math.sqrt((3 / 8) * (5 / 8) * 8 / 7 / 8))
    gains = [r["reasoning_gain"] for r in rows]
    assert summary["reasoning_gain_se"] == pytest.approx(statistics.stdev(gains) / math.sqrt(8))
    # the gain, independently: answer_logprobs (sampled traces scored by a packed forward), mean over K
    prompts, answers = [ex.prompt_ids for ex in examples], [ex.answer_ids for ex in examples]
    w, d = answer_logprobs(model, prompts, answers, num_generations=3, max_trace_tokens=6,
                           seeds=[question_seed(7, i) for i in range(8)], response_start_id=rs,
                           eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    torch.testing.assert_close(torch.tensor(gains, dtype=torch.float32), w.view(8, 3).mean(1) - d, atol=1e-4, rtol=0)


def biased_towards(tiny_model_dir, token: int, bias: float):
    """The tiny model with an output bias on `token` (100: its greedy next token everywhere)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
        head.weight.copy_(weight)
        head.bias.zero_()
        head.bias[token] = bias
        model.lm_head = head
    return model


def test_forced_mode_always_writes_a_trace_even_when_the_model_would_answer_at_once(tiny_model_dir, setup):
    _, tok, records, examples, rs = setup
    model = biased_towards(tiny_model_dir, rs, 100.0)
    cfg = ProbeConfig(samples=1, max_trace_tokens=5, max_answer_tokens=3, batch_size=4)
    summary, rows = probe(model, tok, examples, [r.answer for r in records], cfg, rs)
    assert summary["free_think_share"] == 0.0  # left free, it answers at once
    assert all(r["think_trace_length"] >= 1 for r in rows)  # forced: never
    assert summary["think_trace_length"] >= 1


def test_think_prompt_goes_into_the_rendered_chat_prompt(setup):
    _, tok, _, _, _ = setup
    tok = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    records = with_think_prompt([QARecord("1+2=", "3", "a:1"),
                                 QARecord([{"role": "user", "content": "2+2="}], "4", "a:2")], "Think.")
    examples, _ = tokenize_records(records, tok, "{question}\n", 64, 16)
    assert tok.decode(examples[0].prompt_ids) == "<user>1+2=\nThink.\n<assistant>"
    assert tok.decode(examples[1].prompt_ids) == "<user>2+2=\nThink.\n<assistant>"
    assert with_think_prompt(records, "") == records


def test_probe_cli_writes_a_report_and_rejects_bad_input_before_loading(tiny_model_dir, sums_file, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["probe", "--model", tiny_model_dir, "--data", sums_file, "--limit", "3", "--samples", "2",
                 "--max-trace-tokens", "4", "--think-prompt", "Think.", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    task = report["tasks"]["sums"]
    assert task["summary"]["n"] == 3 and len(task["examples"][0]["answer_logprob_per_trace"]) == 2
    assert task["prompt_example"].endswith("\nThink.\n")
    bad = tmp_path / "bad.json"
    assert main(["probe", "--model", tiny_model_dir, "--data", sums_file, "--samples", "0", "--output", str(bad)]) == 2
    assert "argument --samples: must be at least 1, got 0" in capsys.readouterr().err and not bad.exists()
    bbh = tmp_path / "bbh"
    bbh.mkdir()
    (bbh / "boolean_expressions.json").write_text(json.dumps({"examples": [{"input": "True is", "target": "True"}]}))
    assert main(["probe", "--model", tiny_model_dir, "--bbh", "boolean_expresion", "--bbh-dir", str(bbh),
                 "--output", str(bad)]) == 2
    assert "did you mean 'boolean_expressions'" in capsys.readouterr().err and not bad.exists()


@pytest.mark.parametrize("stop_token", ["response_start", "eos"])
def test_the_free_mode_equals_a_decoded_free_row_whether_the_model_stops_at_once_or_not(tiny_model_dir, setup,
                                                                                         stop_token):
    """free_result (direct or think, by the think row's first_choice_forbidden) against a free greedy
    row decoded on its own, on a model biased so that some questions stop at once and some do not."""
    _, tok, _, examples, rs = setup
    token = rs if stop_token == "response_start" else tok.eos_token_id
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [ex.prompt_ids for ex in examples]
    with torch.no_grad():  # how far the stop token is below the first choice after each prompt
        gaps = sorted(float(lg.max() - lg[token]) for lg in
                      (plain(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts))
    half = len(gaps) // 2  # a bias between two gaps: the stop token first after half of the prompts
    model = biased_towards(tiny_model_dir, token, (gaps[half - 1] + gaps[half]) / 2)
    kinds = [RowKind(0), RowKind(6, 0.0, (rs, tok.eos_token_id)), RowKind(6)]
    results = decode_rows(model, prompts, kinds, answers=None, seeds=[0] * len(prompts), response_start_id=rs,
                          eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, max_answer_tokens=4)
    stopped = [res[1].first_choice_forbidden for res in results]
    assert 0 < sum(stopped) < len(stopped)  # both cases happen
    for (direct, think, free), stop in zip(results, stopped):
        derived = free_result(direct, think)
        assert (derived.trace_ids, derived.answer_ids) == (free.trace_ids, free.answer_ids)
        assert (free.trace_ids == []) == stop
    assert not any(r.first_choice_forbidden for res in results for r in (res[0], res[2]))  # only forced rows
