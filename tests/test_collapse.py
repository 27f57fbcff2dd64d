"""Collapse detection: the documented rule, and `on_collapse: stop` keeping the last healthy checkpoint."""


from nrt.training.collapse import CollapseDetector
from test_trainer import make_trainer


def feed(detector, lengths, entropies=None):
    messages = []
    for step, length in enumerate(lengths, start=1):
        entropy = entropies[step - 1] if entropies else 2.0
        messages.append(detector.update({"step": step, "trace_length_mean": length, "trace_entropy": entropy}))
    return messages


def test_collapse_needs_patience_consecutive_steps_below_the_fraction():
    d = CollapseDetector(fraction=0.25, patience=3, reference_steps=2)
    # reference length 40; 9 < 10 is unhealthy, 11 is not; the streak restarts after a healthy step
    messages = feed(d, [40, 40, 9, 9, 11, 9, 9, 9, 9])
    assert [i + 1 for i, m in enumerate(messages) if m] == [8]
    assert "trace_length_mean" in messages[7] and "since step 6" in messages[7]


def test_entropy_can_trip_on_its_own():
    d = CollapseDetector(fraction=0.5, patience=2, reference_steps=1)
    messages = feed(d, [10, 10, 10], entropies=[3.0, 1.0, 1.0])
    assert messages[-1] and "trace_entropy" in messages[-1]


def test_a_model_that_never_thinks_is_not_a_collapse():
    d = CollapseDetector(fraction=0.25, patience=1, reference_steps=2)
    assert not any(feed(d, [0, 0, 0, 0]))


def test_stop_on_collapse_ends_the_run_and_keeps_the_last_healthy_checkpoint(tiny_model_dir, sums_file, tmp_path):
    trainer = make_trainer(tiny_model_dir, sums_file, tmp_path, trainer__max_steps=12, trainer__save_steps=1,
                           trainer__on_collapse="stop", trainer__collapse_patience=2,
                           trainer__collapse_reference_steps=2, trainer__save_total_limit=1)
    real_step = trainer.train_step

    def shrinking_traces():  # real steps whose reported traces shrink to nothing from step 4 on
        metrics = real_step()
        if metrics["step"] >= 4:
            metrics["trace_length_mean"] = 0.0
        return metrics

    trainer.train_step = shrinking_traces
    trainer.train()
    assert trainer.stopped_by_collapse and "trace_length_mean" in trainer.stopped_by_collapse
    assert trainer.step == 5  # unhealthy at 4 and 5, patience 2
    out = tmp_path / "out"
    # checkpoints of unhealthy steps are gone; the last healthy one survived the save limit
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (out / "model.safetensors").read_bytes() == (out / "checkpoint-3" / "model.safetensors").read_bytes()
    # the kept model's card says which step it is and what the detector found
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "nrt" in card.data.tags
    assert "this model: step 3 of the run" in card.text and "the run went on to step 5" in card.text
    assert "- step 5: collapse detected" in card.text


def idle(step):  # a step where every trace was empty and every group's rewards equal
    return {"step": step, "trace_length_mean": 0.0, "trace_entropy": 0.0, "empty_trace_share": 1.0,
            "zero_std_group_share": 1.0}


def test_nothing_to_reinforce_is_flagged_at_the_end_of_the_first_steps_and_only_then():
    d = CollapseDetector(fraction=0.25, patience=1, reference_steps=3)
    messages, flags = [], []
    for s in (1, 2, 3, 4, 5):
        messages.append(d.update(idle(s)))
        flags.append((d.flag, d.unhealthy_since))
    assert [bool(m) for m in messages] == [False, False, True, False, False]
    assert "nothing to reinforce" in messages[2] and "nrt probe" in messages[2]
    assert flags[2] == ("nothing_to_reinforce_detected", 1)  # the run had no healthy step
    # one step with a sampled trace (or unequal rewards) among the first ones: no alarm
    for thinking in ({"empty_trace_share": 0.5}, {"zero_std_group_share": 0.5}):
        d = CollapseDetector(fraction=0.25, patience=1, reference_steps=3)
        assert not any(d.update({**idle(s), **(thinking if s == 2 else {})}) for s in (1, 2, 3, 4, 5, 6))
    # resumed from a checkpoint in the middle of the first steps, it counts on
    d, e = CollapseDetector(reference_steps=3), CollapseDetector(reference_steps=3)
    d.update(idle(1))
    e.load_state_dict(d.state_dict())
    assert e.update(idle(2)) is None and "nothing to reinforce" in e.update(idle(3))


def test_a_model_that_never_thinks_raises_the_alarm_and_on_collapse_stop_ends_it_with_exit_3(
        tiny_model_dir, sums_file, tmp_path, monkeypatch, capsys):
    import json

    from transformers import AutoTokenizer

    import nrt.training.api as api
    from nrt.commands.cli import main
    from test_probe import biased_towards

    eos = AutoTokenizer.from_pretrained(tiny_model_dir).eos_token_id
    # eos first, always: every trace is empty (answered at once), every group's rewards are equal
    monkeypatch.setattr(api, "load_model", lambda source, dtype=None: biased_towards(tiny_model_dir, eos, 100.0))
    out = tmp_path / "out"
    args = ["train", "--model", tiny_model_dir, "--data", sums_file, "--output-dir", str(out), "trainer.max_steps=8",
            "trainer.max_completion_length=4", "trainer.per_device_train_batch_size=4", "trainer.num_generations=2",
            "trainer.collapse_reference_steps=3"]
    assert main(args + ["trainer.on_collapse=stop"]) == 3
    err = capsys.readouterr().err
    assert "nothing to reinforce: in each of the first 3 steps every trace was empty" in err
    assert "trainer.format_warmup_steps" in err and "no model was written" in err
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["step"] == 3 and steps[-1]["nothing_to_reinforce_detected"] == 1.0
    assert not (out / "model.safetensors").exists()
    warned = tmp_path / "warned"
    assert main(args[:6] + [str(warned)] + args[7:]) == 0  # on_collapse=warn: warned, and the run goes on
    assert "warning: nothing to reinforce" in capsys.readouterr().out
    assert (warned / "model.safetensors").exists()
