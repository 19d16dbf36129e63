"""`meta-opt meta-train CONFIG [--set KEY=VALUE ...] [--out DIR]`: meta-train a learned optimizer.

CONFIG is a Python file whose `get_config()` returns a `MetaTrainConfig` (or a dict of
its fields). The run directory (default `runs/meta_train/<name>`) receives `config.json`,
`metrics.jsonl` (one JSON object per logged meta-step: step, meta_loss averaged over the
window, estimator and learner metrics, seconds per step), TensorBoard events,
`checkpoints/` (orbax: theta, meta-optimizer and unroll states, rng, step),
`meta_loss.png` and `summary.json`. Ctrl-C or SIGTERM finishes the current meta-step,
saves a checkpoint and exits 130. Running again on the same directory resumes from the
latest checkpoint and continues exactly as if never interrupted (raise `num_steps` with
`--set num_steps=N` to train further).

`--ray [--workers N] [--max-staleness K]` meta-trains on Ray instead (one learner actor,
N worker actors; docs/distributed.md) with the same outputs and the same loop for logging,
checkpoint cadence and signals; its resume restores the learner exactly but restarts the
workers' unroll states.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import runpy
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from meta_opt.experiments.metrics import read_jsonl, truncate_jsonl

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
EXIT_FAILED = 1
RAY_MARKER = "ray.json"  # present in run directories written by --ray


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="Python file whose get_config() returns a MetaTrainConfig")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (VALUE parsed as JSON, else a string); repeatable",
    )
    parser.add_argument("--out", default=None, help="run directory (default runs/meta_train/NAME)")
    parser.add_argument("--no-plot", action="store_true", help="do not write meta_loss.png")
    ray = parser.add_argument_group("Ray (docs/distributed.md)")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="meta-train on Ray: one learner actor and --workers worker actors (joins the "
        "cluster at RAY_ADDRESS, else starts a local one)",
    )
    ray.add_argument(
        "--workers", type=int, default=None, metavar="N", help="worker actors (default 2)"
    )
    ray.add_argument(
        "--max-staleness",
        type=int,
        default=0,
        metavar="K",
        help="accept gradients computed on theta up to K meta-steps old (default 0: synchronous)",
    )
    ray.add_argument(
        "--max-worker-restarts",
        type=int,
        default=3,
        metavar="R",
        help="restarts of a dead worker before the run fails (default 3)",
    )


def load_config(path: str | Path, overrides: list[str] | None = None):
    """The `MetaTrainConfig` of a config file, with `--set` overrides applied."""
    from meta_opt.outer.meta_train_config import MetaTrainConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    namespace = runpy.run_path(str(path))
    if "get_config" not in namespace:
        raise ValueError(f"{path} must define get_config() returning a MetaTrainConfig or dict")
    config = namespace["get_config"]()
    if isinstance(config, dict):
        config = MetaTrainConfig.from_dict(config)
    if not isinstance(config, MetaTrainConfig):
        raise ValueError(
            f"{path}: get_config() returned {type(config).__name__}; "
            "expected a MetaTrainConfig or a dict"
        )
    return config.with_overrides(list(overrides or []))


def _same_run(saved: dict[str, Any], config_dict: dict[str, Any]) -> bool:
    """Whether a saved config describes the same run (num_steps may grow on resume)."""
    ignore = {"num_steps", "log_every", "checkpoint_every"}
    return {k: v for k, v in saved.items() if k not in ignore} == {
        k: v for k, v in config_dict.items() if k not in ignore
    }


def _open_run_dir(config, out: Path, ray: bool):
    """Checks `out` holds this run (or nothing), writes config.json; returns a checkpointer."""
    from meta_opt.outer.checkpoint import MetaTrainCheckpointer

    out.mkdir(parents=True, exist_ok=True)
    config_path, marker = out / "config.json", out / RAY_MARKER
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if not _same_run(saved, config.to_dict()):
            raise ValueError(
                f"{out} holds a different meta-training run (config.json differs); "
                "use another --out or delete the directory"
            )
    ckpt = MetaTrainCheckpointer(out / "checkpoints")
    if ckpt.latest_step() is not None and marker.exists() != ray:
        ckpt.close()
        written, asked = ("--ray", "without --ray") if marker.exists() else ("one machine", "--ray")
        raise ValueError(
            f"{out} holds a meta-training run written by {written}; its checkpoint cannot be "
            f"resumed {asked}. Run the same command as before, or use another --out"
        )
    config_path.write_text(json.dumps(config.to_dict(), indent=2))
    if ckpt.latest_step() is None:  # nothing to resume: this call decides the run's path
        if ray:
            marker.write_text(json.dumps({"written_by": "meta-opt meta-train --ray"}))
        else:
            marker.unlink(missing_ok=True)
    return ckpt


@contextlib.contextmanager
def _graceful_stop():
    """Ctrl-C / SIGTERM set `stop["signal"]`: the loop finishes the step, checkpoints, stops."""
    stop: dict[str, Any] = {"signal": None}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, lambda n, f: stop.update(signal=n))
        except ValueError:  # not the main thread: no handlers, no graceful stop
            pass
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _drive(
    config,
    out: Path,
    ckpt,
    start_step: int,
    steps,
    stop: dict,
    plot: bool,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The loop both paths share: metrics.jsonl + TensorBoard, checkpoints, summary, plot.

    `steps` yields `(step, loss, metrics, checkpoint, last)` per meta-step in order;
    `checkpoint()` returns `(payload, theta)` of that step (None: not available), and a
    checkpoint is written when the cadence says so or at the `last` step of a stopped run.
    """
    from tensorboardX import SummaryWriter

    metrics_path = out / "metrics.jsonl"
    # Drop lines written after the checkpoint we resume from (and a line torn by a kill).
    truncate_jsonl(metrics_path, start_step, key="step")
    writer = SummaryWriter(str(out / "tensorboard"))
    window, t0, step = [], time.time(), start_step
    try:
        with metrics_path.open("a") as log:
            for step, loss, metrics, checkpoint, last in steps:
                window.append(float(loss))
                if config.log_due(step):
                    record = {
                        "step": step,
                        "meta_loss": float(np.mean(window)),
                        "meta_loss_last": window[-1],
                        "seconds_per_step": (time.time() - t0) / len(window),
                        **{k: float(v) for k, v in metrics.items()},
                    }
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    for name, value in record.items():
                        if name != "step":
                            writer.add_scalar(name, value, step)
                    window, t0 = [], time.time()
                if checkpoint is not None and (last or config.checkpoint_due(step)):
                    payload, theta = checkpoint()
                    info = {"step": step, "name": config.name, **(meta or {})}
                    ckpt.save(step, payload, theta, info)
    finally:
        writer.close()

    records = read_jsonl(metrics_path)
    summary = {
        "name": config.name,
        "steps": step,
        "final_meta_loss": records[-1]["meta_loss"] if records else None,
        "first_meta_loss": records[0]["meta_loss"] if records else None,
        "interrupted": stop["signal"] is not None,
        **(meta or {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if plot and records:
        _plot(records, out / "meta_loss.png", config.name)
    return summary


def run_meta_training(config, out_dir: str | Path, plot: bool = True) -> dict[str, Any]:
    """Meta-trains as `config` says in this process, writing into `out_dir`; resumes exactly."""
    import jax

    from meta_opt.outer.gradient_learner import SingleMachineGradientLearner
    from meta_opt.outer.meta_train_config import (
        build_estimator,
        build_learned_optimizer,
        build_task_family,
        build_theta_opt,
    )

    lopt = build_learned_optimizer(config)
    estimators = [
        build_estimator(config, lopt, build_task_family(n, config.data_dir, config.batch_size))
        for n in config.task_families
    ]
    trainer = SingleMachineGradientLearner(lopt, estimators, build_theta_opt(config))
    out = Path(out_dir)
    ckpt = _open_run_dir(config, out, ray=False)
    key = jax.random.PRNGKey(config.seed)
    start = {"trainer": trainer.init(key), "rng": jax.random.fold_in(key, 1), "step": 0}
    if ckpt.latest_step() is not None:
        start, _ = ckpt.restore(start)
        print(f"resuming {out} from meta-step {int(start['step'])}", file=sys.stderr)
    start_step, rng = int(start["step"]), start["rng"]

    def steps(stop):
        state, step = start["trainer"], start_step
        while step < config.num_steps and stop["signal"] is None:
            log_now = config.log_due(step + 1)
            state, loss, metrics = trainer.update(
                state, jax.random.fold_in(rng, step), with_metrics=log_now
            )
            step += 1
            checkpoint = lambda s=state, t=step: (
                {"trainer": s, "rng": rng, "step": t},
                trainer.get_theta(s),
            )
            yield step, loss, metrics, checkpoint, stop["signal"] is not None

    try:
        with _graceful_stop() as stop:
            return _drive(config, out, ckpt, start_step, steps(stop), stop, plot)
    finally:
        ckpt.close()


def run_ray_meta_training(
    config,
    out_dir: str | Path,
    num_workers: int,
    max_staleness: int = 0,
    plot: bool = True,
    num_gradients_per_step: int | None = None,
    max_worker_restarts: int = 3,
    worker_num_cpus: float = 1.0,
) -> dict[str, Any]:
    """Meta-trains on Ray (one learner actor, `num_workers` worker actors) into `out_dir`.

    Joins the cluster at `RAY_ADDRESS` (or the one this process already started), else
    starts a local one and shuts it down at the end. Logs and checkpoints like
    `run_meta_training` (the `theta` item is the same, so `meta-opt eval-lopt` reads it).
    Resuming restores the learner (theta, meta-optimizer state, step); workers start fresh
    unroll states. See docs/distributed.md and `meta_opt.distributed.RayMetaTraining`.
    """
    import os
    import warnings

    import jax
    import ray

    from meta_opt.distributed import RayMetaTraining
    from meta_opt.outer.gradient_learner import GradientLearner
    from meta_opt.outer.meta_train_config import build_learned_optimizer, build_theta_opt

    trainer = RayMetaTraining(  # validates the arguments before anything is written
        config,
        num_workers,
        max_staleness=max_staleness,
        num_gradients_per_step=num_gradients_per_step,
        max_worker_restarts=max_worker_restarts,
        worker_num_cpus=worker_num_cpus,
    )
    out = Path(out_dir)
    ckpt = _open_run_dir(config, out, ray=True)
    learner_state, start_step = None, 0
    if ckpt.latest_step() is not None:
        # The template only gives orbax the structure; the learner actor builds its own.
        learner = GradientLearner(build_learned_optimizer(config), build_theta_opt(config))
        template = {"learner": learner.init(jax.random.PRNGKey(config.seed)), "step": 0}
        restored, _ = ckpt.restore(template)
        learner_state, start_step = restored["learner"], int(restored["step"])
        print(f"resuming {out} from meta-step {start_step} (fresh unroll states)", file=sys.stderr)

    started_ray = not ray.is_initialized()
    if started_ray:
        with warnings.catch_warnings():
            # Ray starts its processes with fork+exec, which is safe in a JAX process.
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    meta = {"ray_workers": num_workers, "max_staleness": max_staleness}
    try:
        with _graceful_stop() as stop:
            trainer.start(learner_state, start_step)
            steps = trainer.steps(lambda: stop["signal"] is not None)
            summary = _drive(config, out, ckpt, start_step, steps, stop, plot, meta)
        summary["worker_restarts"] = sum(trainer.restarts)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        ckpt.close()
        trainer.shutdown()
        if started_ray:
            ray.shutdown()


def _plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in records], [r["meta_loss"] for r in records])
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss (window mean)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"meta-opt meta-train: {err}", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.out) if args.out else Path("runs") / "meta_train" / config.name
    ray = getattr(args, "ray", False)
    workers, max_staleness = getattr(args, "workers", None), getattr(args, "max_staleness", 0)
    if not ray and (workers is not None or max_staleness):
        print("meta-opt meta-train: --workers and --max-staleness need --ray", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if ray:
            summary = run_ray_meta_training(
                config,
                out,
                num_workers=2 if workers is None else workers,
                max_staleness=max_staleness,
                plot=not args.no_plot,
                max_worker_restarts=getattr(args, "max_worker_restarts", 3),
            )
        else:
            summary = run_meta_training(config, out, plot=not args.no_plot)
    except ValueError as err:
        print(f"meta-opt meta-train: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except RuntimeError as err:  # Ray: a worker died too often, or the learner died
        print(f"meta-opt meta-train: {err}", file=sys.stderr)
        return EXIT_FAILED
    if summary["interrupted"]:
        print(
            f"interrupted at meta-step {summary['steps']}; checkpoint saved. Resume with the "
            f"same command (--out {out})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if summary["final_meta_loss"] is None:
        print(f"nothing to do: {out} already holds {summary['steps']} meta-steps")
        return 0
    print(
        f"meta-trained {summary['name']} for {summary['steps']} steps: meta-loss "
        f"{summary['first_meta_loss']:.4g} -> {summary['final_meta_loss']:.4g}; run dir {out}"
    )
    return 0
