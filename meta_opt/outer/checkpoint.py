"""Orbax checkpoints of meta-training: theta, meta-optimizer and unroll states, step, rng.

A checkpoint is an orbax step directory with three items: `state` (the whole
`SingleMachineState`: the meta-optimizer state that owns theta and every estimator's
unroll state, plus the rng key and the meta-step), `theta` (theta alone, so evaluation
needs only the learned optimizer to restore it) and `meta` (JSON). Orbax writes into a
temporary directory and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest valid one. Resuming from `state` continues exactly:
the data a meta-step sees is drawn from its key (in-jit data), and the key is saved.

A checkpoint damaged after it was written (truncated or overwritten files) is skipped
when restoring the latest one: the newest readable checkpoint is used instead and the
skipped steps are listed in `skipped` (with `quarantine=True` they are also renamed to
`damaged_<step>` so that the resumed run can write those steps again). When none can be
read, `CheckpointError` says which steps failed and how to start over.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "theta", "meta")


class CheckpointError(ValueError):
    """No checkpoint of a run directory can be restored."""


class MetaTrainCheckpointer:
    """Saves and restores meta-training checkpoints in `directory` (synchronous, atomic)."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self.skipped: list[tuple[int, str]] = []  # (step, error) skipped by the last restore

    def latest_step(self) -> int | None:
        """Meta-step of the newest complete checkpoint on disk, or None."""
        self._manager.reload()
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

    def _restore_step(self, item: str, template: Any, step: int) -> tuple[Any, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
            ),
        )
        return out[item], dict(out["meta"])

    def _restore(
        self, item: str, template: Any, step: int | None, quarantine: bool = False
    ) -> tuple[Any, dict]:
        self.skipped = []
        if step is not None:
            return self._restore_step(item, template, step)
        self._manager.reload()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(
                f"no meta-training checkpoint in {self.directory}; pass a run directory "
                "written by `meta-opt meta-train` (or its checkpoints/ folder)"
            )
        for candidate in steps:
            try:
                restored = self._restore_step(item, template, candidate)
            # Damaged files surface as many exception types (orbax, TensorStore, JSON, OS);
            # any of them means "this step cannot be read", so try the next older one.
            except Exception as err:  # noqa: BLE001
                self.skipped.append((candidate, _first_line(err)))
                continue
            if quarantine and self.skipped:
                self._quarantine([s for s, _ in self.skipped])
            return restored
        detail = "; ".join(f"meta-step {s}: {e}" for s, e in self.skipped)
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be read ({detail}); it was damaged or "
            f"written with a different config or meta_opt version: delete {self.directory} "
            "(or its run directory) to start over"
        )

    def _quarantine(self, steps: list[int]) -> None:
        """Renames damaged step folders out of orbax's way (kept for inspection)."""
        for step in steps:
            folder = self.directory / str(step)
            if folder.exists():
                folder.rename(self.directory / f"damaged_{step}_{int(time.time())}")
        self._manager.reload()

    def restore(
        self, template: Any, step: int | None = None, quarantine: bool = False
    ) -> tuple[Any, dict]:
        """(state, meta) at `step` (default: the newest readable), with `template`'s
        structure; `quarantine` renames unreadable newer steps (see the module docstring)."""
        return self._restore("state", template, step, quarantine)

    def restore_theta(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """(theta, meta) at `step` (default: the newest readable); template: e.g.
        `lopt.init(key)`."""
        return self._restore("theta", template, step)

    def close(self) -> None:
        """Releases orbax's resources (call once, when done)."""
        self._manager.close()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]
