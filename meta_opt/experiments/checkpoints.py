"""Checkpoints of a run (orbax): the whole training state and what the run directory held.

Each checkpoint is an orbax step directory `checkpoints/<global step>/` with one item,
`state`: the `TrainState` pytree (params, model state, optimizer state with MetaOpt's
controller, rng, episode and step; the data position is a function of those, see
`data_source.py`). Its step metadata (`custom_metadata`) is a small JSON dict: the
positions (episode, step, global_step), the pair's config and the record of the metrics
file (`file_records.py`), so the checkpoint alone says which run it belongs to and what
its run directory must hold.

Orbax writes a checkpoint into a temporary directory and renames it when complete, so a
process killed mid-save (SIGKILL included) leaves the previous checkpoint as the newest;
the temporary directory is removed when the folder is opened again. A SIGINT or SIGTERM
that arrives during a save is held until the save is done, so a second Ctrl-C cannot
leave half a checkpoint (nor an orbax traceback).

Cost: one `CheckpointManager` per member, kept open for the whole run; synchronous saves
(a checkpoint is on disk when `save` returns, which the metrics records rely on); one
item, with the small JSON in the step's own metadata file rather than a second item.
Measured once on the 8x8-digits MLP state (Adam, 2.4k parameters) on 2 busy CPU cores
(load about 4, so medians of 50-100 ms whatever the options): the fastest saves took
38 ms with a second (JSON) item, 30 ms as configured here, 24 ms with orbax's background
deletion of old steps (not used: a step being deleted in the background is still listed
as a step, so what `steps()` says would depend on timing); a manager created per save
cost as much as a kept one plus its setup. Orbax's threads and the step's files are most
of the cost. On the benchmark of `benchmarks/sweep_throughput.py` (15 members x 6
checkpoints) the grid took 1.6x the single pair's time (1.0x with flax msgpack files);
the target is 3x.

Damaged checkpoints (truncated or garbage array files, garbage metadata, a missing item):
`newest_readable` reads the steps newest first, state and metadata, and moves each one
that cannot be read aside (`damaged_<step>_<time>`, kept for inspection), so a resumed
run continues from the newest good checkpoint; the caller warns with what was skipped.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEM = "state"
# Keys every checkpoint's metadata has (a checkpoint without them is damaged).
META_KEYS = ("episode", "step", "global_step")
LEGACY_FILE = "state.msgpack"  # what checkpoints of meta_opt 0.x before orbax held


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Holds SIGINT / SIGTERM until the block ends, then delivers them to the handlers in
    place (in the main thread; elsewhere signals cannot arrive anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in held:
            signal.raise_signal(s)


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
    """Silences orbax's log lines while a damaged checkpoint is read: the runner reports
    the damage itself, in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _drop_closed_loop_noise() -> None:
    """Keeps orbax's aftermath of a failed read off stderr, for the rest of the process.

    When one array of a checkpoint cannot be read, orbax closes its event loop while
    TensorStore still completes the other reads; their callbacks then raise "Event loop
    is closed" in TensorStore's threads, which Python prints as unraisable tracebacks
    (some after the read has returned). The runner has already said, in one line, which
    checkpoint is damaged; only that exact error is dropped, everything else still
    reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_meta_opt_filter", False):
        return

    def hook(unraisable) -> None:
        err = unraisable.exc_value
        if isinstance(err, RuntimeError) and str(err) == "Event loop is closed":
            return
        previous(unraisable)

    hook._meta_opt_filter = True
    sys.unraisablehook = hook


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:160]


class Checkpointer:
    """Saves and restores a run's training state in `directory` (synchronous, atomic).

    Args:
      directory: the run's `checkpoints/` folder (created if missing).
      max_to_keep: newest checkpoints kept; older ones are deleted after each save.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.max_to_keep = max_to_keep
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False,
            cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={ITEM: ocp.StandardCheckpointHandler()})

    def steps(self) -> list[int]:
        """Global steps of the checkpoints on disk (complete saves), oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Global step of the newest checkpoint on disk, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def meta(self, step: int | None = None) -> dict[str, Any] | None:
        """The metadata of checkpoint `step` (default: the newest), None when there is none.

        Raises:
          ValueError: the checkpoint's metadata is missing or damaged.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        with _orbax_quiet():
            meta = dict(self._manager.metadata(step).custom_metadata or {})
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"the metadata of checkpoint {self.directory / str(step)} is "
                             f"missing or damaged (no {', '.join(missing)})")
        return meta

    def delete_after(self, step: int) -> None:
        """Deletes the checkpoints newer than `step` (a run going back to `step` recomputes
        them; left in place, a later resume would skip the metrics lines in between)."""
        for newer in self.steps():
            if newer > step:
                self._manager.delete(newer)
        self._manager.wait_until_finished()

    def save(self, global_step: int, state: Any, meta: dict[str, Any]) -> None:
        """Writes `state` (device or host arrays) and `meta` as checkpoint `global_step`."""
        host = jax.device_get(state)
        with signals_held():
            self._manager.save(global_step, args=ocp.args.Composite(
                **{ITEM: ocp.args.StandardSave(host)}), custom_metadata=meta, force=True)

    def problem(self, step: int) -> str | None:
        """Why checkpoint `step` cannot be restored (its state and metadata are read in
        full), or None when it can."""
        path = self.directory / str(step)
        if (path / LEGACY_FILE).exists():
            return (f"{LEGACY_FILE}: a checkpoint of an older meta_opt (flax msgpack), not "
                    f"orbax")
        try:
            self.meta(step)
            with _orbax_quiet():
                self._manager.restore(step, args=ocp.args.Composite(
                    **{ITEM: ocp.args.StandardRestore()}))
        # Damaged files surface as many exception types (orbax, TensorStore, JSON, OS);
        # any of them means "this step cannot be read".
        except Exception as err:  # noqa: BLE001
            _drop_closed_loop_noise()
            return _first_line(err)
        return None

    def newest_readable(self) -> tuple[int | None, list[tuple[int, str]]]:
        """(the newest checkpoint that can be restored, or None; [(step, why)] of the newer
        ones that cannot, which are moved aside as `damaged_<step>_<time>`)."""
        skipped = []
        for step in reversed(self.steps()):
            why = self.problem(step)
            if why is None:
                return step, skipped
            skipped.append((step, why))
            self.quarantine(step)
        return None, skipped

    def quarantine(self, step: int) -> None:
        """Moves checkpoint `step` out of the way (kept for inspection as damaged_*)."""
        folder = self.directory / str(step)
        if folder.exists():
            folder.rename(self.directory / f"damaged_{step}_{int(time.time())}")
        self._manager.reload()

    def restore_host(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) at `step` (default latest) as host arrays in `template`'s structure."""
        step = self._step(step)
        host = jax.tree.map(np.asarray, jax.device_get(template))
        try:
            with _orbax_quiet():
                out = self._manager.restore(step, args=ocp.args.Composite(
                    **{ITEM: ocp.args.StandardRestore(host)}))
        except Exception:
            _drop_closed_loop_noise()
            raise
        return out[ITEM], self.meta(step)

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
        step = self._step(step)
        out = self._manager.restore(step, args=ocp.args.Composite(
            **{ITEM: ocp.args.StandardRestore()}))
        return out[ITEM], self.meta(step)

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return step

    def close(self) -> None:
        """Waits for orbax's background work (deleting old steps) and releases it."""
        self._manager.close()
