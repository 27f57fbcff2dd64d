"""Guards of the training loop: non-finite steps, non-finite weights, stop signals.

- A step whose loss, reward or gradient norm is NaN or inf makes no update: its gradients
  are dropped and the optimizer state is left as it was (the learning-rate schedule still
  advances, so it stays a function of the step). Each such step is a counted warning;
  `trainer.max_nonfinite_steps` of them in a row end the run as diverged, and the
  checkpoints whose weights produced them are dropped (DivergenceGuard.first_step).
- Weights are checked before every save: a tensor holding NaN or inf is never written.
- SIGTERM and SIGINT only set a flag (StopSignal); the loop checkpoints at the next step
  boundary and stops. A second SIGINT interrupts at once (KeyboardInterrupt).
"""

from __future__ import annotations

import math
import signal
import threading

import torch

WATCHED = ("loss", "reward", "grad_norm")  # what a step must keep finite to make its update


class NonFiniteError(RuntimeError):
    """Weights holding NaN or inf: refused before anything is written."""


def nonfinite_names(values: dict) -> list[str]:
    """Names of the values (tensors of any shape, or floats) holding a NaN or an inf."""
    bad = []
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            finite = bool(torch.isfinite(value.detach()).all()) if value.is_floating_point() else True
        else:
            finite = math.isfinite(float(value))
        if not finite:
            bad.append(name)
    return bad


def nonfinite_tensors(named_tensors) -> list[str]:
    """Names of the floating-point tensors of (name, tensor) pairs or a state dict holding NaN/inf."""
    items = named_tensors.items() if isinstance(named_tensors, dict) else named_tensors
    return [name for name, t in items if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())]


def check_weights(named_tensors, where: str) -> None:
    """Raise NonFiniteError naming up to three tensors if any holds a NaN or an inf."""
    bad = nonfinite_tensors(named_tensors)
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(f"refusing to write {where}: non-finite weights in {names}")


class DivergenceGuard:
    """Counts steps with non-finite values in a row; `max_in_row` of them are a divergence."""

    def __init__(self, max_in_row: int):
        self.max_in_row = max_in_row
        self.streak, self.first_step, self.skipped = 0, None, 0

    def update(self, step: int, nonfinite: list[str]) -> str | None:
        """Feed one step's non-finite names; returns a message when the run must stop."""
        if not nonfinite:
            self.streak, self.first_step = 0, None
            return None
        self.streak += 1
        self.skipped += 1
        self.first_step = self.first_step or step
        if self.streak < self.max_in_row:
            return None
        return (f"diverged at step {step}: non-finite {', '.join(nonfinite)} for {self.streak} steps in a row "
                f"(since step {self.first_step}; trainer.max_nonfinite_steps={self.max_in_row})")

    def warning(self, step: int, nonfinite: list[str]) -> str:
        return (f"step {step}: non-finite {', '.join(nonfinite)}; update skipped "
                f"({self.streak} in a row of at most {self.max_in_row}, {self.skipped} in this run)")

    def state_dict(self) -> dict:
        return {"streak": self.streak, "first_step": self.first_step, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.first_step, self.skipped = state["streak"], state["first_step"], state["skipped"]

    @property
    def protect_before(self) -> int | None:
        """While non-finite steps run, checkpoints from the step before the first one are suspect."""
        return None if self.first_step is None else self.first_step - 1


class StopSignal:
    """Within `with StopSignal() as stop:`, SIGTERM and SIGINT set `stop.received` (the signal's
    name) instead of ending the process; a second SIGINT raises KeyboardInterrupt. Outside the
    main thread (where handlers cannot be installed) it never fires."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
