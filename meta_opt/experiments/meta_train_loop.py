"""The loop both meta-training paths (one machine, Ray) share: logging, checkpoints, stops.

`drive` consumes `(step, loss, metrics, checkpoint, last)` tuples, one per finished
meta-step, and writes metrics.jsonl, TensorBoard (and wandb), progress, checkpoints, the
summary and the meta-loss plot.

Stopping on a signal: `graceful_stop` turns Ctrl-C / SIGTERM into a flag. The flag is read
once per meta-step, after the step's loss has been read (which waits until the step's work
is done: the jitted step returns before its work completes) and after its metrics are
written, so a signal at any point of a meta-step (before, inside or after the update,
while the loss is read or while a checkpoint is written) stops the loop at a step that is
then checkpointed. The summary reports the step reached and the latest checkpoint found
on disk afterwards, so a failed save is reported as such, never as "saved".
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from meta_opt.experiments.file_records import LineLog
from meta_opt.experiments.metrics import read_jsonl, truncate_jsonl
from meta_opt.experiments.run_dir import write_json_atomic
from meta_opt.experiments.step_progress import StepProgress

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@contextlib.contextmanager
def graceful_stop() -> Iterator[dict[str, Any]]:
    """Ctrl-C / SIGTERM set `stop["signal"]` (repeats too); the loop ends at a checkpoint.

    The handler only records the signal (no I/O, nothing raised), so a second Ctrl-C
    cannot interrupt a checkpoint being written.
    """
    stop: dict[str, Any] = {"signal": None}
    previous = {}

    def handle(signum, frame):
        del frame
        stop["signal"] = stop["signal"] or signum

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, handle)
        except ValueError:  # not the main thread: no handlers, no graceful stop
            pass
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Sinks:
    """metrics.jsonl, TensorBoard and (optionally) wandb, written together per record.

    metrics.jsonl is a `LineLog`: resuming checks it against the checkpoint's record (the
    lines it held then, and their digest) and cuts what came after; a checkpoint of an
    older version, which recorded only a count, is cut by meta-step and counted.
    """

    def __init__(self, out: Path, start_step: int, record: dict[str, Any] | None,
                 wandb_run: Any = None):
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - slow import, only when run

        self.path = out / METRICS_FILE
        if start_step and record is not None and "sha256" not in record:
            truncate_jsonl(self.path, start_step, key="step")
        if start_step and record is None:  # resumed without a record: keep what fits
            record = {"lines": truncate_jsonl(self.path, start_step, key="step")}
        self._log = LineLog(
            self.path, record if start_step else None, at=f"up to meta-step {start_step}",
            fix=f"Restore it, or delete {out} to start over")
        # purge_step: TensorBoard drops events an interrupted run logged after the checkpoint.
        self._tb = SummaryWriter(
            str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )
        self._wandb = wandb_run

    @property
    def lines(self) -> int:
        return self._log.lines

    def record(self) -> dict[str, Any]:
        return self._log.record()

    def write(self, record: dict[str, Any]) -> None:
        self._log.append(json.dumps(record))
        step = record["step"]
        scalars = {k: v for k, v in record.items() if k != "step"}
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def flush(self) -> None:
        self._tb.flush()

    def close(self) -> None:
        self._log.close()
        self._tb.close()


def drive(
    config,
    out: Path,
    ckpt,
    start_step: int,
    steps: Iterable[tuple],
    stop: dict[str, Any],
    *,
    plot: bool = True,
    meta: dict[str, Any] | None = None,
    metrics_record: dict[str, Any] | None = None,
    progress: bool = False,
    wandb_run: Any = None,
) -> dict[str, Any]:
    """Runs `steps` to the end or to a stop; returns the summary (also in summary.json).

    Args:
      config: the `MetaTrainConfig` (cadence: `log_due`, `checkpoint_due`).
      out: the run directory.
      ckpt: its `MetaTrainCheckpointer`.
      start_step: the step resumed from (0: a fresh run).
      steps: yields `(step, loss, metrics, checkpoint, last)` per meta-step in order;
        `checkpoint()` returns `(payload, theta)` of that step (None: not available, as
        between Ray snapshots); `last` marks the final step of a stopped run.
      stop: the `graceful_stop` flag.
      plot: write meta_loss.png.
      meta: extra entries for checkpoint metadata and the summary.
      metrics_record: what the resumed checkpoint recorded of metrics.jsonl (its lines
        and their digest, `file_records.LineLog`); a file that lost or changed lines is
        refused (CommandError, naming it) rather than continued with a silently
        incomplete log.
      progress: print progress to stdout (a bar on a terminal, plain lines otherwise).
      wandb_run: a wandb run to log every record to (finished here).
    """
    sinks = _Sinks(out, start_step, metrics_record, wandb_run)
    bar = None
    if progress:
        bar = StepProgress(config.name, config.num_steps, start=start_step)
        if start_step < config.num_steps:
            bar.write(
                f"{config.name}: meta-steps {start_step + 1}..{config.num_steps} into {out} "
                "(the first one compiles)"
            )
    window, t0, step, save_error = [], time.time(), start_step, None
    try:
        for step, loss, metrics, checkpoint, last in steps:
            loss = float(loss)  # waits until the step's work is done
            window.append(loss)
            logged = config.log_due(step)
            if logged:
                sinks.write(
                    {
                        "step": step,
                        "meta_loss": float(np.mean(window)),
                        "meta_loss_last": window[-1],
                        "seconds_per_step": (time.time() - t0) / len(window),
                        **{k: float(v) for k, v in metrics.items()},
                    }
                )
                window, t0 = [], time.time()
            # The one place a stop is decided: after the step's loss and metrics.
            stopping = last or stop["signal"] is not None
            if bar is not None:
                bar.update(step, loss, line=logged or stopping)
            if checkpoint is not None and (stopping or config.checkpoint_due(step)):
                payload, theta = checkpoint()
                info = {"step": step, "name": config.name, "config": config.to_dict()}
                info.update(metrics=sinks.record(), metrics_lines=sinks.lines, **(meta or {}))
                try:
                    ckpt.save(step, payload, theta, info)
                except OSError as err:  # e.g. a full disk: stop and say so
                    save_error = f"{type(err).__name__}: {err}"
                    break
                sinks.flush()
            if stopping and checkpoint is not None:
                break
    finally:
        if bar is not None:
            bar.close()
        sinks.close()
        if wandb_run is not None:
            wandb_run.finish()

    records = read_jsonl(sinks.path)
    summary = {
        "name": config.name,
        "start_step": start_step,
        "steps": step,
        "checkpoint_step": ckpt.latest_step(),
        "final_meta_loss": records[-1]["meta_loss"] if records else None,
        "first_meta_loss": records[0]["meta_loss"] if records else None,
        "interrupted": stop["signal"] is not None and step < config.num_steps,
        "signal": stop["signal"],
        "checkpoint_error": save_error,
        **(meta or {}),
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    if plot and records:
        from meta_opt.experiments.plots import meta_loss_figure, save  # matplotlib: slow

        save(meta_loss_figure(records, config.name), out / "meta_loss.png")
    return summary
