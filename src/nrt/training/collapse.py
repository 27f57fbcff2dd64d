"""Policy-collapse detection: traces shrinking to a few tokens, or their entropy vanishing.

Rule: the reference value of a metric is its mean over the first `reference_steps`
logged steps. A later step is unhealthy when `trace_length_mean` or `trace_entropy` falls
below `fraction` x its reference. `patience` consecutive unhealthy steps are a collapse,
reported with the metric that tripped and the step where the unhealthy run began.

Nothing to reinforce: when in each of the first `reference_steps` steps every trace was empty
and every group's K rewards were equal (`empty_trace_share` and `zero_std_group_share` both 1),
the trace term has no signal at all and the run only fits the answer. The references are then
0 and the rule above could never trip, so this is its own alarm, raised at step
`reference_steps`, with what to try; `trainer.on_collapse=stop` stops on it too.
"""

from __future__ import annotations

WATCHED = ("trace_length_mean", "trace_entropy")

NOTHING_TO_REINFORCE_HINT = (
    "the model answers without thinking and no trace is sampled to reward; check whether it thinks when forced "
    "(nrt probe), teach it the format first (trainer.format_warmup_steps), sample more freely (a higher "
    "trainer.temperature), or ask for reasoning in the prompt (data.think_prompt)")


def nothing_to_reinforce(metrics: dict) -> bool:
    """Every trace of the step empty and every group's rewards equal: no trace-term signal."""
    return metrics.get("empty_trace_share", 0.0) >= 1.0 and metrics.get("zero_std_group_share", 0.0) >= 1.0


class CollapseDetector:
    def __init__(self, fraction: float = 0.25, patience: int = 5, reference_steps: int = 5):
        self.fraction, self.patience, self.reference_steps = fraction, patience, reference_steps
        self.history: dict[str, list[float]] = {m: [] for m in WATCHED}
        self.unhealthy_since: int | None = None
        self.streak = 0
        self.idle_steps = 0  # leading steps with nothing to reinforce
        self.flag = "collapse_detected"  # the metric marking the step of the last message

    def reference(self, metric: str) -> float | None:
        values = self.history[metric][: self.reference_steps]
        return sum(values) / len(values) if len(values) == self.reference_steps else None

    def update(self, metrics: dict) -> str | None:
        """Feed one step's metrics; returns a message the first step a collapse, or nothing to
        reinforce, is confirmed (`flag` then names its metric)."""
        steps_before = len(self.history[WATCHED[0]])
        if steps_before == self.idle_steps and nothing_to_reinforce(metrics):
            self.idle_steps += 1
            if self.idle_steps == self.reference_steps:
                self.flag, self.unhealthy_since = "nothing_to_reinforce_detected", metrics["step"] - self.idle_steps + 1
                for metric in WATCHED:
                    self.history[metric].append(float(metrics[metric]))
                return (f"nothing to reinforce: in each of the first {self.idle_steps} steps every trace was empty "
                        f"and every group's rewards were equal (step {metrics['step']}); {NOTHING_TO_REINFORCE_HINT}")
        self.flag = "collapse_detected"
        tripped = None
        for metric in WATCHED:
            reference = self.reference(metric)
            if reference is not None and reference > 0 and metrics[metric] < self.fraction * reference:
                tripped = tripped or (metric, metrics[metric], reference)
            self.history[metric].append(float(metrics[metric]))
        if tripped is None:
            self.streak, self.unhealthy_since = 0, None
            return None
        self.streak += 1
        self.unhealthy_since = self.unhealthy_since or metrics["step"]
        if self.streak != self.patience:
            return None
        metric, value, reference = tripped
        return (f"policy collapse at step {metrics['step']}: {metric} {value:.3g} stayed below "
                f"{self.fraction:g} x its reference {reference:.3g} for {self.patience} steps "
                f"(since step {self.unhealthy_since})")

    def state_dict(self) -> dict:
        return {"history": self.history, "unhealthy_since": self.unhealthy_since, "streak": self.streak,
                "idle_steps": self.idle_steps}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.unhealthy_since, self.streak = state["history"], state["unhealthy_since"], state["streak"]
        self.idle_steps = state.get("idle_steps", 0)  # checkpoints from before the alarm
