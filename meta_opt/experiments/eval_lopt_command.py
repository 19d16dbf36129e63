"""`meta-opt eval-lopt CHECKPOINT --task NAME`: a meta-trained optimizer against Adam.

CHECKPOINT is a `meta-opt meta-train` run directory (or its `checkpoints/` folder). The
learned optimizer is rebuilt from the run's `config.json`, its theta restored from the
latest readable checkpoint, and it trains the task for `--steps` steps next to Adam at
each `--adam-lr` (same key: same init and batches). Prints progress (one line per
optimizer, with the time left), a table of final train / outer_valid / test losses
(4 significant digits, so tiny losses stay distinguishable), and writes `eval_<task>.json`
and the training-curve plot `eval_<task>.png` into the run directory.

User errors print one or two lines naming the file or value and the fix, and exit 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from meta_opt.experiments.command_errors import CommandError, report, short, user_errors
from meta_opt.experiments.step_progress import format_duration

EXIT_USAGE = 2
SPLITS = ("train", "outer_valid", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `meta-opt eval-lopt`."""
    parser.add_argument("checkpoint", help="meta-train run directory (or its checkpoints/)")
    parser.add_argument("--task", required=True, help="task name (see meta_opt.tasks)")
    parser.add_argument("--steps", type=int, default=200, help="inner training steps")
    parser.add_argument("--eval-every", type=int, default=20, help="steps between evaluations")
    parser.add_argument(
        "--adam-lr", type=float, action="append", default=None, help="Adam learning rate(s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plot", action="store_true", help="do not write eval_<task>.png")
    parser.add_argument("--no-progress", action="store_true", help="print no progress lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")


def _run_dir(path: Path) -> Path:
    for candidate in (path, path.parent):
        if (candidate / "config.json").is_file() and (candidate / "checkpoints").is_dir():
            return candidate
    raise CommandError(
        f"{path} is not a meta-train run directory (expected config.json and checkpoints/ "
        "in it); pass the --out folder of `meta-opt meta-train`"
    )


def _load_run_config(run: Path):
    from meta_opt.optimizers.config import ConfigError  # noqa: PLC0415
    from meta_opt.outer.meta_train_config import MetaTrainConfig  # noqa: PLC0415

    path = run / "config.json"
    try:
        return MetaTrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, ConfigError) as err:
        raise CommandError(
            f"{path} cannot be used ({short(err, 1)}); the run directory is damaged or was "
            "written by another version: meta-train it again"
        ) from err


def _check_args(args: argparse.Namespace) -> list[float]:
    if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
        raise CommandError(
            f"--steps ({args.steps}) must be a positive multiple of --eval-every "
            f"({args.eval_every}); e.g. --steps 200 --eval-every 20"
        )
    lrs = args.adam_lr or [1e-3]
    bad = [lr for lr in lrs if not lr > 0]
    if bad:
        raise CommandError(f"--adam-lr must be > 0, got {bad[0]}; e.g. --adam-lr 0.001")
    return lrs


def format_loss(value: float) -> str:
    """A loss with 4 significant digits: 9.700e-08 and 7.200e-05 stay distinct (not 0.0000)."""
    return f"{value:#.4g}"


def _restore_theta(run: Path, lopt):
    import jax  # noqa: PLC0415

    from meta_opt.outer.checkpoint import CheckpointError, MetaTrainCheckpointer  # noqa: PLC0415

    ckpt = MetaTrainCheckpointer(run / "checkpoints")
    try:
        theta, meta = ckpt.restore_theta(lopt.init(jax.random.PRNGKey(0)))
    except (CheckpointError, FileNotFoundError) as err:
        raise CommandError(str(err)) from err
    finally:
        ckpt.close()
    for step, error in ckpt.skipped:
        print(
            f"warning: checkpoint of meta-step {step} in {ckpt.directory} cannot be read "
            f"({error}); using meta-step {meta['step']}",
            file=sys.stderr,
        )
    return theta, meta


