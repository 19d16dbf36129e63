"""Layout of a run directory and its lifecycle: new, resumable, or complete, and consistent.

    OUT/<experiment_name>/<index>_<optimizer_name>/
        config.json          the pair ({"experiment": ..., "optimizer": ...}), for people
        metrics.jsonl        one JSON object per logged step
        tensorboard/         TensorBoard event files
        checkpoints/<step>/  orbax checkpoints (the newest few); each also records the
                             pair's config and what metrics.jsonl held when it was taken
        summary.json         written when the run completes, with its `run_record`
        controller.npz       MetaOpt's controller (MetaOpt pairs only)
        study_member.json    family, grid point and seed (pairs of a study only)

Consistent by construction: the newest readable checkpoint is the authority. Its config
decides whether the directory holds the requested pair (a deleted or edited config.json
cannot make a run resume another config's checkpoint; config.json is rewritten from it);
its metrics record says which lines metrics.jsonl must start with (more are cut, fewer or
others are refused, naming the file). A complete run's summary.json carries a
`run_record` (config digest, metrics record, controller digest); a rerun checks it
against the files, and whatever no longer matches (a damaged summary.json, a stale or
missing controller.npz) is rebuilt by resuming from the final checkpoint, which
recomputes nothing but those files. Every file is written atomically (temporary file,
rename). What cannot be rebuilt exactly is refused with the file named and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from meta_opt.controller_file import CONTROLLER_FILE
from meta_opt.experiments.command_errors import CommandError, naming
from meta_opt.experiments.file_records import (
    complete_lines,
    file_sha256,
    lines_sha256,
    verified_lines,
)
from meta_opt.optimizers.config import ConfigError

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
RUN_RECORD = "run_record"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes `obj` as JSON to `path` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with naming(path):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def config_digest(pair_dict: dict[str, Any]) -> str:
    """SHA-256 of a pair's JSON form (what a run records of its config)."""
    return hashlib.sha256(json.dumps(pair_dict, sort_keys=True).encode()).hexdigest()


def _load_json(path: Path) -> tuple[Any, str | None]:
    """(the file's JSON value or None when absent, why it cannot be read or None)."""
    if not path.exists():
        return None, None
    try:
        return json.loads(path.read_text()), None
    except json.JSONDecodeError as err:
        return None, f"not valid JSON: {err.msg} at line {err.lineno}"
    except (OSError, UnicodeDecodeError) as err:
        return None, getattr(err, "strerror", None) or str(err)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _normalized(pair_dict: Any) -> Any:
    """A stored pair as this version writes it (fields added since get their defaults), so
    an older run directory of the same pair is still recognised as the same run."""
    from meta_opt.experiments.sweep import pair_from_dict, pair_to_dict

    try:
        return pair_to_dict(*pair_from_dict(pair_dict))
    except (ConfigError, KeyError, TypeError):
        return pair_dict


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class Opened:
    """What `RunDir.open` found.

    Attributes:
      status: "new" (start afresh), "resume" (continue from `step`) or "complete".
      step: the checkpoint to resume from (status "resume").
      summary: the summary of a complete run; when resuming to rebuild a complete run's
        files, the summary found (if readable), whose timing the rebuilt one keeps.
    """

    status: str
    step: int | None = None
    summary: dict[str, Any] | None = None


