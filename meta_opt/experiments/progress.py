"""What a sweep tells a person while it runs: sweep position, compile phase, chunks, pairs.

Three modes: `bars` (tqdm bars on stderr, for a terminal), `lines` (one plain line per
logged chunk and per finished pair on stdout, for logs and pipes), `off`. Every finished
pair prints a sweep-level line: pairs done of the sweep, elapsed time and an estimate of
the time left (elapsed time per trained pair times the pairs left).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, TextIO


def progress_mode(enabled: bool = True) -> str:
    """'bars' on a terminal (or with META_OPT_PROGRESS=1), 'lines' otherwise, 'off' if not
    `enabled`."""
    if not enabled:
        return "off"
    if os.environ.get("META_OPT_PROGRESS") == "1" or sys.stdout.isatty():
        return "bars"
    return "lines"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(int(round(s)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _loss(values: list[float]) -> str:
    """One loss, or the median of a group's losses (non-finite ones counted apart)."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return "nan"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    bad = f", {len(values) - len(finite)} not finite" if len(finite) < len(values) else ""
    return f"{statistics.median(finite):.4g} (median of {len(values)}{bad})"


class Progress:
    """Reports a sweep's progress; see the module docstring.

    Args:
      total_pairs: pairs this process runs (complete ones included).
      mode: 'bars', 'lines' or 'off'.
      position: tqdm line of the bar (parallel runs).
      stream: where plain lines go (default stdout).
    """

    def __init__(self, total_pairs: int, mode: str = "lines", position: int = 0,
                 stream: TextIO | None = None):
        self.total = total_pairs
        self.mode = mode
        self.position = position
        self.stream = stream
        self.start = time.perf_counter()
        self.done = 0
        self.trained = 0
        self._bar = None
        self._label = ""

    def _print(self, text: str) -> None:
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream or sys.stdout)
        else:
            print(text, file=self.stream or sys.stdout, flush=True)

    def warn(self, text: str) -> None:
        """Prints `warning: text` to stderr (above the bars, if any), whatever the mode."""
        line = f"warning: {text}"
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def sweep_line(self) -> str:
        """'[k/N pairs, 12.3 s elapsed, about 40 s left]'."""
        elapsed = time.perf_counter() - self.start
        left = self.total - self.done
        if left and self.trained:
            eta = f", about {_seconds(elapsed / self.trained * left)} left"
        else:
            eta = "" if not left else ", time left: after the first pair"
        return f"[{self.done}/{self.total} pairs, {_seconds(elapsed)} elapsed{eta}]"

    def start_group(self, label: str, members: int, total_steps: int, done_steps: int) -> None:
        """A group of `members` pairs sharing one program starts (or resumes)."""
        self._label = label if members == 1 else f"{label} (+{members - 1})"
        if self.mode == "bars":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=done_steps, desc=self._label,
                             position=self.position, leave=True, dynamic_ncols=True)

    def compiling(self, members: int) -> None:
        """The group's programs are being compiled (or taken from the cache)."""
        what = "" if members == 1 else f" ({members} pairs, one program)"
        if self._bar is not None:
            self._bar.set_postfix_str(f"compiling{what}")
        else:
            self._print(f"{self.sweep_line()} {self._label}: compiling{what} ...")

    def compiled(self, seconds: float, from_cache: int = 0) -> None:
        """Compiling took `seconds`; `from_cache` programs came from the persistent cache."""
        cached = f" ({from_cache} from the compile cache)" if from_cache else ""
        if self._bar is not None:
            self._bar.set_postfix_str(f"compiled in {_seconds(seconds)}{cached}")
        else:
            self._print(f"  {self._label}: compiled in {_seconds(seconds)}{cached}")

    def chunk(self, episode: int, num_episodes: int, step: int, num_iters: int,
              losses: list[float], steps_per_sec: float, steps: int) -> None:
        """A logged chunk of `steps` steps per member finished."""
        if self._bar is not None:
            self._bar.update(steps)
            self._bar.set_postfix(ep=f"{episode + 1}/{num_episodes}", step=step,
                                  loss=_loss(losses), sps=f"{steps_per_sec:.0f}")
        else:
            self._print(f"  {self._label}: episode {episode + 1}/{num_episodes} step "
                        f"{step}/{num_iters} loss {_loss(losses)} {steps_per_sec:.0f} steps/s")

    def end_group(self) -> None:
        """The group's loop ended (its bar, if any, is closed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def pair_done(self, name: str, summary: dict[str, Any], trained: bool = True) -> None:
        """A pair finished (`trained`) or was found complete; prints the sweep line."""
        self.done += 1
        self.trained += int(trained)
        if not trained:
            self._print(f"{self.sweep_line()} {name}: already complete")
            return
        loss = summary.get("last_episode_final_loss")
        loss = f"{loss:.4g}" if isinstance(loss, float) else str(loss)
        wall = summary.get("wall_seconds")
        share = summary.get("group_size", 1)
        how = f"{_seconds(wall)} wall" if wall is not None else ""
        if share > 1:
            how += f" (its share of a group of {share})"
        bad = summary.get("nonfinite")
        if bad and bad.get("stopped"):
            self._print(f"{self.sweep_line()} {name}: stopped, training loss {bad['value']} at "
                        f"episode {bad['episode']} step {bad['step']}, {how}")
            return
        self._print(f"{self.sweep_line()} {name}: done, loss@end {loss}, {how}")

    def pair_failed(self, name: str, code: int) -> None:
        """A pair ended without completing (its process exited with `code`)."""
        self.done += 1
        self._print(f"{self.sweep_line()} {name}: not complete (exit code {code})")
