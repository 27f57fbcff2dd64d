"""Rollouts on vLLM (trainer.use_vllm) against nrt's own semantics, on vLLM's CPU build.

`make test` installs vLLM (the lock) and sets NRT_REQUIRE_VLLM=1, so there these tests run and a
missing vLLM fails them; elsewhere they are skipped when vLLM is not installed.
"""

import os
import subprocess
import sys

import pytest
import torch

if os.environ.get("NRT_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from nrt.engine.samplers import NativeSampler, TraceRequest  # noqa: E402
from nrt.engine.vllm_sampler import VLLMOptions, VLLMSampler  # noqa: E402
from nrt.tiny import char_tokenizer, tiny_llama  # noqa: E402
from nrt.tokens import RESPONSE_START  # noqa: E402

# vLLM's CPU attention kernels take head sizes of 32 and more: hidden 128 over 2 heads
HIDDEN, HEADS = 128, 2
OPTIONS = VLLMOptions(dtype="float32", gpu_memory_utilization=0.01, max_model_length=256, seed=0)


def make_model(seed=0):
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), hidden=HIDDEN, layers=2, heads=HEADS, seed=seed).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def engine():
    model, tokenizer = make_model()
    return model, tokenizer, VLLMSampler(model, OPTIONS)


def prompts(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def test_traces_stop_after_a_stop_id_or_at_the_limit(engine):
    model, tokenizer, sampler = engine
    rs, eos = tokenizer.convert_tokens_to_ids(RESPONSE_START), tokenizer.eos_token_id
    # a random model draws each id with probability ~1/99: with 6 stop ids a quarter of the traces reach the limit
    stops = [rs, eos] + list(range(10, 14))
    request = TraceRequest(prompts(tokenizer, ["1+2=", "what is 3?"]), 16, 24, stops, [5, 6])
    traces = sampler.sample(request)
    assert len(traces.token_ids) == 32 and len(traces.logprobs) == 32
    stopped = limited = 0
    for ids, lps in zip(traces.token_ids, traces.logprobs):
        assert 1 <= len(ids) <= 24 and len(lps) == len(ids)
        assert not set(ids[:-1]) & set(stops), "a trace went on past a stop id"
        if ids[-1] in stops:
            stopped += 1
        else:
            assert len(ids) == 24
            limited += 1
        assert all(lp <= 0 for lp in lps)
    assert stopped > 0 and limited > 0
    # the same ids and rule in nrt's engine: the stop token kept, nothing after it
    native = NativeSampler(model, pad_token_id=0)
    for ids in native.sample(request).token_ids:
        assert not set(ids[:-1]) & set(stops) and (ids[-1] in stops or len(ids) == 24)


def test_a_questions_traces_depend_on_its_seed_only(engine):
    _, tokenizer, sampler = engine
    stops = [tokenizer.eos_token_id]
    alone = sampler.sample(TraceRequest(prompts(tokenizer, ["7*8="]), 4, 20, stops, [123]))
    crowd = sampler.sample(TraceRequest(prompts(tokenizer, ["a", "7*8=", "longer question here"]), 4, 20, stops,
                                        [1, 123, 2]))
    assert crowd.token_ids[4:8] == alone.token_ids
    assert crowd.logprobs[4:8] == alone.logprobs
    other = sampler.sample(TraceRequest(prompts(tokenizer, ["7*8="]), 4, 20, stops, [124]))
    assert other.token_ids != alone.token_ids
    # the K traces of one question are distinct draws, not copies
    assert len({tuple(t) for t in alone.token_ids}) > 1


def engine_logprobs(sampler, ids):
    return torch.tensor(sampler.sequence_logprobs(ids))


def model_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


def one_update(model, ids, lr):
    """One AdamW step on the NLL of `ids`: every trained weight moves."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sync_puts_the_updated_weights_in_the_engine(lora):
    from nrt.config import ModelConfig
    from nrt.tokens import ensure_response_start_token
    from nrt.training.peft_model import wrap_lora

    model, tokenizer = make_model(seed=3)
    rs = ensure_response_start_token(model, tokenizer)
    if lora:
        model = wrap_lora(model, ModelConfig(use_peft=True, lora_r=4, lora_alpha=8), [rs])
        for name, p in model.named_parameters():  # LoRA's B starts at 0: give the adapter a delta to merge
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
    sampler = VLLMSampler(model, VLLMOptions(dtype="bfloat16", gpu_memory_utilization=0.01, max_model_length=128))
    ids = tokenizer("the answer is 42, since 6*7=42.", add_special_tokens=False).input_ids + [rs]
    before = model_logprobs(model, ids)
    tolerance = 0.05  # bf16 weights and compute against the float32 trainer model
    assert (engine_logprobs(sampler, ids) - before).abs().max() < tolerance

    one_update(model, ids, lr=0.05)
    after = model_logprobs(model, ids)
    assert (after - before).abs().max() > 10 * tolerance  # the update moved the policy
    assert (engine_logprobs(sampler, ids) - before).abs().max() < tolerance  # the engine has not seen it yet
    sampler.sync(model)
    synced = engine_logprobs(sampler, ids)
    assert (synced - after).abs().max() < tolerance
    assert (synced - before).abs().max() > 10 * tolerance


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    from nrt.tiny import save_tiny_model

    return save_tiny_model(str(tmp_path_factory.mktemp("vllm") / "model"), hidden=HIDDEN, layers=2, seed=0)


VLLM_RUN = dict(trainer__use_vllm=True, trainer__vllm_gpu_memory_utilization=0.01, trainer__max_steps=4,
                trainer__save_steps=2, trainer__warmup_ratio=0.5)


def test_a_vllm_run_reports_the_mismatch_and_resumes_with_the_same_traces(vllm_model_dir, sums_file, tmp_path):
    """NRTTrainer with trainer.use_vllm: the rollout-vs-trainer mismatch is logged every step, and a run
    killed after its step-2 checkpoint and resumed samples the same traces and logs the same metrics."""
    from test_resume import metrics_of, train_until_crash
    from test_trainer import make_trainer

    straight = make_trainer(vllm_model_dir, sums_file, tmp_path / "a", **VLLM_RUN)
    straight.train()
    expected = metrics_of(tmp_path / "a" / "out")
    assert [m["step"] for m in expected] == [1, 2, 3, 4]
    for m in expected:
        assert 0 <= m["rollout_kl"] < 1e-3  # a float32 engine: the trainer's policy up to kernel rounding
        assert m["rollout_ratio_max"] >= m["rollout_ratio_mean"] > 0
    assert len({m["reward_mean"] for m in expected}) > 1  # the weights changed between steps: so did the traces

    train_until_crash(make_trainer(vllm_model_dir, sums_file, tmp_path / "b", **VLLM_RUN), crash_at=3)
    resumed = make_trainer(vllm_model_dir, sums_file, tmp_path / "b", **VLLM_RUN)
    resumed.train(resume=True)
    got = metrics_of(tmp_path / "b" / "out")
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for want, have in zip(expected, got):
        for key in ("trace_length_mean", "trace_length_max", "response_start_share", "distinct_2"):
            assert have[key] == want[key], (want["step"], key)  # the same traces
        for key in ("reward_mean", "loss", "rollout_kl"):
            assert have[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (want["step"], key)


def test_use_vllm_refusals_are_one_line_exit_2(tmp_path, tiny_model_dir, sums_file):
    base = [sys.executable, "-m", "nrt", "train", "--model", tiny_model_dir, "--data", sums_file]
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vllm' or name.startswith('vllm.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    cases = [
        ({"PYTHONPATH": str(hidden)}, ["trainer.use_vllm=true"], "nrt[vllm"),
        ({}, ["trainer.use_vllm=true", "trainer.vllm_gpu_memory_utilization=1.5"], "vllm_gpu_memory_utilization"),
        ({}, ["trainer.use_vllm=true", "trainer.vllm_tensor_parallel_size=2"], "vllm_tensor_parallel_size"),
        ({}, ["trainer.use_vllm=true", "trainer.vllm_mode=server"], "trainer.vllm_mode"),
        ({}, ["trainer.use_vllm=true", "trainer.vllm_max_model_length=10"], "vllm_max_model_length"),
    ]
    for i, (env, overrides, expected) in enumerate(cases):
        out = tmp_path / f"run{i}"
        proc = subprocess.run(base + ["--output-dir", str(out)] + overrides, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=300)
        assert proc.returncode == 2, (overrides, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (overrides, proc.stderr)
        assert not out.exists()


def test_an_architecture_vllm_cannot_run_is_refused_before_loading(tmp_path, sums_file):
    from transformers import AutoConfig

    from nrt.tiny import save_tiny_model

    model_dir = save_tiny_model(str(tmp_path / "model"), hidden=HIDDEN, layers=2)
    config = AutoConfig.from_pretrained(model_dir)
    config.architectures = ["NotAModelVLLMKnowsForCausalLM"]
    config.save_pretrained(model_dir)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "nrt", "train", "--model", model_dir, "--data", sums_file,
                           "--output-dir", str(out), "trainer.use_vllm=true"], capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "vLLM cannot run NotAModelVLLMKnowsForCausalLM" in lines[0]
    assert not out.exists()


def test_two_processes_each_with_an_engine_make_the_one_process_update(vllm_model_dir, sums_file, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo), each with its own float32 vLLM engine on its own
    questions: a question's traces depend on its seed and the weights only, so the 2-process run samples
    the traces the 1-process run with 2 accumulated micro-batches samples, and makes the same update."""
    from safetensors.torch import load_file

    from test_distributed import run

    engine = ["trainer.use_vllm=true", "trainer.vllm_gpu_memory_utilization=0.01"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two = run(launch, vllm_model_dir, sums_file, tmp_path / "two", *engine)
    one = run([sys.executable], vllm_model_dir, sums_file, tmp_path / "one", *engine,
              "trainer.gradient_accumulation_steps=2")
    assert [m["step"] for m in two] == [1, 2]
    for a, b in zip(one, two):
        for key in ("trace_length_mean", "response_start_share"):
            assert a[key] == b[key], key  # the same traces
        for key in ("reward_mean", "reasoning_gain", "loss", "grad_norm", "rollout_kl"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), key
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5)
