"""Meta-training on Ray: one learner actor holds theta, N worker actors estimate gradients.

What travels is what the central-learner / worker split of `meta_opt.outer.gradient_learner`
allows: the learner sends `WorkerWeights` (theta) down, a worker sends one
`AggregatedGradient` (mean meta-gradient and meta-loss of its estimators) up, both as numpy
pytrees. Unroll states (the inner training runs of PES / ES / truncated backprop) never leave
the worker that owns them. Each actor builds its own JAX objects from the `MetaTrainConfig`
dict in its own process; no JAX object is pickled from the driver.

Staleness: a gradient computed on the weights of meta-step `s` and offered when the learner
is at step `t` is accepted iff `t - s <= max_staleness`; otherwise it is dropped and counted.
Once `num_gradients_per_step` gradients are accepted, the learner applies
`GradientLearner.update` to them (their mean, in worker-id order) and advances one step.
When `num_gradients_per_step <= num_workers` a worker contributes at most once per weights
version (it waits for the next step), so `max_staleness=0` with `num_gradients_per_step ==
num_workers` is synchronous meta-training: each step is exactly one-machine
`GradientLearner.update` on every worker's `gradient_worker_compute` output.

Ray is imported lazily: `import meta_opt.distributed` works without it.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned
  optimizers", CoLLAs 2022 (learned_optimization's central learner and async workers).
  Moritz et al., "Ray: A distributed framework for emerging AI applications", OSDI 2018.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from meta_opt.outer.meta_train_config import MetaTrainConfig

# Stream of the run seed that worker keys fold from; the one-machine path uses PRNGKey(seed)
# itself (theta init, unroll states) and fold_in(key, 1) (meta-step keys).
_WORKER_STREAM = 2


def to_numpy(tree: Any) -> Any:
    """A pytree with every leaf fetched to a host numpy array (what crosses process borders)."""
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def worker_base_key(seed: int, worker_id: int, incarnation: int = 0, start_step: int = 0):
    """Key of one worker process: distinct per worker, per restart and per resumed run."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), _WORKER_STREAM)
    key = jax.random.fold_in(jax.random.fold_in(key, worker_id), incarnation)
    return jax.random.fold_in(key, start_step)


def worker_init_key(base_key, estimator_index: int):
    """Key with which a worker initialises the unroll state of estimator `estimator_index`."""
    return jax.random.fold_in(jax.random.fold_in(base_key, 0), estimator_index)


def worker_step_key(base_key, count: int):
    """Key of a worker's `count`-th gradient computation (0, 1, ... since it started)."""
    return jax.random.fold_in(jax.random.fold_in(base_key, 1), count)


def _build(config_dict: dict[str, Any], with_estimators: bool = True):
    """(config, learned optimizer, estimators or None, theta optimizer) from a config dict."""
    from meta_opt.outer.meta_train_config import (  # noqa: PLC0415 - heavy, per process
        MetaTrainConfig,
        build_estimator,
        build_learned_optimizer,
        build_task_family,
        build_theta_opt,
    )

    config = MetaTrainConfig.from_dict(dict(config_dict))
    lopt = build_learned_optimizer(config)
    estimators = None
    if with_estimators:
        estimators = [
            build_estimator(config, lopt, build_task_family(n, config.data_dir, config.batch_size))
            for n in config.task_families
        ]
    return config, lopt, estimators, build_theta_opt(config)


