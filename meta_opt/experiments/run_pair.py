"""One pair in its run directory: a group of one (see `run_group.py` for the loop).

Running it again on the same directory resumes from the newest checkpoint; the metrics
file is cut back to that checkpoint first, so the result is the same as an uninterrupted
run, and the same as the pair's result when it runs inside a grid.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.progress import Progress, progress_mode
from meta_opt.experiments.run_group import (
    Interrupted,
    Member,
    chunk_record,
    initial_record,
    run_group,
    summarize,
)
from meta_opt.optimizers.config import OptimizerConfig

__all__ = ["Interrupted", "chunk_record", "initial_record", "run_pair", "summarize"]


def run_pair(
    exp_cfg: ExperimentConfig,
    opt_cfg: OptimizerConfig,
    run_dir: str | Path,
    *,
    label: str = "",
    progress: bool = True,
    position: int = 0,
    wandb: bool = False,
    restart: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Trains one pair in `run_dir` (resuming if it holds a checkpoint); returns the summary.

    Args:
      exp_cfg: the pair's experiment.
      opt_cfg: the pair's optimizer.
      run_dir: its directory (`OUT/<experiment>/<index>_<optimizer>`).
      label: name shown in progress output.
      progress: report progress (bars on a terminal, plain lines otherwise).
      position: tqdm bar line (parallel runs).
      wandb: also log to wandb.
      restart: delete an existing run directory first.
      should_stop: polled between chunks; True checkpoints and raises `Interrupted`.

    Raises:
      Interrupted: a stop was requested; the state is checkpointed.
      ConfigError: the directory holds a different config, or the config cannot run.
    """
    reporter = Progress(1, progress_mode(progress), position=position)
    member = Member(exp_cfg, opt_cfg, Path(run_dir), label)
    (summary,) = run_group([member], progress=reporter, wandb=wandb, restart=restart,
                           should_stop=should_stop)
    return summary