class RunDir:
    """Paths of one pair's run directory and the checks made before (re)using it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG_FILE)
    summary = property(lambda self: self.path / SUMMARY_FILE)
    controller = property(lambda self: self.path / CONTROLLER_FILE)
    checkpoints = property(lambda self: self.path / CHECKPOINT_DIR)
    metrics = property(lambda self: self.path / METRICS_FILE)

    def is_complete(self) -> bool:
        """Whether the run has finished (its summary.json exists)."""
        return self.summary.exists()

    def restart_hint(self) -> str:
        """How to start this pair over, for messages."""
        return (f"run with --restart to start this pair over (it deletes {self.path}), or "
                f"use another --out")

    def clear(self) -> None:
        """Deletes everything in the directory but the lock (`--restart`)."""
        if self.path.exists():
            for child in self.path.iterdir():
                if child.name != LOCK_FILE:  # held by this process (see `lock`)
                    shutil.rmtree(child) if child.is_dir() else child.unlink()

    def open(self, pair_dict: dict[str, Any], ckpt, warn: Callable[[str], None] = _warn
             ) -> Opened:
        """Checks the directory against the pair and its own records; says how to go on.

        Args:
          pair_dict: the requested pair's JSON form.
          ckpt: the directory's `Checkpointer`.
          warn: receives a line for each thing recovered (a damaged checkpoint skipped, a
            file rebuilt).

        Raises:
          ConfigError: the directory holds another pair.
          CommandError: it is damaged beyond what can be rebuilt exactly (the message names
            the file and what to do).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        steps = ckpt.steps()
        summary, problem = _load_json(self.summary)
        if summary is not None and not isinstance(summary, dict):
            summary, problem = None, "not a JSON object"
        if summary is not None:
            record = summary.get(RUN_RECORD)
            if not isinstance(record, dict):  # written before run records: complete, as ever
                self._check_config_file(pair_dict)
                return Opened("complete", summary=summary)
            self._check_recorded_config(record, pair_dict, ckpt, steps)
            mismatch = self._mismatch(record)
            if mismatch is None:
                self._ensure_config_file(pair_dict, warn)
                return Opened("complete", summary=summary)
            if not steps:
                raise CommandError(f"{mismatch}, and there is no checkpoint in "
                                   f"{self.checkpoints} to rebuild it from; restore the file, "
                                   f"or {self.restart_hint()}")
            warn(f"{mismatch}; rebuilding it from the final checkpoint")
        elif problem is not None:
            if not steps:
                raise CommandError(f"{self.summary} cannot be read ({problem}) and there is no "
                                   f"checkpoint to rebuild it from; {self.restart_hint()}")
            warn(f"{self.summary} cannot be read ({problem}); rebuilding it from the newest "
                 f"checkpoint")
        if not steps:
            self._check_config_file(pair_dict)
            write_json_atomic(self.config, pair_dict)
            return Opened("new")
        step, skipped = ckpt.newest_readable()
        if step is None:
            detail = "; ".join(f"step {s}: {why}" for s, why in skipped)
            raise CommandError(f"no checkpoint in {ckpt.directory} can be read ({detail}; "
                               f"moved aside as damaged_*); {self.restart_hint()}")
        for bad, why in skipped:
            warn(f"checkpoint {ckpt.directory / str(bad)} cannot be read ({why}); moved aside "
                 f"as damaged_{bad}_<time>; resuming from step {step}")
        meta = ckpt.meta(step)
        self._check_checkpoint_config(meta, pair_dict, ckpt.directory / str(step))
        self._ensure_config_file(pair_dict, warn)
        # Checked now, before anything compiles (the writer checks it again when it opens).
        verified_lines(self.metrics, meta["metrics"], f"at global step {step}",
                       f"Restore it, or {self.restart_hint()}")
        return Opened("resume", step=step, summary=summary)

    # --- checks ------------------------------------------------------------------------
    def _check_config_file(self, pair_dict: dict[str, Any]) -> None:
        """config.json against the pair, for a directory without checkpoints (or older)."""
        saved, problem = _load_json(self.config)
        if problem is not None:
            raise CommandError(f"{self.config} cannot be read ({problem}); {self.restart_hint()}")
        if saved is not None:
            self._refuse_other(saved, pair_dict, self.config)

    def _refuse_other(self, saved: Any, pair_dict: dict[str, Any], where: Path) -> None:
        existing = _normalized(saved)
        if existing != pair_dict:
            diffs = "; ".join(_diff(existing, pair_dict)[:8])
            raise ConfigError(
                f"{self.path} holds a run with a different config ({diffs}), recorded in "
                f"{where}; resume needs the same config. Use another --out or "
                f"experiment_name, or pass --restart to delete that run and start over"
            )

    def _check_checkpoint_config(self, meta: dict[str, Any], pair_dict: dict[str, Any],
                                 where: Path) -> None:
        if "config" not in meta or "metrics" not in meta:
            raise CommandError(f"checkpoint {where} records no config or metrics (not written "
                               f"by `meta-opt run`?); {self.restart_hint()}")
        self._refuse_other(meta["config"], pair_dict, where)

    def _check_recorded_config(self, record: dict[str, Any], pair_dict: dict[str, Any], ckpt,
                               steps: list[int]) -> None:
        """A complete run's recorded config digest against the pair (older versions'
        configs are compared field by field, through the checkpoint or config.json)."""
        if record.get("config_sha256") == config_digest(pair_dict):
            return
        saved = None
        if steps:
            with contextlib.suppress(ValueError, OSError):
                saved = (ckpt.meta(steps[-1]) or {}).get("config")
        where = ckpt.directory / str(steps[-1]) if saved is not None else self.config
        if saved is None:
            saved, _ = _load_json(self.config)
        if saved is None:
            raise ConfigError(f"{self.path} holds a complete run of a different config (its "
                              f"summary records another config digest); use another --out, "
                              f"or pass --restart to delete that run and start over")
        self._refuse_other(saved, pair_dict, where)

    def _mismatch(self, record: dict[str, Any]) -> str | None:
        """What of a complete run's files no longer matches its run record and can be
        rebuilt (controller.npz), or None; a changed metrics.jsonl, which the summary and
        the table are built from, is refused."""
        try:
            lines = complete_lines(self.metrics.read_bytes()) if self.metrics.exists() else []
        except OSError as err:
            raise CommandError(f"cannot read {self.metrics} ({err.strerror}); fix its "
                               f"permissions, or {self.restart_hint()}") from err
        metrics = record.get("metrics") or {}
        if {"lines": len(lines), "sha256": lines_sha256(lines)} != metrics:
            what = ("lost lines" if len(lines) < metrics.get("lines", 0) else "was changed")
            raise CommandError(
                f"{self.metrics} holds {len(lines)} lines, but the run recorded "
                f"{metrics.get('lines')} when it completed: the file {what}. Restore it, or "
                f"{self.restart_hint()}")
        if file_sha256(self.controller) != record.get("controller_sha256"):
            state = "missing" if not self.controller.exists() else "not the run's final one"
            return f"{self.controller} is {state}"
        return None

    def _ensure_config_file(self, pair_dict: dict[str, Any], warn) -> None:
        """Rewrites config.json from the (checked) pair when it is missing or differs."""
        saved, problem = _load_json(self.config)
        if saved == pair_dict:
            return
        if problem is not None or (saved is not None and _normalized(saved) != pair_dict):
            why = problem or "it differs from the checkpoint's config"
            warn(f"{self.config} cannot be used ({why}); rewritten from the checkpoint")
        write_json_atomic(self.config, pair_dict)

    # --- process -----------------------------------------------------------------------
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
        """The run's summary.json (CommandError naming the file when it cannot be read)."""
        summary, problem = _load_json(self.summary)
        if problem is not None or not isinstance(summary, dict):
            raise CommandError(f"{self.summary} cannot be read ({problem or 'not an object'}); "
                               f"run the same command again to rebuild it")
        return summary
