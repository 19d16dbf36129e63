"""`ExperimentConfig`: what to train, for how long, and how to log, checkpoint and shard.

An experiment pairs one `ExperimentConfig` with one `OptimizerConfig`; a sweep is a list
of such pairs (see `sweep.py`). The config reuses the `Config` machinery of
`meta_opt.optimizers.config` (frozen dataclass, validation on construction, JSON round
trip with type coercion, unknown keys rejected with the valid ones), registered in its own
one-member family so `from_dict` works with or without the `config_kind` key.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from meta_opt.optimizers.config import Config, ConfigError

SPLITS = ("train", "inner_valid", "outer_valid", "test")
# Held-out parts of the training data (80/10/10 train/inner_valid/outer_valid): what a
# validation split for selecting hyperparameters may be, so selection never sees `test`.
VALID_SPLITS = ("inner_valid", "outer_valid")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(Config):
    """One training setup: workload, episodes, steps, evaluation, logging and devices.

    Attributes:
      experiment_name: folder under the output directory that holds every pair of a sweep
        (a plain folder name: letters, digits, '.', '_', '-').
      seed: root of every random number of the run (init, batches, eval); a run is a pure
        function of (config, seed), which is what makes resume bit-exact.
      workload_name: a built-in task name (`meta_opt.tasks.list_tasks()`).
      full_batch: draw one training batch at the start and train on it for the whole run
        (all episodes); evaluation still uses held-out data.
      num_episodes: training episodes; each re-initialises the model (fresh key) and, with
        `reset_opt_state`, the optimizer state (MetaOpt keeps its controller).
      reset_opt_state: True: a new episode starts from a fresh optimizer state (MetaOpt:
        fresh histories and step, same controller M and its meta-optimizer state). False:
        the whole optimizer state carries over (moments, step counts, MetaOpt histories).
      num_iters: optimizer steps per episode.
      batch_size: training and evaluation batch size.
      eval_every: evaluate every this many steps (and at the end of every episode);
        0 evaluates only at episode ends. A multiple of `log_every`.
      eval_batches: number of held-out batches averaged per evaluation.
      eval_split: held-out split to evaluate on (metrics `eval_*`).
      valid_split: a validation split of the training data (`inner_valid` or
        `outer_valid`) also evaluated at every evaluation (metrics `valid_*`), e.g. to
        select hyperparameters without reading the test split; None: not evaluated.
      checkpoint_every: save a checkpoint every this many steps (and at episode ends);
        a multiple of `log_every`.
      log_every: steps per compiled chunk; one metrics line per chunk. Divides `num_iters`.
      keep_checkpoints: how many recent checkpoints to keep on disk.
      num_batch_devices, num_opt_devices: the ("batch", "opt") device mesh. 1 x 1 runs on
        the default device; otherwise the product must equal the number of visible devices.
      data_dir: where datasets are looked for (None: the data module's default search).
      stop_on_nonfinite: stop a pair whose training loss turns NaN or infinite at the end
        of the chunk where it happens (its summary and the table say where); False keeps
        training it to the end (the first non-finite position is still reported).
    """

    _name_key: ClassVar[str] = "config_kind"
    _kind: ClassVar[str] = "experiment"
    _registry: ClassVar[dict[str, type[Config]]] = {}
    config_kind: ClassVar[str] = "experiment"

    experiment_name: str = "default"
    seed: int = 0
    workload_name: str = "ImageMLP_Digits8_Relu32"
    full_batch: bool = False
    num_episodes: int = 1
    reset_opt_state: bool = True
    num_iters: int = 100
    batch_size: int = 128
    eval_every: int = 0
    eval_batches: int = 4
    eval_split: str = "test"
    valid_split: str | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    num_batch_devices: int = 1
    num_opt_devices: int = 1
    data_dir: str | None = None
    stop_on_nonfinite: bool = True

    def validate(self) -> None:
        """Checks the ranges and the relations between fields (types are checked before)."""
        self.check_folder_name("experiment_name")
        self.check_positive(
            "num_episodes", "num_iters", "batch_size", "eval_batches", "checkpoint_every",
            "log_every", "keep_checkpoints", "num_batch_devices", "num_opt_devices",
        )
        self.check_nonnegative("eval_every", "seed")
        if self.seed >= 2**32:
            self._fail("seed", "below 2**32 (it seeds a 32-bit PRNG key inside the program)")
        self.check_choice("eval_split", SPLITS)
        if self.valid_split is not None:
            self.check_choice("valid_split", VALID_SPLITS)
        if self.num_iters % self.log_every:
            raise ConfigError(
                f"ExperimentConfig.num_iters ({self.num_iters}) must be a multiple of log_every "
                f"({self.log_every}): each episode runs as compiled chunks of log_every steps; "
                f"e.g. set log_every to one of {_divisors(self.num_iters)}"
            )
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value % self.log_every:
                raise ConfigError(
                    f"ExperimentConfig.{name} ({value}) must be a multiple of log_every "
                    f"({self.log_every}): evaluation and checkpoints happen between chunks"
                )
        if self.batch_size % self.num_batch_devices:
            raise ConfigError(
                f"ExperimentConfig.batch_size ({self.batch_size}) must be divisible by "
                f"num_batch_devices ({self.num_batch_devices}) so each device gets an equal "
                f"shard; use a batch size that is a multiple of {self.num_batch_devices}"
            )
        _check_workload(self.workload_name)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (every episode)."""
        return self.num_episodes * self.num_iters

    @property
    def num_devices(self) -> int:
        """Devices of the run's mesh (num_batch_devices x num_opt_devices)."""
        return self.num_batch_devices * self.num_opt_devices


ExperimentConfig.register(ExperimentConfig)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 1000) + 1) if n % d == 0][:12]


def _check_workload(name: str) -> None:
    """Unknown workloads fail at config time (before any data loading or compiling)."""
    from meta_opt.tasks import is_task, list_tasks

    if not is_task(name):
        import difflib

        known = list_tasks()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"unknown workload_name '{name}'{hint}; known tasks: {', '.join(known)}"
        )
