"""Metrics sinks of a run: `metrics.jsonl`, TensorBoard event files, optionally wandb.

`metrics.jsonl` holds one JSON object per logged step. Every checkpoint records the file as
it was then (lines and digest, `file_records.py`); on resume the file is checked against
that record and cut back to it, so lines written after the last checkpoint by a killed
process are recomputed, not duplicated, and a file that lost lines is refused. TensorBoard
is told the same through `purge_step`, and its events are flushed at every checkpoint
(`MetricsWriter.flush`), so what a checkpoint holds is also in the event files.

TensorBoard scalars are grouped by prefix: `train/` (training loss and aux), `eval/` (the
evaluation split), `valid/` (the validation split), `time/` (seconds per step), and one
folder for the optimizer's own logging metrics (`metaopt/M_0`, ...); `episode` and `step`
are positions, not scalars. Each run's settings go to the HParams dashboard, and its
event folder is named after the pair and its non-default settings, which is what
TensorBoard shows as the run's name.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from meta_opt.experiments.command_errors import naming
from meta_opt.experiments.file_records import LineLog

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Metrics the HParams dashboard shows next to each run's settings.
HPARAM_METRICS = ("train/loss", "eval/loss", "eval/accuracy", "valid/loss", "valid/accuracy")
_POSITIONS = ("episode", "step", "global_step")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a metrics file (a torn last line from a kill is ignored).

    Raises:
      ValueError: a line is not a JSON object (the message names the file and the line).
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}); the file "
                                 f"is damaged") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: not a JSON object; the file is "
                                 f"damaged")
            out.append(record)
    return out


def truncate_jsonl(path: str | Path, max_step: int | tuple[int, ...],
                   key: str | tuple[str, ...] = "global_step") -> int:
    """Keeps the complete lines at or before `max_step` (atomically); returns their count.

    `key` names the position field, or several compared in order (e.g. `("episode",
    "step")` with `max_step=(1, 0)`: a line's position is the tuple of those fields).
    Resuming runs call this so the file holds exactly what the checkpoint had seen; a line
    torn by a kill is dropped rather than crashing the resume."""
    path = Path(path)
    if isinstance(key, str):
        position = lambda r: r[key]
    else:
        position = lambda r: tuple(r[k] for k in key)
    kept = [r for r in read_jsonl(path) if position(r) <= max_step]
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)


def _jsonable(v: Any) -> Any:
    v = float(v) if not isinstance(v, (int, str, bool)) else v
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible rather than crash
    return v


def scalar_tag(key: str, optimizer_prefix: str = "optimizer") -> str:
    """The TensorBoard tag of a metrics key: `train_loss` -> `train/loss`, ..."""
    for prefix in ("train", "eval", "valid"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    if key == "step_time" or key.endswith("_seconds"):
        return f"time/{key}"
    return f"{optimizer_prefix}/{key}"


def run_name(pair_name: str, settings: str, max_len: int = 120) -> str:
    """A folder name that reads as the run: 'pair (k=v, ...)', filesystem-safe."""
    name = f"{pair_name} ({settings})" if settings else pair_name
    name = re.sub(r"[/\\\x00]", "_", name)
    return name if len(name) <= max_len else name[:max_len - 3] + "..."


def hparam_value(v: Any) -> bool | str | float | int:
    """A settings value as the HParams dashboard takes it (numbers and bools, else text)."""
    if isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)


class MetricsWriter:
    """Appends records to metrics.jsonl, TensorBoard and (if enabled) wandb.

    Args:
      run_dir: the pair's directory.
      resume_at: the checkpoint's position `(episode, step, global_step)` when resuming
        (lines after it are cut, TensorBoard events after it purged); None starts afresh.
      record: the metrics record of the checkpoint resumed from (`record()` when it was
        saved): the file must start with exactly those lines (else `CommandError`, naming
        the file); None with `resume_at` (an older checkpoint): cut by position.
      wandb_run: a wandb run to log to as well, or None.
      tensorboard: write TensorBoard events.
      tb_name: the event folder's name under `tensorboard/` (the run name TensorBoard shows).
      hparams: the run's settings for the HParams dashboard (written when starting afresh).
      optimizer_prefix: TensorBoard folder of the optimizer's own metrics.
    """

    def __init__(self, run_dir: str | Path, resume_at: tuple[int, int, int] | None = None,
                 wandb_run: Any = None, tensorboard: bool = True, tb_name: str = "",
                 hparams: dict[str, Any] | None = None, optimizer_prefix: str = "optimizer",
                 record: dict[str, Any] | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.optimizer_prefix = optimizer_prefix
        if resume_at is not None and record is None:
            record = {"lines": truncate_jsonl(self.path, tuple(resume_at[:2]),
                                              key=("episode", "step"))}
        at = "" if resume_at is None else f"at episode {resume_at[0]}, step {resume_at[1]}"
        self._log = LineLog(self.path, record if resume_at is not None else None, at=at,
                            fix=f"restore the file, or run with --restart to start the pair "
                                f"over (it deletes {self.run_dir})")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step drops events logged after the checkpoint by an interrupted run.
            self._tb = SummaryWriter(
                str(self.run_dir / TENSORBOARD_DIR / tb_name),
                purge_step=None if resume_at is None else resume_at[2] + 1,
            )
            if hparams and resume_at is None:
                self._write_hparams(hparams)
        self._wandb = wandb_run

    def _write_hparams(self, hparams: dict[str, Any]) -> None:
        """Writes the HParams plugin's summaries into this run's own event file.

        (tensorboardX's `add_hparams` writes them to a new sub-run instead, whose metrics
        would then be missing from the dashboard.)"""
        from tensorboardX.summary import hparams as hparams_summary

        values = {k: hparam_value(v) for k, v in hparams.items()}
        summaries = hparams_summary(values, {tag: 0.0 for tag in HPARAM_METRICS})
        writer = self._tb._get_file_writer()
        for summary in summaries:
            writer.add_summary(summary)

    def write(self, record: dict[str, Any]) -> None:
        """Appends one record to every sink (metrics.jsonl first)."""
        record = {k: _jsonable(v) for k, v in record.items()}
        with naming(self.path):
            self._log.append(json.dumps(record))
        step = int(record["global_step"])
        numeric = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k != "global_step"}
        if self._tb is not None:
            for k, v in numeric.items():
                if k not in _POSITIONS:
                    self._tb.add_scalar(scalar_tag(k, self.optimizer_prefix), v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def record(self) -> dict[str, Any]:
        """What metrics.jsonl holds now (lines and digest), for a checkpoint's metadata."""
        return self._log.record()

    def flush(self) -> None:
        """Writes every TensorBoard event logged so far to disk (done at every checkpoint).

        tensorboardX's own `flush` only flushes what its writer thread has already taken
        from its queue, so events still queued would die with a killed process. Its thread
        is stopped instead (which drains the queue in order), the file flushed, and a new
        thread started on the same queue and file: this is tensorboardX's `close` and
        `reopen` without closing the file, which it offers no call for.
        """
        if self._tb is None:
            return
        events = getattr(self._tb._get_file_writer(), "event_writer", None)
        worker = getattr(events, "_worker", None)
        if worker is None or not hasattr(worker, "stop"):  # another tensorboardX: best effort
            self._tb.flush()
            return
        worker.stop()
        events._ev_writer.flush()
        events._worker = type(worker)(events._event_queue, events._ev_writer,
                                      events._flush_secs)
        events._worker.start()

    def close(self, quietly: bool = False) -> None:
        """Closes every sink; `quietly` ignores errors closing them (used while another
        error is being raised, e.g. a full disk, which must not be masked by them)."""
        for close in (self._log.close, self._tb.close if self._tb is not None else None):
            if close is None:
                continue
            try:
                close()
            except Exception:
                if not quietly:
                    raise


def init_wandb(project: str, name: str, config: dict[str, Any], run_dir: str | Path):
    """Starts a wandb run (offline when WANDB_MODE=offline), or explains how to install it."""
    try:
        import wandb
    except ImportError as e:
        raise RuntimeError(
            "--wandb needs the wandb package, which is not installed; install it with "
            "`pip install wandb` (set WANDB_MODE=offline to log without a network), "
            "or drop --wandb"
        ) from e
    return wandb.init(project=project, name=name, config=config, dir=str(run_dir),
                      mode=os.environ.get("WANDB_MODE"), resume="allow", id=_wandb_id(run_dir))


def _wandb_id(run_dir: str | Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(run_dir).absolute()).encode()).hexdigest()[:16]
