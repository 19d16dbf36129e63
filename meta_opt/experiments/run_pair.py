"""The Python loop of one pair: resume, chunks, eval, metrics, checkpoints, summary.

Between compiled chunks (see `trainer.py`) the loop logs one metrics line, evaluates when
due, checkpoints when due (always at the end of an episode) and checks whether a stop was
requested (SIGINT/SIGTERM), in which case it checkpoints and raises `Interrupted`.
Running it again on the same directory resumes from the newest checkpoint; the metrics
file is cut back to that checkpoint first, so the result is the same as an uninterrupted run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from meta_opt.experiments.checkpoints import Checkpointer
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.metrics import MetricsWriter, init_wandb, read_jsonl
from meta_opt.experiments.run_dir import RunDir, write_json_atomic
from meta_opt.experiments.sweep import non_default_fields, pair_to_dict
from meta_opt.experiments.trainer import Trainer, TrainState
from meta_opt.optimizers import find_metaopt_state, save_controller
from meta_opt.optimizers.config import OptimizerConfig


class Interrupted(Exception):
    """A stop was requested; the run was checkpointed at `global_step` and can be resumed."""

    def __init__(self, run_dir: Path, global_step: int):
        super().__init__(f"interrupted at global step {global_step}; checkpoint in {run_dir}")
        self.run_dir = run_dir
        self.global_step = global_step


def _scalar(x) -> float:
    return float(np.asarray(x))


def chunk_record(exp_cfg: ExperimentConfig, episode: int, step: int,
                 metrics: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
    """One metrics line from a chunk's stacked per-step metrics (values of its last step)."""
    record: dict[str, Any] = {
        "episode": episode,
        "step": step,
        "global_step": episode * exp_cfg.num_iters + step,
    }
    for k, v in metrics.items():
        record[k] = _scalar(v[-1])
    record["train_loss_mean"] = _scalar(np.mean(metrics["train_loss"]))
    record["step_time"] = seconds / exp_cfg.log_every
    return record


