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
"""

from __future__ import annotations

import argparse
import json
import runpy
import signal
import sys
import time
from pathlib import Path
from typing import Any

from meta_opt.experiments.metrics import read_jsonl, truncate_jsonl

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


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


def run_meta_training(config, out_dir: str | Path, plot: bool = True) -> dict[str, Any]:
    """Meta-trains as `config` says, writing into `out_dir`; resumes when it can."""
    import jax
    import numpy as np

    from meta_opt.outer.checkpoint import MetaTrainCheckpointer
    from meta_opt.outer.gradient_learner import SingleMachineGradientLearner
    from meta_opt.outer.meta_train_config import (
        build_estimator,
        build_learned_optimizer,
        build_task_family,
        build_theta_opt,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if not _same_run(saved, config.to_dict()):
            raise ValueError(
                f"{out} holds a different meta-training run (config.json differs); "
                "use another --out or delete the directory"
            )
    config_path.write_text(json.dumps(config.to_dict(), indent=2))

    lopt = build_learned_optimizer(config)
    estimators = [
        build_estimator(config, lopt, build_task_family(n, config.data_dir, config.batch_size))
        for n in config.task_families
    ]
    trainer = SingleMachineGradientLearner(lopt, estimators, build_theta_opt(config))
    key = jax.random.PRNGKey(config.seed)
    ckpt = MetaTrainCheckpointer(out / "checkpoints")
    start = {"trainer": trainer.init(key), "rng": jax.random.fold_in(key, 1), "step": 0}
    step = 0
    if ckpt.latest_step() is not None:
        start, _ = ckpt.restore(start)
        step = int(start["step"])
        print(f"resuming {out} from meta-step {step}", file=sys.stderr)
    state, rng = start["trainer"], start["rng"]

    metrics_path = out / "metrics.jsonl"
    # Drop lines written after the checkpoint we resume from (and a line torn by a kill).
    truncate_jsonl(metrics_path, step, key="step")

    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"))
    window, t0 = [], time.time()
    # Ctrl-C / SIGTERM: finish the current meta-step, checkpoint, stop (resume later).
    stop = {"signal": None}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, lambda n, f: stop.update(signal=n))
        except ValueError:  # not the main thread: no handlers, no graceful stop
            pass
    with metrics_path.open("a") as log:
        while step < config.num_steps and stop["signal"] is None:
            log_now = (step + 1) % config.log_every == 0 or step + 1 == config.num_steps
            state, loss, metrics = trainer.update(
                state, jax.random.fold_in(rng, step), with_metrics=log_now
            )
            step += 1
            window.append(float(loss))
            if log_now:
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
            if (
                step % config.checkpoint_every == 0
                or step == config.num_steps
                or stop["signal"] is not None
            ):
                payload = {"trainer": state, "rng": rng, "step": step}
                theta = trainer.get_theta(state)
                ckpt.save(step, payload, theta, {"step": step, "name": config.name})
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    writer.close()
    ckpt.close()

    records = read_jsonl(metrics_path)
    summary = {
        "name": config.name,
        "steps": step,
        "final_meta_loss": records[-1]["meta_loss"] if records else None,
        "first_meta_loss": records[0]["meta_loss"] if records else None,
        "interrupted": stop["signal"] is not None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if plot and records:
        _plot(records, out / "meta_loss.png", config.name)
    return summary


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
    try:
        summary = run_meta_training(config, out, plot=not args.no_plot)
    except ValueError as err:
        print(f"meta-opt meta-train: {err}", file=sys.stderr)
        return EXIT_CONFIG
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
