"""Orbax checkpoints of meta-training: theta, meta-optimizer and unroll states, step, rng.

A checkpoint is an orbax step directory with three items: `state` (the whole
`SingleMachineState`: the meta-optimizer state that owns theta and every estimator's
unroll state, plus the rng key and the meta-step), `theta` (theta alone, so evaluation
needs only the learned optimizer to restore it) and `meta` (JSON). Orbax writes into a
temporary directory and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest valid one. Resuming from `state` continues exactly:
the data a meta-step sees is drawn from its key (in-jit data), and the key is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "theta", "meta")


class MetaTrainCheckpointer:
    """Saves and restores meta-training checkpoints in `directory` (synchronous, atomic)."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        """Meta-step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, theta: Any, meta: dict[str, Any]) -> None:
        """Writes `state` (any pytree: trainer state, rng, step) and `theta` at `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                theta=ocp.args.StandardSave(theta),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def _restore(self, item: str, template: Any, step: int | None) -> tuple[Any, dict]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"no meta-training checkpoint in {self.directory}; pass a run directory "
                "written by `meta-opt meta-train` (or its checkpoints/ folder)"
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
            ),
        )
        return out[item], dict(out["meta"])

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) at `step` (default latest), with `template`'s structure."""
        return self._restore("state", template, step)

    def restore_theta(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """(theta, meta) at `step` (default latest); template: e.g. `lopt.init(key)`."""
        return self._restore("theta", template, step)

    def close(self) -> None:
        self._manager.close()
