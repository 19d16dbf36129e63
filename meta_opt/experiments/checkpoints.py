"""Orbax checkpoints of a run: the whole training state plus a small JSON of positions.

Each checkpoint is an orbax step directory named by the global step, holding two items:
`state` (the `TrainState` pytree: params, model state, optimizer state, rng, episode and
step; the data position is a function of those, see `data_source.py`) and `meta` (JSON:
episode, step, global_step, the number of metrics lines written). Orbax writes a step into
a temporary directory and renames it when complete, so a process killed mid-save (SIGKILL
included) leaves the previous checkpoint as the latest valid one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores a run's training state in `directory` (synchronous, atomic)."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            # Synchronous: the Python loop continues only once the step is on disk, so a
            # metrics line is never ahead of the data needed to reproduce it on resume.
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        """Global step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, global_step: int, state: Any, meta: dict[str, Any]) -> None:
        self._manager.save(
            global_step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores (state, meta) at `step` (default latest) into `template`'s structure.

        `template` is a state of the right structure (e.g. freshly initialised); its leaves'
        shapes, dtypes and shardings are what the restored arrays get.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["meta"]

    def restore_raw(self, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores without a template (nested dicts of numpy arrays), e.g. for inspection."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
        )
        return out["state"], out["meta"]

    def close(self) -> None:
        self._manager.close()
