"""`meta-opt eval-lopt CHECKPOINT --task NAME`: a meta-trained optimizer against Adam.

CHECKPOINT is a `meta-opt meta-train` run directory (or its `checkpoints/` folder). The
learned optimizer is rebuilt from the run's `config.json`, its theta restored from the
latest checkpoint, and it trains the task for `--steps` steps next to Adam at each
`--adam-lr` (same key: same init and batches). Prints a table of train / outer_valid /
test losses and writes `eval_<task>.json` into the run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="meta-train run directory (or its checkpoints/)")
    parser.add_argument("--task", required=True, help="task name (see meta_opt.tasks)")
    parser.add_argument("--steps", type=int, default=200, help="inner training steps")
    parser.add_argument("--eval-every", type=int, default=20, help="steps between evaluations")
    parser.add_argument(
        "--adam-lr", type=float, action="append", default=None, help="Adam learning rate(s)"
    )
    parser.add_argument("--seed", type=int, default=0)


def _run_dir(path: Path) -> Path:
    for candidate in (path, path.parent):
        if (candidate / "config.json").is_file() and (candidate / "checkpoints").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{path} is not a meta-train run directory (expected config.json and checkpoints/)"
    )


def main(args: argparse.Namespace) -> int:
    import jax

    from meta_opt.optimizers import Adam
    from meta_opt.outer.checkpoint import MetaTrainCheckpointer
    from meta_opt.outer.eval_training import single_task_training_curves
    from meta_opt.outer.meta_train_config import MetaTrainConfig, build_learned_optimizer
    from meta_opt.tasks import get_task

    try:
        run = _run_dir(Path(args.checkpoint))
        config = MetaTrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        task = get_task(args.task, data_dir=config.data_dir)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"meta-opt eval-lopt: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.steps < 1 or args.steps % args.eval_every:
        print(
            f"meta-opt eval-lopt: --steps ({args.steps}) must be a positive multiple of "
            f"--eval-every ({args.eval_every})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    lopt = build_learned_optimizer(config)
    ckpt = MetaTrainCheckpointer(run / "checkpoints")
    theta, meta = ckpt.restore_theta(lopt.init(jax.random.PRNGKey(0)))
    ckpt.close()
    key = jax.random.PRNGKey(args.seed)
    curves = {
        f"{config.learned_optimizer}@{meta['step']}": single_task_training_curves(
            task, lopt, args.steps, key, theta=theta, eval_every=args.eval_every
        )
    }
    for lr in args.adam_lr or [1e-3]:
        curves[f"Adam(lr={lr:g})"] = single_task_training_curves(
            task, Adam(lr), args.steps, key, eval_every=args.eval_every
        )

    header = f"{'optimizer':<28}{'train':>12}{'outer_valid':>14}{'test':>12}"
    print(f"{args.task}: losses after {args.steps} steps\n{header}")
    result = {}
    for name, c in curves.items():
        final = {s: float(c[f"eval/{s}/loss"][-1]) for s in ("train", "outer_valid", "test")}
        print(
            f"{name:<28}{final['train']:>12.4f}{final['outer_valid']:>14.4f}{final['test']:>12.4f}"
        )
        result[name] = {"final": final, **{k: v.tolist() for k, v in c.items()}}
    (run / f"eval_{args.task}.json").write_text(json.dumps(result))
    return 0
