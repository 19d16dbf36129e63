"""`meta-opt meta-train CONFIG [--set KEY=VALUE ...] [--out DIR]`: meta-train a learned optimizer.

CONFIG is a Python file whose `get_config()` returns a `MetaTrainConfig` (or a dict of
its fields). The run directory (default `runs/meta_train/<name>`) receives `config.json`,
`metrics.jsonl` (one JSON object per logged meta-step: step, meta_loss averaged over the
window, estimator and learner metrics, seconds per step), TensorBoard events,
`checkpoints/` (orbax: theta, meta-optimizer and unroll states, rng, step),
`meta_loss.png` and `summary.json`. Progress (meta-step, meta-loss, ETA) goes to stdout:
a bar on a terminal, plain lines otherwise (`--no-progress`: none). `--wandb` also logs
every metrics line to Weights & Biases.

Ctrl-C or SIGTERM stops at the end of the current meta-step, checkpoints it and exits
130 (SIGINT) or 143 (SIGTERM), saying which meta-step is on disk. Running again on the
same directory resumes from the latest readable checkpoint and continues exactly as if
never interrupted (raise `num_steps` with `--set num_steps=N` to train further). One
process at a time trains a directory (the run-directory lock of `meta-opt run`).

User errors (a bad config value, a damaged run directory, missing data, ...) print one
or two lines naming the file, the value and the fix, and exit 2; `--debug` shows the
traceback instead.

`--ray [--workers N] [--max-staleness K]` meta-trains on Ray instead (one learner actor,
N worker actors; docs/distributed.md) with the same outputs and the same loop for logging,
checkpoint cadence and signals; its resume restores the learner exactly but restarts the
workers' unroll states.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meta_opt.experiments.command_errors import CommandError, report, short, user_errors

EXIT_CONFIG = 2
EXIT_FAILED = 1
RAY_MARKER = "ray.json"  # present in run directories written by --ray
WANDB_PROJECT = "meta_opt-meta_train"
# Fields that may change between a run and its resume.
RESUMABLE_CHANGES = ("num_steps", "log_every", "checkpoint_every")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `meta-opt meta-train`."""
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
    parser.add_argument("--no-progress", action="store_true", help="print no progress")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help=f"also log every metrics line to Weights & Biases (project {WANDB_PROJECT}; "
        "WANDB_MODE=offline logs without a network)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
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
    """The `MetaTrainConfig` of a config file, with `--set` overrides applied.

    Raises:
      CommandError: the file is missing, does not run, or holds a bad config; the
        message names the file and the value.
    """
    from meta_opt.experiments.config_file import call_get_config  # noqa: PLC0415
    from meta_opt.optimizers.config import ConfigError  # noqa: PLC0415
    from meta_opt.outer.meta_train_config import MetaTrainConfig  # noqa: PLC0415

    returns = "a MetaTrainConfig or a dict of its fields"
    config = call_get_config(path, returns, "configs/meta_train_learnable_adam_quadratic.py")
    if isinstance(config, dict):
        with user_errors(str(path), "", (ConfigError,)):
            config = MetaTrainConfig.from_dict(config)
    if not isinstance(config, MetaTrainConfig):
        raise CommandError(
            f"{path}: get_config() returned {type(config).__name__}; expected {returns}"
        )
    if overrides:
        with user_errors("--set " + " ".join(overrides), "", (ConfigError,)):
            config = config.with_overrides(list(overrides))
    return config


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Fields (other than RESUMABLE_CHANGES) in which two config dicts differ."""
    keys = sorted((set(saved) | set(wanted)) - set(RESUMABLE_CHANGES))
    return [
        f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in keys if saved.get(k) != wanted.get(k)
    ]


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Holds `meta-opt run`'s run-directory lock on `out`: one training process at a time."""
    from meta_opt.experiments.run_dir import RunDir  # noqa: PLC0415
    from meta_opt.optimizers.config import ConfigError  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(RunDir(out).lock())
        except ConfigError as err:  # held by another process: its message names the pid
            raise CommandError(str(err)) from err
        except OSError as err:
            raise CommandError(
                f"cannot create the run directory {out} ({err.strerror or err}); choose a "
                "writable --out"
            ) from err
        yield


