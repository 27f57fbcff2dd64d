"""The NRT step: single-pass scoring equals the two-pass computation; data order; metrics."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nrt.config import Config
from nrt.data import load_qa_records, tokenize_records
from nrt.rewards import aggregate
from nrt.advantages import group_norm, normalize_token_signal
from nrt.loss import LossInputs, nrt_loss
from nrt.engine.sequences import completion_logprobs, gather_columns, pack
from nrt.training.api import make_trainer as trainer_for


def make_trainer(model_dir, data_file, tmp_path, **trainer_options):
    config = Config()
    config.model.model_name_or_path = model_dir
    config.data.path = data_file
    config.trainer.output_dir = str(tmp_path / "out")
    config.trainer.max_completion_length = 8
    config.trainer.num_generations = 4
    config.trainer.per_device_train_batch_size = 8
    config.trainer.learning_rate = 1e-3
    config.trainer.max_steps = 3
    for key, value in trainer_options.items():
        section, name = key.split("__")
        setattr(getattr(config, section), name, value)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, _ = tokenize_records(load_qa_records(data_file), tokenizer, "{question}\n", 64, 16)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return trainer_for(config, model, tokenizer, examples)  # NRTTrainer, or SFTTrainer for objective sft


def grads_of(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("answer_loss", ["fixed", "derived"])
@pytest.mark.parametrize("aggregation", ["weighted_sum_log_prob", "geometric_mean"])
def test_single_pass_matches_two_pass_loss_and_gradients(tiny_model_dir, sums_file, tmp_path, aggregation, answer_loss):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path,
                           method__aggregation=aggregation, method__answer_loss=answer_loss)
    chunk = trainer.step_questions(0)[:2]
    rollout = trainer.sample(chunk)
    k = trainer.k

    # single pass, as the trainer does it: reward from the update's own forward
    baseline = trainer.no_trace_logprobs(chunk)
    out, scored = trainer.micro_batch_loss(rollout, chunk, baseline, None)
    out.loss.backward()
    single_grads = grads_of(trainer.model)
    trainer.model.zero_grad(set_to_none=True)

    # the straightforward computation: a separate scoring pass, a no-trace pass per trace
    model = trainer.model
    with torch.no_grad():
        scored_lp, _ = completion_logprobs(model, rollout.batch)
        prompts = [q.example.prompt_ids for q in chunk for _ in range(k)]
        answers = [q.example.answer_ids for q in chunk for _ in range(k)]
        no_trace = pack(prompts, [[trainer.response_start_id] + a for a in answers], trainer.pad_id)
        base_lp, _ = completion_logprobs(model, no_trace)
        base, _ = gather_columns(base_lp, torch.ones(len(prompts), dtype=torch.long), rollout.answer_length)
    answer_old, mask = gather_columns(scored_lp, rollout.answer_start, rollout.answer_length)
    reward, signal = aggregate(aggregation, answer_old.double(), mask, base.double())
    advantages = group_norm(reward, k).float()
    weights = mask.float() if answer_loss == "fixed" else normalize_token_signal(signal, mask, k).float()
    logprobs, _ = completion_logprobs(model, rollout.batch)
    answer, _ = gather_columns(logprobs, rollout.answer_start, rollout.answer_length)
    two_pass = nrt_loss(LossInputs(logprobs, scored_lp, rollout.trace_mask, advantages, rollout.prefix_mask,
                                   answer, mask, weights))
    two_pass.loss.backward()

    torch.testing.assert_close(scored.advantages, advantages, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, two_pass.loss, rtol=1e-5, atol=1e-7)
    assert advantages.abs().sum() > 0  # the comparison is not vacuous
    for name, grad in grads_of(model).items():
        torch.testing.assert_close(single_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_step_questions_cover_data_once_per_epoch_in_seeded_order(tiny_model_dir, sums_file, tmp_path):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path)
    per_step = trainer.questions_per_step  # 2 questions (8 sequences / K=4)
    n = len(trainer.examples)
    seen = [q.position for s in range(n // per_step) for q in trainer.step_questions(s)]
    assert seen == list(range(n))
    sources = [q.example.source for s in range(n // per_step) for q in trainer.step_questions(s)]
    assert sorted(sources) == sorted(ex.source for ex in trainer.examples)
    assert sources != [ex.source for ex in trainer.examples]  # shuffled


def test_train_step_metrics_are_consistent(tiny_model_dir, sums_file, tmp_path):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path)
    before = copy.deepcopy(trainer.model.state_dict())
    metrics = trainer.train_step()
    assert metrics["step"] == 1
    gain = metrics["answer_logprob"] - metrics["answer_logprob_no_trace"]
    assert metrics["reasoning_gain"] == pytest.approx(gain, abs=1e-4)
    assert 0 <= metrics["trace_length_min"] <= metrics["trace_length_mean"] <= metrics["trace_length_max"] <= 8
    assert 0 <= metrics["response_start_share"] <= 1 and 0 <= metrics["zero_std_group_share"] <= 1
    assert metrics["trace_entropy"] > 0 and metrics["grad_norm"] > 0
    for key in ("time_generate", "time_score", "time_update"):
        assert metrics[key] >= 0
    # warmup starts at 0, so the first update may not move weights; a second one must
    trainer.train_step()
    changed = any(not torch.equal(before[n], p) for n, p in trainer.model.state_dict().items())
    assert changed


def test_steps_per_generation_uses_rollout_logprobs_as_old_policy(tiny_model_dir, sums_file, tmp_path):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path, trainer__steps_per_generation=2,
                           trainer__warmup_ratio=0.0)
    metrics = trainer.train_step()
    assert metrics["step"] == 1 and metrics["grad_norm"] > 0
    param = next(trainer.model.parameters())
    assert int(trainer.optimizer.optimizer.state[param]["step"]) == 2  # two updates on one rollout batch
    # the second update sees a moved policy: its ratios against the rollout-time
    # log-probs differ from 1, which only happens if those (not its own) are the old policy
    assert metrics["clip_fraction"] >= 0 and metrics["time_score"] > 0


def test_sft_step_minimises_mean_nll_of_marker_and_answer(tiny_model_dir, sums_file, tmp_path):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path, method__objective="sft", trainer__warmup_ratio=0.0)
    chunk = trainer.micro_batches(0)[0]
    assert len(chunk) == 8  # one sequence per question
    model = trainer.model
    # independent NLL: full forward over [prompt][rs][answer], labels shifted by one
    nll, count = 0.0, 0
    with torch.no_grad():
        for q in chunk:
            ids = q.example.prompt_ids + [trainer.response_start_id] + q.example.answer_ids
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            targets = torch.tensor(ids[len(q.example.prompt_ids):])
            logp = torch.log_softmax(logits[len(q.example.prompt_ids) - 1 : -1], -1)
            nll -= logp.gather(1, targets[:, None]).sum().item()
            count += len(targets)
    metrics = trainer.train_step()
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-4)
    after = trainer.train_step()
    assert after["step"] == 2 and "reasoning_gain" not in after


def test_format_warmup_steps_train_the_answer_format_then_nrt(tiny_model_dir, sums_file, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path, trainer__format_warmup_steps=1,
                           trainer__warmup_ratio=0.0)
    chunk = trainer.micro_batches(0)[0]
    assert len(chunk) == 2  # NRT's stream: 8 sequences per micro-batch = 2 questions x K=4
    model = trainer.model
    nll, count = 0.0, 0
    with torch.no_grad():  # independent NLL of [answer][eos] after each question and rs, float64
        for q in chunk:
            ids = q.example.prompt_ids + [trainer.response_start_id] + q.example.answer_ids
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            targets = torch.tensor(ids[len(q.example.prompt_ids) + 1:])  # the marker is given, not trained
            logp = torch.log_softmax(logits[len(q.example.prompt_ids) : -1], -1)
            nll -= logp.gather(1, targets[:, None]).sum().item()
            count += len(targets)
    sampled = []
    real_sample = trainer.sample
    monkeypatch.setattr(trainer, "sample", lambda chunk: sampled.append(chunk) or real_sample(chunk))
    warmup = trainer.train_step()
    assert warmup["format_warmup"] == 1.0 and warmup["loss"] == pytest.approx(nll / count, rel=1e-4)
    assert not sampled and "trace_length_mean" not in warmup  # no traces, so the collapse detector skips it
    after = trainer.train_step()
    assert sampled and "format_warmup" not in after and "reasoning_gain" in after


@pytest.mark.parametrize("overrides, message", [
    ({"method.objective": "sft", "trainer.format_warmup_steps": 2}, "is for method.objective=nrt"),
    ({"trainer.max_steps": 5, "trainer.format_warmup_steps": 5}, "leaves no NRT step"),
    ({"trainer.format_warmup_steps": -1}, "trainer.format_warmup_steps=-1: must be at least 0"),
])
def test_format_warmup_steps_checked(tmp_path, sums_file, overrides, message):
    from nrt.config import validate
    from nrt.errors import ConfigError

    config = Config()
    config.model.model_name_or_path, config.data.path = "m", sums_file
    config.trainer.output_dir, config.trainer.max_steps = str(tmp_path), 10
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_think_prompt_is_appended_to_every_training_question(tiny_model_dir, sums_file):
    from nrt.training.api import load_examples

    config = Config()
    config.data.path = sums_file
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain, _, _ = load_examples(config, tokenizer)
    config.data.think_prompt = "Think step by step."
    prompted, references, _ = load_examples(config, tokenizer)
    records = load_qa_records(sums_file)
    assert references == [r.answer for r in records]
    for ex, rec, before in zip(prompted, records, plain):
        text = tokenizer.decode(ex.prompt_ids, skip_special_tokens=True)
        assert text.endswith(f"{rec.prompt}\nThink step by step.\n")
        assert ex.answer_ids == before.answer_ids
