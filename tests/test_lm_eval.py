"""lm-eval's `--model nrt`: choices scored after a trace (against a hand computation through the model),
generation equal to `nrt eval`'s, the harness end to end on nrt's local tasks, and its refusals."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from nrt.commands.cli import main  # noqa: E402
from nrt.evaluation.lm_eval_backend import NRTLM  # noqa: E402
from nrt.tokens import RESPONSE_START  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTIONS = ["3+4=", "not ( True ) and ( True ) is", "9+1="]
GYM_BBH = str(Path(__file__).resolve().parents[1] / "models" / "gym-bbh")  # answers BBH's formats in words


def request(kind, *args):
    return Instance(kind, {}, tuple(args), 0)


@torch.no_grad()
def hand_greedy_trace(model, prompt, rs, eos, limit):
    """Greedy trace one full forward per token: stops before <|response_start|> or eos, or at the limit."""
    ids, trace = list(prompt), []
    for _ in range(limit):
        nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        if nxt in (rs, eos):
            break
        trace.append(nxt)
        ids.append(nxt)
    return trace


@torch.no_grad()
def hand_score(model, prefix, continuation):
    """sum_t log p(c_t | prefix, c_<t), one full forward per token; and whether each c_t is the argmax."""
    ids, total, greedy = list(prefix), 0.0, True
    for t in continuation:
        lp = model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
        total += float(lp[t])
        greedy &= int(lp.argmax()) == t
        ids.append(t)
    return total, greedy


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return NRTLM(pretrained=tiny_model_dir, max_trace_tokens=6, max_answer_tokens=5, batch_size=2)


def test_choices_are_scored_after_the_greedy_trace_as_by_hand(lm):
    tok, model = lm.tokenizer, lm.model
    rs = tok.convert_tokens_to_ids(RESPONSE_START)
    reqs = [request("loglikelihood", q, choice) for q in QUESTIONS[:2] for choice in (" True", " False", " 7")]
    got = lm.loglikelihood(reqs)
    for (q, choice), (lp, greedy) in zip([r.args for r in reqs], got):
        prompt = tok(q + "\n", add_special_tokens=False)["input_ids"]
        trace = hand_greedy_trace(model, prompt, rs, tok.eos_token_id, 6)
        cont = tok(choice.strip(), add_special_tokens=False)["input_ids"]  # no delimiter space, no eos
        want, want_greedy = hand_score(model, prompt + trace + [rs], cont)
        assert lp == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    assert len({round(lp, 6) for lp, _ in got}) == len(got)  # every choice has its own score


def test_think_false_scores_right_after_the_marker(tiny_model_dir):
    plain = NRTLM(pretrained=tiny_model_dir, think=False, batch_size=3)
    tok, rs = plain.tokenizer, plain.response_start_id
    (lp, _), = plain.loglikelihood([request("loglikelihood", "3+4=", " 7")])
    want, _ = hand_score(plain.model, tok("3+4=\n", add_special_tokens=False)["input_ids"] + [rs],
                         tok("7", add_special_tokens=False)["input_ids"])
    assert lp == pytest.approx(want, abs=1e-4)


def test_several_sampled_traces_give_the_log_mean_probability(tiny_model_dir):
    """samples=3: the score is log((1/3) sum_k p(c | x, z_k)) over the backend's own traces."""
    lm3 = NRTLM(pretrained=tiny_model_dir, max_trace_tokens=6, temperature=1.0, samples=3, seed=1)
    prefixes = lm3._trace_prefixes(["3+4="], disable_tqdm=True)[0]
    assert len(prefixes) == 3 and len({tuple(p) for p in prefixes}) > 1  # three traces, not all the same
    cont = lm3.tokenizer("7", add_special_tokens=False)["input_ids"]
    per_trace = torch.tensor([hand_score(lm3.model, p, cont)[0] for p in prefixes], dtype=torch.float64)
    (lp, _), = lm3.loglikelihood([request("loglikelihood", "3+4=", " 7")])
    assert lp == pytest.approx(float(per_trace.exp().mean().log()), abs=1e-4)


def bbh_questions(task, n):
    from nrt.evaluation.evaluate import default_bbh_dir

    examples = json.loads((default_bbh_dir() / f"{task}.json").read_text())["examples"][:n]
    return [e["input"] for e in examples], [e["target"] for e in examples]


def test_generation_is_nrt_evals():
    """The same answers as `nrt eval`'s greedy think-then-answer (models/gym-bbh on BBH items);
    stop strings cut the answer."""
    from nrt.data import TokenizedExample, encode_prompts
    from nrt.evaluation.evaluate import EvalConfig, evaluate

    lm = NRTLM(pretrained=GYM_BBH, max_trace_tokens=96, max_answer_tokens=16, batch_size=4)
    questions, targets = (a + b for a, b in zip(bbh_questions("boolean_expressions", 4),
                                                 bbh_questions("multistep_arithmetic_two", 4)))
    tok = lm.tokenizer
    examples = [TokenizedExample(p, [tok.eos_token_id], f"q{i}", ())
                for i, p in enumerate(encode_prompts(tok, questions))]
    _, rows = evaluate(lm.model, tok, examples, targets, EvalConfig(96, 16, batch_size=4, one_pass=True),
                       lm.response_start_id)
    got = lm.generate_until([request("generate_until", q, {"until": [], "max_gen_toks": 16}) for q in questions])
    assert got == [r["prediction"] for r in rows]
    assert sum(r["correct"] for r in rows) >= 2 and all(got)  # real answers, not empty strings
    answer = next(a for a in got if len(a) >= 2)
    stop = answer[-1]
    cut = lm.generate_until([request("generate_until", questions[got.index(answer)],
                                     {"until": [stop], "max_gen_toks": 16})])
    assert cut == [answer[: answer.index(stop)]]