class LearnerActor:
    """The central learner: theta, its optimizer state and the meta-step (run as a Ray actor).

    Thread-safe (one lock): it runs as a threaded actor so that workers may block in
    `get_weights(min_step=...)` while others put gradients.

    Args:
      config_dict: `MetaTrainConfig.to_dict()`; theta starts from `PRNGKey(seed)` as in the
        one-machine path.
      num_gradients_per_step: accepted gradients averaged into one meta-step.
      max_staleness: largest accepted `step - weights_step`.
    """

    def __init__(
        self, config_dict: dict[str, Any], num_gradients_per_step: int, max_staleness: int
    ):
        from meta_opt.outer.gradient_learner import GradientLearner  # noqa: PLC0415

        if num_gradients_per_step < 1 or max_staleness < 0:
            raise ValueError(
                f"need num_gradients_per_step >= 1 and max_staleness >= 0, got "
                f"{num_gradients_per_step} and {max_staleness}"
            )
        config, lopt, _, theta_opt = _build(config_dict, with_estimators=False)
        self._config = config
        self._learner = GradientLearner(lopt, theta_opt)
        self._state = self._learner.init(jax.random.PRNGKey(config.seed))
        self._k = int(num_gradients_per_step)
        self._max_staleness = int(max_staleness)
        self._cond = threading.Condition()
        self._step = 0
        self._stopped = False
        self._weights = None  # numpy WorkerWeights of the current step (cached)
        self._pending: list[tuple[int, int, Any]] = []  # (worker_id, weights_step, gradient)
        self._records: list[dict[str, float]] = []
        self._snapshots: dict[int, dict[str, Any]] = {}
        self._counts = {"accepted": 0, "stale_dropped": 0, "late_dropped": 0, "nonfinite": 0}
        self._per_worker: dict[int, dict[str, int]] = {}
        self._last_time = time.monotonic()

    # ---- workers ----
    def get_weights(self, min_step: int | None = None, timeout: float | None = None):
        """(numpy WorkerWeights, step); with `min_step`, waits (up to `timeout` s) for it."""
        with self._cond:
            if min_step is not None:
                self._cond.wait_for(lambda: self._step >= min_step or self._stopped, timeout)
            if self._weights is None:
                self._weights = to_numpy(self._learner.get_state_for_worker(self._state))
            return self._weights, self._step

    def put_gradient(self, to_put: Any, weights_step: int, worker_id: int) -> bool:
        """Offers one `AggregatedGradient`; True iff accepted (not stale, run not over)."""
        with self._cond:
            counts = self._per_worker.setdefault(int(worker_id), {"accepted": 0, "stale": 0})
            if self._stopped or self._step >= self._config.num_steps:
                self._counts["late_dropped"] += 1
                return False
            if self._step - int(weights_step) > self._max_staleness:
                self._counts["stale_dropped"] += 1
                counts["stale"] += 1
                return False
            self._counts["accepted"] += 1
            counts["accepted"] += 1
            self._pending.append((int(worker_id), int(weights_step), to_put))
            if len(self._pending) >= self._k:
                self._apply()
            return True

    def _apply(self) -> None:
        pending = sorted(self._pending, key=lambda p: (p[0], p[1]))
        staleness = np.mean([self._step - s for _, s, _ in pending])
        self._state, metrics = self._learner.update(self._state, [g for _, _, g in pending])
        metrics = {k: float(v) for k, v in metrics.items()}
        self._pending, self._weights = [], None
        self._step += 1
        self._counts["nonfinite"] += int(metrics["num_nonfinite_grads"])
        now = time.monotonic()
        seconds, self._last_time = now - self._last_time, now
        self._records.append(
            {
                "step": self._step,
                "loss": metrics["mean_loss"],
                **metrics,
                # The driver logs seconds_per_step over its logging window, like one machine.
                "ray/learner_seconds_since_last_step": seconds,
                "ray/mean_staleness": float(staleness),
                **{f"ray/{k}": float(v) for k, v in self._counts.items()},
            }
        )
        if self._config.checkpoint_due(self._step):
            self._snapshots[self._step] = self._snapshot()
        self._cond.notify_all()

    # ---- driver ----
    def _snapshot(self) -> dict[str, Any]:
        return {
            "learner": to_numpy(self._state),
            "theta": to_numpy(self._learner.get_theta(self._state)),
            "step": self._step,
        }

    def state(self) -> dict[str, Any]:
        """{"learner": numpy GradientLearnerState, "theta": numpy theta, "step": int}."""
        with self._cond:
            return self._snapshot()

    def load_state(self, learner_state: Any, step: int) -> None:
        """Continues from a checkpointed learner state (pending gradients are discarded)."""
        with self._cond:
            self._state = jax.tree_util.tree_map(jax.numpy.asarray, learner_state)
            self._step, self._pending, self._weights = int(step), [], None
            self._cond.notify_all()

    def drain(self) -> tuple[list[dict[str, float]], dict[int, dict[str, Any]]]:
        """Per-step records and checkpoint snapshots since the last call."""
        with self._cond:
            out = (self._records, self._snapshots)
            self._records, self._snapshots = [], {}
            return out

    def stop(self) -> int:
        """Stops accepting gradients, snapshots the current step (for a checkpoint), returns it."""
        with self._cond:
            self._stopped = True
            self._pending = []
            self._snapshots[self._step] = self._snapshot()
            self._cond.notify_all()
            return self._step

    def stopped(self) -> bool:
        """Whether `stop()` was called."""
        with self._cond:
            return self._stopped

    def metrics(self) -> dict[str, Any]:
        """Counters: accepted, stale_dropped, late_dropped, nonfinite, per_worker, step."""
        with self._cond:
            return {
                **self._counts,
                "step": self._step,
                "per_worker": {k: dict(v) for k, v in self._per_worker.items()},
            }