def _open_run_dir(config, out: Path, ray: bool):
    """Checks `out` holds this run (or nothing), writes config.json; returns a checkpointer."""
    from meta_opt.experiments.run_dir import write_json_atomic  # noqa: PLC0415
    from meta_opt.outer.checkpoint import MetaTrainCheckpointer  # noqa: PLC0415

    config_path, marker = out / "config.json", out / RAY_MARKER
    if config_path.exists():
        try:
            saved = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            raise CommandError(
                f"{config_path} cannot be read ({short(err, 1)}): the run directory is "
                f"damaged; delete {out} to start over, or use another --out"
            ) from err
        diffs = _differences(saved if isinstance(saved, dict) else {}, config.to_dict())
        if diffs:
            raise CommandError(
                f"{out} holds a different meta-training run ({'; '.join(diffs[:6])}); use "
                f"another --out, or delete {out} to start over"
            )
    with user_errors(f"cannot write the run directory {out}", "choose a writable --out"):
        ckpt = MetaTrainCheckpointer(out / "checkpoints")
    latest = ckpt.latest_step()
    if latest is not None and marker.exists() != ray:
        ckpt.close()
        written, asked = ("--ray", "without --ray") if marker.exists() else ("one machine", "--ray")
        raise CommandError(
            f"{out} holds a meta-training run written by {written}; its checkpoint cannot be "
            f"resumed {asked}. Run the same command as before, or use another --out"
        )
    with user_errors(f"cannot write the run directory {out}", "choose a writable --out"):
        write_json_atomic(config_path, config.to_dict())
        if latest is None:  # nothing to resume: this call decides the run's path
            if ray:
                write_json_atomic(marker, {"written_by": "meta-opt meta-train --ray"})
            else:
                marker.unlink(missing_ok=True)
    return ckpt


def _restore(ckpt, template: dict[str, Any], config, out: Path) -> tuple[dict[str, Any], dict]:
    """The checkpointed state to resume from, after checking it belongs to `config`."""
    from meta_opt.outer.checkpoint import CheckpointError  # noqa: PLC0415

    try:
        state, meta = ckpt.restore(template, quarantine=True)
    except CheckpointError as err:
        raise CommandError(str(err)) from err
    for step, error in ckpt.skipped:
        print(
            f"warning: checkpoint of meta-step {step} in {ckpt.directory} cannot be read "
            f"({error}); resuming from meta-step {int(state['step'])} (the damaged folder "
            "is kept as damaged_<step>_<time>)",
            file=sys.stderr,
        )
    diffs = _differences(meta.get("config", config.to_dict()), config.to_dict())
    if diffs:  # config.json was deleted or replaced: the checkpoint still knows its config
        raise CommandError(
            f"{ckpt.directory} holds checkpoints of a different config ({'; '.join(diffs[:6])});"
            f" use another --out, or delete {out} to start over"
        )
    return state, meta