def test_perplexity_tasks_are_refused(lm):
    with pytest.raises(ValueError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([request("loglikelihood_rolling", "some text")])


@pytest.mark.parametrize("args, message", [
    ("max_trace_tokens=0", "max_trace_tokens=0: must be a positive integer"),
    ("samples=2", "samples=2: several traces need temperature > 0"),
    ("think=maybe", "think='maybe': must be true or false"),
    ("beam=4", "unknown argument 'beam'"),
    ("", "pretrained=DIR: the model or run directory is required"),
    ("pretrained=/no/such/model", "/no/such/model"),  # the later pretrained= wins: a missing model
])
def test_bad_model_args_are_one_line(tiny_model_dir, tmp_path, capsys, args, message):
    model_args = f"pretrained={tiny_model_dir},{args}" if args else "think=true"
    code = main(["lm-eval", "run", "--model", "nrt", "--model_args", model_args,
                 "--tasks", "nrt_bbh_boolean_expressions", "--limit", "1", "--output_path", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nrt: error:") and message in err[-1]


def harness(tmp_path, model_dir, task, limit, budgets="max_trace_tokens=6,max_answer_tokens=5"):
    out = tmp_path / task
    assert main(["lm-eval", "run", "--model", "nrt", "--model_args", f"pretrained={model_dir},{budgets}",
                 "--tasks", task, "--limit", str(limit), "--batch_size", "4", "--output_path", str(out),
                 "--log_samples"]) == 0
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"][task]
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()]
    return results, samples


def test_harness_bbh_task_matches_nrt_eval(tmp_path):
    """`nrt lm-eval run --tasks nrt_bbh_multistep_arithmetic_two` and `nrt eval --bbh
    multistep_arithmetic_two` on models/gym-bbh: the same predictions and the same accuracy."""
    results, samples = harness(tmp_path, GYM_BBH, "nrt_bbh_multistep_arithmetic_two", 8,
                               "max_trace_tokens=96,max_answer_tokens=16")
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", GYM_BBH, "--bbh", "multistep_arithmetic_two", "--limit", "8",
                 "--max-trace-tokens", "96", "--max-answer-tokens", "16", "--output", str(report)]) == 0
    rows = json.loads(report.read_text())
    by_doc = {s["doc_id"]: s["filtered_resps"][0] for s in samples}
    assert [by_doc[i] for i in range(8)] == [r["prediction"] for r in rows["examples"]]
    assert all(by_doc.values())
    assert results["exact_match,none"] == pytest.approx(rows["summary"]["accuracy"])


def test_harness_multiple_choice_picks_the_higher_score(tiny_model_dir, tmp_path):
    results, samples = harness(tmp_path, tiny_model_dir, "nrt_bbh_boolean_expressions_mc", 4)
    for s in samples:
        scores = [float(r[0][0]) for r in s["resps"]]
        assert s["acc"] == float(max(range(2), key=lambda i: scores[i]) == int(s["target"]))
    assert results["acc,none"] == pytest.approx(sum(s["acc"] for s in samples) / len(samples))


def test_include_path_is_added_once():
    from nrt.commands.harness import TASKS_DIR, harness_argv

    assert harness_argv(["run", "--tasks", "x"])[-2:] == ["--include_path", str(TASKS_DIR)]
    assert harness_argv(["run", "--include_path", "mine"]) == ["run", "--include_path", "mine"]
    assert harness_argv(["--help"]) == ["--help"]
    assert (TASKS_DIR / "nrt_gsm8k.yaml").is_file()


def test_the_vllm_engine_writes_the_same_greedy_traces_and_answers():
    """engine=vllm (vLLM's CPU build, float32) against nrt's engine on models/gym-bbh and BBH items."""
    import os

    if os.environ.get("NRT_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm")
    questions = bbh_questions("boolean_expressions", 4)[0] + bbh_questions("multistep_arithmetic_two", 4)[0]
    args = dict(pretrained=GYM_BBH, max_trace_tokens=96, max_answer_tokens=16, batch_size=8)
    native, on_vllm = NRTLM(**args), NRTLM(**args, engine="vllm", gpu_memory_utilization=0.02)
    reqs = [request("generate_until", q, {"until": [], "max_gen_toks": 16}) for q in questions]
    answers = on_vllm.generate_until(reqs)
    assert answers == native.generate_until(reqs) and all(answers)
    assert on_vllm._trace_prefixes(questions, True) == native._trace_prefixes(questions, True)


def test_engine_and_force_trace_refusals(tiny_model_dir):
    with pytest.raises(ValueError, match="engine='tgi': must be nrt or vllm"):
        NRTLM(pretrained=tiny_model_dir, engine="tgi")
    with pytest.raises(ValueError, match="force_trace=true: needs engine=nrt"):
        NRTLM(pretrained=tiny_model_dir, engine="vllm", force_trace=True)
