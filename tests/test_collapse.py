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