def summarize(exp_cfg: ExperimentConfig, opt_cfg: OptimizerConfig,
              records: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json: per-episode final metrics, best eval accuracy, throughput."""
    episodes = []
    for e in range(exp_cfg.num_episodes):
        rows = [r for r in records if r["episode"] == e]
        if not rows:
            continue
        last = rows[-1]
        episodes.append({k: v for k, v in last.items()
                         if k == "episode" or k.startswith(("train_loss", "eval_"))})
    accs = [r["eval_accuracy"] for r in records if isinstance(r.get("eval_accuracy"), float)]
    # Median seconds per step (compilation happens before the first chunk is timed).
    times = [r["step_time"] for r in records if r.get("step_time")]
    sps = 1.0 / statistics.median(times) if times else None
    return {
        "optimizer_name": opt_cfg.registered_name(),
        "settings": non_default_fields(opt_cfg),
        "workload_name": exp_cfg.workload_name,
        "num_episodes": exp_cfg.num_episodes,
        "num_iters": exp_cfg.num_iters,
        "first_episode_final_loss": episodes[0]["train_loss"] if episodes else None,
        "last_episode_final_loss": episodes[-1]["train_loss"] if episodes else None,
        "best_eval_accuracy": max(accs) if accs else None,
        "steps_per_sec": sps,
        "episodes": episodes,
    }


def _save_controller(run_dir: RunDir, state: TrainState) -> None:
    meta = find_metaopt_state(state.opt_state)
    if meta is not None:
        save_controller(str(run_dir.controller), jax.device_get(meta))


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
    trainer: Trainer | None = None,
) -> dict[str, Any]:
    """Trains one pair in `run_dir` (resuming if it holds a checkpoint); returns the summary.

    Args:
      exp_cfg, opt_cfg: the pair.
      run_dir: its directory (`OUT/<experiment>/<index>_<optimizer>`).
      label: name shown on the progress bar.
      progress: show a tqdm bar (pair, episode, step, loss, steps/s).
      position: tqdm bar line (parallel runs).
      wandb: also log to wandb.
      restart: delete an existing run directory first.
      should_stop: polled between chunks; True checkpoints and raises `Interrupted`.
      trainer: a prebuilt Trainer for this pair (tests reuse compiled functions).

    Raises:
      Interrupted: a stop was requested; the state is checkpointed.
      ConfigError: the directory holds a different config, or the config cannot run.
    """
    rd = RunDir(run_dir)
    with rd.lock():
        status = rd.prepare(pair_to_dict(exp_cfg, opt_cfg), restart=restart)
        if status == "complete":
            return rd.read_summary()
        return _train(exp_cfg, opt_cfg, rd, label=label, progress=progress, position=position,
                      wandb=wandb, should_stop=should_stop, trainer=trainer)


def _train(exp_cfg, opt_cfg, rd: RunDir, *, label, progress, position, wandb, should_stop,
           trainer) -> dict[str, Any]:
    """The loop of `run_pair` (the run directory is prepared and locked)."""
    trainer = Trainer(exp_cfg, opt_cfg) if trainer is None else trainer
    n_iters, n_eps = exp_cfg.num_iters, exp_cfg.num_episodes
    ckpt = Checkpointer(rd.checkpoints, max_to_keep=exp_cfg.keep_checkpoints)
    state = trainer.init()
    resume_step = ckpt.latest_step()
    if resume_step is not None:
        state, _ = ckpt.restore(state)
    compile_seconds = trainer.compile(state)
    wandb_run = None
    if wandb:
        wandb_run = init_wandb(exp_cfg.experiment_name, rd.path.name,
                               pair_to_dict(exp_cfg, opt_cfg), rd.path)
    writer = MetricsWriter(rd.path, resume_global_step=resume_step, wandb_run=wandb_run)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=exp_cfg.total_steps, initial=resume_step or 0, desc=label or rd.path.name,
                   position=position, leave=True, dynamic_ncols=True)
    try:
        while True:
            episode, step = int(state.episode), int(state.step)
            if step == n_iters:
                if episode == n_eps - 1:
                    break
                state = trainer.next_episode(state)
                continue
            start = time.perf_counter()
            state, metrics = trainer.run_chunk(state)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - start
            step += exp_cfg.log_every
            record = chunk_record(exp_cfg, episode, step, metrics, seconds)
            end_of_episode = step == n_iters
            if end_of_episode or (exp_cfg.eval_every and step % exp_cfg.eval_every == 0):
                record.update({k: _scalar(v) for k, v in
                               jax.device_get(trainer.run_eval(state)).items()})
            writer.write(record)
            gstep = record["global_step"]
            saved = False
            if end_of_episode or step % exp_cfg.checkpoint_every == 0:
                ckpt.save(gstep, state, {"episode": episode, "step": step, "global_step": gstep})
                saved = True
            if end_of_episode:
                _save_controller(rd, state)
            if bar is not None:
                bar.update(exp_cfg.log_every)
                bar.set_postfix(ep=f"{episode + 1}/{n_eps}", step=step,
                                loss=f"{record['train_loss']:.4g}",
                                sps=f"{1.0 / max(record['step_time'], 1e-9):.0f}")
            if should_stop():
                if not saved:
                    ckpt.save(gstep, state, {"episode": episode, "step": step,
                                             "global_step": gstep})
                raise Interrupted(rd.path, gstep)
    finally:
        writer.close()
        ckpt.close()
        if bar is not None:
            bar.close()
        if wandb_run is not None:
            wandb_run.finish()
    summary = summarize(exp_cfg, opt_cfg, read_jsonl(rd.metrics))
    summary["compile_seconds"] = compile_seconds  # of the last process (not reproducible)
    write_json_atomic(rd.summary, summary)
    return summary
