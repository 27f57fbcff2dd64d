"""Policy-collapse detection: traces shrinking to a few tokens, or their entropy vanishing.

Rule: the reference value of a metric is its mean over the first `reference_steps`
logged steps. A later step is unhealthy when `trace_length_mean` or `trace_entropy` falls
below `fraction` x its reference. `patience` consecutive unhealthy steps are a collapse,
reported with the metric that tripped and the step where the unhealthy run began.
"""

from __future__ import annotations

WATCHED = ("trace_length_mean", "trace_entropy")


class CollapseDetector:
    def __init__(self, fraction: float = 0.25, patience: int = 5, reference_steps: int = 5):
        self.fraction, self.patience, self.reference_steps = fraction, patience, reference_steps
        self.history: dict[str, list[float]] = {m: [] for m in WATCHED}
        self.unhealthy_since: int | None = None
        self.streak = 0

    def reference(self, metric: str) -> float | None:
        values = self.history[metric][: self.reference_steps]
        return sum(values) / len(values) if len(values) == self.reference_steps else None

    def update(self, metrics: dict) -> str | None:
        """Feed one step's metrics; returns a message the first step a collapse is confirmed."""
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
        return {"history": self.history, "unhealthy_since": self.unhealthy_since, "streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.unhealthy_since, self.streak = state["history"], state["unhealthy_since"], state["streak"]