class WorkerActor:
    """A worker: its estimators (one per task family) and their unroll states (a Ray actor).

    Args:
      config_dict: `MetaTrainConfig.to_dict()`.
      worker_id: index of the worker (keys and the learner's per-worker counts).
      incarnation: how many times this worker was restarted (fresh keys per restart).
      start_step: meta-step the run (re)started from (fresh keys per resume).
    """

    def __init__(
        self, config_dict: dict[str, Any], worker_id: int, incarnation: int = 0, start_step: int = 0
    ):
        self._config, _, self._estimators, _ = _build(config_dict)
        self.worker_id = int(worker_id)
        self._base = worker_base_key(self._config.seed, worker_id, incarnation, start_step)
        self._states = None
        self._count = 0

    def compute(self, weights: Any) -> Any:
        """One `gradient_worker_compute` on `weights`; returns `to_put` as numpy."""
        from meta_opt.outer.gradient_learner import gradient_worker_compute  # noqa: PLC0415

        if self._states is None:  # unroll states start from the first theta the worker sees
            self._states = [
                est.init_worker_state(weights, key=worker_init_key(self._base, i))
                for i, est in enumerate(self._estimators)
            ]
        out = gradient_worker_compute(
            weights, self._estimators, self._states, worker_step_key(self._base, self._count)
        )
        self._states, self._count = out.unroll_states, self._count + 1
        return to_numpy(out.to_put)

    def run(
        self, learner: Any, num_steps: int, once_per_step: bool, poll_seconds: float = 1.0
    ) -> dict[str, int]:
        """Fetch weights, compute, put, until the learner reaches `num_steps` or stops."""
        import ray  # noqa: PLC0415

        last, accepted = None, 0
        while True:
            min_step = last + 1 if (once_per_step and last is not None) else None
            weights, step = ray.get(learner.get_weights.remote(min_step, poll_seconds))
            if step >= num_steps or ray.get(learner.stopped.remote()):
                return {"computed": self._count, "accepted": accepted}
            if min_step is not None and step < min_step:
                continue  # timed out waiting for the next step: ask again
            accepted += bool(
                ray.get(learner.put_gradient.remote(self.compute(weights), step, self.worker_id))
            )
            last = step


