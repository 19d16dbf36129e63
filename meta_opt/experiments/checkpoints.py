"""Checkpoints of a run: the whole training state plus a small JSON of positions.

Each checkpoint is a directory named by the global step, holding `state.msgpack` (the
`TrainState` pytree: params, model state, optimizer state, rng, episode and step; the data
position is a function of those, see `data_source.py`), serialised with
`flax.serialization`, and `meta.json` (episode, step, global_step). It is written into a
temporary directory and renamed when complete, so a process killed mid-save (SIGKILL
included) leaves the previous checkpoint as the latest valid one.

Why not orbax: a grid writes one checkpoint per member at every checkpoint step, and the
runner's states are small. Measured on the 8x8-digits MLP state (Adam, 2.4k parameters),
an orbax `CheckpointManager.save` takes about 28 ms (its asynchronous mode as long, the
time is spent preparing the save), `flax.serialization` plus a rename about 0.4 ms; at 15
members x 6 checkpoints per run, orbax alone would cost more than the training. The
runner is one process on one host, so orbax's multi-host machinery buys nothing here;
restored arrays are put back on the template's devices and shardings.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from meta_opt.optimizers.config import ConfigError

STATE_FILE = "state.msgpack"
META_FILE = "meta.json"


class Checkpointer:
    """Saves and restores a run's training state in `directory` (synchronous, atomic)."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".tmp-*"):  # saves cut short by a kill
            shutil.rmtree(stale, ignore_errors=True)

    def steps(self) -> list[int]:
        """Global steps of the complete checkpoints, oldest first."""
        out = []
        for child in self.directory.iterdir():
            if not child.name.isdigit():
                continue
            if (child / META_FILE).exists():
                out.append(int(child.name))
            elif any(child.iterdir()):
                raise ConfigError(
                    f"{child} is not a checkpoint of this version of meta_opt (an older run "
                    f"saved with orbax?); run with --restart to start that pair over, or use "
                    f"another --out"
                )
        return sorted(out)

    def latest_step(self) -> int | None:
        """Global step of the newest complete checkpoint, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def meta(self, step: int | None = None) -> dict[str, Any] | None:
        """The positions (episode, step, global_step) of checkpoint `step` (default: the
        newest), or None when there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return json.loads((self.directory / str(step) / META_FILE).read_text())

    def delete_after(self, step: int) -> None:
        """Deletes the checkpoints newer than `step` (a run going back to `step` recomputes
        them; left in place, a later resume would skip the metrics lines in between)."""
        for newer in self.steps():
            if newer > step:
                shutil.rmtree(self.directory / str(newer))

    def save(self, global_step: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes `state` (device or host arrays) and `meta` as checkpoint `global_step`."""
        data = serialization.to_bytes(jax.device_get(state))
        final = self.directory / str(global_step)
        tmp = self.directory / f".tmp-{global_step}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / STATE_FILE).write_bytes(data)
        (tmp / META_FILE).write_text(json.dumps(meta))  # last: marks the step complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.steps()[:-self.max_to_keep]:
            shutil.rmtree(self.directory / str(old), ignore_errors=True)

    def restore_host(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) at `step` (default latest) as host arrays in `template`'s structure."""
        step = self._step(step)
        path = self.directory / str(step)
        host = jax.tree.map(np.asarray, jax.device_get(template))
        state = serialization.from_bytes(host, (path / STATE_FILE).read_bytes())
        return state, json.loads((path / META_FILE).read_text())

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores (state, meta) at `step` (default latest) into `template`'s structure.

        `template` is a state of the right structure (e.g. freshly initialised); its leaves'
        shapes, dtypes and shardings are what the restored arrays get.
        """
        state, meta = self.restore_host(template, step)

        def place(t, x):  # where the template's array is (committed to it, or not)
            if not isinstance(t, jax.Array):
                return x
            return jax.device_put(x, t.sharding) if t.committed else jax.device_put(x)

        return jax.tree.map(place, template, state), meta

    def restore_raw(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores without a template (nested dicts of numpy arrays), e.g. for inspection."""
        path = self.directory / str(self._step(step))
        state = serialization.msgpack_restore((path / STATE_FILE).read_bytes())
        return state, json.loads((path / META_FILE).read_text())

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return step

    def close(self) -> None:
        """Nothing to release (saves are synchronous); kept for the context of callers."""
