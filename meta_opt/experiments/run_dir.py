"""Layout of a run directory and its lifecycle: new, resumable, or complete.

    OUT/<experiment_name>/<index>_<optimizer_name>/
        config.json          the pair ({"experiment": ..., "optimizer": ...})
        metrics.jsonl        one JSON object per logged step
        tensorboard/         TensorBoard event files
        checkpoints/<step>/  checkpoints (latest few; state.msgpack + meta.json)
        summary.json         written when the run completes
        controller.npz       MetaOpt's final controller (MetaOpt pairs only)
        study_member.json    family, grid point and seed (pairs of a study only)

A directory whose `config.json` differs from the requested pair is never silently reused:
the runner stops and says which fields differ.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meta_opt.optimizers.config import ConfigError

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CONTROLLER_FILE = "controller.npz"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _normalized(pair_dict: dict[str, Any]) -> dict[str, Any]:
    """A stored pair as this version writes it (fields added since get their defaults), so
    an older run directory of the same pair is still recognised as the same run."""
    from meta_opt.experiments.sweep import pair_from_dict, pair_to_dict

    try:
        return pair_to_dict(*pair_from_dict(pair_dict))
    except (ConfigError, KeyError, TypeError):
        return pair_dict


class RunDir:
    """Paths of one pair's run directory and the checks made before (re)using it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG_FILE)
    summary = property(lambda self: self.path / SUMMARY_FILE)
    controller = property(lambda self: self.path / CONTROLLER_FILE)
    checkpoints = property(lambda self: self.path / CHECKPOINT_DIR)
    metrics = property(lambda self: self.path / "metrics.jsonl")

    def is_complete(self) -> bool:
        return self.summary.exists()

    def prepare(self, pair_dict: dict[str, Any], restart: bool = False) -> str:
        """Creates or checks the directory; returns 'new', 'resume' or 'complete'.

        Args:
          pair_dict: the pair's JSON form (config.json content).
          restart: delete an existing directory and start over.
        """
        if restart and self.path.exists():
            for child in self.path.iterdir():
                if child.name != LOCK_FILE:  # held by this process (see `lock`)
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        if self.config.exists():
            existing = _normalized(json.loads(self.config.read_text()))
            if existing != pair_dict:
                diffs = "; ".join(_diff(existing, pair_dict)[:8])
                raise ConfigError(
                    f"{self.path} holds a run with a different config ({diffs}); resume needs "
                    f"the same config. Use another --out or experiment_name, or pass "
                    f"--restart to delete that run and start over"
                )
            return "complete" if self.is_complete() else "resume"
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config, pair_dict)
        return "new"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds an exclusive lock on the run directory while a process trains it.

        Two processes writing one run (e.g. the same command started twice) would corrupt
        it; the lock is released by the OS when the holder dies, SIGKILL included.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "?"
                raise ConfigError(
                    f"{self.path} is being trained by another process (pid {holder}); wait for "
                    f"it to finish or stop it (Ctrl-C / kill {holder}), then run again"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text())