def main(args: argparse.Namespace) -> int:
    """Runs `meta-opt eval-lopt`; returns the exit code."""
    try:
        return _main(args)
    except CommandError as err:
        if getattr(args, "debug", False):
            raise
        return report("eval-lopt", err)


def _main(args: argparse.Namespace) -> int:
    import jax  # noqa: PLC0415

    from meta_opt.experiments.plots import eval_lopt_figure, save  # noqa: PLC0415
    from meta_opt.optimizers import Adam  # noqa: PLC0415
    from meta_opt.outer.eval_training import single_task_training_curves  # noqa: PLC0415
    from meta_opt.outer.meta_train_config import build_learned_optimizer  # noqa: PLC0415
    from meta_opt.tasks import get_task  # noqa: PLC0415

    run = _run_dir(Path(args.checkpoint))
    config = _load_run_config(run)
    lrs = _check_args(args)
    try:
        task = get_task(args.task, data_dir=config.data_dir)
        getattr(task, "data_arrays", None)  # data load lazily: load now, to report errors here
    except KeyError as err:  # unknown name: the message lists the known ones
        raise CommandError(f"--task: {short(err.args[0] if err.args else err)}") from err
    # Missing data (DataUnavailableError), a bad checksum (ChecksumError), bad arguments:
    # the data layer's message says what is wrong and what to do.
    except (FileNotFoundError, ValueError) as err:
        raise CommandError(f"--task {args.task}: {short(err)}") from err
    lopt = build_learned_optimizer(config)
    theta, meta = _restore_theta(run, lopt)

    key = jax.random.PRNGKey(args.seed)
    runs = [(f"{config.learned_optimizer}@{meta['step']}", lopt, theta)]
    runs += [(f"Adam(lr={lr:g})", Adam(lr), None) for lr in lrs]
    curves, spent = {}, []
    for i, (name, opt, opt_theta) in enumerate(runs):
        if not args.no_progress:
            print(f"[{i + 1}/{len(runs)}] {name}: training {args.task} for {args.steps} steps")
        t0 = time.monotonic()
        curves[name] = single_task_training_curves(
            task, opt, args.steps, key, theta=opt_theta, eval_every=args.eval_every
        )
        spent.append(time.monotonic() - t0)
        if not args.no_progress:
            loss = float(curves[name]["eval/train/loss"][-1])
            # The first run includes compiling the task; later ones are the better estimate.
            per_run = spent[-1] if len(spent) == 1 else sum(spent[1:]) / len(spent[1:])
            left = per_run * (len(runs) - i - 1)
            print(
                f"[{i + 1}/{len(runs)}] {name}: done in {format_duration(spent[-1])}, "
                f"train loss {format_loss(loss)}; ETA {format_duration(left)}",
                flush=True,
            )

    header = f"{'optimizer':<28}{'train':>12}{'outer_valid':>14}{'test':>12}"
    print(f"{args.task}: losses after {args.steps} steps\n{header}")
    result = {}
    for name, c in curves.items():
        final = {s: float(c[f"eval/{s}/loss"][-1]) for s in SPLITS}
        print(
            f"{name:<28}{format_loss(final['train']):>12}"
            f"{format_loss(final['outer_valid']):>14}{format_loss(final['test']):>12}"
        )
        result[name] = {"final": final, **{k: v.tolist() for k, v in c.items()}}
    json_path, png_path = run / f"eval_{args.task}.json", run / f"eval_{args.task}.png"
    with user_errors(f"cannot write into {run}", "make it writable, or copy the run elsewhere"):
        json_path.write_text(json.dumps(result))
        if not args.no_plot:
            save(eval_lopt_figure(result, title=f"{args.task}: {args.steps} steps"), png_path)
    print(f"wrote {json_path}" + ("" if args.no_plot else f" and {png_path.name}"))
    return 0
