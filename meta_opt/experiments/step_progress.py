"""Progress of a long loop over steps: a live bar on a terminal, plain lines elsewhere.

On a terminal, a tqdm bar shows step, loss, speed and ETA. When the stream is not a
terminal (a log file, CI, `nohup`), plain lines are printed instead: one whenever the
caller asks (e.g. at each logged step), after the first step (so a long compile is seen
to end) and at least every `min_interval` seconds, each with step, loss, speed and ETA.
The ETA leaves out the first step, which includes compilation.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h04m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepProgress:
    """Reports `update(step, loss)` calls of a loop from `start` to `total`.

    Args:
      label: what runs (shown first on every line).
      total: the last step.
      start: the step the loop starts after (a resumed run).
      unit: name of a step ("meta-step", "step").
      loss_name: name of the loss shown ("meta-loss", "train loss").
      stream: where to write (default stdout).
      interactive: bar (True) or plain lines (False); default: whether `stream` is a tty.
      min_interval: seconds after which a plain line is printed even if not asked for.
    """

    def __init__(
        self,
        label: str,
        total: int,
        start: int = 0,
        unit: str = "meta-step",
        loss_name: str = "meta-loss",
        stream: TextIO | None = None,
        interactive: bool | None = None,
        min_interval: float = 30.0,
    ):
        self.label, self.total, self.start = label, int(total), int(start)
        self.unit, self.loss_name = unit, loss_name
        self.stream = sys.stdout if stream is None else stream
        if interactive is None:
            interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = float(min_interval)
        self._first: tuple[int, float] | None = None  # (step, time) after the first step
        self._last_line = time.monotonic()
        self._bar = None
        if interactive:
            from tqdm import tqdm  # noqa: PLC0415

            self._bar = tqdm(
                total=self.total,
                initial=self.start,
                desc=label,
                unit=unit,
                file=self.stream,
                dynamic_ncols=True,
            )

    def eta(self, step: int) -> float | None:
        """Seconds left, from the speed since the first step (None until it is known)."""
        if self._first is None or step <= self._first[0]:
            return None
        rate = (step - self._first[0]) / max(time.monotonic() - self._first[1], 1e-9)
        return (self.total - step) / rate

    def update(self, step: int, loss: float, line: bool = False) -> None:
        """Reports that `step` is done with `loss`; `line` asks for a plain line now."""
        first = self._first is None
        if first:
            self._first = (step, time.monotonic())
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"{self.loss_name} {loss:.4g}")
            return
        due = time.monotonic() - self._last_line >= self.min_interval
        if line or first or due or step >= self.total:
            self.write(self.describe(step, loss))

    def describe(self, step: int, loss: float) -> str:
        """One plain progress line for `step`."""
        eta = self.eta(step)
        parts = [f"{self.label}: {self.unit} {step}/{self.total}", f"{self.loss_name} {loss:.4g}"]
        if self._first is not None and step > self._first[0]:
            elapsed = time.monotonic() - self._first[1]
            parts.append(f"{(step - self._first[0]) / max(elapsed, 1e-9):.3g} {self.unit}s/s")
        parts.append("ETA " + ("?" if eta is None else format_duration(eta)))
        return "  ".join(parts)

    def write(self, text: str) -> None:
        """A message line (above the bar on a terminal)."""
        self._last_line = time.monotonic()
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Ends the bar (no-op for plain lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
