"""Metrics sinks of a run: `metrics.jsonl`, TensorBoard event files, optionally wandb.

`metrics.jsonl` holds one JSON object per logged step. On resume the file is cut back to
the checkpoint's global step first (`truncate_jsonl`), so lines written after the last
checkpoint by a killed process are recomputed, not duplicated; TensorBoard is told the same
through `purge_step`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a metrics file (a torn last line from a kill is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with path.open() as f:
        for line in f:
            if not line.endswith("\n"):
                break
            out.append(json.loads(line))
    return out


def truncate_jsonl(path: str | Path, max_step: int, key: str = "global_step") -> int:
    """Keeps the complete lines with record[key] <= max_step (atomically); returns their count.

    Resuming runs call this so the file holds exactly what the checkpoint had seen; a line
    torn by a kill is dropped rather than crashing the resume."""
    path = Path(path)
    kept = [r for r in read_jsonl(path) if r[key] <= max_step]
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


class MetricsWriter:
    """Appends records to metrics.jsonl, TensorBoard and (if enabled) wandb."""

    def __init__(self, run_dir: str | Path, resume_global_step: int | None = None,
                 wandb_run: Any = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        if resume_global_step is None:
            self.path.write_text("")
        else:
            truncate_jsonl(self.path, resume_global_step)
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step drops events logged after the checkpoint by an interrupted run.
            self._tb = SummaryWriter(
                str(self.run_dir / "tensorboard"),
                purge_step=None if resume_global_step is None else resume_global_step + 1,
            )
        self._wandb = wandb_run

    def write(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = int(record["global_step"])
        numeric = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("global_step",)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


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