def _metrics_record(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What a checkpoint recorded of metrics.jsonl (older ones: only a line count)."""
    if "metrics" in meta:
        return meta["metrics"]
    return {"lines": meta["metrics_lines"]} if "metrics_lines" in meta else None


def _build_estimators(config, lopt) -> list:
    """One estimator per task family; data problems become CommandErrors."""
    from meta_opt.outer.meta_train_config import build_estimator, build_task_family  # noqa: PLC0415

    estimators = []
    for name in config.task_families:
        try:
            family = build_task_family(name, config.data_dir, config.batch_size)
            estimator = build_estimator(config, lopt, family)
            # Data load lazily; load them now, so that missing data is a message, not a
            # traceback from inside the first meta-step.
            getattr(getattr(estimator, "truncated_step", None), "data_mode", None)
        # Missing data (DataUnavailableError), a bad checksum (ChecksumError), bad sizes:
        # the data layer's message says what is wrong and what to do.
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise CommandError(f"task family {name}: {short(err)}") from err
        estimators.append(estimator)
    return estimators


def _check_wandb() -> None:
    """Refuses --wandb up front (before any work) when wandb is not installed."""
    try:
        import wandb  # noqa: F401, PLC0415
    except ImportError as err:
        raise CommandError(
            "--wandb needs the wandb package, which is not installed; install it with "
            "`pip install wandb` (WANDB_MODE=offline logs without a network), or drop --wandb"
        ) from err


def _wandb_run(enabled: bool, config, out: Path):
    if not enabled:
        return None
    from meta_opt.experiments.metrics import init_wandb  # noqa: PLC0415

    with user_errors("--wandb", "", (RuntimeError,)):
        return init_wandb(WANDB_PROJECT, config.name, config.to_dict(), out)


def run_meta_training(
    config, out_dir: str | Path, plot: bool = True, progress: bool = False, wandb: bool = False
) -> dict[str, Any]:
    """Meta-trains as `config` says in this process, writing into `out_dir`; resumes exactly.

    Raises:
      CommandError: a user error (run directory, data, checkpoint); message ready to print.
    """
    import jax  # noqa: PLC0415

    from meta_opt.experiments.meta_train_loop import drive, graceful_stop  # noqa: PLC0415
    from meta_opt.outer.gradient_learner import SingleMachineGradientLearner  # noqa: PLC0415
    from meta_opt.outer.meta_train_config import (  # noqa: PLC0415
        build_learned_optimizer,
        build_theta_opt,
    )

    out = Path(out_dir)
    with _locked(out):
        lopt = build_learned_optimizer(config)
        trainer = SingleMachineGradientLearner(
            lopt, _build_estimators(config, lopt), build_theta_opt(config)
        )
        ckpt = _open_run_dir(config, out, ray=False)
        try:
            key = jax.random.PRNGKey(config.seed)
            start = {"trainer": trainer.init(key), "rng": jax.random.fold_in(key, 1), "step": 0}
            meta: dict[str, Any] = {}
            if ckpt.latest_step() is not None:
                start, meta = _restore(ckpt, start, config, out)
                print(f"resuming {out} from meta-step {int(start['step'])}", file=sys.stderr)
            start_step, rng = int(start["step"]), start["rng"]

            def steps():
                # No stop check here: `drive` decides, after each step's outputs are ready.
                state, step = start["trainer"], start_step
                while step < config.num_steps:
                    state, loss, metrics = trainer.update(
                        state, jax.random.fold_in(rng, step), with_metrics=config.log_due(step + 1)
                    )
                    step += 1
                    checkpoint = lambda s=state, t=step: (
                        {"trainer": s, "rng": rng, "step": t},
                        trainer.get_theta(s),
                    )
                    yield step, loss, metrics, checkpoint, False

            wandb_run = _wandb_run(wandb, config, out)
            with graceful_stop() as stop:
                return drive(
                    config,
                    out,
                    ckpt,
                    start_step,
                    steps(),
                    stop,
                    plot=plot,
                    metrics_record=_metrics_record(meta),
                    progress=progress,
                    wandb_run=wandb_run,
                )
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
    progress: bool = False,
    wandb: bool = False,
) -> dict[str, Any]:
    """Meta-trains on Ray (one learner actor, `num_workers` worker actors) into `out_dir`.

    Joins the cluster at `RAY_ADDRESS` (or the one this process already started), else
    starts a local one and shuts it down at the end. Logs and checkpoints like
    `run_meta_training` (the `theta` item is the same, so `meta-opt eval-lopt` reads it).
    Resuming restores the learner (theta, meta-optimizer state, step); workers start fresh
    unroll states. See docs/distributed.md and `meta_opt.distributed.RayMetaTraining`.
    """
    import os  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    import jax  # noqa: PLC0415

    try:
        import ray  # noqa: PLC0415
    except ImportError as err:
        raise CommandError(
            "--ray needs the ray package, which is not installed; install it with "
            "`pip install 'meta_opt[ray]'`, or drop --ray"
        ) from err

    from meta_opt.distributed import RayMetaTraining  # noqa: PLC0415
    from meta_opt.experiments.meta_train_loop import drive, graceful_stop  # noqa: PLC0415
    from meta_opt.outer.gradient_learner import GradientLearner  # noqa: PLC0415
    from meta_opt.outer.meta_train_config import (  # noqa: PLC0415
        build_learned_optimizer,
        build_theta_opt,
    )

    with user_errors("--ray", "", (ValueError,)):
        trainer = RayMetaTraining(  # validates the arguments before anything is written
            config,
            num_workers,
            max_staleness=max_staleness,
            num_gradients_per_step=num_gradients_per_step,
            max_worker_restarts=max_worker_restarts,
            worker_num_cpus=worker_num_cpus,
        )
    out = Path(out_dir)
    with _locked(out):
        ckpt = _open_run_dir(config, out, ray=True)
        learner_state, start_step, meta = None, 0, {}
        if ckpt.latest_step() is not None:
            # The template only gives orbax the structure; the learner actor builds its own.
            learner = GradientLearner(build_learned_optimizer(config), build_theta_opt(config))
            template = {"learner": learner.init(jax.random.PRNGKey(config.seed)), "step": 0}
            try:
                restored, meta = _restore(ckpt, template, config, out)
            except CommandError:
                ckpt.close()
                raise
            learner_state, start_step = restored["learner"], int(restored["step"])
            print(
                f"resuming {out} from meta-step {start_step} (fresh unroll states)",
                file=sys.stderr,
            )

        started_ray = not ray.is_initialized()
        if started_ray:
            with warnings.catch_warnings():
                # Ray starts its processes with fork+exec, which is safe in a JAX process.
                warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
        ray_meta = {"ray_workers": num_workers, "max_staleness": max_staleness}
        try:
            wandb_run = _wandb_run(wandb, config, out)
            with graceful_stop() as stop:
                trainer.start(learner_state, start_step)
                steps = trainer.steps(lambda: stop["signal"] is not None)
                summary = drive(
                    config,
                    out,
                    ckpt,
                    start_step,
                    steps,
                    stop,
                    plot=plot,
                    meta=ray_meta,
                    metrics_record=_metrics_record(meta),
                    progress=progress,
                    wandb_run=wandb_run,
                )
            summary["worker_restarts"] = sum(trainer.restarts)
            from meta_opt.experiments.run_dir import write_json_atomic  # noqa: PLC0415

            write_json_atomic(out / "summary.json", summary)
            return summary
        finally:
            ckpt.close()
            trainer.shutdown()
            if started_ray:
                ray.shutdown()


def _stop_message(summary: dict[str, Any], out: Path) -> str:
    """What an interrupted run left on disk, checked after the fact."""
    import signal  # noqa: PLC0415

    step, saved = summary["steps"], summary["checkpoint_step"]
    name = signal.Signals(summary["signal"]).name
    if saved == step:
        return (
            f"stopped by {name} at meta-step {step}; its checkpoint is saved in "
            f"{out / 'checkpoints'}. Resume with the same command (--out {out})"
        )
    why = f" ({summary['checkpoint_error']})" if summary.get("checkpoint_error") else ""
    on_disk = "none" if saved is None else f"meta-step {saved}"
    redo = "from the start" if saved is None else f"meta-steps {saved + 1}..{step} again"
    return (
        f"stopped by {name} at meta-step {step}, but its checkpoint could not be written"
        f"{why}; latest checkpoint on disk: {on_disk}. The same command (--out {out}) "
        f"resumes from there and runs {redo}"
    )


def main(args: argparse.Namespace) -> int:
    """Runs `meta-opt meta-train`; returns the exit code."""
    import signal  # noqa: PLC0415

    out = None
    try:
        config = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / "meta_train" / config.name
        ray = getattr(args, "ray", False)
        workers = getattr(args, "workers", None)
        max_staleness = getattr(args, "max_staleness", 0)
        if not ray and (workers is not None or max_staleness):
            raise CommandError("--workers and --max-staleness need --ray")
        progress = not getattr(args, "no_progress", False)
        wandb = getattr(args, "wandb", False)
        if wandb:
            _check_wandb()
        if ray:
            summary = run_ray_meta_training(
                config,
                out,
                num_workers=2 if workers is None else workers,
                max_staleness=max_staleness,
                plot=not args.no_plot,
                max_worker_restarts=getattr(args, "max_worker_restarts", 3),
                progress=progress,
                wandb=wandb,
            )
        else:
            summary = run_meta_training(
                config, out, plot=not args.no_plot, progress=progress, wandb=wandb
            )
    except CommandError as err:
        if getattr(args, "debug", False):
            raise
        return report("meta-train", err)
    except KeyboardInterrupt:  # Ctrl-C while building, before the loop takes over signals
        print(
            "meta-opt meta-train: interrupted before the first meta-step; nothing was trained "
            "and the run directory's checkpoints are unchanged",
            file=sys.stderr,
        )
        return 128 + signal.SIGINT
    except RuntimeError as err:  # Ray: a worker died too often, or the learner died
        if getattr(args, "debug", False):
            raise
        print(f"meta-opt meta-train: {err}", file=sys.stderr)
        return EXIT_FAILED
    if summary["interrupted"]:
        print(_stop_message(summary, out), file=sys.stderr)
        return 128 + int(summary["signal"] or signal.SIGINT)
    if summary["checkpoint_error"]:
        print(
            f"meta-opt meta-train: writing the checkpoint of meta-step {summary['steps']} "
            f"failed ({summary['checkpoint_error']}); latest checkpoint on disk: "
            f"{summary['checkpoint_step']}. Fix that (e.g. free disk space), then run the "
            f"same command to resume",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary["start_step"] >= config.num_steps:
        print(f"nothing to do: {out} already holds {summary['steps']} meta-steps")
        return 0
    print(
        f"meta-trained {summary['name']} for {summary['steps']} steps: meta-loss "
        f"{summary['first_meta_loss']:.4g} -> {summary['final_meta_loss']:.4g}; run dir {out}"
    )
    return 0