class RayMetaTraining:
    """Driver: starts the learner and workers, streams per-step records, restarts workers.

    Args:
      config: a `MetaTrainConfig`.
      num_workers: worker actors.
      max_staleness: see the module docstring (0: only gradients on the current theta).
      num_gradients_per_step: gradients per meta-step (default num_workers: synchronous when
        max_staleness is 0).
      max_worker_restarts: restarts allowed per worker before the run fails.
      worker_num_cpus: CPUs Ray reserves per worker (spreads workers over a cluster); the
        learner reserves none.
      poll_seconds: how often the driver checks the learner and the workers.
    """

    def __init__(
        self,
        config: MetaTrainConfig,
        num_workers: int,
        max_staleness: int = 0,
        num_gradients_per_step: int | None = None,
        max_worker_restarts: int = 3,
        worker_num_cpus: float = 1.0,
        poll_seconds: float = 0.05,
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.config = config
        self.num_workers = int(num_workers)
        self.max_staleness = int(max_staleness)
        self.num_gradients_per_step = int(num_gradients_per_step or num_workers)
        if self.num_gradients_per_step < 1:
            raise ValueError(f"num_gradients_per_step must be >= 1, got {num_gradients_per_step}")
        self.max_worker_restarts = int(max_worker_restarts)
        self.worker_num_cpus = float(worker_num_cpus)
        self.poll_seconds = float(poll_seconds)
        self.learner = None
        self.workers: list[Any] = []
        self.restarts = [0] * self.num_workers
        self._runs: dict[Any, int] = {}  # run() ObjectRef -> worker id
        self._start_step = 0

    @property
    def once_per_step(self) -> bool:
        """Whether each worker offers at most one gradient per weights version.

        True when `num_gradients_per_step <= num_workers`: a worker then waits for the next
        meta-step instead of computing again on the same theta, so no worker's gradients
        fill a step alone (with `max_staleness=0` the run is synchronous). With more
        gradients per step than workers, workers must contribute several times per step.
        """
        return self.num_gradients_per_step <= self.num_workers

    def start(self, learner_state: Any = None, step: int = 0) -> None:
        """Creates the actors; with `learner_state`, the learner continues from `step`."""
        import ray  # noqa: PLC0415

        cfg = self.config.to_dict()
        self.learner = (
            ray.remote(LearnerActor)
            .options(num_cpus=0, max_concurrency=2 * self.num_workers + 4)
            .remote(cfg, self.num_gradients_per_step, self.max_staleness)
        )
        if learner_state is not None:
            ray.get(self.learner.load_state.remote(to_numpy(learner_state), step))
        self._start_step = int(step)
        self.workers = [None] * self.num_workers
        for i in range(self.num_workers):
            self._spawn(i)

    def _spawn(self, worker_id: int) -> None:
        import ray  # noqa: PLC0415

        actor = (
            ray.remote(WorkerActor)
            .options(num_cpus=self.worker_num_cpus)
            .remote(self.config.to_dict(), worker_id, self.restarts[worker_id], self._start_step)
        )
        self.workers[worker_id] = actor
        ref = actor.run.remote(self.learner, self.config.num_steps, self.once_per_step)
        self._runs[ref] = worker_id

    def _check_workers(self) -> None:
        """Waits up to poll_seconds; replaces workers whose process died."""
        import ray  # noqa: PLC0415
        from ray.exceptions import RayActorError  # noqa: PLC0415

        if not self._runs:
            return
        ready, _ = ray.wait(
            list(self._runs), num_returns=len(self._runs), timeout=self.poll_seconds
        )
        for ref in ready:
            worker_id = self._runs.pop(ref)
            try:
                ray.get(ref)
            except RayActorError as err:  # includes ActorDiedError: the process is gone
                self.restarts[worker_id] += 1
                if self.restarts[worker_id] > self.max_worker_restarts:
                    raise RuntimeError(
                        f"Ray worker {worker_id} died {self.restarts[worker_id]} times "
                        f"(max_worker_restarts={self.max_worker_restarts}); last error: {err}"
                    ) from err
                print(
                    f"Ray worker {worker_id} died ({type(err).__name__}); restart "
                    f"{self.restarts[worker_id]}/{self.max_worker_restarts} with a fresh "
                    "unroll state",
                    file=sys.stderr,
                )
                self._spawn(worker_id)
            except Exception as err:  # an exception inside the worker's code: not restartable
                raise RuntimeError(f"Ray worker {worker_id} failed: {err}") from err

    def _drain(self):
        import ray  # noqa: PLC0415
        from ray.exceptions import RayActorError  # noqa: PLC0415

        try:
            return ray.get(self.learner.drain.remote())
        except RayActorError as err:
            raise RuntimeError(
                f"the Ray learner actor died ({err}); resume from the last checkpoint by "
                "running the same command again"
            ) from err

    def steps(self, should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple]:
        """Yields `(step, loss, metrics, checkpoint, last)` for every meta-step, in order.

        `checkpoint` is None or a callable returning `(payload, theta)` of that step (given
        for steps where `step % checkpoint_every == 0`, the last step, and the step at which
        `should_stop()` turned true); `last` marks the final record of a stopped run. The
        newest record is held back until the next one (or the end) so that a stop can still
        attach its checkpoint to it.
        """
        import ray  # noqa: PLC0415

        if self.learner is None:
            raise RuntimeError("call start() before steps()")
        workers_done = False
        held, stopping = None, False  # held: [step, loss, metrics, snapshot]
        while True:
            if not stopping and should_stop():
                ray.get(self.learner.stop.remote())
                stopping = True
            records, snapshots = self._drain()
            if held is not None and held[3] is None:
                held[3] = snapshots.get(held[0])
            for rec in records:
                if held is not None:
                    yield self._emit(held, last=False)
                step = int(rec.pop("step"))
                loss = rec.pop("loss")
                rec["ray/worker_restarts"] = float(sum(self.restarts))
                held = [step, loss, rec, snapshots.get(step)]
            step = self._start_step if held is None else held[0]
            if step >= self.config.num_steps or stopping:
                if held is not None:
                    yield self._emit(held, last=stopping)
                return
            if workers_done:  # drained once more after the last worker returned
                raise RuntimeError(
                    f"every Ray worker returned at meta-step {step} < num_steps "
                    f"{self.config.num_steps}; see the worker logs"
                )
            self._check_workers()
            workers_done = not self._runs

    @staticmethod
    def _emit(held: list, last: bool) -> tuple:
        step, loss, metrics, snap = held
        ckpt = (
            None
            if snap is None
            else (lambda: ({"learner": snap["learner"], "step": snap["step"]}, snap["theta"]))
        )
        return step, loss, metrics, ckpt, last

    def shutdown(self) -> None:
        """Kills the actors of this run (the cluster stays up)."""
        import ray  # noqa: PLC0415

        for actor in [*self.workers, self.learner]:
            if actor is not None:
                ray.kill(actor)
        self.workers, self.learner, self._runs = [], None, {}

    def __enter__(self) -> RayMetaTraining:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
